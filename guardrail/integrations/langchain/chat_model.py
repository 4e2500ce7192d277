"""`GuardedChatModel`: a `Guard` as a LangChain chat model, so `prompt | guarded | parser`
works unchanged and every path (invoke, batch, stream and their async forms) goes through
the guard's gate and steering.

>>> from guardrail.integrations.langchain.chat_model import GuardedChatModel  # doctest: +SKIP
>>> chat = GuardedChatModel(guard=guard, max_new_tokens=64)  # doctest: +SKIP
>>> chat.invoke([HumanMessage([{"type": "text", "text": "Answer the question."},
...                             {"type": "audio", "base64": b64, "mime_type": "audio/wav"}])])  # doctest: +SKIP

What the guard can represent, and therefore what this model accepts:

- One user turn. The prompt must end with a `HumanMessage`. Earlier messages (history, a system
  prompt) raise `UnsupportedMessageError`, except a `SystemMessage` whose text equals the policy's
  `system_prompt` (the guard sends that prompt itself). With `history="last_turn"` earlier messages
  are dropped instead and `response_metadata["dropped_messages"]` counts them.
- Content: a string, or LangChain standard content blocks: text blocks, and at most one audio block
  as base64 (`{"type": "audio", "base64": ..., "mime_type": "audio/wav"}`, the older
  `{"type": "audio", "source_type": "base64", "data": ...}`, OpenAI's `input_audio`, a `file` block with
  an audio mime type), a `data:` URL, or a local file as a `file://` URL. The audio is sent first, then
  the text blocks joined by newlines, as the guard's adapter builds every prompt. Anything else
  (images, http URLs, provider file ids, several audio blocks, audio for a text-only model) raises
  `UnsupportedContentError`.
- Per call: `max_new_tokens=` (default: the field, else the policy's limit). `stop=` sequences are not
  supported (raises). Other generation settings go in the `generate_kwargs` field.

The decision record: `message.response_metadata["decision"]` (`Decision.to_dict()`), with
`model_name` and `finish_reason` beside it; `usage_metadata` holds the token counts. Callback
handlers get it in `on_llm_end(response)` as
`response.generations[0][0].message.response_metadata["decision"]`, on every path.
"""

from __future__ import annotations

import asyncio
import base64
import binascii
import contextvars
import functools
import threading
from collections.abc import AsyncIterator, Iterator, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal
from urllib.parse import unquote, urlparse
from urllib.request import url2pathname

import torch
from langchain_core.caches import BaseCache
from langchain_core.callbacks import (AsyncCallbackManager, AsyncCallbackManagerForLLMRun, CallbackManager,
                                      CallbackManagerForLLMRun)
from langchain_core.globals import get_llm_cache
from langchain_core.language_models import BaseChatModel, LanguageModelInput
from langchain_core.load import dumpd
from langchain_core.messages import AIMessage, AIMessageChunk, BaseMessage, HumanMessage, SystemMessage
from langchain_core.messages.ai import UsageMetadata
from langchain_core.outputs import ChatGeneration, ChatGenerationChunk, ChatResult, LLMResult
from langchain_core.runnables import RunnableConfig
from langchain_core.runnables.config import get_config_list
from pydantic import ConfigDict, Field
from transformers import StoppingCriteria, StoppingCriteriaList

from guardrail.defaults import default_probe
from guardrail.audio import load_audio
from guardrail.errors import RequestError, UnsupportedContentError, UnsupportedMessageError
from guardrail.guard import Guard
from guardrail.results import GuardResult

__all__ = ["GuardedChatModel", "UnsupportedContentError", "UnsupportedMessageError"]

ACCEPTED_CONTENT = ("a string, or content blocks: {'type': 'text', 'text': ...} and at most one audio block "
                    "({'type': 'audio', 'base64': ..., 'mime_type': 'audio/wav'}, {'type': 'audio', "
                    "'source_type': 'base64', 'data': ...}, {'type': 'input_audio', ...}, {'type': 'audio', "
                    "'url': 'data:audio/wav;base64,...' or 'file:///abs/path.wav'})")

