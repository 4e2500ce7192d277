"""The families the tiny models cover and the shapes they share."""

from __future__ import annotations

FAMILIES: tuple[str, ...] = (
    "qwen2_audio",
    "qwen2_5_omni",
    "voxtral",
    "granite_speech",
    "phi4_multimodal",
    "audioflamingo3",
    "qwen2",
    "llama",
)
AUDIO_FAMILIES: tuple[str, ...] = FAMILIES[:6]
TEXT_FAMILIES: tuple[str, ...] = FAMILIES[6:]

SAMPLING_RATE = 16_000
NUM_LAYERS = 4  # decoder layers of every tiny language model
HIDDEN = 64
