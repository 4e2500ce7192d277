"""The embedded-default demo: calibrate on a tiny random text model with the package's own
calibration set, then compare guarded and unguarded greedy answers on held-out questions."""

from __future__ import annotations

from typing import Any

from .calibration import calibrate
from .defaults import default_calibration_set
from .guard import Guard
from .policy import Policy

N_EVAL = 4
N_NEW = 12


def run_demo(family: str = "qwen2", alpha: float | None = None, seed: int = 0) -> dict[str, Any]:
    """Calibrate on the first 20 default pairs, evaluate on the last 4; return a report dict."""
    from .testing.tiny import AUDIO_FAMILIES, build_tiny
    if family in AUDIO_FAMILIES:
        raise ValueError(f"the demo runs text families; {family!r} takes audio (try qwen2 or llama)")
    model, tokenizer = build_tiny(family, seed=seed)
    harmful, safe = default_calibration_set()
    artifact = calibrate(model, tokenizer, harmful[:-N_EVAL], safe[:-N_EVAL])
    # A random model's residual stream is tiny next to a pretrained one's; the paper's 0.1 barely moves it.
    alpha = 4.0 if alpha is None else alpha
    guard = Guard(model, tokenizer, policy=Policy.from_dict({"name": "demo", "steering": {"alpha": alpha}}),
                  artifact=artifact)
    bare = Guard(model, tokenizer, policy=Policy.from_dict({"name": "bare", "gate": {"mode": "off"}}))
    rows = []
    for kind, questions in (("harmful", harmful[-N_EVAL:]), ("safe", safe[-N_EVAL:])):
        for question in questions:
            steered = guard.generate(text=question, max_new_tokens=N_NEW)
            plain = bare.generate(text=question, max_new_tokens=N_NEW)
            changed = sum(a != b for a, b in zip(steered.token_ids, plain.token_ids))
            changed += abs(len(steered.token_ids) - len(plain.token_ids))
            rows.append({"kind": kind, "question": question, "changed": changed,
                         "n": max(len(steered.token_ids), len(plain.token_ids)),
                         "kl": first_token_kl(guard, question)})
    vectors = guard.artifact.steering_vectors(guard.policy.steering.safe_rank, guard.policy.steering.safe_strength)
    return {"family": family, "layers": len(guard.layers), "hidden": int(vectors[0].numel()),
            "artifact_id": artifact.id, "n_harmful": len(harmful) - N_EVAL, "n_safe": len(safe) - N_EVAL,
            "alpha": alpha, "vector_norms": [float(v.norm()) for v in vectors.values()], "rows": rows,
            "hooks_left": sum(len(layer._forward_hooks) for layer in guard.layers)}


def first_token_kl(guard: Guard, text: str) -> float:
    """KL(unguarded || guarded) of the first answer token's distribution."""
    bare = Guard(guard.model, guard.processor, policy=Policy.from_dict({"gate": {"mode": "off"}}))
    plain = bare.first_token_logprobs([{"text": text}])
    steered = guard.first_token_logprobs([{"text": text}])
    return float((plain.exp() * (plain - steered)).sum())
