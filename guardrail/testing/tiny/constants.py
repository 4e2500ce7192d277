"""The families the tiny models cover and the shapes they share."""

from __future__ import annotations

AUDIO_FAMILIES: tuple[str, ...] = (
    "qwen2_audio",
    "qwen2_5_omni",
    "voxtral",
    "granite_speech",
    "phi4_multimodal",
    "audioflamingo3",
    "qwen3_omni_moe",
    "granite_speech_plus",
    "musicflamingo",
    "nemotron_h_omni",
    "glmasr",
)
TEXT_FAMILIES: tuple[str, ...] = ("qwen2", "llama")
FAMILIES: tuple[str, ...] = AUDIO_FAMILIES + TEXT_FAMILIES

SAMPLING_RATE = 16_000
NUM_LAYERS = 4  # decoder layers of every tiny language model
HIDDEN = 64
