"""LangChain messages and content blocks -> one guard request.

By default (`history="full"`) the whole conversation goes to the guard: system, human, AI (with its tool
calls) and tool messages become the turns of `guardrail.conversation`, audio allowed in any human message. A
`SystemMessage` equal to the policy's `system_prompt` is left out (the guard sends that prompt itself).
`history="last_turn"` sends the last `HumanMessage` alone; `"error"` refuses earlier messages. A message's
content is text blocks and at most one audio block, whose source is base64 data, a `data:` URL or a local
`file://` URL (read only under the policy's `input.audio_dirs`: see `audio_files`); anything else raises
`UnsupportedContentError`.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Literal

from langchain_core.messages import (
    BaseMessage,
    ChatMessage,
    HumanMessage,
    SystemMessage,
    ToolMessage,
    is_data_content_block,
)
from langchain_core.messages.block_translators.openai import convert_to_openai_image_block

from guardrail.errors import UnsupportedContentError, UnsupportedMessageError
from guardrail.models.adapter import Adapter
from guardrail.policy.audio_files import AudioFiles, audio_from_url, decode_base64

__all__ = ["ACCEPTED_CONTENT", "GuardCall", "History", "check_convertible", "message_content", "request_from_messages"]

ACCEPTED_CONTENT = (
    "a string, or content blocks: {'type': 'text', 'text': ...} and at most one audio block "
    "({'type': 'audio', 'base64': ..., 'mime_type': 'audio/wav'}, {'type': 'audio', "
    "'source_type': 'base64', 'data': ...}, {'type': 'input_audio', ...}, {'type': 'audio', "
    "'url': 'data:audio/wav;base64,...' or 'file:///abs/path.wav'})"
)


@dataclass
class GuardCall:
    """One request ready for the guard, and what the response must say about how it was built."""

    request: dict[str, Any]
    dropped: int = 0


History = Literal["full", "last_turn", "error"]


def request_from_messages(
    messages: Sequence[BaseMessage],
    adapter: Adapter,
    system_prompt: str | None,
    history: History = "full",
    files: AudioFiles | None = None,
    tools: Sequence[Mapping[str, Any]] | None = None,
    tool_choice: Any = None,
) -> GuardCall:
    """The guard request for a prompt: the whole conversation (`history="full"`), its last `HumanMessage`
    alone (`"last_turn"`, the others dropped and counted), or the last `HumanMessage` with any earlier message
    refused (`"error"`). A `SystemMessage` equal to the policy's `system_prompt` is left out (the guard sends that
    prompt itself). `tools` (OpenAI function schemas) and `tool_choice` go with the request; `files`: where
    file:// audio URLs may read (None: nowhere)."""
    if not messages:
        raise UnsupportedMessageError("no messages: pass at least one HumanMessage")
    files = files or AudioFiles()
    kept = [m for m in messages if not _is_policy_prompt(m, system_prompt)]
    extra = {k: v for k, v in (("tools", tools or None), ("tool_choice", tool_choice)) if v is not None}
    if not isinstance(messages[-1], (HumanMessage, ToolMessage)):
        raise UnsupportedMessageError(
            f"the last message is a {type(messages[-1]).__name__}; the model answers a conversation that ends "
            "with a HumanMessage or a ToolMessage"
        )
    if history == "full" and (len(kept) > 1 or not isinstance(messages[-1], HumanMessage)):
        return GuardCall({"messages": [_message_dict(m, k, adapter, files) for k, m in enumerate(kept)], **extra})
    last = messages[-1]
    if not isinstance(last, HumanMessage):
        raise UnsupportedMessageError(
            f"the last message is a {type(last).__name__}; with history={history!r} the prompt must end with a "
            "HumanMessage (history='full' sends the whole conversation)"
        )
    if history == "error" and len(kept) > 1:
        _refuse_history(kept[:-1])
    text, audio = message_content(last, adapter, files)
    if audio is None and not text.strip():
        raise UnsupportedContentError("the HumanMessage has neither text nor audio; pass at least one")
    dropped = len(messages) - 1 if history == "last_turn" else 0
    return GuardCall({"audio": audio, "text": text, **extra}, dropped=dropped)


