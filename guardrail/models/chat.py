"""A request's conversation as a chat template reads it: the message dicts (system, user, assistant with tool
calls, tool results), the tools, and the control-token check over every turn."""

from __future__ import annotations

import dataclasses
import json
from collections.abc import Callable, Sequence
from typing import Any

from jinja2 import TemplateError

from guardrail.conversation import ToolCall, Turn
from guardrail.errors import RequestError
from guardrail.models.user_text import ControlTokens, SpecialTokens
from guardrail.requests import Request

__all__ = ["checked_turns", "messages_for", "render", "require_tool_template", "shown_tools", "template_of"]


def shown_tools(request: Request) -> tuple[dict[str, Any], ...]:
    """The tools the prompt shows the model, and whose calls are read from its answer: none with tool_choice
    "none"."""
    return () if request.tool_choice == "none" else request.tools


def messages_for(request: Request, system_prompt: str | None, user_content: Callable[[Turn], Any]) -> list[dict]:
    """The template's messages: one system turn (the policy's prompt, then the conversation's own system text),
    then the turns; `user_content` builds a user turn's content the way the family's template expects."""
    turns = list(request.turns)
    system = [system_prompt] if system_prompt else []
    if turns and turns[0].role == "system":
        system.append(turns.pop(0).text)
    messages: list[dict[str, Any]] = [{"role": "system", "content": "\n\n".join(system)}] if system else []
    for turn in turns:
        if turn.role == "user":
            messages.append({"role": "user", "content": user_content(turn)})
        elif turn.role == "assistant":
            messages.append(_assistant(turn))
        elif turn.role == "system":  # a later system turn: the template decides whether it takes one
            messages.append({"role": "system", "content": turn.text})
        else:
            tool = {"role": "tool", "content": turn.text, "name": turn.name, "tool_call_id": turn.tool_call_id}
            messages.append({k: v for k, v in tool.items() if v is not None})
    return messages


def _assistant(turn: Turn) -> dict[str, Any]:
    message: dict[str, Any] = {"role": "assistant", "content": turn.text}
    if turn.tool_calls:  # the form transformers' templates read: function.name, function.arguments (a dict)
        message["tool_calls"] = [
            {"type": "function", "id": c.id, "function": {"name": c.name, "arguments": dict(c.arguments)}}
            for c in turn.tool_calls
        ]
    return message


def template_of(owner: Any, tools: Sequence[Any] = ()) -> str | None:
    """The chat template `owner` (a tokenizer or processor) renders with (its tool-use one when there are tools)."""
    getter = getattr(owner, "get_chat_template", None)
    if callable(getter):
        try:
            return getter(None, list(tools) or None)
        except ValueError:  # no template at all
            return None
    template = getattr(owner, "chat_template", None)
    return template if isinstance(template, str) else None


def require_tool_template(owner: Any, adapter_name: str) -> None:
    """RequestError when the family's chat template does not show tools to the model."""
    template = template_of(owner, [{}])
    if not template or "tools" not in template:
        raise RequestError(
            f"the chat template of {adapter_name!r} does not take tools, so the model would never see them; "
            "send the request without tools, or use a model whose template supports tool calling"
        )


def render(owner: Any, conversation: list[dict], tools: Sequence[dict] = ()) -> str:
    """The conversation as prompt text, ending in the assistant-generation prefix. A conversation the template
    refuses (e.g. a system message after the first turn, for some families) is a RequestError."""
    kwargs = {"tools": list(tools)} if tools else {}
    try:
        return owner.apply_chat_template(conversation, add_generation_prompt=True, tokenize=False, **kwargs)
    except TemplateError as exc:
        roles = [m["role"] for m in conversation]
        raise RequestError(
            f"the model's chat template refused the conversation (roles {roles}): {exc}; "
            "check the order of the turns (a system message only first, user and assistant alternating)"
        ) from None


def checked_turns(request: Request, controls: ControlTokens, index: int, mode: SpecialTokens) -> Request:
    """`request` with every turn's text, every tool call and the tools passed through the control-token check
    (`ControlTokens.check`: refused, or escaped when `mode` is "escape")."""
    if not request.history and not request.tools:
        text = controls.check(request.text, index, mode)
        return request if text is request.text else dataclasses.replace(request, text=text)
    history = tuple(_checked_turn(t, controls, index, mode) for t in request.history)
    tools = tuple(_checked_json(t, controls, index, mode) for t in request.tools)
    return dataclasses.replace(request, text=controls.check(request.text, index, mode), history=history, tools=tools)


def _checked_turn(turn: Turn, controls: ControlTokens, index: int, mode: SpecialTokens) -> Turn:
    calls = tuple(
        ToolCall(controls.check(c.name, index, mode), _checked_json(dict(c.arguments), controls, index, mode), c.id)
        for c in turn.tool_calls
    )
    return dataclasses.replace(turn, text=controls.check(turn.text, index, mode), tool_calls=calls)


def _checked_json(value: dict[str, Any], controls: ControlTokens, index: int, mode: SpecialTokens) -> dict[str, Any]:
    """A JSON object checked as the text the template will write; escaping keeps it valid JSON."""
    text = json.dumps(value, ensure_ascii=False)
    checked = controls.check(text, index, mode)
    if checked is text:
        return value
    try:
        loaded = json.loads(checked)
    except json.JSONDecodeError:  # the marker sat across JSON syntax: escaping cannot keep it an object
        raise RequestError(f"request {index}: tool data holds a control token that cannot be escaped") from None
    return dict(loaded)
