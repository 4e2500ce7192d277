"""Tiny random audio-language models for fast offline tests, yours and this package's.

For each supported family, ``build_tiny`` builds the family's real ``transformers`` model class from its
config, with 4 decoder layers 64 wide and seeded random weights, plus a working processor around a
byte-level BPE tokenizer trained on a small embedded corpus. Nothing is downloaded: every tokenizer,
feature extractor and chat template is made here. Chat templates follow each family's published template;
``docs/families.md`` records how each family is called. The same seed gives the same weights.

Usage::

    from guardrail.testing.tiny import build_tiny, tiny_audio

    model, processor = build_tiny("qwen2_audio")  # any name in FAMILIES; seed=0 by default
    audio = tiny_audio(1.0)  # a seeded 1 s clip at SAMPLING_RATE
    guard = tiny_guard("qwen2_audio", policy="gated")  # calibrated, with a probe: a ready Guard

Modules: ``constants`` (family names, shapes), ``templates`` (chat templates), ``tokenizer`` (tiny
tokenizers), ``features`` (feature extractors), ``processors`` (offline processors), ``families`` and ``newer`` (one
builder per family), ``build`` (``build_tiny`` and the registry), ``audio`` (``tiny_audio``), ``guard``
(``tiny_guard`` and its stand-in requests), ``save`` (``save_tiny``; ``python -m guardrail.testing.tiny``).
"""

from __future__ import annotations

from guardrail.testing.tiny.audio import tiny_audio
from guardrail.testing.tiny.build import build_tiny
from guardrail.testing.tiny.constants import AUDIO_FAMILIES, FAMILIES, HIDDEN, NUM_LAYERS, SAMPLING_RATE, TEXT_FAMILIES
from guardrail.testing.tiny.features import TorchMelGraniteSpeechFeatureExtractor
from guardrail.testing.tiny.guard import stand_in_request, stand_in_set, tiny_guard, tiny_noise
from guardrail.testing.tiny.processors import (
    AudioOnlyNemotronHOmniProcessor,
    AudioOnlyPhi4MultimodalProcessor,
    AudioOnlyQwen2_5OmniProcessor,
    AudioOnlyQwen3OmniMoeProcessor,
    HandBuiltVoxtralProcessor,
)
from guardrail.testing.tiny.save import save_tiny
from guardrail.testing.tiny.templates import (
    AUDIOFLAMINGO3_TEMPLATE,
    GLMASR_TEMPLATE,
    GRANITE_SPEECH_TEMPLATE,
    LLAMA_TEMPLATE,
    NEMOTRON_H_OMNI_TEMPLATE,
    PHI4_MULTIMODAL_TEMPLATE,
    QWEN2_5_OMNI_TEMPLATE,
    QWEN2_AUDIO_TEMPLATE,
    QWEN2_TEMPLATE,
    QWEN3_OMNI_MOE_TEMPLATE,
    VOXTRAL_TEMPLATE,
    qwen2_audio_template,
)
from guardrail.testing.tiny.tokenizer import tiny_tokenizer

__all__ = [
    "AUDIOFLAMINGO3_TEMPLATE",
    "AUDIO_FAMILIES",
    "FAMILIES",
    "GLMASR_TEMPLATE",
    "GRANITE_SPEECH_TEMPLATE",
    "HIDDEN",
    "LLAMA_TEMPLATE",
    "NEMOTRON_H_OMNI_TEMPLATE",
    "NUM_LAYERS",
    "PHI4_MULTIMODAL_TEMPLATE",
    "QWEN2_5_OMNI_TEMPLATE",
    "QWEN2_AUDIO_TEMPLATE",
    "QWEN2_TEMPLATE",
    "QWEN3_OMNI_MOE_TEMPLATE",
    "SAMPLING_RATE",
    "TEXT_FAMILIES",
    "VOXTRAL_TEMPLATE",
    "AudioOnlyNemotronHOmniProcessor",
    "AudioOnlyPhi4MultimodalProcessor",
    "AudioOnlyQwen2_5OmniProcessor",
    "AudioOnlyQwen3OmniMoeProcessor",
    "HandBuiltVoxtralProcessor",
    "TorchMelGraniteSpeechFeatureExtractor",
    "build_tiny",
    "qwen2_audio_template",
    "save_tiny",
    "stand_in_request",
    "stand_in_set",
    "tiny_audio",
    "tiny_guard",
    "tiny_noise",
    "tiny_tokenizer",
]