def _is_policy_prompt(message: BaseMessage, system_prompt: str | None) -> bool:
    return isinstance(message, SystemMessage) and system_prompt is not None and _text_of(message) == system_prompt


def _message_dict(message: BaseMessage, k: int, adapter: Adapter, files: AudioFiles) -> dict[str, Any]:
    """A LangChain message as the guard's conversation turn (`guardrail.conversation`)."""
    role = _ROLES.get(message.type) or (message.role if isinstance(message, ChatMessage) else None)
    if role == "user":
        text, audio = message_content(message, adapter, files)
        blocks: list[dict[str, Any]] = [{"type": "audio", "audio": audio}] if audio is not None else []
        return {"role": "user", "content": [*blocks, {"type": "text", "text": text}]}
    if role == "system":
        return {"role": "system", "content": _text_of(message, f"message {k}")}
    if role == "assistant":
        calls = getattr(message, "tool_calls", None) or []
        return {
            "role": "assistant",
            "content": _text_of(message),  # other blocks (tool calls, reasoning) are not sent back
            "tool_calls": [{"id": c.get("id"), "function": {"name": c["name"], "arguments": c["args"]}} for c in calls],
        }
    if role == "tool" and isinstance(message, ToolMessage):
        return {"role": "tool", "content": _text_of(message, f"message {k}"), "tool_call_id": message.tool_call_id}
    raise UnsupportedMessageError(
        f"message {k} is a {type(message).__name__}; the guard takes system, human, AI and tool messages"
    )


_ROLES = {"system": "system", "human": "user", "ai": "assistant", "tool": "tool"}


def check_convertible(messages: Sequence[BaseMessage]) -> None:
    """Raise `UnsupportedContentError` for a block LangChain's own code fails on before the model sees the prompt:
    `invoke`, `stream` and `batch` convert every message's older-style blocks to standard ones and format image
    data blocks for tracing, raising a bare KeyError/ValueError on a malformed one."""
    for message in messages:
        _blocks(message)
        for i, block in enumerate(message.content if isinstance(message.content, list) else []):
            if not (isinstance(block, dict) and block.get("type") == "image" and is_data_content_block(block)):
                continue
            if "file_id" in block or block.get("source_type") == "id":
                continue
            try:
                convert_to_openai_image_block(block)
            except Exception as exc:
                raise UnsupportedContentError(
                    f"content block {i} is a malformed image block ({_short(exc)}); the guard takes no images: "
                    f"accepted: {ACCEPTED_CONTENT}"
                ) from None


def _refuse_history(earlier: list[BaseMessage]) -> None:
    """Raises for messages before the last turn (history="error")."""
    kinds = ", ".join(type(m).__name__ for m in earlier)
    raise UnsupportedMessageError(
        f"the prompt has {len(earlier)} earlier message(s) ({kinds}) and this model was built with "
        "history='error', which sends one user turn; build it with history='full' (the default) to send the "
        "conversation, or history='last_turn' to send the last HumanMessage alone"
    )


def message_content(message: BaseMessage, adapter: Adapter, files: AudioFiles | None = None) -> tuple[str, Any]:
    """(text blocks joined by newlines, the audio clip as bytes, or None); `files`: where file:// URLs may read."""
    files = files or AudioFiles()
    texts: list[str] = []
    audio: list[tuple[int, Any]] = []
    for i, block in enumerate(_blocks(message)):
        kind = block.get("type")
        if kind == "text":
            texts.append(_block_text(block, i))
        elif kind == "audio" or kind == "file" and str(block.get("mime_type", "")).lower().startswith("audio/"):
            audio.append((i, _audio_source(block, i, files)))
        else:
            raise UnsupportedContentError(
                f"content block {i} ({_describe(block)}) is not supported; accepted: {ACCEPTED_CONTENT}"
            )
    if len(audio) > 1:
        raise UnsupportedContentError(
            f"content blocks {[i for i, _ in audio]} are audio; the guard takes at "
            "most one audio clip per request: send one clip per message"
        )
    if audio:
        adapter.require_audio_support(f"content block {audio[0][0]}", UnsupportedContentError)
    return "\n".join(texts), audio[0][1] if audio else None


