"""Tiny random audio-language models for offline tests.

For each supported family this module builds the family's real ``transformers`` model class from its
config, with a few 64-wide decoder layers and seeded random weights, plus a working processor around a
byte-level BPE tokenizer trained here on a small embedded corpus. Nothing is downloaded: every tokenizer,
feature extractor and chat template is made in this file. Chat templates follow each family's published
template; ``docs/families.md`` records how each family is called.

Usage::

    model, processor = build_tiny("qwen2_audio")
    audio = tiny_audio(1.0)
"""

from __future__ import annotations

import copy
import functools
import math
from collections.abc import Callable, Sequence
from typing import Any

import numpy as np
import torch
from tokenizers import Tokenizer, decoders, models, pre_tokenizers, processors, trainers
from transformers import (
    AudioFlamingo3Config,
    AudioFlamingo3ForConditionalGeneration,
    AudioFlamingo3Processor,
    BatchFeature,
    GraniteSpeechConfig,
    GraniteSpeechFeatureExtractor,
    GraniteSpeechForConditionalGeneration,
    GraniteSpeechProcessor,
    LlamaConfig,
    LlamaForCausalLM,
    Phi4MultimodalConfig,
    Phi4MultimodalFeatureExtractor,
    Phi4MultimodalForCausalLM,
    Phi4MultimodalProcessor,
    PreTrainedTokenizerFast,
    Qwen2_5OmniProcessor,
    Qwen2_5OmniThinkerConfig,
    Qwen2_5OmniThinkerForConditionalGeneration,
    Qwen2AudioConfig,
    Qwen2AudioForConditionalGeneration,
    Qwen2AudioProcessor,
    Qwen2Config,
    Qwen2ForCausalLM,
    VoxtralConfig,
    VoxtralForConditionalGeneration,
    WhisperFeatureExtractor,
)
from transformers.audio_utils import load_audio, mel_filter_bank
from transformers.feature_extraction_sequence_utils import SequenceFeatureExtractor

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

# Training text for the tokenizers. Byte-level BPE still encodes any text; this only sets the merges.
_CORPUS: tuple[str, ...] = (
    "The quick brown fox jumps over the lazy dog.",
    "What can you hear in this audio clip?",
    "Describe the sound in one short sentence.",
    "Transcribe the input speech.",
    "Please answer the question about the recording.",
    "Is there music, speech, or noise in the background?",
    "A dog is barking while a car drives past the house.",
    "Rain falls on the roof and thunder rolls in the distance.",
    "A woman speaks calmly about the weather forecast for tomorrow.",
    "The man laughs, then a door closes and footsteps fade away.",
    "Birds sing in the morning and the wind moves through the trees.",
    "Can you tell me what language the speaker is using?",
    "How many people are talking, and what are they saying?",
    "Summarize the conversation and list the main topics.",
    "The piano plays a slow melody in a minor key.",
    "A phone rings twice before someone answers it.",
    "Translate the spoken words into French and then into German.",
    "You are a helpful assistant that listens carefully.",
    "Answer briefly and honestly. If you are not sure, say so.",
    "I cannot help with that request, but I can help with something else.",
    "Here is a short story about a cat who learned to sing.",
    "Write a poem about the ocean, the moon, and the stars.",
    "Explain how a steering vector changes the hidden state of a model.",
    "Numbers: one two three four five six seven eight nine ten 0 1 2 3 4 5 6 7 8 9.",
    "Hello, world! How are you today? I am fine, thank you.",
    "The meeting starts at nine o'clock on Monday morning.",
    "Please repeat the last word you heard in the recording.",
    "Is the speaker happy, sad, angry, or surprised?",
    "The train arrives at the station and the crowd cheers loudly.",
    "Water drips from a tap into a metal sink.",
    "Children play in the park while a bell rings from the church.",
    "Tell me a joke about computers and their users.",
    "What is the capital of France? The capital of France is Paris.",
    "A guitar and a violin play together in a small room.",
    "The engine starts, idles for a while, and then stops.",
    "Keep your answer under twenty words.",
    "The assistant should refuse harmful requests and stay polite.",
    "Good morning, good afternoon, good evening, and good night.",
    "This is a test of the emergency broadcast system.",
    "She said that the concert was wonderful and the crowd was happy.",
    # chat role names, so that each is one token as in the real vocabularies
    "system user assistant tool",
    "user assistant user assistant system user assistant",
    "The user asks and the assistant answers; the system sets the rules.",
)

# Shared shape of every tiny language model (Qwen2-, Llama-, Granite- and Phi-style configs alike).
_TEXT_CONFIG_COMMON: dict[str, Any] = {
    "hidden_size": HIDDEN,
    "intermediate_size": 2 * HIDDEN,
    "num_hidden_layers": NUM_LAYERS,
    "num_attention_heads": 4,
    "num_key_value_heads": 2,
    "max_position_embeddings": 8192,
}


# --------------------------------------------------------------------------------------------------
# Chat templates (structure of each family's published template)
# --------------------------------------------------------------------------------------------------

