"""Guard results as LangChain messages: the answer, its decision record (`response_metadata`) and its
token counts (`usage_metadata`), for invoke, the last chunk of a stream, and each input of a batch."""

from __future__ import annotations

import json
from typing import Any
from uuid import UUID

from langchain_core.messages import AIMessage, AIMessageChunk
from langchain_core.messages.ai import UsageMetadata
from langchain_core.messages.tool import tool_call, tool_call_chunk
from langchain_core.outputs import ChatGenerationChunk
from langchain_core.utils.utils import LC_ID_PREFIX

from guardrail.integrations.langchain.content import GuardCall
from guardrail.results import GuardResult

__all__ = ["ai_message", "final_chunk", "response_metadata", "run_message", "usage"]


def response_metadata(result: GuardResult, call: GuardCall, model_name: str) -> dict[str, Any]:
    """`model_name`, `finish_reason` and the decision record; `dropped_messages` when history was dropped."""
    meta: dict[str, Any] = {
        "model_name": model_name,
        "finish_reason": result.decision.finish_reason,
        "decision": result.decision.to_dict(),
    }
    if call.dropped:
        meta["dropped_messages"] = call.dropped
    return meta


def usage(result: GuardResult) -> UsageMetadata:
    """The prompt and completion token counts of the decision."""
    d = result.decision
    # the token details are NotRequired, but langchain-core imports NotRequired from `typing`, which
    # mypy's Python 3.10 target does not have: it sees them as required
    return UsageMetadata(  # type: ignore[typeddict-item]
        input_tokens=d.prompt_tokens,
        output_tokens=d.completion_tokens,
        total_tokens=d.prompt_tokens + d.completion_tokens,
    )


def ai_message(result: GuardResult, call: GuardCall, model_name: str) -> AIMessage:
    """The whole answer as one message, with the tool calls the model made."""
    return AIMessage(
        content=result.text,
        tool_calls=[tool_call(name=c.name, args=dict(c.arguments), id=c.id) for c in result.tool_calls],
        response_metadata=response_metadata(result, call, model_name),
        usage_metadata=usage(result),
    )


def final_chunk(result: GuardResult, call: GuardCall, model_name: str) -> ChatGenerationChunk:
    """The last chunk of a stream: no text (tool-call markup is never streamed), the tool calls whole, the
    decision record and the token counts."""
    return ChatGenerationChunk(
        message=AIMessageChunk(
            content="",
            tool_call_chunks=[
                tool_call_chunk(name=c.name, args=json.dumps(dict(c.arguments)), id=c.id, index=k)
                for k, c in enumerate(result.tool_calls)
            ],
            response_metadata=response_metadata(result, call, model_name),
            usage_metadata=usage(result),
            chunk_position="last",
        )
    )


def run_message(message: AIMessage, run_id: UUID | None, output_version: str | None) -> AIMessage:
    """`message` as LangChain's generate path returns it from a run: the run's message id, and the
    content as standard blocks when `output_version` is "v1"."""
    if run_id is not None:
        message.id = f"{LC_ID_PREFIX}-{run_id}-0"
    if output_version == "v1":
        message = message.model_copy(
            update={
                "content": message.content_blocks,
                "response_metadata": {**message.response_metadata, "output_version": "v1"},
            }
        )
    return message
