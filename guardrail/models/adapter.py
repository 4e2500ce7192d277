"""Adapter runtime: turns a declarative family spec (adapters/*.yaml) into the few things
the guard needs from a model: its decoder layers, its prompt inputs, and decoding.

Adding a family is adding a YAML file; a family that needs code names a subclass of
`Adapter` in its spec's `implementation` field.
"""

from __future__ import annotations

import importlib
import json
import threading
from collections.abc import Iterable, Iterator, Sequence
from contextlib import contextmanager
from functools import lru_cache
from pathlib import Path
from typing import Any, Literal

import numpy as np
import torch
import yaml
from pydantic import BaseModel, ConfigDict, Field
from torch import nn

from guardrail.audio import require_min_duration
from guardrail.conversation import Turn
from guardrail.errors import RequestError, UnsupportedModelError
from guardrail.models.chat import checked_turns, messages_for, render, require_tool_template, shown_tools
from guardrail.models.user_text import ControlTokens, SpecialTokens
from guardrail.requests import Request
from guardrail.resources import data_dir

# Guards may share one processor: padding_side is switched under a process-wide lock.
_PAD_LOCK = threading.Lock()


class _Spec(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class MatchSpec(_Spec):
    model_types: tuple[str, ...] = ()
    architectures: tuple[str, ...] = ()
    any_causal_lm: bool = Field(False, description="fallback for any text-only causal LM")


class InputSpec(_Spec):
    """How a family's prompt inputs are built.

    style: processor     render the turn with the chat template, then processor(text=, audio=)
           chat_template processor.apply_chat_template tokenizes and extracts features (Voxtral)
           text          tokenizer.apply_chat_template on a text-only turn
    content: blocks      user content [{"type": "audio"}, {"type": "text", "text": ...}]
             placeholder user content "<audio_placeholder>text" (a string)
    """

    style: Literal["processor", "chat_template", "text"]
    content: Literal["blocks", "placeholder"] = "blocks"
    audio_placeholder: str | None = None
    processor_kwargs: dict[str, Any] = Field(default_factory=dict, description="extra processor call arguments")


class AdapterSpec(_Spec):
    name: str
    description: str
    modality: Literal["audio", "text"]
    match: MatchSpec
    model_class: str
    processor_class: str
    decoder_layers: tuple[str, ...] = Field(min_length=1, description="candidate attribute paths")
    input: InputSpec
    sampling_rate: int = 16000
    implementation: str | None = None


class Adapter:
    """Family-specific knowledge, driven by an `AdapterSpec`."""

    def __init__(self, spec: AdapterSpec):
        self.spec = spec

    @property
    def name(self) -> str:
        return self.spec.name

    @property
    def takes_audio(self) -> bool:
        return self.spec.modality == "audio"

    def require_audio_support(self, what: str, error: type[RequestError] = RequestError) -> None:
        """The one rule for audio sent to a text-only model: `error` naming `what` carries audio."""
        if not self.takes_audio:
            raise error(
                f"{what} carries audio, but {self.name!r} is a text-only model: send text only, "
                "or wrap an audio-language model"
            )

    def __repr__(self) -> str:
        return f"{type(self).__name__}({self.spec.name!r})"

    # -- model structure -------------------------------------------------------------
    def decoder_layers(self, model: nn.Module) -> nn.ModuleList:
        """The language model's decoder-layer list (the residual stream SARSteer edits)."""
        for path in self.spec.decoder_layers:
            layers = _resolve(model, path)
            if isinstance(layers, nn.ModuleList) and len(layers) > 0:
                return layers
        raise UnsupportedModelError(
            f"adapter {self.name!r} found no decoder layers on {type(model).__name__} at any of "
            f"{list(self.spec.decoder_layers)}; the model's structure differs from the family's "
            "spec: check the transformers version or add the path to the spec"
        )

    def sampling_rate(self, processor: Any) -> int:
        extractor = getattr(processor, "feature_extractor", None)
        return int(getattr(extractor, "sampling_rate", None) or self.spec.sampling_rate)

    def tokenizer(self, processor: Any) -> Any:
        return getattr(processor, "tokenizer", processor)

    # -- inputs ----------------------------------------------------------------------
    def build_inputs(
        self,
        processor: Any,
        requests: Sequence[Request],
        system_prompt: str | None = None,
        special_tokens: SpecialTokens = "refuse",
    ) -> dict[str, torch.Tensor]:
        """Left-padded model inputs for a batch of conversations (one user turn, or a whole chat with tools)
        ending in the assistant-generation prefix. User text holding the tokenizer's control tokens (role markers) is
        refused or escaped as `special_tokens` says (the policy's `input.special_tokens`)."""
        if not requests:
            raise RequestError("no requests given: pass at least one request")
        requests = self.checked_requests(processor, requests, special_tokens)
        with self._left_padding(processor):
            if self.spec.input.style == "text" or not any(r.audios for r in requests):
                batch = self._text_inputs(processor, requests, system_prompt)
            elif self.spec.input.style == "chat_template":
                batch = self._chat_template_inputs(processor, requests, system_prompt)
            else:
                batch = self._processor_inputs(processor, requests, system_prompt)
        inputs = dict(batch)
        mask = inputs.get("attention_mask")
        if mask is not None and len(requests) > 1 and not bool(mask[:, -1].all()):
            raise RequestError(
                f"the {type(processor).__name__} padded on the right; steering needs "
                "left padding so the last position is each prompt's last token"
            )
        return inputs

    def checked_requests(
        self, processor: Any, requests: Sequence[Request], special_tokens: SpecialTokens = "refuse"
    ) -> list[Request]:
        """`requests` fit for this family's template: audio only for an audio model and long enough for its
        encoder (AudioInputError), text valid Unicode without control tokens, escaped if asked (RequestError)."""
        if special_tokens not in ("refuse", "escape"):
            raise RequestError(f"special_tokens must be 'refuse' or 'escape', got {special_tokens!r}")
        controls = ControlTokens.of(self.tokenizer(processor), processor, extra=[self.spec.input.audio_placeholder])
        checked = []
        for i, request in enumerate(requests):
            for audio in request.audios:
                self.require_audio_support(f"request {i}")
                require_min_duration(int(np.size(audio)), self.sampling_rate(processor), f"request {i}: audio")
            if shown_tools(request):
                require_tool_template(self._template_owner(processor), self.name)
            checked.append(checked_turns(request, controls, i, special_tokens))
        return checked

    def _template_owner(self, processor: Any) -> Any:
        """What renders the prompt text: the processor when it has a template, else its tokenizer."""
        if self.spec.input.style != "text" and getattr(processor, "chat_template", None):
            return processor
        return self.tokenizer(processor)

    def messages(self, request: Request, system_prompt: str | None, processor: Any = None) -> list[dict[str, Any]]:
        """The request's conversation as the family's chat template reads it (audio as the family's blocks;
        with `processor`, the clip itself in the blocks of a chat_template-style family)."""
        if processor is not None and self.spec.input.style == "chat_template":
            return messages_for(request, system_prompt, lambda turn: self._content_with_audio(turn, processor))
        return messages_for(request, system_prompt, self.user_content)

    def _content_with_audio(self, turn: Turn, processor: Any) -> Any:
        content = self.user_content(turn)
        if turn.audio is not None:
            content[0] = self.audio_block(turn.audio, self.sampling_rate(processor))
        return content

    def prompt_texts(self, processor: Any, requests: Sequence[Request], system_prompt: str | None) -> list[str]:
        """Each request rendered to prompt text by the family's template, with the tools it shows."""
        owner = self._template_owner(processor)
        return [render(owner, self.messages(r, system_prompt), shown_tools(r)) for r in requests]

    def _text_inputs(self, processor, requests, system_prompt):
        tokenizer = self.tokenizer(processor)
        if getattr(tokenizer, "chat_template", None) is None:
            raise RequestError(
                f"{type(tokenizer).__name__} has no chat template; set "
                "tokenizer.chat_template (the guard builds chat prompts)"
            )
        # rendered one by one (each with its own tools), then tokenized as apply_chat_template does
        prompts = [render(tokenizer, messages_for(r, system_prompt, _text_only), shown_tools(r)) for r in requests]
        return tokenizer(prompts, padding=True, add_special_tokens=False, return_tensors="pt")

    def user_content(self, request: Request | Turn) -> Any:
        """The user turn's content as the family's chat template expects it (audio left abstract)."""
        if self.spec.input.content == "placeholder":
            return (self.spec.input.audio_placeholder or "") * (request.audio is not None) + request.text
        blocks: list[dict[str, Any]] = [{"type": "audio"}] if request.audio is not None else []
        return [*blocks, {"type": "text", "text": request.text}]

    def _processor_inputs(self, processor, requests, system_prompt):
        prompts = self.prompt_texts(processor, requests, system_prompt)
        audios = [audio for r in requests for audio in r.audios]
        return processor(
            text=prompts,
            audio=audios,
            sampling_rate=self.sampling_rate(processor),
            return_tensors="pt",
            **self.spec.input.processor_kwargs,
        )

    def _chat_template_inputs(self, processor, requests, system_prompt):
        conversations = [self.messages(r, system_prompt, processor) for r in requests]
        tools = {json.dumps(shown_tools(r), sort_keys=True) for r in requests}
        if len(tools) > 1:  # the processor takes one tools list for the whole batch
            raise RequestError("requests with audio in one batch must show the same tools; send them separately")
        extra = {"tools": list(shown_tools(requests[0]))} if shown_tools(requests[0]) else {}
        return processor.apply_chat_template(
            conversations, add_generation_prompt=True, return_tensors="pt", **extra, **self.spec.input.processor_kwargs
        )

    def audio_block(self, audio: np.ndarray, sampling_rate: int) -> dict[str, Any]:
        """The chat-template content block that carries a clip (families may override)."""
        return {"type": "audio", "audio": audio}

    @contextmanager
    def _left_padding(self, processor: Any) -> Iterator[None]:
        tokenizer = self.tokenizer(processor)
        with _PAD_LOCK:
            previous = getattr(tokenizer, "padding_side", "left")
            tokenizer.padding_side = "left"
            try:
                yield
            finally:
                tokenizer.padding_side = previous

    # -- outputs ---------------------------------------------------------------------
    def eos_token_ids(self, model: nn.Module, processor: Any) -> set[int]:
        ids: set[int] = set()
        for source in (getattr(model, "generation_config", None), self.tokenizer(processor)):
            value = getattr(source, "eos_token_id", None)
            if isinstance(value, int):
                ids.add(value)
            elif isinstance(value, (list, tuple)):
                ids.update(int(v) for v in value)
        return ids

    def pad_token_id(self, model: nn.Module, processor: Any) -> int | None:
        tokenizer = self.tokenizer(processor)
        for value in (
            getattr(tokenizer, "pad_token_id", None),
            getattr(getattr(model, "generation_config", None), "pad_token_id", None),
        ):
            if isinstance(value, int):
                return value
        eos = sorted(self.eos_token_ids(model, processor))
        return eos[0] if eos else None

    def decode(self, processor: Any, token_ids: Sequence[int], keep: Sequence[str] = ()) -> str:
        """The tokens as text, control tokens left out except the markers in `keep` (e.g. tool-call tags, which
        some tokenizers count as special)."""
        tokenizer = self.tokenizer(processor)
        ids = {m: tokenizer.convert_tokens_to_ids(m) for m in keep}
        kept = {i: m for m, i in ids.items() if isinstance(i, int) and i != getattr(tokenizer, "unk_token_id", None)}
        if not kept:
            return tokenizer.decode(list(token_ids), skip_special_tokens=True)
        parts: list[str] = []
        run: list[int] = []
        for token in [*token_ids, None]:
            if token is None or token in kept:
                parts.append(tokenizer.decode(run, skip_special_tokens=True))
                parts.append(kept.get(token, "") if token is not None else "")
                run = []
            else:
                run.append(token)
        return "".join(parts)


def _text_only(turn: Turn) -> str:
    return turn.text


def _resolve(obj: Any, path: str) -> Any:
    for part in path.split("."):
        obj = getattr(obj, part, None)
        if obj is None:
            return None
    return obj


# -- registry ----------------------------------------------------------------------------
@lru_cache(maxsize=1)
def load_specs(folder: Path | None = None) -> tuple[AdapterSpec, ...]:
    """All adapter specs shipped with the package (or found in `folder`), specific first."""
    folder = folder or data_dir("adapters")
    specs = [AdapterSpec.model_validate(yaml.safe_load(p.read_text())) for p in sorted(folder.glob("*.yaml"))]
    return tuple(sorted(specs, key=lambda s: (s.match.any_causal_lm, s.name)))


def adapter_from_spec(spec: AdapterSpec) -> Adapter:
    if spec.implementation is None:
        return Adapter(spec)
    module_name, _, class_name = spec.implementation.partition(":")
    cls = getattr(importlib.import_module(module_name), class_name)
    return cls(spec)


def get_adapter(name: str) -> Adapter:
    """The adapter named `name` (see `supported_families()`)."""
    for spec in load_specs():
        if spec.name == name:
            return adapter_from_spec(spec)
    raise UnsupportedModelError(f"no adapter named {name!r}; supported: {', '.join(supported_families())}")


def supported_families() -> list[str]:
    return [spec.name for spec in load_specs()]


def adapter_for(config: Any, class_names: Iterable[str] = ()) -> Adapter:
    """The adapter for a model with `config` (and `class_names`, e.g. the model's own class): the
    family whose spec matches its model_type or an architecture, else the text causal-LM fallback
    when a class name ends in "ForCausalLM"; UnsupportedModelError listing the families otherwise."""
    model_type = getattr(config, "model_type", None)
    names = set(getattr(config, "architectures", None) or []) | set(class_names)
    causal_lm = any(name.endswith("ForCausalLM") for name in names)
    for spec in load_specs():  # specific families first, fallbacks last
        if model_type in spec.match.model_types or names & set(spec.match.architectures):
            return adapter_from_spec(spec)
        if spec.match.any_causal_lm and causal_lm:
            return adapter_from_spec(spec)
    raise UnsupportedModelError(
        f"no adapter fits {', '.join(sorted(names)) or 'this model'} (model_type={model_type!r}). "
        f"Supported families: {', '.join(supported_families())}. Add a spec under adapters/ or pass adapter=<name>."
    )


def resolve_adapter(model: nn.Module, adapter: Adapter | str | None = None) -> Adapter:
    """The adapter to use: `adapter` when given (an instance or a name), else `adapter_for` the
    model's config and class; a clear error if none fits."""
    if isinstance(adapter, Adapter):
        return adapter
    if adapter:
        return get_adapter(adapter)
    found = adapter_for(getattr(model, "config", None), [type(model).__name__])
    if found.spec.match.any_causal_lm:
        found.decoder_layers(model)  # raises when the layers are not where a causal LM keeps them
    return found