# Qwen2-Audio: the default template shipped in ``Qwen2AudioProcessor``.
def qwen2_audio_template(system_prompt: str = "You are a helpful assistant.") -> str:
    """Qwen2-Audio's template with `system_prompt` as the default system turn."""
    return (
        "{% set audio_count = namespace(value=0) %}"
        "{% for message in messages %}"
        "{% if loop.first and message['role'] != 'system' %}"
        "<|im_start|>system\n" + system_prompt + "<|im_end|>\n"
        "{% endif %}"
        "<|im_start|>{{ message['role'] }}\n"
        "{% if message['content'] is string %}"
        "{{ message['content'] }}<|im_end|>\n"
        "{% else %}"
        "{% for content in message['content'] %}"
        "{% if 'audio' in content or 'audio_url' in content or message['type'] == 'audio' or content['type'] == 'audio' %}"
        "{% set audio_count.value = audio_count.value + 1 %}"
        "Audio {{ audio_count.value }}: <|audio_bos|><|AUDIO|><|audio_eos|>\n"
        "{% elif 'text' in content %}"
        "{{ content['text'] }}"
        "{% endif %}"
        "{% endfor %}"
        "<|im_end|>\n"
        "{% endif %}"
        "{% endfor %}"
        "{% if add_generation_prompt %}"
        "<|im_start|>assistant\n"
        "{% endif %}"
    )


QWEN2_AUDIO_TEMPLATE = qwen2_audio_template()

# Qwen2.5-Omni (Qwen/Qwen2.5-Omni-7B chat_template.json).
QWEN2_5_OMNI_TEMPLATE = (
    "{% set audio_count = namespace(value=0) %}{% set image_count = namespace(value=0) %}"
    "{% set video_count = namespace(value=0) %}"
    "{% for message in messages %}"
    "{% if loop.first and message['role'] != 'system' %}"
    "<|im_start|>system\nYou are a helpful assistant.<|im_end|>\n"
    "{% endif %}"
    "<|im_start|>{{ message['role'] }}\n"
    "{% if message['content'] is string %}{{ message['content'] }}<|im_end|>\n"
    "{% else %}"
    "{% for content in message['content'] %}"
    "{% if content['type'] == 'image' or 'image' in content or 'image_url' in content %}"
    "{% set image_count.value = image_count.value + 1 %}"
    "{% if add_vision_id %}Picture {{ image_count.value }}: {% endif %}<|vision_bos|><|IMAGE|><|vision_eos|>"
    "{% elif content['type'] == 'audio' or 'audio' in content or 'audio_url' in content %}"
    "{% set audio_count.value = audio_count.value + 1 %}"
    "{% if add_audio_id %}Audio {{ audio_count.value }}: {% endif %}<|audio_bos|><|AUDIO|><|audio_eos|>"
    "{% elif content['type'] == 'video' or 'video' in content %}"
    "{% set video_count.value = video_count.value + 1 %}"
    "{% if add_vision_id %}Video {{ video_count.value }}: {% endif %}<|vision_bos|><|VIDEO|><|vision_eos|>"
    "{% elif 'text' in content %}{{ content['text'] }}"
    "{% endif %}"
    "{% endfor %}<|im_end|>\n"
    "{% endif %}"
    "{% endfor %}"
    "{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}"
)

# Audio Flamingo 3 (Qwen2.5 layout; every ``<sound>`` goes before the user's text).
AUDIOFLAMINGO3_TEMPLATE = (
    "{%- if messages[0]['role'] != 'system' %}"
    "{{- '<|im_start|>system\nYou are a helpful assistant.<|im_end|>\n' }}"
    "{%- endif %}"
    "{%- for message in messages %}"
    "{{- '<|im_start|>' + message['role'] + '\n' }}"
    "{%- if message['content'] is string %}{{- message['content'] }}"
    "{%- else %}"
    "{%- for content in message['content'] %}"
    "{%- if content['type'] == 'audio' or 'audio' in content or 'audio_url' in content %}{{- '<sound>' }}{%- endif %}"
    "{%- endfor %}"
    "{%- for content in message['content'] %}"
    "{%- if content['type'] == 'text' %}{{- content['text'] }}{%- endif %}"
    "{%- endfor %}"
    "{%- endif %}"
    "{{- '<|im_end|>\n' }}"
    "{%- endfor %}"
    "{%- if add_generation_prompt %}{{- '<|im_start|>assistant\n' }}{%- endif %}"
)

# Granite 3.3 layout (granite-speech uses string content with an ``<|audio|>`` placeholder).
GRANITE_SPEECH_TEMPLATE = (
    "{%- if messages[0]['role'] == 'system' %}"
    "{%- set system_message = messages[0]['content'] %}"
    "{%- set loop_messages = messages[1:] %}"
    "{%- else %}"
    "{%- set system_message = \"Knowledge Cutoff Date: April 2024.\nToday's Date: \" + strftime_now('%B %d, %Y') + "
    '".\nYou are Granite, developed by IBM. You are a helpful AI assistant." %}'
    "{%- set loop_messages = messages %}"
    "{%- endif %}"
    "{{- '<|start_of_role|>system<|end_of_role|>' + system_message + '<|end_of_text|>\n' }}"
    "{%- for message in loop_messages %}"
    "{{- '<|start_of_role|>' + message['role'] + '<|end_of_role|>' }}"
    "{%- if message['content'] is string %}{{- message['content'] }}"
    "{%- else %}"
    "{%- for content in message['content'] %}"
    "{%- if content['type'] == 'audio' %}{{- '<|audio|>' }}"
    "{%- elif content['type'] == 'text' %}{{- content['text'] }}{%- endif %}"
    "{%- endfor %}"
    "{%- endif %}"
    "{{- '<|end_of_text|>\n' }}"
    "{%- endfor %}"
    "{%- if add_generation_prompt %}{{- '<|start_of_role|>assistant<|end_of_role|>' }}{%- endif %}"
)

