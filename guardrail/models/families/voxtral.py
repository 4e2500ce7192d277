"""Voxtral: its processor reads audio from base64/path/url content blocks only."""

from __future__ import annotations

import base64
import io
from typing import Any

import numpy as np
import soundfile as sf

from guardrail.models.adapter import Adapter


class VoxtralAdapter(Adapter):
    def audio_block(self, audio: np.ndarray, sampling_rate: int) -> dict[str, Any]:
        buffer = io.BytesIO()
        # 32-bit float WAV: lossless for the float32 clip the guard already resampled.
        sf.write(buffer, audio, sampling_rate, format="WAV", subtype="FLOAT")
        return {"type": "audio", "base64": base64.b64encode(buffer.getvalue()).decode("ascii")}
