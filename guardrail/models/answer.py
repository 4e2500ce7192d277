"""An answer as generated, read into what a caller gets: text cut at a stop string, and the tool calls."""

from __future__ import annotations

from dataclasses import dataclass

from guardrail.conversation import ToolCall
from guardrail.models.tool_calls import split_tool_calls
from guardrail.requests import Request
from guardrail.results import first_stop

__all__ = ["Answer"]


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
        if not self.request.tools or self.request.tool_choice == "none":
            return text, finish_reason, []
        text, calls = split_tool_calls(text, [t["function"]["name"] for t in self.request.tools])
        return text, ("tool_calls" if calls and finish_reason != "cancelled" else finish_reason), calls