# Phi-4-multimodal (HF-converted processor template: list content or a string with ``<|audio|>``).
PHI4_MULTIMODAL_TEMPLATE = (
    "{% for message in messages %}"
    "{{ '<|' + message['role'] + '|>' }}"
    "{% if message['content'] is string %}{{ message['content'] }}"
    "{% else %}"
    "{% for content in message['content'] %}"
    "{% if content['type'] == 'image' %}{{ '<|image|>' }}"
    "{% elif content['type'] == 'audio' %}{{ '<|audio|>' }}"
    "{% elif content['type'] == 'text' %}{{ content['text'] }}"
    "{% endif %}"
    "{% endfor %}"
    "{% endif %}"
    "{% if message['role'] == 'system' and 'tools' in message and message['tools'] is not none %}"
    "{{ '<|tool|>' + message['tools'] + '<|/tool|>' }}"
    "{% endif %}"
    "{{ '<|end|>' }}"
    "{% endfor %}"
    "{% if add_generation_prompt %}{{ '<|assistant|>' }}{% else %}{{ eos_token }}{% endif %}"
)

# Mistral-common instruct V7 layout, text only. Audio goes through ``HandBuiltVoxtralProcessor``.
VOXTRAL_TEMPLATE = (
    "{{- bos_token }}"
    "{%- for message in messages %}"
    "{%- if message['role'] == 'system' %}"
    "{{- '[SYSTEM_PROMPT]' + message['content'] + '[/SYSTEM_PROMPT]' }}"
    "{%- elif message['role'] == 'user' %}"
    "{{- '[INST]' }}"
    "{%- if message['content'] is string %}{{- message['content'] }}"
    "{%- else %}"
    "{%- for content in message['content'] %}"
    "{%- if content['type'] == 'text' %}{{- content['text'] }}"
    "{%- else %}{{- raise_exception('Voxtral audio content needs the processor, not the tokenizer') }}"
    "{%- endif %}"
    "{%- endfor %}"
    "{%- endif %}"
    "{{- '[/INST]' }}"
    "{%- elif message['role'] == 'assistant' %}"
    "{%- if message['content'] is string %}{{- message['content'] }}"
    "{%- else %}{%- for content in message['content'] %}{{- content['text'] }}{%- endfor %}{%- endif %}"
    "{{- eos_token }}"
    "{%- endif %}"
    "{%- endfor %}"
)

# Qwen2.5-Instruct, without the tool-calling branches.
QWEN2_TEMPLATE = (
    "{%- if messages[0]['role'] == 'system' %}"
    "{{- '<|im_start|>system\n' + messages[0]['content'] + '<|im_end|>\n' }}"
    "{%- else %}"
    "{{- '<|im_start|>system\nYou are Qwen, created by Alibaba Cloud. You are a helpful assistant.<|im_end|>\n' }}"
    "{%- endif %}"
    "{%- for message in messages %}"
    "{%- if (message.role == 'user') or (message.role == 'system' and not loop.first) "
    "or (message.role == 'assistant') %}"
    "{{- '<|im_start|>' + message.role + '\n' + message.content + '<|im_end|>' + '\n' }}"
    "{%- endif %}"
    "{%- endfor %}"
    "{%- if add_generation_prompt %}{{- '<|im_start|>assistant\n' }}{%- endif %}"
)

# Llama 3.1 Instruct, without the tool-calling branches.
LLAMA_TEMPLATE = (
    "{{- bos_token }}"
    "{%- if not date_string is defined %}{%- set date_string = '26 Jul 2024' %}{%- endif %}"
    "{%- if messages[0]['role'] == 'system' %}"
    "{%- set system_message = messages[0]['content'] | trim %}"
    "{%- set messages = messages[1:] %}"
    "{%- else %}"
    "{%- set system_message = '' %}"
    "{%- endif %}"
    "{{- '<|start_header_id|>system<|end_header_id|>\n\n' }}"
    "{{- 'Cutting Knowledge Date: December 2023\n' }}"
    "{{- 'Today Date: ' + date_string + '\n\n' }}"
    "{{- system_message }}"
    "{{- '<|eot_id|>' }}"
    "{%- for message in messages %}"
    "{{- '<|start_header_id|>' + message['role'] + '<|end_header_id|>\n\n' }}"
    "{{- message['content'] | trim + '<|eot_id|>' }}"
    "{%- endfor %}"
    "{%- if add_generation_prompt %}{{- '<|start_header_id|>assistant<|end_header_id|>\n\n' }}{%- endif %}"
)


# --------------------------------------------------------------------------------------------------
# Tokenizers
# --------------------------------------------------------------------------------------------------

_QWEN_SPECIALS = ("<|endoftext|>", "<|im_start|>", "<|im_end|>")
# Tekken's first control tokens, in order, so that ``[AUDIO]`` gets id 24 as in Voxtral.
_TEKKEN_SPECIALS = (
    "<unk>", "<s>", "</s>", "[INST]", "[/INST]", "[AVAILABLE_TOOLS]", "[/AVAILABLE_TOOLS]",
    "[TOOL_RESULTS]", "[/TOOL_RESULTS]", "[TOOL_CALLS]", "[IMG]", "<pad>", "[IMG_BREAK]", "[IMG_END]",
    "[PREFIX]", "[MIDDLE]", "[SUFFIX]", "[SYSTEM_PROMPT]", "[/SYSTEM_PROMPT]", "[TOOL_CONTENT]",
    "<SPECIAL_20>", "<SPECIAL_21>", "<SPECIAL_22>", "<SPECIAL_23>", "[AUDIO]", "[BEGIN_AUDIO]",
)  # fmt: skip

