"""Wall-time overhead of the guard on a tiny random model or a real-weight testbed, greedy generate.

Arms interleaved (raw model.generate, guard with gate off, guard steering every layer, and with
--probe the guard behind the probe gate); median of per-round ratios and their spread; JSON out.

    python benchmarks/overhead.py --pairs 7 --out benchmarks/results/overhead_tiny_cpu.json
    python benchmarks/overhead.py --testbed qwen2.5-coder-0.5b-instruct --pairs 5 \\
        --out benchmarks/results/overhead_qwen05b_cpu.json
"""

from __future__ import annotations

import argparse
import json
import platform
import sys
from pathlib import Path

import torch

from guardrail import calibrate
from guardrail.bench import format_row, overhead
from guardrail.defaults import default_calibration_set
from guardrail.testing.tiny import build_tiny


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--family", default="qwen2", help="tiny model family (without --testbed)")
    parser.add_argument("--testbed", help="real weights from guardrail.testing.testbeds instead of a tiny model")
    parser.add_argument("--batches", type=int, nargs="+", default=[1, 8])
    parser.add_argument("--pairs", type=int, default=7, help="interleaved rounds")
    parser.add_argument("--new-tokens", type=int, default=32)
    parser.add_argument("--probe", action="store_true", help="add the probe-gated arm")
    parser.add_argument("--out", type=Path)
    args = parser.parse_args()
    if args.testbed:
        from guardrail.testing.testbeds import load
        model, tokenizer = load(args.testbed)
    else:
        model, tokenizer = build_tiny(args.family, seed=0)
    harmful, safe = default_calibration_set()
    artifact = calibrate(model, tokenizer, harmful, safe)
    probe = None
    if args.probe:
        from guardrail.probe import fit_probe
        probe = fit_probe(model, tokenizer, harmful, safe)
    name = args.testbed or args.family
    results = [overhead(model, tokenizer, artifact, harmful + safe, batch=b, rounds=args.pairs,
                        new_tokens=args.new_tokens, probe=probe) for b in args.batches]
    for r in results:
        print(format_row(name, r))
    if args.out:
        meta = {"model": name, "machine": platform.machine(), "torch": torch.__version__,
                "threads": torch.get_num_threads(), "command": "python " + " ".join(sys.argv)}
        args.out.write_text(json.dumps({"meta": meta, "results": results}, indent=2) + "\n")


if __name__ == "__main__":
    main()
