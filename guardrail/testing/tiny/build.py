"""``build_tiny``: a tiny random model of a family and its processor, from the registry of builders."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import torch
from transformers import PreTrainedModel, PreTrainedTokenizerFast

from guardrail.testing.tiny.families import (
    build_audioflamingo3,
    build_granite_speech,
    build_llama,
    build_phi4_multimodal,
    build_qwen2,
    build_qwen2_5_omni,
    build_qwen2_audio,
    build_voxtral,
)
from guardrail.testing.tiny.newer import (
    build_glmasr,
    build_granite_speech_plus,
    build_musicflamingo,
    build_nemotron_h_omni,
    build_qwen3_omni_moe,
)
from guardrail.testing.tiny.tokenizer import tiny_tokenizer, token_ids

_BUILDERS: dict[str, Callable[[PreTrainedTokenizerFast], tuple[PreTrainedModel, Any]]] = {
    "qwen2_audio": build_qwen2_audio,
    "qwen2_5_omni": build_qwen2_5_omni,
    "voxtral": build_voxtral,
    "granite_speech": build_granite_speech,
    "phi4_multimodal": build_phi4_multimodal,
    "audioflamingo3": build_audioflamingo3,
    "qwen3_omni_moe": build_qwen3_omni_moe,
    "granite_speech_plus": build_granite_speech_plus,
    "musicflamingo": build_musicflamingo,
    "nemotron_h_omni": build_nemotron_h_omni,
    "glmasr": build_glmasr,
    "qwen2": build_qwen2,
    "llama": build_llama,
}

# Tokens that end generation, as in each family's generation_config (first one is the config's eos).
_STOP_TOKENS: dict[str, tuple[str, ...]] = {
    "qwen2_audio": ("<|im_end|>", "<|endoftext|>"),
    "qwen2_5_omni": ("<|im_end|>", "<|endoftext|>"),
    "voxtral": ("</s>",),
    "granite_speech": ("<|end_of_text|>",),
    "phi4_multimodal": ("<|end|>", "<|endoftext|>"),
    "audioflamingo3": ("<|im_end|>", "<|endoftext|>"),
    "qwen3_omni_moe": ("<|im_end|>", "<|endoftext|>"),
    "granite_speech_plus": ("<|end_of_text|>",),
    "musicflamingo": ("<|im_end|>", "<|endoftext|>"),
    "nemotron_h_omni": ("<|im_end|>", "</s>"),
    "glmasr": ("<|endoftext|>", "<|user|>", "<|observation|>"),
    "qwen2": ("<|im_end|>", "<|endoftext|>"),
    "llama": ("<|eot_id|>", "<|end_of_text|>", "<|eom_id|>"),
}


def build_tiny(family: str, seed: int = 0) -> tuple[PreTrainedModel, Any]:
    """A fresh tiny random model (fp32, eval mode) and its processor (the tokenizer for text families)."""
    tok = tiny_tokenizer(family)
    torch.manual_seed(seed)
    model, processor = _BUILDERS[family](tok)
    model.generation_config.pad_token_id = tok.pad_token_id
    model.generation_config.eos_token_id = token_ids(tok, *_STOP_TOKENS[family])
    if tok.bos_token is not None:
        model.generation_config.bos_token_id = tok.bos_token_id
    return model.float().eval(), processor
