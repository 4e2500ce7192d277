"""`batch`/`abatch` of `GuardedChatModel`: one `Guard.generate_batch` call per group of inputs, with one
callback run per input and each input's error kept with that input (the machinery is in `batching`)."""

from __future__ import annotations

import asyncio
from collections.abc import Mapping, Sequence
from typing import Any

from langchain_core.callbacks import AsyncCallbackManagerForLLMRun, CallbackManagerForLLMRun
from langchain_core.language_models import BaseChatModel, LanguageModelInput
from langchain_core.messages import AIMessage, BaseMessage
from langchain_core.runnables import RunnableConfig
from langchain_core.runnables.config import get_config_list
from langchain_core.utils.function_calling import convert_to_json_schema

from guardrail.guard import Guard
from guardrail.integrations.langchain.batching import (
    RunArgs,
    Slot,
    aclose_runs,
    afail_runs,
    aopen_run,
    close_runs,
    decode_audio,
    fail_runs,
    groups,
    open_run,
    outcomes,
    uses_llm_cache,
)
from guardrail.integrations.langchain.content import GuardCall
from guardrail.integrations.langchain.messages import run_message
from guardrail.integrations.langchain.options import CallOptions
from guardrail.results import GuardResult

__all__ = ["BatchedChatModel"]


def _structured_output_option(kwargs: dict[str, Any]) -> dict[str, Any]:
    """The `ls_structured_output_format` run option, popped from `kwargs`, as LangChain's generate sends it."""
    fmt = kwargs.pop("ls_structured_output_format", None)
    if not fmt:
        return {}
    try:
        schema = convert_to_json_schema(fmt["schema"])
    except ValueError:
        return {}
    return {"ls_structured_output_format": {"kwargs": fmt.get("kwargs", {}), "schema": schema}}


