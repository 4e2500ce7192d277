"""A voice assistant behind the probe gate: one spoken request per turn, one decision record per answer.

The guard's probe scores each spoken request inside prefill; steering turns on only for the requests it
flags (policy `gated`), and `strict` also refuses the clearest ones without generating. Each turn prints the
answer and the decision: steered, blocked, probe score, reason.

Offline, in seconds, on a tiny random Qwen2-Audio model (its answers are noise; a clip of white noise stands
in for a harmful request and a tone for a harmless one, since a random model understands no speech):

    python examples/voice_assistant.py --tiny

On a real model, with an artifact and probe from `guardrail calibrate --model MODEL --out DIR --train-probe`:

    python examples/voice_assistant.py --model Qwen/Qwen2-Audio-7B-Instruct --artifact artifacts/qwen2-audio \
        --audio question.wav [--policy strict] [--device cuda --dtype bfloat16]
"""

from __future__ import annotations

import argparse
import tempfile
from pathlib import Path

import soundfile as sf

from guardrail import Guard, GuardResult, Policy, load_model
from guardrail.defaults import default_probe


def tiny_turns(policy: str, folder: Path) -> tuple[Guard, list[Path]]:
    """A guard on a tiny random Qwen2-Audio model, and two spoken turns written as WAV files."""
    from guardrail.testing.tiny import stand_in_request, tiny_guard

    guard = tiny_guard("qwen2_audio", policy)
    turns = []
    for name, harmful in [("noise-harmful-stand-in.wav", True), ("tone-harmless-stand-in.wav", False)]:
        clip, rate = stand_in_request("qwen2_audio", harmful)["audio"]
        sf.write(folder / name, clip, rate)
        turns.append(folder / name)
    return guard, turns


def real_guard(args: argparse.Namespace) -> Guard:
    model, processor, adapter = load_model(args.model, dtype=args.dtype, device=args.device)
    policy = Policy.load(args.policy)
    probe = args.probe or default_probe(args.artifact, policy.gate.mode)  # ARTIFACT/probe, when the gate needs one
    return Guard(model, processor, policy=policy, artifact=args.artifact, adapter=adapter, probe=probe)


def show(audio: Path, result: GuardResult) -> None:
    d = result.decision
    score = "none" if d.probe_score is None else f"{d.probe_score:.3f}"
    print(f"user (spoken): {audio.name}")
    print(f"assistant:     {result.text!r}")
    print(f"decision:      steered={d.steered} blocked={d.blocked} probe_score={score} reason={d.reason!r}\n")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--tiny", action="store_true", help="a tiny random model, offline (ignores --model)")
    parser.add_argument("--model", help="model directory or hub id")
    parser.add_argument("--artifact", help="artifact directory (guardrail calibrate --train-probe)")
    parser.add_argument("--probe", help="probe directory (default: ARTIFACT/probe)")
    parser.add_argument("--policy", default="gated", help="shipped policy name or YAML file (default: gated)")
    parser.add_argument("--audio", nargs="+", type=Path, help="spoken requests, one WAV (or FLAC...) per turn")
    parser.add_argument("--text", default="Please answer the question in the audio.")
    parser.add_argument("--max-new-tokens", type=int, default=64)
    parser.add_argument("--device", help="e.g. cuda (default: where transformers loads it)")
    parser.add_argument("--dtype", default="auto", choices=["auto", "float32", "bfloat16", "float16"])
    args = parser.parse_args()
    if not args.tiny and not (args.model and args.artifact and args.audio):
        parser.error("give --tiny, or --model, --artifact and --audio")

    with tempfile.TemporaryDirectory() as folder:
        guard, turns = tiny_turns(args.policy, Path(folder)) if args.tiny else (real_guard(args), args.audio)
        print(f"policy {guard.policy.name!r}, gate {guard.policy.gate.mode}\n")
        for audio in turns:
            show(audio, guard.generate(audio=str(audio), text=args.text, max_new_tokens=args.max_new_tokens))


if __name__ == "__main__":
    main()