def _text_of(message: BaseMessage, where: str | None = None) -> str:
    """The message's text blocks joined; with `where`, any other block is refused."""
    texts = []
    for i, block in enumerate(_blocks(message)):
        kind = block.get("type")
        if kind == "text":
            texts.append(_block_text(block, i))
        elif where is not None:
            raise UnsupportedContentError(
                f"{where}, content block {i} ({_describe(block)}): only text is accepted in this kind of message"
            )
    return "\n".join(texts)


def _blocks(message: BaseMessage) -> Sequence[Mapping[str, Any]]:
    """The message's standard content blocks, read as mappings (a block may lack its keys). LangChain's
    conversion of older block forms raises KeyError/ValueError/... on a malformed block: that becomes an
    `UnsupportedContentError` naming the block."""
    try:
        return message.content_blocks
    except Exception as exc:  # any failure converting untrusted content is the caller's input error
        reason = f"it lacks the key {exc.args[0]!r}" if isinstance(exc, KeyError) and exc.args else _short(exc)
        raise UnsupportedContentError(
            f"{_failing_block(message)} is not a valid LangChain content block ({reason}); accepted: {ACCEPTED_CONTENT}"
        ) from None


def _failing_block(message: BaseMessage) -> str:
    """'content block I' for the first block LangChain cannot convert on its own, else 'the message content'."""
    if isinstance(message.content, list):
        for i, item in enumerate(message.content):
            try:
                _ = message.model_copy(update={"content": [item]}).content_blocks
            except Exception:
                return f"content block {i}"
    return "the message content"


def _block_text(block: Mapping[str, Any], index: int) -> str:
    text = block.get("text")
    if text is not None and not isinstance(text, str):
        raise UnsupportedContentError(
            f"content block {index} is a text block whose text is a {type(text).__name__}; send a string"
        )
    return text or ""


def _short(value: Any, limit: int = 60) -> str:
    """`value` for an error message: its repr (or an exception's text), cut to `limit` characters."""
    text = str(value) if isinstance(value, BaseException) else repr(value)
    return text if len(text) <= limit else text[: limit - 3] + "..."


def _describe(block: Mapping[str, Any]) -> str:
    """A short description of a content block for error messages (never its data)."""
    kind = block.get("type")
    if kind == "non_standard" and isinstance(block.get("value"), Mapping):
        return f"type {_short(block['value'].get('type'))}, not a LangChain standard block"
    source = next((k for k in ("url", "base64", "file_id", "path", "data") if k in block), None)
    where = f", {source}" if source else ""
    if source == "url":
        where = f", url {str(block['url'])[:40]!r}"
    mime = f", {_short(block['mime_type'], 40)}" if block.get("mime_type") else ""
    return f"type {_short(kind, 40)}{where}{mime}"


def _audio_source(block: Mapping[str, Any], index: int, files: AudioFiles) -> bytes:
    """The bytes of an audio block's clip; raises for sources that need a network or a provider."""
    mime = str(block.get("mime_type") or "").lower()
    if mime and not (mime.startswith("audio/") or mime == "application/octet-stream"):
        raise UnsupportedContentError(
            f"content block {index} ({_describe(block)}) is an audio block with mime "
            f"type {mime!r}; send audio (audio/wav, audio/flac, audio/ogg, ...)"
        )
    if block.get("base64") is not None:
        return decode_base64(block["base64"], f"content block {index}")
    url = block.get("url")
    if isinstance(url, str):
        return audio_from_url(url, files, f"content block {index} ({_describe(block)})")
    if block.get("file_id") is not None:
        raise UnsupportedContentError(
            f"content block {index} ({_describe(block)}) refers to a provider's file "
            "store; send the audio itself as base64 data or a file:// URL"
        )
    raise UnsupportedContentError(
        f"content block {index} ({_describe(block)}) has no audio source the guard can "
        f"use; accepted: {ACCEPTED_CONTENT}"
    )
