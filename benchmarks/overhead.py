"""Wall-time overhead of the guard on a tiny random model or a real-weight testbed, greedy generate.

Three arms run interleaved (A B C, A B C, ...) so that machine noise hits them alike:
  raw      model.generate on prepared inputs (the unguarded model)
  wrapped  guard.generate_batch with gate.mode off (input building + decoding, no hooks)
  steered  guard.generate_batch with SARSteer on every layer (policy default, alpha 0.1)
Every arm generates exactly --new-tokens tokens (min_new_tokens), so work is equal.
Prints the median of the per-pair ratios and their spread, and writes JSON.

    python benchmarks/overhead.py --pairs 7 --out benchmarks/results/overhead_tiny_cpu.json
    python benchmarks/overhead.py --testbed qwen2.5-coder-0.5b-instruct --pairs 5 \\
        --out benchmarks/results/overhead_qwen05b_cpu.json
"""

from __future__ import annotations

import argparse
import json
import platform
import statistics
import time
from pathlib import Path

import torch

from guardrail import Guard, Policy, calibrate
from guardrail.activations import model_inputs
from guardrail.adapter import Request
from guardrail.defaults import default_calibration_set
from guardrail.testing.tiny import build_tiny


def timed(fn) -> float:
    start = time.perf_counter()
    fn()
    return time.perf_counter() - start


def load(family: str, testbed: str | None):
    if testbed is None:
        return build_tiny(family, seed=0)
    from guardrail.testing.testbeds import load as load_testbed
    return load_testbed(testbed)


def bench(family: str, batch: int, pairs: int, new_tokens: int, testbed: str | None = None) -> dict:
    model, tokenizer = load(family, testbed)
    harmful, safe = default_calibration_set()
    artifact = calibrate(model, tokenizer, harmful, safe)
    steered = Guard(model, tokenizer, policy=Policy(), artifact=artifact)
    wrapped = Guard(model, tokenizer, policy=Policy.from_dict({"gate": {"mode": "off"}}))
    questions = (harmful + safe)[:batch]
    requests = [{"text": q} for q in questions]
    inputs = model_inputs(model, steered.adapter.build_inputs(tokenizer, [Request(q) for q in questions]))
    gen = {"max_new_tokens": new_tokens, "min_new_tokens": new_tokens, "do_sample": False}
    pad = steered.adapter.pad_token_id(model, tokenizer)

    arms = {
        "raw": lambda: model.generate(**inputs, **gen, pad_token_id=pad),
        "wrapped": lambda: wrapped.generate_batch(requests, **gen),
        "steered": lambda: steered.generate_batch(requests, **gen),
    }
    with torch.inference_mode():
        for fn in arms.values():  # warm-up
            fn()
        times = {name: [] for name in arms}
        for _ in range(pairs):
            for name, fn in arms.items():
                times[name].append(timed(fn))

    def ratio(a: str, b: str) -> dict:
        r = [x / y for x, y in zip(times[a], times[b])]
        return {"median": statistics.median(r), "min": min(r), "max": max(r)}

    return {"family": testbed or family, "batch": batch, "pairs": pairs, "new_tokens": new_tokens,
            "median_s": {k: statistics.median(v) for k, v in times.items()},
            "steered_over_raw": ratio("steered", "raw"), "wrapped_over_raw": ratio("wrapped", "raw"),
            "steered_over_wrapped": ratio("steered", "wrapped")}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--family", default="qwen2")
    parser.add_argument("--batches", type=int, nargs="+", default=[1, 8])
    parser.add_argument("--pairs", type=int, default=7)
    parser.add_argument("--new-tokens", type=int, default=32)
    parser.add_argument("--testbed", help="real weights from guardrail.testing.testbeds instead of a tiny model")
    parser.add_argument("--out", type=Path)
    args = parser.parse_args()
    results = [bench(args.family, b, args.pairs, args.new_tokens, args.testbed) for b in args.batches]
    for r in results:
        print(f"{r['family']} batch {r['batch']:>2}: raw {r['median_s']['raw'] * 1e3:7.1f} ms | "
              f"steered/raw median {r['steered_over_raw']['median']:.3f} "
              f"[{r['steered_over_raw']['min']:.3f}..{r['steered_over_raw']['max']:.3f}] | "
              f"wrapped/raw {r['wrapped_over_raw']['median']:.3f} | "
              f"steered/wrapped {r['steered_over_wrapped']['median']:.3f} "
              f"[{r['steered_over_wrapped']['min']:.3f}..{r['steered_over_wrapped']['max']:.3f}]")
    if args.out:
        meta = {"machine": platform.machine(), "processor": platform.processor(), "torch": torch.__version__,
                "threads": torch.get_num_threads(), "command": "python benchmarks/overhead.py " +
                " ".join(f"--{k.replace('_', '-')} {v if not isinstance(v, list) else ' '.join(map(str, v))}"
                         for k, v in vars(args).items() if k != "out" and v is not None)}
        args.out.write_text(json.dumps({"meta": meta, "results": results}, indent=2) + "\n")


if __name__ == "__main__":
    main()
