"""Builders of the newer families (transformers 5.2x): the real model classes with tiny configs, and their
processors. The shared shapes and helpers are in ``families``."""

from __future__ import annotations

from typing import Any

from transformers import (
    GlmAsrConfig,
    GlmAsrForConditionalGeneration,
    GlmAsrProcessor,
    GraniteSpeechPlusConfig,
    GraniteSpeechPlusForConditionalGeneration,
    GraniteSpeechProcessor,
    MusicFlamingoConfig,
    MusicFlamingoForConditionalGeneration,
    MusicFlamingoProcessor,
    NemotronH_Omni_Reasoning_V3,
    NemotronH_Omni_Reasoning_V3_Config,
    ParakeetFeatureExtractor,
    PreTrainedModel,
    PreTrainedTokenizerFast,
    Qwen3OmniMoeThinkerConfig,
    Qwen3OmniMoeThinkerForConditionalGeneration,
)

from guardrail.testing.tiny.constants import HIDDEN
from guardrail.testing.tiny.families import lm_config, whisper_encoder
from guardrail.testing.tiny.features import TorchMelGraniteSpeechFeatureExtractor, whisper_features
from guardrail.testing.tiny.processors import (
    AudioOnlyNemotronHOmniProcessor,
    AudioOnlyQwen3OmniMoeProcessor,
    NoVisionSlot,
)
from guardrail.testing.tiny.templates import (
    AUDIOFLAMINGO3_TEMPLATE,
    GLMASR_TEMPLATE,
    GRANITE_SPEECH_TEMPLATE,
    NEMOTRON_H_OMNI_TEMPLATE,
    QWEN3_OMNI_MOE_TEMPLATE,
)
from guardrail.testing.tiny.tokenizer import token_ids


def build_qwen3_omni_moe(tok: PreTrainedTokenizerFast) -> tuple[PreTrainedModel, Any]:
    """Qwen3-Omni thinker: MoE decoder layers (4 experts, 2 per token), Whisper-style audio encoder, an unused
    1-layer vision tower; the real ``Qwen3OmniMoeProcessor`` with empty image/video slots."""
    rope = {"rope_type": "default", "rope_theta": 1e6, "mrope_section": [2, 3, 3], "interleaved": True}
    text = lm_config(
        tok,
        ["<|im_end|>"],
        rope_parameters=rope,  # mrope_section sums to head_dim / 2 = 8
        head_dim=HIDDEN // 4,
        moe_intermediate_size=32,
        num_experts=4,
        num_experts_per_tok=2,
    )
    # get_rope_index reads config.vision_start_token_id, which the config class does not declare (extra
    # keyword arguments become attributes)
    config = Qwen3OmniMoeThinkerConfig(  # type: ignore[call-arg]
        audio_config={
            "d_model": HIDDEN,
            "encoder_layers": 2,
            "encoder_attention_heads": 4,
            "encoder_ffn_dim": 128,
            "num_mel_bins": 128,
            "max_source_positions": 1500,
            "n_window": 50,
            "output_dim": HIDDEN,
            "downsample_hidden_size": 32,
        },
        vision_config={
            "depth": 1,
            "hidden_size": 32,
            "intermediate_size": 64,
            "num_heads": 2,
            "out_hidden_size": HIDDEN,
            "deepstack_visual_indexes": [0],
        },
        text_config=text,
        audio_token_id=tok.audio_token_id,
        image_token_id=tok.image_token_id,
        video_token_id=tok.video_token_id,
        audio_start_token_id=token_ids(tok, "<|audio_start|>")[0],
        vision_start_token_id=token_ids(tok, "<|vision_start|>")[0],
        user_token_id=token_ids(tok, "user")[0],
    )
    processor = AudioOnlyQwen3OmniMoeProcessor(
        image_processor=NoVisionSlot(),
        video_processor=NoVisionSlot(),
        feature_extractor=whisper_features(),
        tokenizer=tok,
        chat_template=QWEN3_OMNI_MOE_TEMPLATE,
    )
    return Qwen3OmniMoeThinkerForConditionalGeneration(config), processor


def build_granite_speech_plus(tok: PreTrainedTokenizerFast) -> tuple[PreTrainedModel, Any]:
    """Granite Speech Plus: Granite Speech's conformer encoder whose layer-1 output is concatenated with its last
    (``cat_hidden_layers``), Q-Former projector, Granite LM; the real ``GraniteSpeechProcessor``."""
    config = GraniteSpeechPlusConfig(
        text_config={"model_type": "granite", **lm_config(tok, ["<|end_of_text|>"])},
        encoder_config={
            "input_dim": 160,  # 80 mel bins, frames stacked in pairs
            "num_layers": 2,
            "hidden_dim": HIDDEN,
            "feedforward_mult": 2,
            "num_heads": 4,
            "dim_head": 16,
            "output_dim": 42,
            "context_size": 200,
            "max_pos_emb": 512,
            "conv_kernel_size": 15,
            "cat_hidden_layers": [1],
        },
        projector_config={
            "model_type": "blip_2_qformer",
            "hidden_size": HIDDEN,
            "num_hidden_layers": 1,
            "num_attention_heads": 4,
            "intermediate_size": 128,
            "encoder_hidden_size": 2 * HIDDEN,  # hidden_dim * (len(cat_hidden_layers) + 1)
        },
        audio_token_index=tok.audio_token_id,
        has_lora_adapter=False,  # a real checkpoint may enable a LoRA (peft) when audio is present
    )
    processor = GraniteSpeechProcessor(
        audio_processor=TorchMelGraniteSpeechFeatureExtractor(), tokenizer=tok, chat_template=GRANITE_SPEECH_TEMPLATE
    )
    return GraniteSpeechPlusForConditionalGeneration(config), processor