_LC_ID_PREFIX = "lc_run-"  # langchain_core.utils.utils.LC_ID_PREFIX: ids of messages made in a run


@dataclass
class _Call:
    """One request ready for the guard, and what the response must say about how it was built."""

    request: dict[str, Any]
    dropped: int = 0


@dataclass
class _Slot:
    """One input of a batch: its run, its request, and its outcome."""

    run: Any = None
    call: _Call | None = None
    message: AIMessage | None = None
    error: Exception | None = None


class _Cancel(StoppingCriteria):
    """Stops generation once `event` is set (a consumer left a stream, or an async call was cancelled)."""

    def __init__(self, event: threading.Event):
        self.event = event

    def __call__(self, input_ids: torch.Tensor, scores: torch.Tensor, **kwargs: Any) -> torch.Tensor:
        return torch.full((input_ids.shape[0],), self.event.is_set(), dtype=torch.bool, device=input_ids.device)


class _Failure:
    def __init__(self, exc: BaseException):
        self.exc = exc


_DONE = object()


class GuardedChatModel(BaseChatModel):
    """A LangChain chat model whose every answer is generated by `guard` (gate, probe, steering).

    Build it from a `Guard`, or with `GuardedChatModel.from_pretrained(path, policy=..., artifact=...)`.
    `batch`/`abatch` send their inputs through one `Guard.generate_batch` call (in groups of at most
    `max_concurrency` inputs when the config sets it, and of the policy's `limits.max_batch`);
    `stream`/`astream` yield text as tokens are generated; async methods run generation in a worker thread.
    """

    model_config = ConfigDict(arbitrary_types_allowed=True)

    guard: Guard
    """The guard that answers every request."""
    max_new_tokens: int | None = None
    """New-token budget per answer; None = the policy's `limits.max_new_tokens`."""
    generate_kwargs: dict[str, Any] = Field(default_factory=dict)
    """Extra `model.generate` arguments (e.g. sampling settings); greedy decoding when empty."""
    history: Literal["error", "last_turn"] = "error"
    """What to do with messages before the last human turn: raise (default), or drop them."""
    model_name: str | None = None
    """Name reported in response_metadata; default: the model's `name_or_path`, else the adapter name."""

    # -- construction ----------------------------------------------------------------
    @classmethod
    def from_pretrained(cls, model_path: str | None = None, policy: Any = None, artifact: Any = None,
                        probe: Any = None, *, adapter: str | None = None, dtype: str = "auto",
                        device: str | None = None, **fields: Any) -> "GuardedChatModel":
        """Load a model directory or hub id and wrap it in a `Guard`.

        `policy`: a `Policy`, a policy file or shipped policy name, or a dict (None: the paper's
        defaults). `artifact`: a `SteeringArtifact` or its directory; `probe`: a probe directory or object
        (default: ARTIFACT/probe when the policy gates by probe). Arguments left out come from the
        policy's `model:` section when it has one. Other keyword arguments set fields (`max_new_tokens=`).

        >>> chat = GuardedChatModel.from_pretrained("Qwen/Qwen2-Audio-7B-Instruct", policy="default",
        ...                                         artifact="artifacts/qwen2-audio")  # doctest: +SKIP
        """
        from guardrail.steering.artifact import SteeringArtifact
        from guardrail.models.loading import load_model
        from guardrail.policy.schema import Policy

        if isinstance(policy, (str, Path)):
            from guardrail.policy.schema import resolve_policy_ref
            policy = Policy.from_yaml(resolve_policy_ref(str(policy)))
        elif isinstance(policy, Mapping):
            policy = Policy.from_dict(dict(policy))
        policy = policy or Policy()
        section = getattr(policy, "model", None)  # the policy's model: section (path, adapter, artifact, probe)
        model_path = model_path or getattr(section, "path", None)
        if not model_path:
            raise RequestError("no model to load: pass model_path, or set model.path in the policy")
        adapter = adapter or getattr(section, "adapter", None)
        artifact = artifact if artifact is not None else getattr(section, "artifact", None)
        probe = probe if probe is not None else getattr(section, "probe", None)
        if probe is None:
            probe = default_probe(artifact, policy.gate.mode)
        if isinstance(artifact, (str, Path)):
            artifact = SteeringArtifact.load(artifact)
        model, processor, chosen = load_model(str(model_path), adapter=adapter, dtype=dtype, device=device)
        guard = Guard(model, processor, policy=policy, artifact=artifact, adapter=chosen, probe=probe)
        fields.setdefault("model_name", str(model_path))
        return cls(guard=guard, **fields)

    @property
    def _llm_type(self) -> str:
        return "guardrail-guarded-chat"

    @property
    def _identifying_params(self) -> dict[str, Any]:
        guard = self.guard
        return {"model_name": self._name(), "adapter": guard.adapter.name, "policy": guard.policy.name,
                "gate_mode": guard.policy.gate.mode, "artifact_id": guard.artifact.id if guard.artifact else None,
                "max_new_tokens": self.max_new_tokens, "generate_kwargs": dict(self.generate_kwargs),
                "history": self.history}

    def _get_ls_params(self, stop: list[str] | None = None, **kwargs: Any) -> Any:
        params = super()._get_ls_params(stop=stop, **kwargs)
        params["ls_provider"] = "guardrail"
        params["ls_model_name"] = self._name()
        return params

    def _name(self) -> str:
        if self.model_name:
            return self.model_name
        config = getattr(self.guard.model, "config", None)
        return getattr(config, "name_or_path", "") or self.guard.adapter.name

    # -- messages -> guard request ---------------------------------------------------
    def _call(self, messages: Sequence[BaseMessage]) -> _Call:
        if not messages:
            raise UnsupportedMessageError("no messages: pass at least one HumanMessage")
        last = messages[-1]
        if not isinstance(last, HumanMessage):
            raise UnsupportedMessageError(
                f"the last message is a {type(last).__name__}; GuardedChatModel answers one user turn, so the "
                "prompt must end with a HumanMessage")
        earlier = list(messages[:-1])
        if self.history == "error":
            system_prompt = self.guard.policy.system_prompt
            extra = [m for m in earlier
                     if not (isinstance(m, SystemMessage) and system_prompt is not None
                             and _text_of(m) == system_prompt)]
            if extra:
                kinds = ", ".join(type(m).__name__ for m in extra)
                raise UnsupportedMessageError(
                    f"GuardedChatModel sends one user turn to the guard, but the prompt has {len(extra)} earlier "
                    f"message(s) it cannot represent ({kinds}). Pass only the user's message; put a system prompt "
                    f"in the policy (system_prompt: ..., now {system_prompt!r}); or build the model with "
                    "history='last_turn' to send the last HumanMessage alone")
        text, audio = self._content(last)
        if audio is None and not text.strip():
            raise UnsupportedContentError("the HumanMessage has neither text nor audio; pass at least one")
        return _Call({"audio": audio, "text": text}, dropped=len(earlier) if self.history == "last_turn" else 0)

    def _content(self, message: HumanMessage) -> tuple[str, Any]:
        texts: list[str] = []
        audio: list[tuple[int, Any]] = []
        for i, block in enumerate(message.content_blocks):
            kind = block.get("type")
            if kind == "text":
                texts.append(block.get("text") or "")
            elif kind == "audio" or kind == "file" and str(block.get("mime_type", "")).lower().startswith("audio/"):
                audio.append((i, _audio_source(block, i)))
            else:
                raise UnsupportedContentError(f"content block {i} ({_describe(block)}) is not supported; "
                                              f"accepted: {ACCEPTED_CONTENT}")
        if len(audio) > 1:
            raise UnsupportedContentError(f"content blocks {[i for i, _ in audio]} are audio; the guard takes at "
                                          "most one audio clip per request: send one clip per message")
        if audio:
            self.guard.adapter.require_audio_support(f"content block {audio[0][0]}", UnsupportedContentError)
        return "\n".join(texts), audio[0][1] if audio else None

    def _options(self, stop: list[str] | None, kwargs: Mapping[str, Any],
                 cancel: threading.Event | None = None) -> tuple[int | None, dict[str, Any]]:
        if stop:
            raise RequestError(f"stop sequences {stop!r} are not supported by GuardedChatModel; the guard "
                               "generates until EOS or max_new_tokens")
        options = dict(kwargs)
        options.pop("stream", None)
        max_new_tokens = options.pop("max_new_tokens", self.max_new_tokens)
        if options:
            raise TypeError(f"GuardedChatModel got unsupported call arguments {sorted(options)}; per call it takes "
                            "max_new_tokens=..., other generation settings go in the generate_kwargs field")
        generate_kwargs = dict(self.generate_kwargs)
        if cancel is not None:
            stopping = list(generate_kwargs.get("stopping_criteria") or [])
            generate_kwargs["stopping_criteria"] = StoppingCriteriaList([*stopping, _Cancel(cancel)])
        return max_new_tokens, generate_kwargs

    # -- guard result -> LangChain ---------------------------------------------------
    def _metadata(self, result: GuardResult, call: _Call) -> dict[str, Any]:
        meta = {"model_name": self._name(), "finish_reason": result.decision.finish_reason,
                "decision": result.decision.to_dict()}
        if call.dropped:
            meta["dropped_messages"] = call.dropped
        return meta

    def _message(self, result: GuardResult, call: _Call) -> AIMessage:
        return AIMessage(content=result.text, response_metadata=self._metadata(result, call),
                         usage_metadata=_usage(result))

    # -- invoke ----------------------------------------------------------------------
    def _generate(self, messages: list[BaseMessage], stop: list[str] | None = None,
                  run_manager: CallbackManagerForLLMRun | None = None, **kwargs: Any) -> ChatResult:
        return self._generate_cancellable(messages, stop, kwargs, None)

    def _generate_cancellable(self, messages: list[BaseMessage], stop: list[str] | None, kwargs: Mapping[str, Any],
                              cancel: threading.Event | None) -> ChatResult:
        call = self._call(messages)
        max_new_tokens, generate_kwargs = self._options(stop, kwargs, cancel)
        result = self.guard.generate(**call.request, max_new_tokens=max_new_tokens, **generate_kwargs)
        return ChatResult(generations=[ChatGeneration(message=self._message(result, call))])

    async def _agenerate(self, messages: list[BaseMessage], stop: list[str] | None = None,
                         run_manager: AsyncCallbackManagerForLLMRun | None = None, **kwargs: Any) -> ChatResult:
        cancel = threading.Event()
        try:
            return await asyncio.to_thread(self._generate_cancellable, messages, stop, kwargs, cancel)
        except asyncio.CancelledError:
            cancel.set()  # the worker thread stops at its next token instead of running to the end
            raise

    # -- stream ----------------------------------------------------------------------
    def _stream(self, messages: list[BaseMessage], stop: list[str] | None = None,
                run_manager: CallbackManagerForLLMRun | None = None, **kwargs: Any) -> Iterator[ChatGenerationChunk]:
        call = self._call(messages)
        cancel = threading.Event()
        max_new_tokens, generate_kwargs = self._options(stop, kwargs, cancel)
        for chunk in self._chunks(call, max_new_tokens, generate_kwargs, cancel):
            if run_manager:
                run_manager.on_llm_new_token(chunk.text, chunk=chunk)
            yield chunk

    def _chunks(self, call: _Call, max_new_tokens: int | None, generate_kwargs: dict[str, Any],
                cancel: threading.Event) -> Iterator[ChatGenerationChunk]:
        stream = self.guard.stream(**call.request, max_new_tokens=max_new_tokens, **generate_kwargs)
        try:
            for text in stream:
                yield ChatGenerationChunk(message=AIMessageChunk(content=text))
        finally:
            cancel.set()  # a consumer that stops early ends generation at the next token
        result = stream.result
        yield ChatGenerationChunk(message=AIMessageChunk(
            content="", response_metadata=self._metadata(result, call), usage_metadata=_usage(result),
            chunk_position="last"))

    async def _astream(self, messages: list[BaseMessage], stop: list[str] | None = None,
                       run_manager: AsyncCallbackManagerForLLMRun | None = None,
                       **kwargs: Any) -> AsyncIterator[ChatGenerationChunk]:
        call = self._call(messages)
        cancel = threading.Event()
        max_new_tokens, generate_kwargs = self._options(stop, kwargs, cancel)
        loop = asyncio.get_running_loop()
        queue: asyncio.Queue = asyncio.Queue()

        def put(item: Any) -> None:
            try:
                loop.call_soon_threadsafe(queue.put_nowait, item)
            except RuntimeError:  # the loop is closed: nobody is listening any more
                pass

        def work() -> None:  # in a worker thread: audio decoding, then generation, never on the loop
            try:
                for chunk in self._chunks(call, max_new_tokens, generate_kwargs, cancel):
                    put(chunk)
            except BaseException as exc:  # re-raised in the consumer
                put(_Failure(exc))
            finally:
                put(_DONE)

        worker = loop.run_in_executor(None, functools.partial(contextvars.copy_context().run, work))
        try:
            while (item := await queue.get()) is not _DONE:
                if isinstance(item, _Failure):
                    raise item.exc
                if run_manager:
                    await run_manager.on_llm_new_token(item.text, chunk=item)
                yield item
        finally:
            cancel.set()
        await worker

    # -- batch -----------------------------------------------------------------------
    def _batch_falls_back(self) -> bool:
        """An LLM cache answers per input (hits skip generation): keep the per-input path then."""
        if self.cache is False:
            return False
        return isinstance(self.cache, BaseCache) or get_llm_cache() is not None

    def batch(self, inputs: list[LanguageModelInput], config: RunnableConfig | list[RunnableConfig] | None = None,
              *, return_exceptions: bool = False, **kwargs: Any) -> list[BaseMessage | Exception]:
        """Answer all inputs with one `Guard.generate_batch` call (one per `max_concurrency` inputs, and
        per `limits.max_batch` of the policy).

        Each input still gets its own run: `on_chat_model_start`, then `on_llm_end` or `on_llm_error`."""
        if not inputs:
            return []
        if self._batch_falls_back():
            return super().batch(inputs, config, return_exceptions=return_exceptions, **kwargs)
        configs = get_config_list(config, len(inputs))
        size = self._group_size(configs[0], len(inputs))
        out: list[Any] = []
        for start in range(0, len(inputs), size):
            group = range(start, min(start + size, len(inputs)))
            slots: list[_Slot] = []
            try:
                slots += [self._start_sync(inputs[i], configs[i], len(group), kwargs) for i in group]
                self._run_group(slots, kwargs)
            except BaseException as exc:  # interrupted: close the runs already started, then give up
                for slot in slots:
                    if slot.run is not None:
                        slot.run.on_llm_error(exc, response=LLMResult(generations=[]))
                raise
            for slot in slots:
                if slot.run is not None:
                    if slot.error is not None:
                        slot.run.on_llm_error(slot.error, response=LLMResult(generations=[]))
                    else:
                        slot.run.on_llm_end(LLMResult(generations=[[ChatGeneration(message=slot.message)]]))
            out += self._outcomes(slots, return_exceptions)
        return out

    async def abatch(self, inputs: list[LanguageModelInput],
                     config: RunnableConfig | list[RunnableConfig] | None = None, *, return_exceptions: bool = False,
                     **kwargs: Any) -> list[BaseMessage | Exception]:
        """`batch` for async code: the batched generation runs in a worker thread."""
        if not inputs:
            return []
        if self._batch_falls_back():
            return await super().abatch(inputs, config, return_exceptions=return_exceptions, **kwargs)
        configs = get_config_list(config, len(inputs))
        size = self._group_size(configs[0], len(inputs))
        out: list[Any] = []
        for start in range(0, len(inputs), size):
            group = range(start, min(start + size, len(inputs)))
            slots: list[_Slot] = []
            try:
                for i in group:
                    slots.append(await self._start_async(inputs[i], configs[i], len(group), kwargs))
                await asyncio.to_thread(self._run_group, slots, kwargs)
            except BaseException as exc:  # cancelled or interrupted: close the runs already started
                for slot in slots:
                    if slot.run is not None:
                        await slot.run.on_llm_error(exc, response=LLMResult(generations=[]))
                raise
            for slot in slots:
                if slot.run is not None:
                    if slot.error is not None:
                        await slot.run.on_llm_error(slot.error, response=LLMResult(generations=[]))
                    else:
                        await slot.run.on_llm_end(LLMResult(generations=[[ChatGeneration(message=slot.message)]]))
            out += self._outcomes(slots, return_exceptions)
        return out

    def _group_size(self, config: RunnableConfig, n: int) -> int:
        """Inputs per `generate_batch` call: all, capped by `max_concurrency` and the policy's max_batch."""
        caps = [config.get("max_concurrency"), getattr(self.guard.policy.limits, "max_batch", None)]
        return min([n, *(c for c in caps if c)])

    def _run_args(self, config: RunnableConfig, kwargs: Mapping[str, Any]) -> tuple[dict, dict, dict]:
        stop = kwargs.get("stop")
        rest = {k: v for k, v in kwargs.items() if k != "stop"}
        params = self._get_invocation_params(stop=stop, **rest)
        # the tracing metadata stream() and generate() send (the *_with_defaults form where it exists)
        ls_params = getattr(self, "_get_ls_params_with_defaults", self._get_ls_params)
        metadata = {**(config.get("metadata") or {}), **ls_params(stop=stop, **rest)}
        return params, {"stop": stop}, metadata

    def _start_sync(self, value: LanguageModelInput, config: RunnableConfig, size: int,
                    kwargs: Mapping[str, Any]) -> _Slot:
        slot = _Slot()
        try:
            messages = self._convert_input(value).to_messages()
        except Exception as exc:  # not a prompt at all: fails like invoke does, before a run starts
            slot.error = exc
            return slot
        params, options, metadata = self._run_args(config, kwargs)
        manager = CallbackManager.configure(config.get("callbacks"), self.callbacks, self.verbose, config.get("tags"),
                                            self.tags, metadata, self.metadata)
        (slot.run,) = manager.on_chat_model_start(dumpd(self), [messages], invocation_params=params,
                                                  options=options, name=config.get("run_name"),
                                                  run_id=config.get("run_id"), batch_size=size)
        self._prepare(slot, messages)
        return slot

    async def _start_async(self, value: LanguageModelInput, config: RunnableConfig, size: int,
                           kwargs: Mapping[str, Any]) -> _Slot:
        slot = _Slot()
        try:
            messages = self._convert_input(value).to_messages()
        except Exception as exc:
            slot.error = exc
            return slot
        params, options, metadata = self._run_args(config, kwargs)
        manager = AsyncCallbackManager.configure(config.get("callbacks"), self.callbacks, self.verbose,
                                                 config.get("tags"), self.tags, metadata, self.metadata)
        (slot.run,) = await manager.on_chat_model_start(dumpd(self), [messages], invocation_params=params,
                                                        options=options, name=config.get("run_name"),
                                                        run_id=config.get("run_id"), batch_size=size)
        self._prepare(slot, messages)
        return slot

    def _prepare(self, slot: _Slot, messages: list[BaseMessage]) -> None:
        try:
            slot.call = self._call(messages)
        except Exception as exc:
            slot.error = exc

    def _run_group(self, slots: list[_Slot], kwargs: Mapping[str, Any]) -> None:
        """One `generate_batch` call for the slots that are ready; errors stay with their own input."""
        kwargs = dict(kwargs)
        stop = kwargs.pop("stop", None)
        guard = self.guard
        rate = guard.adapter.sampling_rate(guard.processor) if guard.adapter.takes_audio else None
        for slot in slots:
            audio = slot.call.request["audio"] if slot.error is None else None
            if audio is not None:  # decode here so a bad clip fails its own input, not the whole batch
                try:
                    slot.call.request["audio"] = (load_audio(audio, target_sr=rate,
                                                             max_seconds=guard.policy.limits.max_audio_seconds), rate)
                except Exception as exc:
                    slot.error = exc
        ready = [slot for slot in slots if slot.error is None]
        if not ready:
            return
        try:
            max_new_tokens, generate_kwargs = self._options(stop, kwargs)
            if self.rate_limiter:
                self.rate_limiter.acquire(blocking=True)
            results = guard.generate_batch([slot.call.request for slot in ready], max_new_tokens=max_new_tokens,
                                           **generate_kwargs)
        except Exception as exc:
            for slot in ready:
                slot.error = exc
            return
        for slot, result in zip(ready, results):
            slot.message = self._message(result, slot.call)
            if slot.run is not None:
                slot.message.id = f"{_LC_ID_PREFIX}-{slot.run.run_id}-0"
            if self.output_version == "v1":
                slot.message = slot.message.model_copy(update={
                    "content": slot.message.content_blocks,
                    "response_metadata": {**slot.message.response_metadata, "output_version": "v1"}})

    @staticmethod
    def _outcomes(slots: list[_Slot], return_exceptions: bool) -> list[Any]:
        if not return_exceptions:
            for slot in slots:
                if slot.error is not None:
                    raise slot.error
        return [slot.error if slot.error is not None else slot.message for slot in slots]


