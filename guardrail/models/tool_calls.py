"""Tool calls in a model's answer, in the Hermes form that Qwen2/2.5/3 (and models tuned like them) write:

    <tool_call>
    {"name": "get_weather", "arguments": {"city": "Paris"}}
    </tool_call>

and the opening a forced tool choice makes the model start its answer with.
"""

from __future__ import annotations

import json
import re
import uuid
from collections.abc import Collection

from guardrail.conversation import ToolCall, ToolChoice

__all__ = ["CALL_OPEN", "TOOL_MARKERS", "forced_opening", "split_tool_calls"]

CALL_OPEN, CALL_CLOSE = "<tool_call>", "</tool_call>"
TOOL_MARKERS = (CALL_OPEN, CALL_CLOSE)
_BLOCK = re.compile(re.escape(CALL_OPEN) + r"\s*(.*?)\s*(?:" + re.escape(CALL_CLOSE) + r"|\Z)", re.S)


def split_tool_calls(text: str, names: Collection[str] = ()) -> tuple[str, list[ToolCall]]:
    """(the answer's text without its well-formed tool-call blocks, the calls). A block whose JSON does not
    parse, or lacks a name, stays in the text: the caller sees what the model wrote. An answer without tags that
    is nothing but JSON objects naming tools in `names` (in a markdown code block or not) is read as those
    calls (small Qwen2.5 models write their calls so)."""
    if CALL_OPEN not in text and names:
        return _bare_calls(text, names)
    calls: list[ToolCall] = []

    def take(match: re.Match[str]) -> str:
        call = _parsed(match.group(1))
        if call is None:
            return match.group(0)
        calls.append(call)
        return ""

    rest = _BLOCK.sub(take, text)
    return (rest.strip() if calls else text), calls


_FENCE = re.compile(r"\A\s*```[a-zA-Z]*\n(.*?)\n?```\s*\Z", re.S)


def _bare_calls(text: str, names: Collection[str]) -> tuple[str, list[ToolCall]]:
    fenced = _FENCE.match(text)  # a markdown code block around the JSON, as small models often write
    body = fenced.group(1) if fenced else text
    decoder, calls, at = json.JSONDecoder(), [], 0
    while (at := _skip_space(body, at)) < len(body):
        try:
            data, at = decoder.raw_decode(body, at)
        except json.JSONDecodeError:
            return text, []
        call = _call_from(data)
        if call is None or call.name not in names:
            return text, []
        calls.append(call)
    return ("", calls) if calls else (text, [])


def _skip_space(text: str, at: int) -> int:
    while at < len(text) and text[at].isspace():
        at += 1
    return at


def _parsed(body: str) -> ToolCall | None:
    try:
        return _call_from(json.loads(body))
    except json.JSONDecodeError:
        return None


def _call_from(data: object) -> ToolCall | None:
    """A call from a decoded JSON value: an object with a string name and object arguments."""
    if not isinstance(data, dict) or not isinstance(data.get("name"), str):
        return None
    arguments = data.get("arguments", data.get("parameters", {}))
    if isinstance(arguments, str):  # some models write the arguments as a JSON string
        try:
            arguments = json.loads(arguments)
        except json.JSONDecodeError:
            return None
    if not isinstance(arguments, dict):
        return None
    return ToolCall(data["name"], arguments, f"call_{uuid.uuid4().hex[:24]}")


def forced_opening(choice: ToolChoice, response_format: str = "text") -> str | None:
    """The text a forced tool choice starts the answer with ("required": a call of some tool; a tool's name:
    a call of that tool, into its arguments object), or "{" for a JSON answer; None when the model chooses freely."""
    if choice == "required":
        return CALL_OPEN + '\n{"name": "'
    if choice not in ("auto", "none"):
        return CALL_OPEN + "\n" + json.dumps({"name": choice})[:-1] + ', "arguments": {'
    return "{" if response_format == "json_object" else None