# family -> keyword arguments of ``_make_tokenizer``
_TOKENIZER_SPECS: dict[str, dict[str, Any]] = {
    "qwen2_audio": {
        "specials": _QWEN_SPECIALS + ("<|AUDIO|>", "<|audio_bos|>", "<|audio_eos|>"),
        "eos": "<|im_end|>",
        "pad": "<|endoftext|>",
        "extra": {"audio_token": "<|AUDIO|>", "audio_bos_token": "<|audio_bos|>", "audio_eos_token": "<|audio_eos|>"},
        "chat_template": QWEN2_AUDIO_TEMPLATE,
    },
    "qwen2_5_omni": {
        "specials": _QWEN_SPECIALS
        + ("<|AUDIO|>", "<|audio_bos|>", "<|audio_eos|>", "<|vision_bos|>", "<|vision_eos|>")
        + ("<|vision_pad|>", "<|IMAGE|>", "<|VIDEO|>"),
        "eos": "<|im_end|>",
        "pad": "<|endoftext|>",
        "extra": {
            "audio_token": "<|AUDIO|>",
            "image_token": "<|IMAGE|>",
            "video_token": "<|VIDEO|>",
            "audio_bos_token": "<|audio_bos|>",
            "audio_eos_token": "<|audio_eos|>",
            "vision_bos_token": "<|vision_bos|>",
            "vision_eos_token": "<|vision_eos|>",
        },
        "chat_template": QWEN2_5_OMNI_TEMPLATE,
    },
    "voxtral": {
        "specials": _TEKKEN_SPECIALS,
        "bos": "<s>",
        "eos": "</s>",
        "pad": "<pad>",
        "unk": "<unk>",
        "add_bos": True,
        "chat_template": VOXTRAL_TEMPLATE,
    },
    "granite_speech": {
        "specials": ("<|end_of_text|>", "<|start_of_role|>", "<|end_of_role|>", "<|tool_call|>", "<|audio|>"),
        "bos": "<|end_of_text|>",
        "eos": "<|end_of_text|>",
        "pad": "<|end_of_text|>",
        "extra": {"audio_token": "<|audio|>"},
        "chat_template": GRANITE_SPEECH_TEMPLATE,
    },
    "phi4_multimodal": {
        "specials": ("<|endoftext|>", "<|end|>", "<|system|>", "<|user|>", "<|assistant|>")
        + ("<|tool|>", "<|/tool|>", "<|image|>", "<|audio|>"),
        "bos": "<|endoftext|>",
        "eos": "<|endoftext|>",
        "pad": "<|endoftext|>",
        "extra": {"image_token": "<|image|>", "audio_token": "<|audio|>"},
        "chat_template": PHI4_MULTIMODAL_TEMPLATE,
    },
    "audioflamingo3": {
        "specials": _QWEN_SPECIALS + ("<sound>",),
        "eos": "<|im_end|>",
        "pad": "<|endoftext|>",
        "chat_template": AUDIOFLAMINGO3_TEMPLATE,
    },
    "qwen2": {
        "specials": _QWEN_SPECIALS,
        "eos": "<|im_end|>",
        "pad": "<|endoftext|>",
        "chat_template": QWEN2_TEMPLATE,
    },
    "llama": {
        "specials": ("<|begin_of_text|>", "<|end_of_text|>", "<|start_header_id|>", "<|end_header_id|>")
        + ("<|eot_id|>", "<|eom_id|>", "<|finetune_right_pad_id|>"),
        "bos": "<|begin_of_text|>",
        "eos": "<|eot_id|>",
        "pad": "<|finetune_right_pad_id|>",
        "add_bos": True,
        "chat_template": LLAMA_TEMPLATE,
    },
}


def _make_tokenizer(
    specials: Sequence[str],
    eos: str,
    pad: str,
    chat_template: str,
    bos: str | None = None,
    unk: str | None = None,
    extra: dict[str, str] | None = None,
    add_bos: bool = False,
) -> PreTrainedTokenizerFast:
    """Train a byte-level BPE on the corpus; ``specials`` take ids 0..n-1 in the given order."""
    tok = Tokenizer(models.BPE(unk_token=unk))
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=len(specials) + 1024,
        special_tokens=list(specials),
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    tok.train_from_iterator(_CORPUS, trainer)
    post: list[Any] = [processors.ByteLevel(trim_offsets=False)]
    if add_bos:  # Llama 3 and Mistral tokenizers prepend BOS when encoding
        assert bos is not None
        post.append(
            processors.TemplateProcessing(
                single=f"{bos} $A", pair=f"{bos} $A {bos} $B", special_tokens=[(bos, tok.token_to_id(bos))]
            )
        )
    tok.post_processor = processors.Sequence(post)
    fast = PreTrainedTokenizerFast(
        tokenizer_object=tok,
        bos_token=bos,
        eos_token=eos,
        pad_token=pad,
        unk_token=unk,
        extra_special_tokens=extra or {},
        padding_side="left",
        model_max_length=8192,
    )
    fast.chat_template = chat_template
    return fast


@functools.cache
def _cached_tokenizer(family: str) -> PreTrainedTokenizerFast:
    return _make_tokenizer(**_TOKENIZER_SPECS[family])


def tiny_tokenizer(family: str) -> PreTrainedTokenizerFast:
    """A private copy of the family's cached tokenizer (tests may change e.g. ``padding_side``)."""
    if family not in FAMILIES:
        raise ValueError(f"unknown family {family!r}; expected one of {FAMILIES}")
    return copy.deepcopy(_cached_tokenizer(family))


