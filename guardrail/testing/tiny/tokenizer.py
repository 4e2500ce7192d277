"""The tiny tokenizers: a byte-level BPE trained on a small embedded corpus, with each family's special
tokens at the front of the vocabulary and the family's chat template."""

from __future__ import annotations

import copy
import functools
from collections.abc import Sequence
from typing import Any, cast

from tokenizers import Tokenizer, decoders, models, pre_tokenizers, processors, trainers
from transformers import PreTrainedTokenizerFast

from guardrail.testing.tiny import templates
from guardrail.testing.tiny.constants import FAMILIES

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
        "chat_template": templates.QWEN2_AUDIO_TEMPLATE,
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
        "chat_template": templates.QWEN2_5_OMNI_TEMPLATE,
    },
    "qwen3_omni_moe": {
        "specials": _QWEN_SPECIALS
        + ("<|audio_start|>", "<|audio_end|>", "<|audio_pad|>", "<|vision_start|>", "<|vision_end|>")
        + ("<|image_pad|>", "<|video_pad|>"),
        "eos": "<|im_end|>",
        "pad": "<|endoftext|>",
        "extra": {
            "audio_token": "<|audio_pad|>",
            "image_token": "<|image_pad|>",
            "video_token": "<|video_pad|>",
            "audio_bos_token": "<|audio_start|>",
            "audio_eos_token": "<|audio_end|>",
            "vision_bos_token": "<|vision_start|>",
            "vision_eos_token": "<|vision_end|>",
        },
        "chat_template": templates.QWEN3_OMNI_MOE_TEMPLATE,
    },
    "voxtral": {
        "specials": _TEKKEN_SPECIALS,
        "bos": "<s>",
        "eos": "</s>",
        "pad": "<pad>",
        "unk": "<unk>",
        "add_bos": True,
        "chat_template": templates.VOXTRAL_TEMPLATE,
    },
    "granite_speech": {
        "specials": ("<|end_of_text|>", "<|start_of_role|>", "<|end_of_role|>", "<|tool_call|>", "<|audio|>"),
        "bos": "<|end_of_text|>",
        "eos": "<|end_of_text|>",
        "pad": "<|end_of_text|>",
        "extra": {"audio_token": "<|audio|>"},
        "chat_template": templates.GRANITE_SPEECH_TEMPLATE,
    },
    "phi4_multimodal": {
        "specials": ("<|endoftext|>", "<|end|>", "<|system|>", "<|user|>", "<|assistant|>")
        + ("<|tool|>", "<|/tool|>", "<|image|>", "<|audio|>"),
        "bos": "<|endoftext|>",
        "eos": "<|endoftext|>",
        "pad": "<|endoftext|>",
        "extra": {"image_token": "<|image|>", "audio_token": "<|audio|>"},
        "chat_template": templates.PHI4_MULTIMODAL_TEMPLATE,
    },
    "audioflamingo3": {
        "specials": _QWEN_SPECIALS + ("<sound>",),
        "eos": "<|im_end|>",
        "pad": "<|endoftext|>",
        "chat_template": templates.AUDIOFLAMINGO3_TEMPLATE,
    },
    "musicflamingo": {
        "specials": _QWEN_SPECIALS + ("<sound>", "<|sound_bos|>", "<|sound_eos|>"),
        "eos": "<|im_end|>",
        "pad": "<|endoftext|>",
        "chat_template": templates.AUDIOFLAMINGO3_TEMPLATE,
    },
    "nemotron_h_omni": {  # Nemotron 3 Nano's first control tokens, then the Omni media markers
        "specials": ("<unk>", "<s>", "</s>", "<|im_start|>", "<|im_end|>", "<think>", "</think>")
        + ("<so_start>", "<so_end>", "<so_embedding>", "<img>", "</img>", "<image>"),
        "bos": "<s>",
        "eos": "<|im_end|>",
        "pad": "<unk>",
        "unk": "<unk>",
        "extra": {"audio_token": "<so_embedding>", "image_token": "<image>"},
        "chat_template": templates.NEMOTRON_H_OMNI_TEMPLATE,
    },
    "glmasr": {  # GLM-4-style control tokens; <|pad|> is the processor's audio token
        "specials": ("<|endoftext|>", "[gMASK]", "<sop>", "<|system|>", "<|user|>", "<|assistant|>")
        + ("<|observation|>", "<|begin_of_audio|>", "<|end_of_audio|>", "<|pad|>"),
        "eos": "<|endoftext|>",
        "pad": "<|endoftext|>",
        "extra": {"audio_token": "<|pad|>"},
        "chat_template": templates.GLMASR_TEMPLATE,
    },
    "qwen2": {
        "specials": _QWEN_SPECIALS,
        "eos": "<|im_end|>",
        "pad": "<|endoftext|>",
        "chat_template": templates.QWEN2_TEMPLATE,
    },
    "llama": {
        "specials": ("<|begin_of_text|>", "<|end_of_text|>", "<|start_header_id|>", "<|end_header_id|>")
        + ("<|eot_id|>", "<|eom_id|>", "<|finetune_right_pad_id|>"),
        "bos": "<|begin_of_text|>",
        "eos": "<|eot_id|>",
        "pad": "<|finetune_right_pad_id|>",
        "add_bos": True,
        "chat_template": templates.LLAMA_TEMPLATE,
    },
}
# Granite Speech Plus: the Granite Speech tokenizer and template (the processor is the same class)
_TOKENIZER_SPECS["granite_speech_plus"] = _TOKENIZER_SPECS["granite_speech"]


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


def token_ids(tok: PreTrainedTokenizerFast, *tokens: str) -> list[int]:
    """The ids of `tokens` in `tok`'s vocabulary, as plain ints."""
    # one token gives one id; transformers types the result int | list[int] without overloads
    return [int(cast(int, tok.convert_tokens_to_ids(t))) for t in tokens]