def build_musicflamingo(tok: PreTrainedTokenizerFast) -> tuple[PreTrainedModel, Any]:
    """Music Flamingo: Audio Flamingo 3's Whisper-style encoder with rotary time embeddings, Qwen2 LM, the real
    ``MusicFlamingoProcessor`` (``<|sound_bos|>`` + ``<sound>`` x n + ``<|sound_eos|>`` per clip)."""
    config = MusicFlamingoConfig(
        audio_config=whisper_encoder(
            model_type="audioflamingo3_encoder",  # the config reads the key before filling its default
            hidden_size=HIDDEN,
            num_hidden_layers=2,
            num_attention_heads=4,
            intermediate_size=128,
        ),
        text_config={"model_type": "qwen2", **lm_config(tok, ["<|im_end|>"])},
        audio_token_id=token_ids(tok, "<sound>")[0],
        audio_bos_token_id=token_ids(tok, "<|sound_bos|>")[0],
        audio_eos_token_id=token_ids(tok, "<|sound_eos|>")[0],
    )
    processor = MusicFlamingoProcessor(
        feature_extractor=whisper_features(), tokenizer=tok, chat_template=AUDIOFLAMINGO3_TEMPLATE
    )
    return MusicFlamingoForConditionalGeneration(config), processor


# Nemotron 3 Nano's hybrid pattern in miniature: Mamba-2, MoE, attention, MoE ("ME*E").
NEMOTRON_H_LAYER_TYPES: tuple[str, ...] = ("linear_attention", "moe", "full_attention", "moe")


def build_nemotron_h_omni(tok: PreTrainedTokenizerFast) -> tuple[PreTrainedModel, Any]:
    """Nemotron 3 Nano Omni: hybrid Mamba-2 / attention / MoE NemotronH LM (one layer of each kind, plus a
    second MoE), Parakeet conformer audio encoder with an MLP projector, an unused 1-layer RADIO vision tower;
    the real ``NemotronH_Omni_Reasoning_V3Processor`` with ``ParakeetFeatureExtractor`` and empty image/video
    slots. The Mamba mixers run transformers' pure-torch path (no mamba-ssm / causal-conv1d kernels)."""
    text = lm_config(
        tok,
        ["<|im_end|>"],
        model_type="nemotron_h",
        layers_block_type=list(NEMOTRON_H_LAYER_TYPES),
        head_dim=HIDDEN // 4,
        mamba_num_heads=4,
        mamba_head_dim=16,
        ssm_state_size=16,
        n_groups=2,
        chunk_size=16,
        n_routed_experts=4,
        num_experts_per_tok=2,
        moe_intermediate_size=32,
        moe_shared_expert_intermediate_size=32,
    )
    text.pop("num_hidden_layers")  # derived from layers_block_type (the key is deprecated)
    config = NemotronH_Omni_Reasoning_V3_Config(
        text_config=text,
        vision_config={
            "model_type": "radio",
            "hidden_size": 32,
            "num_hidden_layers": 1,
            "num_attention_heads": 2,
            "image_size": 64,
            "max_img_size": 64,
            "num_cls_tokens": 1,
            "num_registers": 0,
            "video_temporal_patch_size": 2,  # must equal the top-level value
        },
        # the projector's keys are not declared by ParakeetEncoderConfig (extra keywords become attributes)
        audio_config={
            "hidden_size": HIDDEN,
            "num_hidden_layers": 2,
            "num_attention_heads": 4,
            "intermediate_size": 128,
            "subsampling_conv_channels": 16,
            "num_mel_bins": 80,
            "projection_hidden_size": HIDDEN,
            "projection_bias": False,
        },
        vision_hidden_size=32,
        projector_hidden_size=HIDDEN,
        image_token_id=tok.image_token_id,
        audio_token_id=tok.audio_token_id,
    )
    processor = AudioOnlyNemotronHOmniProcessor(
        image_processor=NoVisionSlot(),
        video_processor=NoVisionSlot(),
        tokenizer=tok,
        feature_extractor=ParakeetFeatureExtractor(),
        chat_template=NEMOTRON_H_OMNI_TEMPLATE,
    )
    return NemotronH_Omni_Reasoning_V3(config), processor


def build_glmasr(tok: PreTrainedTokenizerFast) -> tuple[PreTrainedModel, Any]:
    """GLM-ASR (an LLM-based transcription model): Whisper-style encoder with rotary embeddings, a projector that
    merges 4 frames per token, Llama LM; the real ``GlmAsrProcessor`` (30 s windows, ``<|pad|>`` x n per clip)."""
    config = GlmAsrConfig(
        audio_config={
            "hidden_size": HIDDEN,
            "intermediate_size": 128,
            "num_hidden_layers": 2,
            "num_attention_heads": 4,
            "num_mel_bins": 128,
        },
        text_config=lm_config(
            tok, ["<|endoftext|>"], model_type="llama", rope_parameters={"rope_theta": 1e4, "rope_type": "default"}
        ),
        audio_token_id=token_ids(tok, "<|pad|>")[0],
    )
    processor = GlmAsrProcessor(feature_extractor=whisper_features(), tokenizer=tok, chat_template=GLMASR_TEMPLATE)
    return GlmAsrForConditionalGeneration(config), processor