def _ids(tok: PreTrainedTokenizerFast, *tokens: str) -> list[int]:
    return [int(tok.convert_tokens_to_ids(t)) for t in tokens]


# --------------------------------------------------------------------------------------------------
# Sub-processors usable offline without torchvision / torchaudio
# --------------------------------------------------------------------------------------------------


class _NoVisionSlot:
    """Fills a processor's image or video slot: the tests send audio and text only."""

    model_input_names: list[str] = []

    def __call__(self, *args: Any, **kwargs: Any) -> BatchFeature:
        raise NotImplementedError("tiny test processors take no images or videos")

    def to_dict(self) -> dict[str, Any]:
        return {}


class _SkipVisionSlotCheck:
    """Mixin for a real processor class: accept ``_NoVisionSlot`` in its image/video slots.

    Without Pillow/torchvision, transformers cannot even resolve the base classes these slots are
    checked against, so the unmodified processor cannot be constructed. Nothing else is changed.
    """

    def check_argument_for_proper_class(self, argument_name: str, argument: Any) -> type:
        if argument_name in ("image_processor", "video_processor") and isinstance(argument, _NoVisionSlot):
            return _NoVisionSlot
        return super().check_argument_for_proper_class(argument_name, argument)  # type: ignore[misc]


class AudioOnlyQwen2_5OmniProcessor(_SkipVisionSlotCheck, Qwen2_5OmniProcessor):
    """The real ``Qwen2_5OmniProcessor`` with empty image/video slots."""


class AudioOnlyPhi4MultimodalProcessor(_SkipVisionSlotCheck, Phi4MultimodalProcessor):
    """The real ``Phi4MultimodalProcessor`` with an empty image slot."""


class TorchMelGraniteSpeechFeatureExtractor(GraniteSpeechFeatureExtractor):
    """``GraniteSpeechFeatureExtractor`` with torchaudio's ``MelSpectrogram`` redone in plain torch.

    The real class needs torchaudio only for the mel spectrogram (power 2, centred reflect-padded STFT,
    periodic Hann window, HTK mel scale, no filter norm); the rest of its logic is inherited.
    """

    def __init__(
        self,
        sampling_rate: int = SAMPLING_RATE,
        n_fft: int = 512,
        win_length: int = 400,
        hop_length: int = 160,
        n_mels: int = 80,
        projector_window_size: int = 15,
        projector_downsample_rate: int = 5,
        padding_value: float = 0.0,
        **kwargs: Any,
    ) -> None:
        # Skip the parent __init__, which requires torchaudio; set the same attributes.
        SequenceFeatureExtractor.__init__(
            self, feature_size=n_mels, sampling_rate=sampling_rate, padding_value=padding_value, **kwargs
        )
        self.melspec_kwargs = {
            "sample_rate": sampling_rate,
            "n_fft": n_fft,
            "win_length": win_length,
            "hop_length": hop_length,
            "n_mels": n_mels,
        }
        self.mel_fbank = mel_filter_bank(
            num_frequency_bins=n_fft // 2 + 1,
            num_mel_filters=n_mels,
            min_frequency=0.0,
            max_frequency=sampling_rate / 2,
            sampling_rate=sampling_rate,
            norm=None,
            mel_scale="htk",
        ).astype(np.float32)
        self.projector_window_size = projector_window_size
        self.projector_downsample_rate = projector_downsample_rate

    def _melspec(self, audio: torch.Tensor) -> torch.Tensor:
        """Same output as ``torchaudio.transforms.MelSpectrogram(**melspec_kwargs)(audio)``: (B, n_mels, T)."""
        kw = self.melspec_kwargs
        window = torch.hann_window(kw["win_length"], device=audio.device)
        stft = torch.stft(
            audio,
            n_fft=kw["n_fft"],
            hop_length=kw["hop_length"],
            win_length=kw["win_length"],
            window=window,
            center=True,
            pad_mode="reflect",
            return_complex=True,
        )
        power = stft.abs() ** 2  # (B, n_fft // 2 + 1, T)
        fbank = torch.from_numpy(self.mel_fbank).to(audio.device)
        return torch.matmul(power.transpose(-1, -2), fbank).transpose(-1, -2)

    def __call__(self, audios: Any, device: str | None = "cpu") -> BatchFeature:
        batched_audio, audio_lengths = self._get_audios_and_audio_lengths(audios)
        input_features = self._extract_mel_spectrograms(batched_audio, device=device)
        audio_embed_sizes = self._get_num_audio_features(audio_lengths)
        input_features_mask = torch.arange(max(audio_embed_sizes)).view(1, -1) < torch.tensor(audio_embed_sizes).view(
            -1, 1
        )
        return BatchFeature(
            data={
                "input_features": input_features,
                "audio_embed_sizes": audio_embed_sizes,
                "input_features_mask": input_features_mask,
            }
        )

    def _extract_mel_spectrograms(self, audio: torch.Tensor, device: str | None = "cpu") -> torch.Tensor:
        if device is not None:
            audio = audio.to(device)
        bsz = audio.shape[0]
        with torch.no_grad():
            mel = self._melspec(audio.float())
            logmel = mel.transpose(-1, -2).clip_(min=1e-10).log10_()
            mx = logmel.amax(dim=(-2, -1), keepdim=True)
            logmel = torch.maximum(logmel, mx - 8.0).div_(4).add_(1)
            if logmel.shape[1] % 2 == 1:  # drop the last frame if odd
                logmel = logmel[:, :-1]
            return logmel.reshape(bsz, -1, 2 * logmel.shape[-1])  # stack frames in pairs


