"""The batch machinery of `GuardedChatModel`: inputs in groups, one callback run per input, one
`Guard.generate_batch` call per group, and each input's error kept with that input."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any, Generic, TypeVar

from langchain_core.caches import BaseCache
from langchain_core.callbacks import (
    AsyncCallbackManager,
    AsyncCallbackManagerForLLMRun,
    CallbackManager,
    CallbackManagerForLLMRun,
)
from langchain_core.globals import get_llm_cache
from langchain_core.language_models import BaseChatModel
from langchain_core.load import dumpd
from langchain_core.messages import AIMessage, BaseMessage
from langchain_core.outputs import ChatGeneration, LLMResult
from langchain_core.runnables import RunnableConfig

from guardrail.audio import load_audio
from guardrail.guard import Guard
from guardrail.integrations.langchain.content import GuardCall

__all__ = [
    "RunArgs",
    "Slot",
    "aclose_runs",
    "afail_runs",
    "aopen_run",
    "close_runs",
    "decode_audio",
    "fail_runs",
    "groups",
    "open_run",
    "outcomes",
    "uses_llm_cache",
]

R = TypeVar("R", CallbackManagerForLLMRun, AsyncCallbackManagerForLLMRun)


@dataclass
class Slot(Generic[R]):
    """One input of a batch: its run (a sync or an async callback run), its request, and its outcome."""

    run: R | None = None
    call: GuardCall | None = None
    message: AIMessage | None = None
    error: Exception | None = None

    @property
    def pending(self) -> GuardCall | None:
        """The request still to answer: None once the slot failed (a slot without an error has its call)."""
        return self.call if self.error is None else None


@dataclass
class RunArgs:
    """What a chat model's run reports at its start: as `stream()` and `generate()` send them."""

    params: dict[str, Any]  # invocation params
    options: dict[str, Any]  # {"stop": ...}
    metadata: dict[str, Any]  # the config's metadata and the ls_* params


def _configure_args(model: BaseChatModel, config: RunnableConfig, args: RunArgs) -> tuple[Any, ...]:
    """Callback-manager arguments of one input's run, as LangChain's own `generate` passes them."""
    return (
        config.get("callbacks"),
        model.callbacks,
        model.verbose,
        config.get("tags"),
        model.tags,
        args.metadata,
        model.metadata,
    )


def _start_kwargs(config: RunnableConfig, size: int, args: RunArgs) -> dict[str, Any]:
    """Keyword arguments of `on_chat_model_start` for one input of a batch of `size`."""
    return {
        "invocation_params": args.params,
        "options": args.options,
        "name": config.get("run_name"),
        "run_id": config.get("run_id"),
        "batch_size": size,
    }


def open_run(
    model: BaseChatModel, messages: list[BaseMessage], config: RunnableConfig, size: int, args: RunArgs
) -> CallbackManagerForLLMRun:
    """Starts the callback run of one input of a batch of `size` (`on_chat_model_start`)."""
    manager = CallbackManager.configure(*_configure_args(model, config, args))
    (run,) = manager.on_chat_model_start(dumpd(model), [messages], **_start_kwargs(config, size, args))
    return run


async def aopen_run(
    model: BaseChatModel, messages: list[BaseMessage], config: RunnableConfig, size: int, args: RunArgs
) -> AsyncCallbackManagerForLLMRun:
    """`open_run` for async runs."""
    manager = AsyncCallbackManager.configure(*_configure_args(model, config, args))
    (run,) = await manager.on_chat_model_start(dumpd(model), [messages], **_start_kwargs(config, size, args))
    return run


def groups(n: int, config: RunnableConfig, max_batch: int | None) -> list[range]:
    """The inputs of each `generate_batch` call: all, in groups capped by `max_concurrency` and `max_batch`."""
    size = min([n, *(c for c in (config.get("max_concurrency"), max_batch) if c)])
    return [range(start, min(start + size, n)) for start in range(0, n, size)]


def decode_audio(slots: Sequence[Slot[Any]], guard: Guard) -> None:
    """Replaces each ready slot's audio sources (its request's, or its conversation's) by (waveform, rate): a
    bad clip fails its own input only."""
    rate = guard.adapter.sampling_rate(guard.processor) if guard.adapter.takes_audio else None
    limit = guard.policy.limits.max_audio_seconds
    for slot in slots:
        call = slot.pending
        if call is None:
            continue
        holders = [call.request] if call.request.get("audio") is not None else []
        for message in call.request.get("messages") or []:
            content = message.get("content")
            holders += [b for b in content if b.get("type") == "audio"] if isinstance(content, list) else []
        try:
            for holder in holders:
                assert rate is not None  # request_from_messages refuses audio for a model without audio input
                holder["audio"] = (load_audio(holder["audio"], target_sr=rate, max_seconds=limit), rate)
        except Exception as exc:
            slot.error = exc


def _end(slot: Slot[Any]) -> LLMResult:
    """The `on_llm_end` response of a slot that did not fail: its message."""
    assert slot.message is not None  # generate_batch answers every request it is given
    return LLMResult(generations=[[ChatGeneration(message=slot.message)]])


def close_runs(slots: Sequence[Slot[CallbackManagerForLLMRun]]) -> None:
    """Ends each started run: `on_llm_end` with its message, or `on_llm_error` with its error."""
    for slot in slots:
        if slot.run is not None:
            if slot.error is not None:
                slot.run.on_llm_error(slot.error, response=LLMResult(generations=[]))
            else:
                slot.run.on_llm_end(_end(slot))


async def aclose_runs(slots: Sequence[Slot[AsyncCallbackManagerForLLMRun]]) -> None:
    """`close_runs` for async runs."""
    for slot in slots:
        if slot.run is not None:
            if slot.error is not None:
                await slot.run.on_llm_error(slot.error, response=LLMResult(generations=[]))
            else:
                await slot.run.on_llm_end(_end(slot))


def fail_runs(slots: Sequence[Slot[CallbackManagerForLLMRun]], exc: BaseException) -> None:
    """Ends every started run with `exc` (the group was interrupted)."""
    for slot in slots:
        if slot.run is not None:
            slot.run.on_llm_error(exc, response=LLMResult(generations=[]))


async def afail_runs(slots: Sequence[Slot[AsyncCallbackManagerForLLMRun]], exc: BaseException) -> None:
    """`fail_runs` for async runs (the group was cancelled or interrupted)."""
    for slot in slots:
        if slot.run is not None:
            await slot.run.on_llm_error(exc, response=LLMResult(generations=[]))


def outcomes(slots: Sequence[Slot[Any]], return_exceptions: bool) -> list[Any]:
    """Each slot's message or error, in order; raises the first error unless `return_exceptions`."""
    if not return_exceptions:
        for slot in slots:
            if slot.error is not None:
                raise slot.error
    return [slot.error if slot.error is not None else slot.message for slot in slots]


def uses_llm_cache(model: BaseChatModel) -> bool:
    """An LLM cache answers per input (hits skip generation): batches keep the per-input path then."""
    if model.cache is False:
        return False
    return isinstance(model.cache, BaseCache) or get_llm_cache() is not None
