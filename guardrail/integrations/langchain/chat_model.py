"""`GuardedChatModel`: a `Guard` as a LangChain chat model, so `prompt | guarded | parser`
works unchanged and every path (invoke, batch, stream and their async forms) goes through
the guard's gate and steering.

>>> from guardrail.integrations.langchain import GuardedChatModel  # doctest: +SKIP
>>> chat = GuardedChatModel(model="Qwen/Qwen2-Audio-7B-Instruct", policy="gated", artifact="artifacts/qwen2-audio",
...                         device="cuda", max_tokens=64)  # doctest: +SKIP
>>> chat = GuardedChatModel(guard=guard, max_tokens=64, temperature=0)  # or around a Guard you built  # doctest: +SKIP
>>> chat.invoke([HumanMessage([{"type": "text", "text": "Answer the question."},
...                             {"type": "audio", "base64": b64, "mime_type": "audio/wav"}])])  # doctest: +SKIP

What the guard can represent, and therefore what this model accepts:

- Conversations: system, human, AI (with tool calls) and tool messages, rendered by the family's chat
  template; the gate reads the end of the whole conversation and steering applies to the new answer. A
  `SystemMessage` equal to the policy's `system_prompt` is left out (the guard sends it itself); another one
  must come first and follows the policy's prompt. `history="last_turn"` sends the last `HumanMessage` alone
  (`response_metadata["dropped_messages"]` counts the rest).
- Tools: `bind_tools(tools, tool_choice=...)` shows them to the model through its chat template (families
  whose template takes tools; otherwise a `RequestError`); the calls it writes come back in
  `AIMessage.tool_calls`, `finish_reason` "tool_calls". `with_structured_output(schema)` works by a forced
  tool call, or by JSON mode (`method="json_mode"`). A blocked request makes no tool call.
- Content of a human message: a string, or LangChain standard content blocks: text blocks, and at most one audio block
  as base64 (`{"type": "audio", "base64": ..., "mime_type": "audio/wav"}`, the older
  `{"type": "audio", "source_type": "base64", "data": ...}`, OpenAI's `input_audio`, a `file` block with
  an audio mime type), a `data:` URL, or a `file://` URL (a regular file under the policy's `input.audio_dirs`,
  at most 64 MiB; none if empty). The audio is sent first, then the text blocks joined by newlines, as the
  guard's adapter builds every prompt. Anything else (images, http URLs, provider file ids, several audio
  blocks, audio for a text-only model) raises `UnsupportedContentError`.
- Generation parameters, as fields and per call with the same names: `max_tokens` (alias
  `max_new_tokens`), `temperature`, `top_p`, `stop`, `seed`, `timeout` and `generate_kwargs` (alias
  `model_kwargs`); `options.py` says what each does. Other per-call arguments go to `model.generate` when
  it knows them, and are otherwise ignored with a warning. A per-call `model=` must name the served model.

The decision record: `message.response_metadata["decision"]` (`Decision.to_dict()`), with
`model_name` and `finish_reason` beside it; `usage_metadata` holds the token counts. Callback
handlers get it in `on_llm_end(response)` as
`response.generations[0][0].message.response_metadata["decision"]`, on every path.
"""

from __future__ import annotations

import asyncio
import functools
import threading
from collections.abc import AsyncIterator, Iterator, Mapping, Sequence
from contextlib import aclosing
from pathlib import Path
from typing import Any

from langchain_core.callbacks import AsyncCallbackManagerForLLMRun, CallbackManagerForLLMRun
from langchain_core.language_models import LanguageModelInput
from langchain_core.messages import AIMessage, AIMessageChunk, BaseMessage
from langchain_core.outputs import ChatGeneration, ChatGenerationChunk, ChatResult
from langchain_core.prompt_values import PromptValue
from langchain_core.runnables import Runnable
from pydantic import ConfigDict, Field, model_validator
from transformers import StoppingCriteriaList

