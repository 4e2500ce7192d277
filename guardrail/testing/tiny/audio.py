"""``tiny_audio``: a seeded test clip for the audio families."""

from __future__ import annotations

import numpy as np

from guardrail.testing.tiny.constants import SAMPLING_RATE


def tiny_audio(seconds: float = 1.0, sr: int = SAMPLING_RATE, seed: int = 0) -> np.ndarray:
    """A float32 mono test signal: two seeded tones with a slow tremolo and a little noise, peak < 0.5."""
    rng = np.random.default_rng(seed)
    t = np.arange(int(round(seconds * sr)), dtype=np.float64) / sr
    f1, f2 = rng.uniform(180.0, 900.0, size=2)
    tremolo = 0.6 + 0.4 * np.sin(2 * np.pi * rng.uniform(1.0, 4.0) * t)
    signal = 0.25 * np.sin(2 * np.pi * f1 * t) + 0.12 * np.sin(2 * np.pi * f2 * t + rng.uniform(0, np.pi))
    signal = signal * tremolo + 0.02 * rng.standard_normal(t.shape)
    return signal.astype(np.float32)