class HandBuiltVoxtralProcessor:
    """Test-only stand-in for ``transformers.VoxtralProcessor``.

    The real processor needs mistral-common's tokenizer backend (``MistralCommonBackend`` with a
    ``tekken.json``); this class keeps its public API and outputs. As in the real one:

    * audio goes only through ``apply_chat_template``, which tokenizes by default and returns a
      ``BatchFeature`` with ``input_ids``, ``attention_mask`` and ``input_features`` (one 30 s chunk of
      128 x 3000 log-mel frames per row, stacked over all clips of the batch);
    * audio items are ``{"type": "audio", "path" | "url" | "base64": ...}``, never raw arrays;
    * each clip is zero-padded to a multiple of 30 s and becomes ``[BEGIN_AUDIO]`` followed by 375
      ``[AUDIO]`` tokens per chunk (mistral-common: 12.5 audio tokens per second);
    * ``__call__`` is text only and refuses text holding the audio token;
    * ``add_generation_prompt`` is a no-op: a prompt ends with ``[/INST]``.
    """

    chunk_seconds = 30
    tokens_per_chunk = 375
    text_kwargs: dict[str, Any] = {"padding": True, "tokenize": True, "return_dict": True, "return_tensors": "pt"}
    audio_kwargs: dict[str, Any] = {
        "sampling_rate": SAMPLING_RATE,
        "padding": True,
        "truncation": False,
        "pad_to_multiple_of": 480000,
        "max_source_positions": 3000,
        "return_tensors": "pt",
    }

    def __init__(self, feature_extractor: WhisperFeatureExtractor, tokenizer: PreTrainedTokenizerFast) -> None:
        self.feature_extractor = feature_extractor
        self.tokenizer = tokenizer
        self.audio_token_id = 24
        self.audio_token = tokenizer.convert_ids_to_tokens(self.audio_token_id)
        self.begin_audio_token = "[BEGIN_AUDIO]"
        self.chat_template = None  # the real processor renders through mistral-common, not Jinja

    @property
    def model_input_names(self) -> list[str]:
        return ["input_ids", "attention_mask", "input_features"]

    def _load(self, item: dict[str, Any]) -> np.ndarray:
        source = item.get("url") or item.get("path") or item.get("base64")
        if source is None:
            raise ValueError("Audio content must be specified.")
        return load_audio(source, sampling_rate=self.audio_kwargs["sampling_rate"]).astype(np.float32)

    def _encode_conversation(self, conversation: list[dict[str, Any]]) -> tuple[str, list[np.ndarray]]:
        """Render one conversation; audio items become their expanded placeholder text."""
        clips: list[np.ndarray] = []
        messages: list[dict[str, Any]] = []
        chunk = self.chunk_seconds * self.audio_kwargs["sampling_rate"]
        for message in conversation:
            content = message.get("content")
            if isinstance(content, list):
                new_content = []
                for item in content:
                    if item.get("type") == "audio":
                        clip = self._load(item)
                        n_chunks = max(1, math.ceil(len(clip) / chunk))
                        clips.append(np.pad(clip, (0, n_chunks * chunk - len(clip))))
                        placeholder = self.begin_audio_token + self.audio_token * (n_chunks * self.tokens_per_chunk)
                        new_content.append({"type": "text", "text": placeholder})
                    else:
                        new_content.append(item)
                message = {**message, "content": new_content}
            messages.append(message)
        if messages[-1]["role"] == "assistant":
            raise ValueError("The last message in the conversation is already an assistant message.")
        prompt = self.tokenizer.apply_chat_template(messages, tokenize=False)
        return prompt, clips

    def _input_features(self, clips: list[np.ndarray], audio_kwargs: dict[str, Any]) -> torch.Tensor:
        kwargs = {k: v for k, v in audio_kwargs.items() if k not in ("tokenize", "return_dict")}
        max_source_positions = kwargs.pop("max_source_positions")
        features = []
        for clip in clips:
            feats = self.feature_extractor(clip, **kwargs)["input_features"]  # (1, 128, 3000 * n_chunks)
            features.append(
                feats.reshape(self.feature_extractor.feature_size, -1, max_source_positions).transpose(0, 1)
            )
        return torch.cat(features)

    def _merge_kwargs(self, **kwargs: Any) -> tuple[dict[str, Any], dict[str, Any]]:
        """Defaults, then ``common_kwargs``, flat kwargs and ``text_kwargs`` / ``audio_kwargs``."""
        text, audio = dict(self.text_kwargs), dict(self.audio_kwargs)
        common = kwargs.pop("common_kwargs", {})
        nested_text, nested_audio = kwargs.pop("text_kwargs", {}), kwargs.pop("audio_kwargs", {})
        text.update(common)
        audio.update(common)
        for key, value in kwargs.items():  # flat kwargs: audio-only keys to audio, the rest to text
            (audio if key in ("sampling_rate", "max_source_positions") else text)[key] = value
        text.update(nested_text)
        audio.update(nested_audio)
        return text, audio

    def apply_chat_template(
        self,
        conversation: list[dict[str, Any]] | list[list[dict[str, Any]]],
        chat_template: str | None = None,
        tools: list[dict[str, Any]] | None = None,
        documents: list[dict[str, str]] | None = None,
        add_generation_prompt: bool = False,
        continue_final_message: bool = False,
        return_assistant_tokens_mask: bool = False,
        tokenize: bool = False,
        return_tensors: str | None = None,
        return_dict: bool = False,
        load_audio_from_video: bool = False,
        processor_kwargs: dict[str, Any] | None = None,
        **kwargs: Any,
    ) -> BatchFeature | str | list[str] | torch.Tensor:
        """Like ``VoxtralProcessor.apply_chat_template``. As in the real one, the ``tokenize`` and
        ``return_dict`` arguments are ignored: the processor defaults (tokenize, return a dict, pad,
        ``pt`` tensors) apply unless changed through ``processor_kwargs``, e.g. ``{"tokenize": False}``
        for the prompt string."""
        if continue_final_message:
            raise NotImplementedError("continue_final_message is not supported by this stand-in")
        batched = isinstance(conversation[0], (list, tuple))
        conversations = list(conversation) if batched else [conversation]
        text_kwargs, audio_kwargs = self._merge_kwargs(**(processor_kwargs or {}), **kwargs)
        if return_tensors:
            text_kwargs["return_tensors"] = return_tensors
        if text_kwargs.get("return_tensors") != "pt":
            raise ValueError(f"{self.__class__.__name__} only supports `return_tensors='pt'`.")

        prompts, clips = [], []
        for conv in conversations:
            prompt, conv_clips = self._encode_conversation(list(conv))
            prompts.append(prompt)
            clips.extend(conv_clips)
        if not text_kwargs.pop("tokenize"):
            return prompts if batched else prompts[0]
        wants_dict = text_kwargs.pop("return_dict")
        tensors = text_kwargs.pop("return_tensors")
        encoded = self.tokenizer(prompts, add_special_tokens=False, return_tensors=tensors, **text_kwargs)
        if not wants_dict:
            return encoded["input_ids"]
        data = dict(encoded)
        if clips:
            data["input_features"] = self._input_features(clips, audio_kwargs)
        return BatchFeature(data=data, tensor_type=tensors)

    def __call__(self, text: str | list[str], **kwargs: Any) -> BatchFeature:
        texts = [text] if isinstance(text, str) else list(text)
        if any(self.audio_token in t for t in texts):
            raise ValueError(
                f"{self.audio_token} is present in the provided text which is not supported by VoxtralProcessor. "
                "Please use the `apply_chat_template` method instead."
            )
        text_kwargs, _ = self._merge_kwargs(**kwargs)
        text_kwargs.pop("tokenize")
        text_kwargs.pop("return_dict")
        tensors = text_kwargs.pop("return_tensors", None)
        out = self.tokenizer(texts, return_tensors=tensors, **text_kwargs)
        return BatchFeature(data=dict(out), tensor_type=tensors)

    def batch_decode(self, *args: Any, **kwargs: Any) -> list[str]:
        return self.tokenizer.batch_decode(*args, **kwargs)

    def decode(self, *args: Any, **kwargs: Any) -> str:
        return self.tokenizer.decode(*args, **kwargs)


