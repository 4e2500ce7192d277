"""`guardrail export-gguf ARTIFACT OUT.gguf` and `guardrail import-gguf IN.gguf OUT_DIR --model M`: steering
artifacts as llama.cpp control vectors and back (`guardrail.steering.gguf`; needs the gguf extra)."""

from __future__ import annotations

import argparse
from typing import Any

from guardrail.cli.options import add_placement, load_policy, placement


def add_interop_commands(sub: Any) -> None:
    """Register `export-gguf` and `import-gguf` on the `guardrail` parser's subparsers."""
    export = sub.add_parser(
        "export-gguf",
        help="write an artifact's steering deltas (alpha * v') as a llama.cpp control vector (--control-vector)",
    )
    export.add_argument("artifact", metavar="ARTIFACT", help="artifact directory")
    export.add_argument("out", metavar="OUT.gguf", help="control vector file to write")
    export.add_argument("--policy", help="policy whose steering section (alpha, layers, safe_rank) to use")
    export.add_argument("--alpha", type=float, default=None, help="steering strength (default: the policy's)")
    export.set_defaults(func=export_command)

    imp = sub.add_parser("import-gguf", help="turn a llama.cpp control vector into an artifact for a model")
    imp.add_argument("source", metavar="IN.gguf", help="control vector file")
    imp.add_argument("out", metavar="OUT_DIR", help="artifact directory to write")
    imp.add_argument("--model", required=True, help="model directory or hub id the vector was made for")
    imp.add_argument("--adapter", help="adapter name, when the config does not say")
    add_placement(imp, from_policy=False)
    imp.set_defaults(func=import_command)


def export_command(args: argparse.Namespace) -> int:
    from guardrail.steering.artifact import SteeringArtifact
    from guardrail.steering.gguf import export_control_vector

    steering = load_policy(args.policy).steering
    alpha = steering.alpha if args.alpha is None else args.alpha
    artifact = SteeringArtifact.load(args.artifact)
    layers = None if steering.layers == "all" else list(steering.layers)
    vector = export_control_vector(artifact, args.out, alpha, layers, steering.safe_rank, steering.safe_strength)
    print(
        f"wrote {len(vector.directions)} directions (layers {min(vector.directions)}-{max(vector.directions)}, "
        f"alpha {alpha:g}) to {args.out}; llama.cpp adds them at every position: --control-vector {args.out}"
    )
    return 0


def import_command(args: argparse.Namespace) -> int:
    from guardrail.models.loading import load_model
    from guardrail.steering.gguf import artifact_from_control_vector, read_control_vector

    vector = read_control_vector(args.source)  # read (and checked) before the model loads
    model, _, adapter = load_model(args.model, adapter=args.adapter, **placement(args))
    artifact = artifact_from_control_vector(vector, model, adapter.decoder_layers(model), adapter.name, args.source)
    print(
        f"wrote artifact {artifact.id} ({len(vector.directions)} directions) to {artifact.save(args.out)}; "
        "steer with alpha 1 and safe_rank 0 to add the file's vectors"
    )
    return 0
