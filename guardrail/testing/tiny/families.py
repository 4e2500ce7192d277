"""Per family: the tiny config of the family's real ``transformers`` model class, and its processor."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from transformers import (
    AudioFlamingo3Config,
    AudioFlamingo3ForConditionalGeneration,
    AudioFlamingo3Processor,
    GraniteSpeechConfig,
    GraniteSpeechForConditionalGeneration,
    GraniteSpeechProcessor,
    LlamaConfig,
    LlamaForCausalLM,
    Phi4MultimodalConfig,
    Phi4MultimodalFeatureExtractor,
    Phi4MultimodalForCausalLM,
    PreTrainedModel,
    PreTrainedTokenizerFast,
    Qwen2_5OmniThinkerConfig,
    Qwen2_5OmniThinkerForConditionalGeneration,
    Qwen2AudioConfig,
    Qwen2AudioForConditionalGeneration,
    Qwen2AudioProcessor,
    Qwen2Config,
    Qwen2ForCausalLM,
    VoxtralConfig,
    VoxtralForConditionalGeneration,
)

from guardrail.testing.tiny.constants import HIDDEN, NUM_LAYERS
from guardrail.testing.tiny.features import TorchMelGraniteSpeechFeatureExtractor, whisper_features
from guardrail.testing.tiny.processors import (
    AudioOnlyPhi4MultimodalProcessor,
    AudioOnlyQwen2_5OmniProcessor,
    HandBuiltVoxtralProcessor,
    NoVisionSlot,
)
from guardrail.testing.tiny.templates import (
    AUDIOFLAMINGO3_TEMPLATE,
    GRANITE_SPEECH_TEMPLATE,
    PHI4_MULTIMODAL_TEMPLATE,
    QWEN2_5_OMNI_TEMPLATE,
    QWEN2_AUDIO_TEMPLATE,
)
from guardrail.testing.tiny.tokenizer import token_ids

# Shared shape of every tiny language model (Qwen2-, Llama-, Granite- and Phi-style configs alike).
_TEXT_CONFIG_COMMON: dict[str, Any] = {
    "hidden_size": HIDDEN,
    "intermediate_size": 2 * HIDDEN,
    "num_hidden_layers": NUM_LAYERS,
    "num_attention_heads": 4,
    "num_key_value_heads": 2,
    "max_position_embeddings": 8192,
}


def lm_config(tok: PreTrainedTokenizerFast, eos: Sequence[str], **overrides: Any) -> dict[str, Any]:
    """The language model's config keys: the shared shape, `tok`'s vocabulary and special ids, `overrides`."""
    cfg: dict[str, Any] = {
        **_TEXT_CONFIG_COMMON,
        "vocab_size": len(tok),
        "pad_token_id": tok.pad_token_id,
        "eos_token_id": token_ids(tok, *eos)[0],
    }
    if tok.bos_token is not None:
        cfg["bos_token_id"] = tok.bos_token_id
    cfg.update(overrides)
    return cfg


def whisper_encoder(**names: Any) -> dict[str, Any]:
    """A 2-layer Whisper-style audio encoder over 128 mel bins, using the config's own key names."""
    return {**names, "num_mel_bins": 128, "max_source_positions": 1500}


def build_qwen2_audio(tok: PreTrainedTokenizerFast) -> tuple[PreTrainedModel, Any]:
    """Qwen2-Audio: Whisper-style encoder, Qwen2 LM, the real ``Qwen2AudioProcessor``."""
    config = Qwen2AudioConfig(
        audio_config=whisper_encoder(d_model=HIDDEN, encoder_layers=2, encoder_attention_heads=4, encoder_ffn_dim=128),
        text_config={"model_type": "qwen2", **lm_config(tok, ["<|im_end|>"])},
        audio_token_index=tok.audio_token_id,
    )
    processor = Qwen2AudioProcessor(
        feature_extractor=whisper_features(), tokenizer=tok, chat_template=QWEN2_AUDIO_TEMPLATE
    )
    return Qwen2AudioForConditionalGeneration(config), processor


def build_qwen2_5_omni(tok: PreTrainedTokenizerFast) -> tuple[PreTrainedModel, Any]:
    """Qwen2.5-Omni thinker (audio + an unused 1-layer vision tower); images and videos are refused."""
    text = lm_config(tok, ["<|im_end|>"], rope_parameters={"rope_type": "default", "rope_theta": 1e6})
    text["rope_parameters"]["mrope_section"] = [2, 3, 3]  # sums to head_dim / 2 = 8
    # the thinker reads config.vision_start/end_token_id, which its config class does not declare (extra
    # keyword arguments become attributes)
    config = Qwen2_5OmniThinkerConfig(  # type: ignore[call-arg]
        audio_config={
            "d_model": HIDDEN,
            "encoder_layers": 2,
            "encoder_attention_heads": 4,
            "encoder_ffn_dim": 128,
            "num_mel_bins": 128,
            "max_source_positions": 1500,
            "n_window": 100,
            "output_dim": HIDDEN,
        },
        vision_config={
            "depth": 1,
            "hidden_size": 32,
            "intermediate_size": 64,
            "num_heads": 2,
            "out_hidden_size": HIDDEN,
            "fullatt_block_indexes": [0],
        },
        text_config=text,
        audio_token_index=tok.audio_token_id,
        image_token_index=tok.image_token_id,
        video_token_index=tok.video_token_id,
        audio_start_token_id=token_ids(tok, "<|audio_bos|>")[0],
        audio_end_token_id=token_ids(tok, "<|audio_eos|>")[0],
        vision_start_token_id=token_ids(tok, "<|vision_bos|>")[0],
        vision_end_token_id=token_ids(tok, "<|vision_eos|>")[0],
        user_token_id=token_ids(tok, "user")[0],
    )
    processor = AudioOnlyQwen2_5OmniProcessor(
        image_processor=NoVisionSlot(),
        video_processor=NoVisionSlot(),
        feature_extractor=whisper_features(),
        tokenizer=tok,
        chat_template=QWEN2_5_OMNI_TEMPLATE,
    )
    return Qwen2_5OmniThinkerForConditionalGeneration(config), processor