class BatchedChatModel(BaseChatModel):
    """A chat model over `guard` whose batches are batched generation. Subclasses say how messages become
    a request (`_call`), what a call's options are (`_options`) and how a result becomes a message (`_message`)."""

    guard: Guard
    """The guard that answers every request."""

    def _call(self, messages: Sequence[BaseMessage], kwargs: Mapping[str, Any]) -> GuardCall:
        raise NotImplementedError

    def _options(self, stop: list[str] | None, kwargs: Mapping[str, Any]) -> CallOptions:
        raise NotImplementedError

    def _message(self, result: GuardResult, call: GuardCall) -> AIMessage:
        raise NotImplementedError

    def batch(
        self,
        inputs: list[LanguageModelInput],
        config: RunnableConfig | list[RunnableConfig] | None = None,
        *,
        return_exceptions: bool = False,
        **kwargs: Any,
    ) -> list[AIMessage]:
        """Answer all inputs with one `Guard.generate_batch` call (one per `max_concurrency` inputs, and
        per `limits.max_batch` of the policy).

        Each input still gets its own run: `on_chat_model_start`, then `on_llm_end` or `on_llm_error`. With
        `return_exceptions=True` an input's error takes its place in the list."""
        if not inputs:
            return []
        if uses_llm_cache(self):
            return super().batch(inputs, config, return_exceptions=return_exceptions, **kwargs)
        configs = get_config_list(config, len(inputs))
        out: list[Any] = []
        for group in groups(len(inputs), configs[0], getattr(self.guard.policy.limits, "max_batch", None)):
            slots: list[Slot[CallbackManagerForLLMRun]] = []
            try:
                slots += [self._start_sync(inputs[i], configs[i], len(group), kwargs) for i in group]
                self._run_group(slots, kwargs)
            except BaseException as exc:  # interrupted: close the runs already started, then give up
                fail_runs(slots, exc)
                raise
            close_runs(slots)
            out += outcomes(slots, return_exceptions)
        return out

    async def abatch(
        self,
        inputs: list[LanguageModelInput],
        config: RunnableConfig | list[RunnableConfig] | None = None,
        *,
        return_exceptions: bool = False,
        **kwargs: Any,
    ) -> list[AIMessage]:
        """`batch` for async code: the batched generation runs in a worker thread."""
        if not inputs:
            return []
        if uses_llm_cache(self):
            return await super().abatch(inputs, config, return_exceptions=return_exceptions, **kwargs)
        configs = get_config_list(config, len(inputs))
        out: list[Any] = []
        for group in groups(len(inputs), configs[0], getattr(self.guard.policy.limits, "max_batch", None)):
            aslots: list[Slot[AsyncCallbackManagerForLLMRun]] = []
            try:
                for i in group:
                    aslots.append(await self._start_async(inputs[i], configs[i], len(group), kwargs))
                await asyncio.to_thread(self._run_group, aslots, kwargs)
            except BaseException as exc:  # cancelled or interrupted: close the runs already started
                await afail_runs(aslots, exc)
                raise
            await aclose_runs(aslots)
            out += outcomes(aslots, return_exceptions)
        return out

    def _run_args(self, config: RunnableConfig, kwargs: Mapping[str, Any]) -> RunArgs:
        rest = dict(kwargs)
        stop = rest.pop("stop", None)
        options = {"stop": stop, **_structured_output_option(rest)}
        params = self._get_invocation_params(stop=stop, **rest)
        # the tracing metadata stream() and generate() send (the *_with_defaults form where it exists)
        ls_params = getattr(self, "_get_ls_params_with_defaults", self._get_ls_params)
        metadata = {**(config.get("metadata") or {}), **ls_params(stop=stop, **rest)}
        return RunArgs(params, options, metadata)

    def _start_sync(
        self, value: LanguageModelInput, config: RunnableConfig, size: int, kwargs: Mapping[str, Any]
    ) -> Slot[CallbackManagerForLLMRun]:
        slot: Slot[CallbackManagerForLLMRun] = Slot()
        try:
            messages = self._convert_input(value).to_messages()
        except Exception as exc:  # not a prompt at all: fails like invoke does, before a run starts
            slot.error = exc
            return slot
        slot.run = open_run(self, messages, config, size, self._run_args(config, kwargs))
        self._prepare(slot, messages, kwargs)
        return slot

    async def _start_async(
        self, value: LanguageModelInput, config: RunnableConfig, size: int, kwargs: Mapping[str, Any]
    ) -> Slot[AsyncCallbackManagerForLLMRun]:
        slot: Slot[AsyncCallbackManagerForLLMRun] = Slot()
        try:
            messages = self._convert_input(value).to_messages()
        except Exception as exc:
            slot.error = exc
            return slot
        slot.run = await aopen_run(self, messages, config, size, self._run_args(config, kwargs))
        self._prepare(slot, messages, kwargs)
        return slot

    def _prepare(self, slot: Slot[Any], messages: list[BaseMessage], kwargs: Mapping[str, Any]) -> None:
        try:
            slot.call = self._call(messages, kwargs)
        except Exception as exc:
            slot.error = exc

    def _run_group(self, slots: Sequence[Slot[Any]], kwargs: Mapping[str, Any]) -> None:
        """One `generate_batch` call for the slots that are ready; errors stay with their own input."""
        kwargs = dict(kwargs)
        stop = kwargs.pop("stop", None)
        decode_audio(slots, self.guard)
        ready = [(slot, call) for slot in slots if (call := slot.pending) is not None]
        if not ready:
            return
        try:
            options = self._options(stop, kwargs)
            if self.rate_limiter:
                self.rate_limiter.acquire(blocking=True)
            results = self.guard.generate_batch([call.request for _, call in ready], **options.guard_kwargs())
        except Exception as exc:
            for slot, _ in ready:
                slot.error = exc
            return
        for (slot, call), result in zip(ready, results):
            run_id = slot.run.run_id if slot.run is not None else None
            slot.message = run_message(self._message(result, call), run_id, self.output_version)
