"""Conversations: the turns of a chat (system, user, assistant, tool), the tools a model may call, and
the checks a message list passes before the guard renders it.

A message list is OpenAI-shaped, so that the same dicts serve Python callers, LangChain and HTTP:

    {"role": "system" | "user" | "assistant" | "tool",
     "content": "text" or [{"type": "text", "text": ...}, {"type": "audio", "audio": <path, bytes or (array, rate)>}],
     "tool_calls": [{"id": ..., "type": "function", "function": {"name": ..., "arguments": {...} or "<json>"}}],
     "tool_call_id": ...}                                                   # tool turns

Audio may sit in any user turn. A conversation ends with a user turn or a tool turn (the answer to a tool
call): the model writes the next assistant turn.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, Literal

import numpy as np

from guardrail.audio import AudioSource
from guardrail.errors import RequestError

__all__ = [
    "ResponseFormat",
    "Role",
    "ToolCall",
    "ToolChoice",
    "Turn",
    "parse_messages",
    "parse_response_format",
    "parse_tool_choice",
    "parse_tools",
]

Role = Literal["system", "user", "assistant", "tool"]
ROLES: tuple[str, ...] = ("system", "user", "assistant", "tool")
# "auto": the model may call a tool; "none": tools are not shown; "required": it must call one;
# a tool's name: it must call that one
ToolChoice = str
ResponseFormat = Literal["text", "json_object"]

_MESSAGE_KEYS = {"role", "content", "tool_calls", "tool_call_id", "name"}


@dataclass(frozen=True)
class ToolCall:
    """One call of a tool the model asked for: the tool's name and its arguments (a JSON object)."""

    name: str
    arguments: Mapping[str, Any] = field(default_factory=dict)
    id: str | None = None

    def to_dict(self) -> dict[str, Any]:
        """OpenAI's form: {"id", "type": "function", "function": {"name", "arguments": "<json>"}}."""
        function = {"name": self.name, "arguments": json.dumps(dict(self.arguments), ensure_ascii=False)}
        return {"id": self.id, "type": "function", "function": function}


@dataclass(frozen=True)
class Turn:
    """One message of a conversation. `audio` (user turns only) is mono float32 at the model's rate once
    parsed; `tool_calls` belong to assistant turns; `tool_call_id` and `name` to tool turns."""

    role: Role
    text: str = ""
    audio: np.ndarray | None = None
    tool_calls: tuple[ToolCall, ...] = ()
    tool_call_id: str | None = None
    name: str | None = None


def parse_messages(
    messages: Any, index: int, load: Callable[[AudioSource, str], np.ndarray] | None
) -> tuple[Turn, ...]:
    """Request `index`'s message list as turns: roles known, content text and audio blocks, ending with a user
    or tool turn. `load` decodes an audio source (named for errors); None: the
    model takes no audio, so an audio block is refused by the caller's `load`."""
    if isinstance(messages, (str, bytes, Mapping)) or not isinstance(messages, Sequence) or not messages:
        raise RequestError(f"request {index}: messages must be a non-empty list of message dicts")
    turns = tuple(_turn(m, index, k, load) for k, m in enumerate(messages))
    if turns[-1].role not in ("user", "tool"):
        raise RequestError(
            f"request {index}: the last message is a {turns[-1].role} message; a conversation the model "
            "answers ends with a user message or a tool result"
        )
    return turns


def _turn(raw: Any, index: int, k: int, load: Callable[[AudioSource, str], np.ndarray] | None) -> Turn:
    where = f"request {index}: message {k}"
    if not isinstance(raw, Mapping):
        raise RequestError(f"{where} is a {type(raw).__name__}; pass a dict with 'role' and 'content'")
    unknown = set(raw) - _MESSAGE_KEYS
    if unknown:
        raise RequestError(f"{where} has unknown keys {sorted(unknown, key=repr)}; accepted: {sorted(_MESSAGE_KEYS)}")
    role = raw.get("role")
    if role not in ROLES:
        raise RequestError(f"{where} has role {role!r}; accepted: {', '.join(ROLES)}")
    text, audio = _content(raw.get("content"), where, load if role == "user" else None)
    calls = _tool_calls(raw.get("tool_calls"), where) if role == "assistant" else ()
    if role != "assistant" and raw.get("tool_calls"):
        raise RequestError(f"{where}: only assistant messages carry tool_calls")
    if role == "user" and audio is None and not text.strip():
        raise RequestError(f"{where} is a user message with neither text nor audio")
    name, call_id = raw.get("name"), raw.get("tool_call_id")
    for key, value in (("name", name), ("tool_call_id", call_id)):
        if value is not None and not isinstance(value, str):
            raise RequestError(f"{where}: {key} must be a string, got {type(value).__name__}")
    return Turn(role, text, audio, calls, call_id if role == "tool" else None, name if role == "tool" else None)


