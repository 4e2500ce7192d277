"""Wall-time overhead of the guard on a tiny random model or a real-weight testbed, greedy generate.

Arms interleaved (raw model.generate, guard with gate off, guard steering every layer, the guard behind
the probe gate); median of per-round ratios and their spread; a matrix of runtimes (eager, static
cache, compiled), batch sizes and prompt lengths; audio prefill with an audio family; JSON out.

    python benchmarks/overhead.py --pairs 7 --out benchmarks/results/overhead_tiny_cpu.json
    python benchmarks/overhead.py --testbed qwen2.5-coder-0.5b-instruct --pairs 5 \\
        --out benchmarks/results/overhead_qwen05b_cpu.json
    python benchmarks/overhead.py --family qwen2_audio --prompts audio --runtimes eager compiled \\
        --out benchmarks/results/overhead_tiny_audio_cpu.json
"""

from __future__ import annotations

import argparse
import copy
import json
import platform
import sys
import tempfile
from pathlib import Path

import torch

from guardrail import calibrate
from guardrail.bench import RUNTIMES, format_row, overhead
from guardrail.defaults import default_calibration_set
from guardrail.gate.onnx_probe import OnnxProbe
from guardrail.gate.train_on_model import fit_probe
from guardrail.testing.tiny import AUDIO_FAMILIES, build_tiny, tiny_audio

LONG = (
    " Please answer carefully, step by step, with examples, and mention anything a beginner should "
    "know before starting."
) * 4  # ~90 extra prompt tokens


def prompts(kind: str, questions: list[str]) -> list[dict]:
    if kind == "short":
        return [{"text": q} for q in questions]
    if kind == "long":
        return [{"text": q + LONG} for q in questions]
    return [
        {
            "audio": (tiny_audio(2.0 + 0.1 * (i % 5), 16_000, seed=i), 16_000),
            "text": "Please answer the question in the audio.",
        }
        for i in range(len(questions))
    ]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--family", default="qwen2", help="tiny model family (without --testbed)")
    parser.add_argument("--testbed", help="real weights from guardrail_testbeds.build instead of a tiny model")
    parser.add_argument("--batches", type=int, nargs="+", default=[1, 16])
    parser.add_argument("--runtimes", nargs="+", default=["eager", "compiled"], choices=list(RUNTIMES))
    parser.add_argument("--prompts", nargs="+", default=["short", "long"], choices=["short", "long", "audio"])
    parser.add_argument("--pairs", type=int, default=7, help="interleaved rounds")
    parser.add_argument("--new-tokens", type=int, default=32)
    parser.add_argument("--no-probe", action="store_true", help="skip the probe-gated arm")
    parser.add_argument("--out", type=Path)
    args = parser.parse_args()
    if args.testbed:
        from guardrail_testbeds.build import load

        model, processor = load(args.testbed)
    else:
        model, processor = build_tiny(args.family, seed=0)
    harmful, safe = default_calibration_set()
    if args.family in AUDIO_FAMILIES and not args.testbed:
        harmful = [(tiny_audio(1.0 + 0.1 * i, 16_000, seed=i), 16_000) for i in range(8)]
        safe = [(tiny_audio(1.0 + 0.1 * i, 16_000, seed=50 + i), 16_000) for i in range(16)]
    artifact = calibrate(model, processor, harmful, safe)
    probe = None
    if not args.no_probe:  # the shipped form: an ONNX file, read back onto the device by the guard
        folder = Path(tempfile.mkdtemp()) / "probe"
        probe = OnnxProbe.load(fit_probe(model, processor, harmful, safe).save(folder))
    questions = [q for q in default_calibration_set()[0] + default_calibration_set()[1]]
    name = args.testbed or args.family
    results = []
    for runtime in args.runtimes:
        raw_model = None if runtime == "eager" else copy.deepcopy(model)  # unhooked baseline
        for kind in args.prompts:
            for b in args.batches:
                r = overhead(
                    model,
                    processor,
                    artifact,
                    prompts(kind, questions),
                    batch=b,
                    rounds=args.pairs,
                    new_tokens=args.new_tokens,
                    probe=probe,
                    runtime=runtime,
                    raw_model=raw_model,
                )
                r["prompt"] = kind
                print(format_row(name, r), flush=True)
                results.append(r)
    if args.out:
        meta = {
            "model": name,
            "machine": platform.machine(),
            "processor": platform.processor(),
            "torch": torch.__version__,
            "threads": torch.get_num_threads(),
            "device": torch.cuda.get_device_name() if torch.cuda.is_available() else "cpu",
            "command": "python " + " ".join(sys.argv),
        }
        args.out.write_text(json.dumps({"meta": meta, "results": results}, indent=2) + "\n")


if __name__ == "__main__":
    main()
