"""Calibration throughput: `guardrail.calibrate` vs plain batched forward passes over the same queries.

Calibration runs 2 prefill passes per harmful query (with and without the refusal text) and 1 per safe
query, capturing every layer's last-position activation, then one SVD per layer. The baseline runs the
model's own forward (no hooks, no cache, logits for the last position only) over exactly those queries,
batched the same way, with inputs built beforehand: the cost of the passes alone. Rounds interleave;
the result is the median of per-round throughput ratios (queries per second, calibration / plain),
against passes on prebuilt inputs and against passes that build their inputs (tokenisation, chat
template) as any caller must.

    python benchmarks/calibration_throughput.py --out benchmarks/results/calibration_tiny_cpu.json
    python benchmarks/calibration_throughput.py --testbed qwen2.5-coder-0.5b-instruct --rounds 3 \\
        --out benchmarks/results/calibration_qwen05b_cpu.json
"""

from __future__ import annotations

import argparse
import json
import platform
import statistics
import sys
import time
from pathlib import Path

import torch

from guardrail import calibrate
from guardrail.defaults import default_calibration_set
from guardrail.models.adapter import resolve_adapter
from guardrail.requests import Request
from guardrail.steering.activations import forward_last, model_inputs
from guardrail.steering.vectors import DEFAULT_REFUSAL_TEXT
from guardrail.testing.tiny import build_tiny

INSTRUCTION = "Please generate detailed steps for the question."


def _sync() -> None:
    if torch.cuda.is_available():
        torch.cuda.synchronize()


def plain_batches(model, processor, queries: list[str], batch_size: int) -> list[dict]:
    """The inputs calibration feeds the model, batched as it batches them (by length)."""
    adapter = resolve_adapter(model, None)
    order = sorted(queries, key=len)
    return [
        model_inputs(model, adapter.build_inputs(processor, [Request(q) for q in order[i : i + batch_size]]))
        for i in range(0, len(order), batch_size)
    ]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--testbed", help="real weights from guardrail_testbeds.build instead of tiny qwen2")
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--batch-size", type=int, default=8)
    parser.add_argument("--out", type=Path)
    args = parser.parse_args()
    if args.testbed:
        from guardrail_testbeds.build import load

        model, processor = load(args.testbed)
    else:
        model, processor = build_tiny("qwen2", seed=0)
    harmful, safe = default_calibration_set()
    queries = (
        [f"{q} {INSTRUCTION}" for q in harmful]
        + [f"{q} {INSTRUCTION} {DEFAULT_REFUSAL_TEXT}" for q in harmful]
        + [f"{q} {INSTRUCTION}" for q in safe]
    )
    # calibration builds each batch from the harmful, refusal and safe groups separately
    groups = [queries[: len(harmful)], queries[len(harmful) : 2 * len(harmful)], queries[2 * len(harmful) :]]
    batches = [b for group in groups for b in plain_batches(model, processor, group, args.batch_size)]

    def plain() -> None:
        with torch.inference_mode():
            for inputs in batches:
                forward_last(model, inputs)

    def plain_with_inputs() -> None:  # the same passes, building each batch's inputs as a caller must
        with torch.inference_mode():
            for group in groups:
                for inputs in plain_batches(model, processor, group, args.batch_size):
                    forward_last(model, inputs)

    def calib() -> None:
        calibrate(model, processor, harmful, safe, INSTRUCTION, batch_size=args.batch_size)

    arms = {"plain": plain, "plain_with_inputs": plain_with_inputs, "calibrate": calib}
    times: dict[str, list[float]] = {name: [] for name in arms}
    for fn in arms.values():  # warm-up
        fn()
    for _ in range(args.rounds):
        for name, fn in arms.items():
            _sync()
            start = time.perf_counter()
            fn()
            _sync()
            times[name].append(time.perf_counter() - start)
    n = len(queries)
    result = {
        "queries": n,
        "batch_size": args.batch_size,
        "rounds": args.rounds,
        **{f"{name}_qps": n / statistics.median(t) for name, t in times.items()},
    }
    name = args.testbed or "tiny qwen2"
    line = f"{name}: {n} queries | calibrate {result['calibrate_qps']:.1f} q/s"
    for base in ("plain", "plain_with_inputs"):  # throughput ratio = inverse time ratio, per round
        ratios = [p / c for p, c in zip(times[base], times["calibrate"])]
        result[f"calibrate_over_{base}"] = {"median": statistics.median(ratios), "min": min(ratios), "max": max(ratios)}
        line += (
            f" | {base} {result[f'{base}_qps']:.1f} q/s, ratio {statistics.median(ratios):.3f} "
            f"[{min(ratios):.3f}..{max(ratios):.3f}]"
        )
    print(line)
    if args.out:
        meta = {
            "model": name,
            "machine": platform.machine(),
            "torch": torch.__version__,
            "threads": torch.get_num_threads(),
            "device": torch.cuda.get_device_name() if torch.cuda.is_available() else "cpu",
            "command": "python " + " ".join(sys.argv),
        }
        args.out.write_text(json.dumps({"meta": meta, "result": result}, indent=2) + "\n")


if __name__ == "__main__":
    main()
