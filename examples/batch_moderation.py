"""Batch moderation: answer a JSON-lines file of requests with `Guard.generate_batch`, one result line each.

Each input line is one request: {"id": "r1", "text": "...", "audio": "clips/q1.wav"} ("audio" optional, a
path relative to the requests file; "id" optional, the line number by default). Each output line is
{"id": ..., "answer": ..., "steered": ..., "blocked": ..., "decision": {...}}, the decision being the
guard's full record (`Decision.to_dict()`: probe score, reason, layers, alpha, token counts, timings...).
At the end the script prints how many requests were steered, blocked and answered unsteered.

Offline, in seconds, on a tiny random Qwen2 text model under the `strict` policy (answers are noise; the
requests are stand-ins written to the output folder: harmful questions shouted in capitals, which a random
model can tell apart, and harmless ones):

    python examples/batch_moderation.py --tiny --out moderation.jsonl

On a real model, with an artifact and probe from `guardrail calibrate --model MODEL --out DIR --train-probe`:

    python examples/batch_moderation.py --model Qwen/Qwen2-Audio-7B-Instruct --artifact artifacts/qwen2-audio \
        --requests requests.jsonl --out moderation.jsonl [--policy gated] [--device cuda --dtype bfloat16]
"""

from __future__ import annotations

import argparse
import json
from collections import Counter
from pathlib import Path
from typing import Any

from guardrail import Guard, Policy, load_model
from guardrail.defaults import default_probe


def read_requests(path: Path) -> list[dict[str, Any]]:
    """The file's requests, audio paths resolved against the file's folder."""
    requests = []
    for n, line in enumerate(path.read_text(encoding="utf-8").splitlines(), start=1):
        if line.strip():
            item = json.loads(line)
            audio = item.get("audio")
            requests.append(
                {"id": item.get("id", n), "text": item.get("text", ""), "audio": audio and str(path.parent / audio)}
            )
    return requests


def tiny_setup(policy: str, folder: Path) -> tuple[Guard, Path]:
    """A guard on a tiny random Qwen2 model, and a requests file of stand-ins (4 harmful, 4 harmless)."""
    from guardrail.testing.tiny import stand_in_request, tiny_guard

    lines = [
        {"id": f"{'harmful' if harmful else 'harmless'}-{i}", **stand_in_request("qwen2", harmful, i)}
        for harmful in (True, False)
        for i in range(4)
    ]
    path = folder / "requests.jsonl"
    path.write_text("".join(json.dumps(line) + "\n" for line in lines), encoding="utf-8")
    return tiny_guard("qwen2", policy), path


def real_guard(args: argparse.Namespace) -> Guard:
    model, processor, adapter = load_model(args.model, dtype=args.dtype, device=args.device)
    policy = Policy.load(args.policy)
    probe = args.probe or default_probe(args.artifact, policy.gate.mode)  # ARTIFACT/probe, when the gate needs one
    return Guard(model, processor, policy=policy, artifact=args.artifact, adapter=adapter, probe=probe)


def moderate(guard: Guard, requests: list[dict[str, Any]], out: Path, max_new_tokens: int) -> Counter[str]:
    """Answer `requests` in batches of the policy's `limits.max_batch`; write one JSON line per result."""
    counts: Counter[str] = Counter()
    size = guard.policy.limits.max_batch
    with out.open("w", encoding="utf-8") as sink:
        for start in range(0, len(requests), size):
            batch = requests[start : start + size]
            results = guard.generate_batch(
                [{"audio": r["audio"], "text": r["text"]} for r in batch], max_new_tokens=max_new_tokens
            )
            for request, result in zip(batch, results):
                record = {"id": request["id"], "answer": result.text, "steered": result.steered}
                record |= {"blocked": result.blocked, "decision": result.decision.to_dict()}
                sink.write(json.dumps(record) + "\n")
                counts["blocked" if result.blocked else "steered" if result.steered else "answered unsteered"] += 1
    return counts


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--tiny", action="store_true", help="a tiny random model and stand-in requests, offline")
    parser.add_argument("--model", help="model directory or hub id")
    parser.add_argument("--artifact", help="artifact directory (guardrail calibrate --train-probe)")
    parser.add_argument("--probe", help="probe directory (default: ARTIFACT/probe)")
    parser.add_argument("--policy", default="strict", help="shipped policy name or YAML file (default: strict)")
    parser.add_argument("--requests", type=Path, help="JSON-lines file of requests")
    parser.add_argument("--out", type=Path, default=Path("moderation.jsonl"), help="JSON-lines file to write")
    parser.add_argument("--max-new-tokens", type=int, default=64)
    parser.add_argument("--device", help="e.g. cuda (default: where transformers loads it)")
    parser.add_argument("--dtype", default="auto", choices=["auto", "float32", "bfloat16", "float16"])
    args = parser.parse_args()
    if not args.tiny and not (args.model and args.artifact and args.requests):
        parser.error("give --tiny, or --model, --artifact and --requests")

    args.out.parent.mkdir(parents=True, exist_ok=True)
    guard, path = tiny_setup(args.policy, args.out.parent) if args.tiny else (real_guard(args), args.requests)
    requests = read_requests(path)
    counts = moderate(guard, requests, args.out, args.max_new_tokens)
    summary = ", ".join(f"{counts[k]} {k}" for k in ("steered", "blocked", "answered unsteered"))
    print(f"{len(requests)} requests under policy {guard.policy.name!r}: {summary}; results in {args.out}")


if __name__ == "__main__":
    main()