# --------------------------------------------------------------------------------------------------
# Model + processor builders
# --------------------------------------------------------------------------------------------------


def _text_config(tok: PreTrainedTokenizerFast, eos: Sequence[str], **overrides: Any) -> dict[str, Any]:
    cfg: dict[str, Any] = {
        **_TEXT_CONFIG_COMMON,
        "vocab_size": len(tok),
        "pad_token_id": tok.pad_token_id,
        "eos_token_id": _ids(tok, *eos)[0],
    }
    if tok.bos_token is not None:
        cfg["bos_token_id"] = tok.bos_token_id
    cfg.update(overrides)
    return cfg


def _whisper(feature_size: int = 128) -> WhisperFeatureExtractor:
    return WhisperFeatureExtractor(feature_size=feature_size, sampling_rate=SAMPLING_RATE)


def _whisper_encoder(**names: Any) -> dict[str, Any]:
    """A 2-layer Whisper-style audio encoder over 128 mel bins, using the config's own key names."""
    return {**names, "num_mel_bins": 128, "max_source_positions": 1500}


def _build_qwen2_audio(tok: PreTrainedTokenizerFast) -> tuple[torch.nn.Module, Any]:
    config = Qwen2AudioConfig(
        audio_config=_whisper_encoder(d_model=HIDDEN, encoder_layers=2, encoder_attention_heads=4, encoder_ffn_dim=128),
        text_config={"model_type": "qwen2", **_text_config(tok, ["<|im_end|>"])},
        audio_token_index=tok.audio_token_id,
    )
    processor = Qwen2AudioProcessor(feature_extractor=_whisper(), tokenizer=tok, chat_template=QWEN2_AUDIO_TEMPLATE)
    return Qwen2AudioForConditionalGeneration(config), processor


def _build_qwen2_5_omni(tok: PreTrainedTokenizerFast) -> tuple[torch.nn.Module, Any]:
    text = _text_config(tok, ["<|im_end|>"], rope_parameters={"rope_type": "default", "rope_theta": 1e6})
    text["rope_parameters"]["mrope_section"] = [2, 3, 3]  # sums to head_dim / 2 = 8
    config = Qwen2_5OmniThinkerConfig(
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
        audio_start_token_id=_ids(tok, "<|audio_bos|>")[0],
        audio_end_token_id=_ids(tok, "<|audio_eos|>")[0],
        vision_start_token_id=_ids(tok, "<|vision_bos|>")[0],
        vision_end_token_id=_ids(tok, "<|vision_eos|>")[0],
        user_token_id=tok.convert_tokens_to_ids("user"),
    )
    processor = AudioOnlyQwen2_5OmniProcessor(
        image_processor=_NoVisionSlot(),
        video_processor=_NoVisionSlot(),
        feature_extractor=_whisper(),
        tokenizer=tok,
        chat_template=QWEN2_5_OMNI_TEMPLATE,
    )
    return Qwen2_5OmniThinkerForConditionalGeneration(config), processor