def _content(
    content: Any, where: str, load: Callable[[AudioSource, str], np.ndarray] | None
) -> tuple[str, np.ndarray | None]:
    """(text, audio) of a message's content: a string, or text blocks and at most one audio block."""
    if content is None or isinstance(content, str):
        return content or "", None
    if not isinstance(content, Sequence) or isinstance(content, (bytes, Mapping)):
        raise RequestError(f"{where}: content must be a string or a list of blocks, got {type(content).__name__}")
    texts: list[str] = []
    audio: np.ndarray | None = None
    for b, block in enumerate(content):
        kind = block.get("type") if isinstance(block, Mapping) else None
        if kind == "text" and isinstance(block.get("text"), str):
            texts.append(block["text"])
        elif kind == "audio" and load is not None and audio is None:
            audio = load(block.get("audio"), f"{where}, block {b}")
        else:
            raise RequestError(f"{where}, block {b}: {_why_refused(block, kind, load, audio)}")
    return "\n".join(texts), audio


def _why_refused(block: Any, kind: Any, load: Any, audio: Any) -> str:
    if kind == "audio" and audio is not None:
        return "a second audio block; send one clip per message"
    if kind == "audio":
        return "audio is accepted in user messages only"
    if kind == "text":
        return "a text block's 'text' must be a string"
    return (
        f"unsupported block {kind!r}; accepted: {{'type': 'text', 'text': ...}} and "
        "{'type': 'audio', 'audio': <path, bytes or (array, rate)>}"
    )


def _tool_calls(raw: Any, where: str) -> tuple[ToolCall, ...]:
    if raw is None:
        return ()
    if not isinstance(raw, Sequence) or isinstance(raw, (str, bytes, Mapping)):
        raise RequestError(f"{where}: tool_calls must be a list")
    return tuple(_tool_call(call, f"{where}, tool call {c}") for c, call in enumerate(raw))


def _tool_call(raw: Any, where: str) -> ToolCall:
    """OpenAI's {"id", "function": {"name", "arguments"}} or the flat {"name", "arguments", "id"}."""
    if not isinstance(raw, Mapping):
        raise RequestError(f"{where} is a {type(raw).__name__}; pass a dict")
    function = raw.get("function", raw)
    name, arguments = function.get("name") if isinstance(function, Mapping) else None, None
    if isinstance(function, Mapping):
        arguments = function.get("arguments", function.get("args", {}))
    if not isinstance(name, str) or not name:
        raise RequestError(f"{where} has no function name")
    if isinstance(arguments, str):
        try:
            arguments = json.loads(arguments) if arguments.strip() else {}
        except json.JSONDecodeError as exc:
            raise RequestError(f"{where}: arguments are not valid JSON ({exc.msg})") from None
    if not isinstance(arguments, Mapping):
        raise RequestError(f"{where}: arguments must be a JSON object")
    call_id = raw.get("id")
    return ToolCall(name, dict(arguments), call_id if isinstance(call_id, str) else None)


def parse_tools(tools: Any, index: int) -> tuple[dict[str, Any], ...]:
    """Tool schemas in OpenAI's function form ({"type": "function", "function": {"name", "description",
    "parameters"}}); a bare {"name", "parameters", ...} is wrapped. Names must be unique."""
    if tools is None:
        return ()
    if not isinstance(tools, Sequence) or isinstance(tools, (str, bytes, Mapping)):
        raise RequestError(f"request {index}: tools must be a list of tool schemas")
    parsed: list[dict[str, Any]] = []
    for t, tool in enumerate(tools):
        function = tool.get("function", tool) if isinstance(tool, Mapping) else None
        if not isinstance(function, Mapping) or not isinstance(function.get("name"), str):
            raise RequestError(
                f"request {index}: tool {t} is not a function schema; pass "
                "{'type': 'function', 'function': {'name': ..., 'description': ..., 'parameters': {...}}}"
            )
        if not isinstance(function.get("parameters", {}), Mapping):
            raise RequestError(f"request {index}: tool {t} ({function['name']}): parameters must be a JSON schema")
        parsed.append({"type": "function", "function": dict(function)})
    names = [t["function"]["name"] for t in parsed]
    if len(set(names)) < len(names):
        raise RequestError(f"request {index}: tool names repeat ({names}); give each tool its own name")
    return tuple(parsed)


def parse_tool_choice(choice: Any, tools: Sequence[Mapping[str, Any]], index: int) -> ToolChoice:
    """ "auto" (default), "none", "required" ("any" is LangChain's word for it) or a tool's name (also as
    OpenAI's {"type": "function", "function": {"name": ...}})."""
    if choice is None:
        return "auto"
    if isinstance(choice, Mapping):
        choice = (choice.get("function") or {}).get("name")
    if choice == "any":
        choice = "required"
    names = [t["function"]["name"] for t in tools]
    if choice in ("auto", "none"):
        return str(choice)
    if not tools:
        raise RequestError(f"request {index}: tool_choice={choice!r} without tools; pass tools as well")
    if choice == "required" or choice in names:
        return str(choice)
    raise RequestError(f"request {index}: tool_choice={choice!r}: not 'auto', 'none', 'required' or a tool ({names})")


def parse_response_format(value: Any, index: int) -> ResponseFormat:
    """ "text" (default) or "json_object" (the answer opens with "{"), given as such or as OpenAI's {"type": ...}."""
    kind = value.get("type") if isinstance(value, Mapping) else value
    if kind is None or kind == "text":
        return "text"
    if kind == "json_object":
        return "json_object"
    raise RequestError(
        f"request {index}: response_format {kind!r} is not supported; use 'text' or 'json_object' "
        "(describe the JSON you want in the prompt, or pass the schema as a tool with tool_choice)"
    )