def build_voxtral(tok: PreTrainedTokenizerFast) -> tuple[PreTrainedModel, Any]:
    """Voxtral: Whisper-style encoder, Llama LM, ``HandBuiltVoxtralProcessor`` (no mistral-common)."""
    config = VoxtralConfig(
        # the projector reads the encoder output 4 frames at a time: intermediate_size must be 4 * hidden
        audio_config={
            "hidden_size": HIDDEN,
            "intermediate_size": 4 * HIDDEN,
            "num_hidden_layers": 2,
            "num_attention_heads": 4,
            "num_mel_bins": 128,
            "max_source_positions": 1500,
        },
        text_config={"model_type": "llama", **lm_config(tok, ["</s>"], head_dim=HIDDEN // 4, rope_theta=1e6)},
        audio_token_id=24,
    )
    return VoxtralForConditionalGeneration(config), HandBuiltVoxtralProcessor(whisper_features(), tok)


def build_granite_speech(tok: PreTrainedTokenizerFast) -> tuple[PreTrainedModel, Any]:
    """Granite Speech: conformer encoder, Q-Former projector, Granite LM, torch-only mel features."""
    config = GraniteSpeechConfig(
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
        },
        projector_config={
            "model_type": "blip_2_qformer",
            "hidden_size": HIDDEN,
            "num_hidden_layers": 1,
            "num_attention_heads": 4,
            "intermediate_size": 128,
            "encoder_hidden_size": HIDDEN,
        },
        audio_token_index=tok.audio_token_id,
        has_lora_adapter=False,  # the real checkpoint enables a LoRA (peft) when audio is present
    )
    processor = GraniteSpeechProcessor(
        audio_processor=TorchMelGraniteSpeechFeatureExtractor(), tokenizer=tok, chat_template=GRANITE_SPEECH_TEMPLATE
    )
    return GraniteSpeechForConditionalGeneration(config), processor


def build_phi4_multimodal(tok: PreTrainedTokenizerFast) -> tuple[PreTrainedModel, Any]:
    """Phi-4-multimodal: conformer audio encoder, 1-layer vision tower; images are refused."""
    config = Phi4MultimodalConfig(
        **lm_config(tok, ["<|endoftext|>"]),
        audio_config={
            "num_blocks": 2,
            "hidden_size": HIDDEN,
            "num_attention_heads": 4,
            "intermediate_size": 128,
            "depthwise_separable_out_channel": HIDDEN,
            "ext_pw_out_channel": HIDDEN,
            "nemo_conv_channels": HIDDEN,
            "audio_token_id": tok.audio_token_id,
        },
        vision_config={
            "num_hidden_layers": 1,
            "hidden_size": 32,
            "intermediate_size": 64,
            "num_attention_heads": 2,
            "crop_size": 16,
            "image_token_id": tok.image_token_id,
        },
    )
    processor = AudioOnlyPhi4MultimodalProcessor(
        image_processor=NoVisionSlot(),
        audio_processor=Phi4MultimodalFeatureExtractor(),
        tokenizer=tok,
        chat_template=PHI4_MULTIMODAL_TEMPLATE,
    )
    return Phi4MultimodalForCausalLM(config), processor


def build_audioflamingo3(tok: PreTrainedTokenizerFast) -> tuple[PreTrainedModel, Any]:
    """Audio Flamingo 3: Whisper-style encoder, Qwen2 LM, the real ``AudioFlamingo3Processor``."""
    config = AudioFlamingo3Config(
        audio_config=whisper_encoder(
            hidden_size=HIDDEN, num_hidden_layers=2, num_attention_heads=4, intermediate_size=128
        ),
        text_config={"model_type": "qwen2", **lm_config(tok, ["<|im_end|>"])},
        audio_token_id=token_ids(tok, "<sound>")[0],
    )
    processor = AudioFlamingo3Processor(
        feature_extractor=whisper_features(), tokenizer=tok, chat_template=AUDIOFLAMINGO3_TEMPLATE
    )
    return AudioFlamingo3ForConditionalGeneration(config), processor


def build_qwen2(tok: PreTrainedTokenizerFast) -> tuple[PreTrainedModel, Any]:
    """A text-only Qwen2 causal LM; its processor is the tokenizer."""
    return Qwen2ForCausalLM(Qwen2Config(**lm_config(tok, ["<|im_end|>"]))), tok


def build_llama(tok: PreTrainedTokenizerFast) -> tuple[PreTrainedModel, Any]:
    """A text-only Llama causal LM; its processor is the tokenizer."""
    return LlamaForCausalLM(LlamaConfig(**lm_config(tok, ["<|eot_id|>"]))), tok