def _build_voxtral(tok: PreTrainedTokenizerFast) -> tuple[torch.nn.Module, Any]:
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
        text_config={"model_type": "llama", **_text_config(tok, ["</s>"], head_dim=HIDDEN // 4, rope_theta=1e6)},
        audio_token_id=24,
    )
    return VoxtralForConditionalGeneration(config), HandBuiltVoxtralProcessor(_whisper(), tok)


def _build_granite_speech(tok: PreTrainedTokenizerFast) -> tuple[torch.nn.Module, Any]:
    config = GraniteSpeechConfig(
        text_config={"model_type": "granite", **_text_config(tok, ["<|end_of_text|>"])},
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


def _build_phi4_multimodal(tok: PreTrainedTokenizerFast) -> tuple[torch.nn.Module, Any]:
    config = Phi4MultimodalConfig(
        **_text_config(tok, ["<|endoftext|>"]),
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
        image_processor=_NoVisionSlot(),
        audio_processor=Phi4MultimodalFeatureExtractor(),
        tokenizer=tok,
        chat_template=PHI4_MULTIMODAL_TEMPLATE,
    )
    return Phi4MultimodalForCausalLM(config), processor


def _build_audioflamingo3(tok: PreTrainedTokenizerFast) -> tuple[torch.nn.Module, Any]:
    config = AudioFlamingo3Config(
        audio_config=_whisper_encoder(
            hidden_size=HIDDEN, num_hidden_layers=2, num_attention_heads=4, intermediate_size=128
        ),
        text_config={"model_type": "qwen2", **_text_config(tok, ["<|im_end|>"])},
        audio_token_id=_ids(tok, "<sound>")[0],
    )
    processor = AudioFlamingo3Processor(
        feature_extractor=_whisper(), tokenizer=tok, chat_template=AUDIOFLAMINGO3_TEMPLATE
    )
    return AudioFlamingo3ForConditionalGeneration(config), processor


def _build_qwen2(tok: PreTrainedTokenizerFast) -> tuple[torch.nn.Module, Any]:
    return Qwen2ForCausalLM(Qwen2Config(**_text_config(tok, ["<|im_end|>"]))), tok


def _build_llama(tok: PreTrainedTokenizerFast) -> tuple[torch.nn.Module, Any]:
    return LlamaForCausalLM(LlamaConfig(**_text_config(tok, ["<|eot_id|>"]))), tok


_BUILDERS: dict[str, Callable[[PreTrainedTokenizerFast], tuple[torch.nn.Module, Any]]] = {
    "qwen2_audio": _build_qwen2_audio,
    "qwen2_5_omni": _build_qwen2_5_omni,
    "voxtral": _build_voxtral,
    "granite_speech": _build_granite_speech,
    "phi4_multimodal": _build_phi4_multimodal,
    "audioflamingo3": _build_audioflamingo3,
    "qwen2": _build_qwen2,
    "llama": _build_llama,
}

# Tokens that end generation, as in each family's generation_config (first one is the config's eos).
_STOP_TOKENS: dict[str, tuple[str, ...]] = {
    "qwen2_audio": ("<|im_end|>", "<|endoftext|>"),
    "qwen2_5_omni": ("<|im_end|>", "<|endoftext|>"),
    "voxtral": ("</s>",),
    "granite_speech": ("<|end_of_text|>",),
    "phi4_multimodal": ("<|end|>", "<|endoftext|>"),
    "audioflamingo3": ("<|im_end|>", "<|endoftext|>"),
    "qwen2": ("<|im_end|>", "<|endoftext|>"),
    "llama": ("<|eot_id|>", "<|end_of_text|>", "<|eom_id|>"),
}


def build_tiny(family: str, seed: int = 0) -> tuple[torch.nn.Module, Any]:
    """A fresh tiny random model (fp32, eval mode) and its processor (the tokenizer for text families)."""
    tok = tiny_tokenizer(family)
    torch.manual_seed(seed)
    model, processor = _BUILDERS[family](tok)
    model.generation_config.pad_token_id = tok.pad_token_id
    model.generation_config.eos_token_id = _ids(tok, *_STOP_TOKENS[family])
    if tok.bos_token is not None:
        model.generation_config.bos_token_id = tok.bos_token_id
    return model.float().eval(), processor


def tiny_audio(seconds: float = 1.0, sr: int = SAMPLING_RATE, seed: int = 0) -> np.ndarray:
    """A float32 mono test signal: two seeded tones with a slow tremolo and a little noise, peak < 0.5."""
    rng = np.random.default_rng(seed)
    t = np.arange(int(round(seconds * sr)), dtype=np.float64) / sr
    f1, f2 = rng.uniform(180.0, 900.0, size=2)
    tremolo = 0.6 + 0.4 * np.sin(2 * np.pi * rng.uniform(1.0, 4.0) * t)
    signal = 0.25 * np.sin(2 * np.pi * f1 * t) + 0.12 * np.sin(2 * np.pi * f2 * t + rng.uniform(0, np.pi))
    signal = signal * tremolo + 0.02 * rng.standard_normal(t.shape)
    return signal.astype(np.float32)