# -- helpers ---------------------------------------------------------------------------
def _usage(result: GuardResult) -> UsageMetadata:
    d = result.decision
    return UsageMetadata(input_tokens=d.prompt_tokens, output_tokens=d.completion_tokens,
                         total_tokens=d.prompt_tokens + d.completion_tokens)


def _text_of(message: BaseMessage) -> str:
    return "\n".join(b.get("text") or "" for b in message.content_blocks if b.get("type") == "text")


def _describe(block: Mapping[str, Any]) -> str:
    kind = block.get("type")
    if kind == "non_standard" and isinstance(block.get("value"), Mapping):
        return f"type {block['value'].get('type')!r}, not a LangChain standard block"
    source = next((k for k in ("url", "base64", "file_id", "path", "data") if k in block), None)
    where = f", {source}" if source else ""
    if source == "url":
        where = f", url {str(block['url'])[:40]!r}"
    mime = f", {block['mime_type']}" if block.get("mime_type") else ""
    return f"type {kind!r}{where}{mime}"


def _audio_source(block: Mapping[str, Any], index: int) -> Any:
    """Bytes or a local path for an audio block; raises for sources that need a network or a provider."""
    mime = str(block.get("mime_type") or "").lower()
    if mime and not (mime.startswith("audio/") or mime == "application/octet-stream"):
        raise UnsupportedContentError(f"content block {index} ({_describe(block)}) is an audio block with mime "
                                      f"type {mime!r}; send audio (audio/wav, audio/flac, audio/ogg, ...)")
    if block.get("base64") is not None:
        return _b64(block["base64"], index)
    url = block.get("url")
    if isinstance(url, str):
        parsed = urlparse(url)
        if parsed.scheme == "data":
            header, sep, data = url[5:].partition(",")
            if not sep or not header.endswith(";base64"):
                raise UnsupportedContentError(f"content block {index}: a data: URL must be base64 "
                                              "('data:audio/wav;base64,...')")
            return _b64(data, index)
        if parsed.scheme == "file" and parsed.netloc in ("", "localhost"):
            return url2pathname(unquote(parsed.path))
        raise UnsupportedContentError(
            f"content block {index} ({_describe(block)}) points at a remote URL; the guard does not fetch audio: "
            "download it and send base64 data, or a local file as 'file:///abs/path.wav'")
    if block.get("file_id") is not None:
        raise UnsupportedContentError(f"content block {index} ({_describe(block)}) refers to a provider's file "
                                      "store; send the audio itself as base64 data or a file:// URL")
    raise UnsupportedContentError(f"content block {index} ({_describe(block)}) has no audio source the guard can "
                                  f"use; accepted: {ACCEPTED_CONTENT}")


def _b64(data: Any, index: int) -> bytes:
    if isinstance(data, (bytes, bytearray)):
        data = bytes(data).decode("ascii", errors="replace")
    try:
        return base64.b64decode("".join(str(data).split()), validate=True)
    except (binascii.Error, ValueError) as exc:
        raise UnsupportedContentError(f"content block {index}: the audio's base64 data does not decode ({exc}); "
                                      "send standard base64 (base64.b64encode(wav_bytes).decode())") from None
