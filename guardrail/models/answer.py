"""An answer as generated, read into what a caller gets: text cut at a stop string, and the tool calls."""

from __future__ import annotations

from dataclasses import dataclass

from guardrail.conversation import ToolCall
from guardrail.models.chat import shown_tools
from guardrail.models.tool_calls import TOOL_MARKERS, split_tool_calls
from guardrail.requests import Request
from guardrail.results import first_stop

__all__ = ["Answer", "markers_for"]


@dataclass(frozen=True)
class Answer:
    """One generated row: its token ids, its prompt's length, the call's stop strings and the request."""

    ids: list[int]
    prompt_tokens: int
    stops: tuple[str, ...]
    request: Request

    def read(self, text: str, finish_reason: str) -> tuple[str, str, list[ToolCall]]:
        """(text, finish reason, tool calls): the text ends before the first stop string (finish "stop"); with
        tools shown, well-formed tool-call blocks become calls (finish "tool_calls")."""
        cut = first_stop(text, self.stops)
        if cut is not None:
            text, finish_reason = text[:cut], "stop"
        shown = shown_tools(self.request)
        if not shown:
            return text, finish_reason, []
        text, calls = split_tool_calls(text, [t["function"]["name"] for t in shown])
        return text, ("tool_calls" if calls and finish_reason != "cancelled" else finish_reason), calls


def markers_for(request: Request) -> tuple[str, ...]:
    """The tool-call tags to keep when decoding an answer to `request` (some tokenizers count them as special):
    those of the calls it reads."""
    return TOOL_MARKERS if shown_tools(request) else ()
