"""Processors of the tiny models that run offline without torchvision or mistral-common: the real
Qwen2.5-Omni, Qwen3-Omni, Nemotron-H Omni and Phi-4-multimodal processors with empty vision slots, and a
stand-in for Voxtral's."""

from __future__ import annotations

import math
from typing import Any, cast

import numpy as np
import torch
from transformers import (
    BatchFeature,
    NemotronH_Omni_Reasoning_V3Processor,
    Phi4MultimodalProcessor,
    PreTrainedTokenizerFast,
    Qwen2_5OmniProcessor,
    Qwen3OmniMoeProcessor,
    WhisperFeatureExtractor,
)
from transformers.audio_utils import load_audio

from guardrail.testing.tiny.constants import SAMPLING_RATE


class NoVisionSlot:
    """Fills a processor's image or video slot: the tests send audio and text only."""

    model_input_names: list[str] = []

    def __call__(self, *args: Any, **kwargs: Any) -> BatchFeature:
        raise NotImplementedError("tiny test processors take no images or videos")

    def to_dict(self) -> dict[str, Any]:
        return {}


class SkipVisionSlotCheck:
    """Mixin for a real processor class: accept ``NoVisionSlot`` in its image/video slots.

    Without Pillow/torchvision, transformers cannot even resolve the base classes these slots are
    checked against, so the unmodified processor cannot be constructed. Nothing else is changed.
    """

    def check_argument_for_proper_class(self, argument_name: str, argument: Any) -> type:
        if argument_name in ("image_processor", "video_processor") and isinstance(argument, NoVisionSlot):
            return NoVisionSlot
        return super().check_argument_for_proper_class(argument_name, argument)  # type: ignore[misc]


class AudioOnlyQwen2_5OmniProcessor(SkipVisionSlotCheck, Qwen2_5OmniProcessor):
    """The real ``Qwen2_5OmniProcessor`` with empty image/video slots."""


class AudioOnlyQwen3OmniMoeProcessor(SkipVisionSlotCheck, Qwen3OmniMoeProcessor):
    """The real ``Qwen3OmniMoeProcessor`` with empty image/video slots."""


class AudioOnlyNemotronHOmniProcessor(SkipVisionSlotCheck, NemotronH_Omni_Reasoning_V3Processor):
    """The real ``NemotronH_Omni_Reasoning_V3Processor`` with empty image/video slots."""


class AudioOnlyPhi4MultimodalProcessor(SkipVisionSlotCheck, Phi4MultimodalProcessor):
    """The real ``Phi4MultimodalProcessor`` with an empty image slot."""


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
        self.audio_token = cast(str, tokenizer.convert_ids_to_tokens(self.audio_token_id))  # one id, one token
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
        return cast(str, prompt), clips  # untokenized: the rendered string

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
        # batched is decided by the first item, which the declared union cannot narrow
        conversations = cast(list[list[dict[str, Any]]], list(conversation) if batched else [conversation])
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

    def decode(self, *args: Any, **kwargs: Any) -> str | list[str]:
        return self.tokenizer.decode(*args, **kwargs)
