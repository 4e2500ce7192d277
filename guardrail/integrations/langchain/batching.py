"""The batch machinery of `GuardedChatModel`: inputs in groups, one callback run per input, one
`Guard.generate_batch` call per group, and each input's error kept with that input."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from langchain_core.messages import AIMessage
from langchain_core.outputs import ChatGeneration, LLMResult
from langchain_core.runnables import RunnableConfig

from guardrail.audio import load_audio
from guardrail.guard import Guard
from guardrail.integrations.langchain.content import GuardCall

__all__ = ["Slot", "aclose_runs", "afail_runs", "close_runs", "decode_audio", "fail_runs", "groups", "outcomes"]


@dataclass
class Slot:
    """One input of a batch: its run, its request, and its outcome."""

    run: Any = None  # its CallbackManagerForLLMRun (AsyncCallbackManagerForLLMRun in abatch) once started
    call: GuardCall | None = None
    message: AIMessage | None = None
    error: Exception | None = None


def groups(n: int, config: RunnableConfig, max_batch: int | None) -> list[range]:
    """The inputs of each `generate_batch` call: all, in groups capped by `max_concurrency` and `max_batch`."""
    size = min([n, *(c for c in (config.get("max_concurrency"), max_batch) if c)])
    return [range(start, min(start + size, n)) for start in range(0, n, size)]


def decode_audio(slots: Sequence[Slot], guard: Guard) -> None:
    """Replaces each ready slot's audio source by (waveform, rate): a bad clip fails its own input only."""
    rate = guard.adapter.sampling_rate(guard.processor) if guard.adapter.takes_audio else None
    for slot in slots:
        audio = slot.call.request["audio"] if slot.error is None else None
        if audio is not None:
            try:
                slot.call.request["audio"] = (
                    load_audio(audio, target_sr=rate, max_seconds=guard.policy.limits.max_audio_seconds),
                    rate,
                )
            except Exception as exc:
                slot.error = exc


def close_runs(slots: Sequence[Slot]) -> None:
    """Ends each started run: `on_llm_end` with its message, or `on_llm_error` with its error."""
    for slot in slots:
        if slot.run is not None:
            if slot.error is not None:
                slot.run.on_llm_error(slot.error, response=LLMResult(generations=[]))
            else:
                slot.run.on_llm_end(LLMResult(generations=[[ChatGeneration(message=slot.message)]]))


async def aclose_runs(slots: Sequence[Slot]) -> None:
    """`close_runs` for async runs."""
    for slot in slots:
        if slot.run is not None:
            if slot.error is not None:
                await slot.run.on_llm_error(slot.error, response=LLMResult(generations=[]))
            else:
                await slot.run.on_llm_end(LLMResult(generations=[[ChatGeneration(message=slot.message)]]))


def fail_runs(slots: Sequence[Slot], exc: BaseException) -> None:
    """Ends every started run with `exc` (the group was interrupted)."""
    for slot in slots:
        if slot.run is not None:
            slot.run.on_llm_error(exc, response=LLMResult(generations=[]))


async def afail_runs(slots: Sequence[Slot], exc: BaseException) -> None:
    """`fail_runs` for async runs (the group was cancelled or interrupted)."""
    for slot in slots:
        if slot.run is not None:
            await slot.run.on_llm_error(exc, response=LLMResult(generations=[]))


def outcomes(slots: Sequence[Slot], return_exceptions: bool) -> list[Any]:
    """Each slot's message or error, in order; raises the first error unless `return_exceptions`."""
    if not return_exceptions:
        for slot in slots:
            if slot.error is not None:
                raise slot.error
    return [slot.error if slot.error is not None else slot.message for slot in slots]