from guardrail.errors import UnsupportedContentError, UnsupportedMessageError
from guardrail.gate.decide import ScoringProbe
from guardrail.integrations.langchain.audio_files import AudioFiles
from guardrail.integrations.langchain.batch_model import BatchedChatModel
from guardrail.integrations.langchain.construct import prepare_fields
from guardrail.integrations.langchain.content import GuardCall, History, check_convertible, request_from_messages
from guardrail.integrations.langchain.messages import ai_message, final_chunk
from guardrail.integrations.langchain.options import STANDARD_PARAMS, CallOptions, call_options
from guardrail.integrations.langchain.tools import (
    STRUCTURED_METHODS,
    json_mode_format,
    json_mode_parser,
    request_options,
    tool_choice_of,
    tool_schemas,
    with_raw,
)
from guardrail.integrations.langchain.worker import CancelOnEvent, iterate_in_worker
from guardrail.policy import Policy
from guardrail.results import GuardResult
from guardrail.steering.artifact import SteeringArtifact

__all__ = ["GuardedChatModel", "UnsupportedContentError", "UnsupportedMessageError"]


class GuardedChatModel(BatchedChatModel):
    """A LangChain chat model whose every answer is generated by `guard` (gate, probe, steering).

    Build it from plain parameters, `GuardedChatModel(model="dir or hub id", policy="gated", artifact="dir",
    probe=None, device="cpu", dtype="auto")` (what is left out comes from the policy's `model:` section), or
    around a `Guard`: `GuardedChatModel(guard=guard)`. `batch`/`abatch` send their inputs through one
    `Guard.generate_batch` call (in groups of at most `max_concurrency` inputs when the config sets it, and
    of the policy's `limits.max_batch`); `stream`/`astream` yield text as tokens are generated; async
    methods run generation in a worker thread.
    """

    model_config = ConfigDict(arbitrary_types_allowed=True)

    model_name: str | None = None
    """Name reported in response_metadata and traces (also accepted as `model=`, which without `guard=`
    is the model to load); default: the model's `name_or_path`, else the adapter name."""
    max_tokens: int | None = Field(default=None, ge=1)
    """New-token budget per answer (alias `max_new_tokens`); None = the policy's `limits.max_new_tokens`."""
    temperature: float | None = Field(default=None, ge=0)
    """0 = greedy decoding, > 0 = sampling at that temperature; None = as `generate_kwargs` say (greedy)."""
    top_p: float | None = Field(default=None, gt=0, le=1)
    """Nucleus sampling mass; acts only while sampling."""
    stop: list[str] | None = None
    """Strings that end an answer (it is cut before the first); a per-call `stop` replaces these."""
    seed: int | None = None
    """Seed for sampling: the same seed gives the same answer."""
    timeout: float | None = Field(default=None, gt=0)
    """Seconds of generation at most (transformers' `max_time`): the answer ends there, `finish_reason`
    "length". It bounds token generation, not prefill or audio decoding."""
    generate_kwargs: dict[str, Any] = Field(default_factory=dict)
    """Other `model.generate` arguments (alias `model_kwargs`); the named parameters win over these."""
    streaming: bool = False
    """Whether `invoke` generates through `stream` (callback handlers then see each token)."""
    history: History = "full"
    """The messages sent: the whole conversation ("full"), the last human turn alone ("last_turn", the others
    dropped and counted in `response_metadata["dropped_messages"]`), or one human turn only ("error")."""

    # -- construction ----------------------------------------------------------------
    def __init__(self, **data: Any) -> None:
        # building the guard here, before pydantic, lets its typed errors (a missing artifact, a bad
        # policy) reach the caller as themselves; pydantic would wrap them in a ValidationError
        super().__init__(**prepare_fields(data, type(self).model_fields))

    @model_validator(mode="before")
    @classmethod
    def _plain_parameters(cls, data: Any) -> Any:
        """Aliases, unknown arguments and the guard from plain parameters (for `model_validate` too)."""
        return prepare_fields(data, cls.model_fields)

    @classmethod
    def from_pretrained(
        cls,
        model_path: str | Path | None = None,
        policy: Policy | str | Path | Mapping[str, Any] | None = None,
        artifact: SteeringArtifact | str | Path | None = None,
        probe: ScoringProbe | str | Path | None = None,
        **fields: Any,
    ) -> GuardedChatModel:
        """`GuardedChatModel(model=model_path, policy=..., artifact=..., probe=..., **fields)`, kept as an alias.

        >>> chat = GuardedChatModel.from_pretrained("Qwen/Qwen2-Audio-7B-Instruct", policy="default",
        ...                                         artifact="artifacts/qwen2-audio")  # doctest: +SKIP
        """
        model = str(model_path) if model_path is not None else None
        return cls(model=model, policy=policy, artifact=artifact, probe=probe, **fields)

    @property
    def max_new_tokens(self) -> int | None:
        """`max_tokens` under its older name."""
        return self.max_tokens

    @property
    def _llm_type(self) -> str:
        return "guardrail-guarded-chat"

    @property
    def _identifying_params(self) -> dict[str, Any]:
        guard = self.guard
        return {
            "model_name": self._name(),
            "adapter": guard.adapter.name,
            "policy": guard.policy.name,
            "gate_mode": guard.policy.gate.mode,
            "artifact_id": guard.artifact.id if guard.artifact else None,
            **self._defaults(),
            "history": self.history,
        }

    def _get_ls_params(self, stop: list[str] | None = None, **kwargs: Any) -> Any:
        params = super()._get_ls_params(stop=stop, **kwargs)
        params["ls_provider"] = "guardrail"
        model = kwargs.get("model")
        params["ls_model_name"] = model if isinstance(model, str) else self._name()
        budget = next((kwargs[k] for k in ("max_tokens", "max_new_tokens") if kwargs.get(k) is not None), None)
        params["ls_max_tokens"] = budget or self.max_tokens or self.guard.policy.limits.max_new_tokens
        temperature = kwargs.get("temperature", self.temperature)
        if temperature is not None:
            params["ls_temperature"] = temperature
        if stop or self.stop:
            params["ls_stop"] = list(stop or self.stop or [])
        return params

    def _name(self) -> str:
        if self.model_name:
            return self.model_name
        config = getattr(self.guard.model, "config", None)
        return getattr(config, "name_or_path", "") or self.guard.adapter.name

    def _defaults(self) -> dict[str, Any]:
        """The fields a call's arguments update: the standard parameters and `generate_kwargs`."""
        defaults = {name: getattr(self, name) for name in STANDARD_PARAMS}
        return {**defaults, "generate_kwargs": dict(self.generate_kwargs)}

    # -- messages -> guard request ---------------------------------------------------
    def _convert_input(self, model_input: LanguageModelInput) -> PromptValue:
        prompt = super()._convert_input(model_input)  # invoke, stream and batch all start here
        check_convertible(prompt.to_messages())
        return prompt

    def _call(self, messages: Sequence[BaseMessage], kwargs: Mapping[str, Any]) -> GuardCall:
        files, policy = AudioFiles.from_policy(self.guard.policy), self.guard.policy
        call = request_from_messages(messages, self.guard.adapter, policy.system_prompt, self.history, files)
        call.request.update(request_options(kwargs))
        return call

    # -- tools and structured output -------------------------------------------------
    def bind_tools(
        self, tools: Sequence[Any], *, tool_choice: Any = None, **kwargs: Any
    ) -> Runnable[LanguageModelInput, AIMessage]:
        """This model with `tools` (pydantic models, functions, `BaseTool`s or OpenAI schemas) shown to it through
        its chat template; its tool calls come back in `AIMessage.tool_calls`. `tool_choice`: "auto" (default),
        "none", "any"/"required"/True (a call is forced: the answer opens with one) or a tool's name."""
        options = {"tools": tool_schemas(tools), **kwargs}
        if tool_choice is not None:
            options["tool_choice"] = tool_choice_of(tool_choice)
        return self.bind(**options)

    def with_structured_output(
        self, schema: Any = None, *, method: str = "function_calling", include_raw: bool = False, **kwargs: Any
    ) -> Runnable[LanguageModelInput, Any]:
        """Answers parsed into `schema` (a pydantic model, TypedDict or JSON schema): by a forced call of a tool
        whose parameters are the schema ("function_calling", the default, and "json_schema"), or by JSON mode
        ("json_mode": the answer opens with "{"; say in the prompt what JSON to write)."""
        if method not in STRUCTURED_METHODS:
            raise ValueError(f"method={method!r}; accepted: {', '.join(STRUCTURED_METHODS)}")
        kwargs.pop("strict", None)  # the schema guides the model; the answer is parsed, not constrained
        if method != "json_mode":
            return super().with_structured_output(schema, include_raw=include_raw, **kwargs)
        if kwargs:
            raise ValueError(f"unsupported arguments {sorted(kwargs)}")
        llm = self.bind(response_format={"type": "json_object"}, ls_structured_output_format=json_mode_format(schema))
        return with_raw(llm, json_mode_parser(schema), include_raw)

    def _options(
        self, stop: list[str] | None, kwargs: Mapping[str, Any], cancel: threading.Event | None = None
    ) -> CallOptions:
        options = call_options(self._defaults(), stop, kwargs, self._name())
        if cancel is not None:
            stopping = list(options.generate_kwargs.get("stopping_criteria") or [])
            options.generate_kwargs["stopping_criteria"] = StoppingCriteriaList([*stopping, CancelOnEvent(cancel)])
        return options

    def _message(self, result: GuardResult, call: GuardCall) -> AIMessage:
        return ai_message(result, call, self._name())

    # -- invoke ----------------------------------------------------------------------
    def _generate(
        self,
        messages: list[BaseMessage],
        stop: list[str] | None = None,
        run_manager: CallbackManagerForLLMRun | None = None,
        **kwargs: Any,
    ) -> ChatResult:
        return self._generate_cancellable(messages, stop, kwargs, None)

    def _generate_cancellable(
        self,
        messages: list[BaseMessage],
        stop: list[str] | None,
        kwargs: Mapping[str, Any],
        cancel: threading.Event | None,
    ) -> ChatResult:
        call = self._call(messages, kwargs)
        options = self._options(stop, kwargs, cancel)
        result = self.guard.generate(**call.request, **options.guard_kwargs())
        return ChatResult(generations=[ChatGeneration(message=self._message(result, call))])

    async def _agenerate(
        self,
        messages: list[BaseMessage],
        stop: list[str] | None = None,
        run_manager: AsyncCallbackManagerForLLMRun | None = None,
        **kwargs: Any,
    ) -> ChatResult:
        cancel = threading.Event()
        try:
            return await asyncio.to_thread(self._generate_cancellable, messages, stop, kwargs, cancel)
        except asyncio.CancelledError:
            cancel.set()  # the worker thread stops at its next token instead of running to the end
            raise

    # -- stream ----------------------------------------------------------------------
    def _stream(
        self,
        messages: list[BaseMessage],
        stop: list[str] | None = None,
        run_manager: CallbackManagerForLLMRun | None = None,
        **kwargs: Any,
    ) -> Iterator[ChatGenerationChunk]:
        call = self._call(messages, kwargs)
        cancel = threading.Event()
        options = self._options(stop, kwargs, cancel)
        for chunk in self._chunks(call, options, cancel):
            if run_manager:
                run_manager.on_llm_new_token(chunk.text, chunk=chunk)
            yield chunk

    def _chunks(self, call: GuardCall, options: CallOptions, cancel: threading.Event) -> Iterator[ChatGenerationChunk]:
        stream = self.guard.stream(**call.request, **options.guard_kwargs())
        try:
            for text in stream:
                yield ChatGenerationChunk(message=AIMessageChunk(content=text))
        finally:
            cancel.set()  # a consumer that stops early ends generation at the next token
        assert stream.result is not None  # set once the stream ends without an error
        yield final_chunk(stream.result, call, self._name())

    async def _astream(
        self,
        messages: list[BaseMessage],
        stop: list[str] | None = None,
        run_manager: AsyncCallbackManagerForLLMRun | None = None,
        **kwargs: Any,
    ) -> AsyncIterator[ChatGenerationChunk]:
        call = self._call(messages, kwargs)
        cancel = threading.Event()
        options = self._options(stop, kwargs, cancel)
        chunks = iterate_in_worker(functools.partial(self._chunks, call, options, cancel), cancel)
        async with aclosing(chunks):  # leaving early sets `cancel` now, not when the iterator is collected
            async for chunk in chunks:
                if run_manager:
                    await run_manager.on_llm_new_token(chunk.text, chunk=chunk)
                yield chunk
