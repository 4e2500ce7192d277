"""``tiny_guard``: a ready `Guard` on a tiny random model, offline, in seconds: calibrated, and with a
probe when its policy gates by one. For examples and for tests of code that takes a guard.

A random model understands nothing, so the stand-in requests are chosen for what its activations can
tell apart. Audio families: "harmful" stand-ins are white-noise clips, "safe" ones tones (``tiny_audio``).
Text families: the package's own question pairs (``default_calibration_set``), the harmful one shouted (upper
case), since a random model cannot tell their meanings apart. Calibration takes the first pairs;
``stand_in_request`` gives a request of either kind that calibration did not see.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np

from guardrail.defaults import AUDIO_INSTRUCTION, TEXT_INSTRUCTION, default_calibration_set
from guardrail.errors import UnsupportedModelError
from guardrail.gate import fit_probe
from guardrail.guard import Guard
from guardrail.policy import Policy
from guardrail.steering.artifact import SteeringArtifact
from guardrail.steering.calibrate import calibrate
from guardrail.testing.tiny.audio import tiny_audio
from guardrail.testing.tiny.build import build_tiny
from guardrail.testing.tiny.constants import AUDIO_FAMILIES, FAMILIES, SAMPLING_RATE

SHIFT = 3.0  # how far steering moves each steered position; a random model's refusal vectors are short
HELD_OUT = 4  # text families: the default pairs kept out of calibration, for stand_in_request


def tiny_noise(seconds: float = 1.0, sr: int = SAMPLING_RATE, seed: int = 0) -> np.ndarray:
    """A float32 mono clip of seeded white noise, peak about 1."""
    return (0.3 * np.random.default_rng(seed).standard_normal(int(round(seconds * sr)))).astype(np.float32)


def stand_in_set(family: str, n_harmful: int = 12, n_safe: int = 24, seed: int = 0) -> tuple[list[Any], list[Any]]:
    """(harmful, safe) calibration items for a tiny model of `family` (see the module docstring).
    Text families ignore the counts and the seed: the default set without its last `HELD_OUT` pairs."""
    _check_family(family)
    if family not in AUDIO_FAMILIES:
        harmful, safe = default_calibration_set()
        return [q.upper() for q in harmful[:-HELD_OUT]], safe[:-HELD_OUT]
    seconds = lambda i: 0.6 + 0.1 * (i % 4)
    noise = [(tiny_noise(seconds(i), seed=seed + i), SAMPLING_RATE) for i in range(n_harmful)]
    tones = [(tiny_audio(seconds(i), seed=seed + 1000 + i), SAMPLING_RATE) for i in range(n_safe)]
    return noise, tones


def stand_in_request(family: str, harmful: bool, index: int = 0) -> dict[str, Any]:
    """A request of the stand-in kind, unseen in calibration: {"audio": (clip, rate), "text": ...} for an
    audio family (1 s of noise or a tone), {"text": ...} for a text family (a held-out default question)."""
    _check_family(family)
    if family in AUDIO_FAMILIES:
        clip = tiny_noise(1.0, seed=5000 + index) if harmful else tiny_audio(1.0, seed=6000 + index)
        return {"audio": (clip, SAMPLING_RATE), "text": AUDIO_INSTRUCTION}
    harmful_qs, safe_qs = default_calibration_set()
    question = (harmful_qs if harmful else safe_qs)[-HELD_OUT:][index % HELD_OUT]
    return {"text": f"{question.upper() if harmful else question} {TEXT_INSTRUCTION}"}


def tiny_guard(
    family: str = "qwen2_audio",
    policy: Policy | str | Path | None = "gated",
    *,
    seed: int = 0,
    alpha: float | None = None,
) -> Guard:
    """A `Guard` on `build_tiny(family, seed)` under `policy`, with an artifact calibrated on
    `stand_in_set(family)` and, when the policy gates by probe, a probe trained on the same items.

    `alpha` None: the policy's alpha is replaced by one that moves each steered position by about
    `SHIFT` (the paper's 0.1 would not change a random model's tokens); a policy with alpha 0 keeps 0.

    >>> guard = tiny_guard("qwen2_audio", "gated")  # doctest: +SKIP
    >>> guard.generate(**stand_in_request("qwen2_audio", harmful=True), max_new_tokens=8).steered  # doctest: +SKIP
    True
    """
    model, processor = build_tiny(family, seed=seed)
    harmful, safe = stand_in_set(family)
    resolved = Policy.of(policy).model_copy(deep=True)
    artifact = calibrate(model, processor, harmful, safe, batch_size=8)
    if alpha is None and resolved.steering.alpha != 0:
        alpha = SHIFT / _mean_norm(artifact)
    if alpha is not None:
        resolved.steering.alpha = alpha
    probe = fit_probe(model, processor, harmful, safe, folds=3, seed=seed) if resolved.gate.mode == "probe" else None
    return Guard(model, processor, policy=resolved, artifact=artifact, probe=probe)


def _mean_norm(artifact: SteeringArtifact) -> float:
    return sum(float(v.norm()) for v in artifact.refusal.values()) / len(artifact.refusal)


def _check_family(family: str) -> None:
    if family not in FAMILIES:
        raise UnsupportedModelError(f"no tiny model of family {family!r}: choose one of {', '.join(FAMILIES)}")
