"""Structured decision logs (counters: `guardrail.obs.metrics`).

Every guarded request emits one `guardrail.decision` event through structlog, bound to the
standard-library logger "guardrail": a library prints nothing until the application (or the
CLI) configures logging, e.g. `configure_logging("json")`. Prompt and response text are
included only when the policy allows it (`logging.log_content`).
"""

from __future__ import annotations

import logging
import re
import sys
from typing import Any, Literal

import structlog

from guardrail.results import GuardResult

LOGGER_NAME = "guardrail"


def decision_logger() -> structlog.stdlib.BoundLogger:
    """A structlog logger that renders JSON into the stdlib logger "guardrail"."""
    return structlog.wrap_logger(
        logging.getLogger(LOGGER_NAME),
        processors=[
            structlog.stdlib.filter_by_level,
            structlog.processors.TimeStamper(fmt="iso", utc=True),
            structlog.processors.add_log_level,
            structlog.processors.JSONRenderer(),
        ],
        wrapper_class=structlog.stdlib.BoundLogger,
    )


def configure_logging(
    fmt: Literal["json", "console", "auto"] = "auto", level: str = "info", stream: Any = None
) -> None:
    """Send guardrail events to `stream` (stderr): one JSON line each ("json"), or a readable
    line ("console"); "auto" picks console on a terminal and JSON otherwise."""
    stream = stream or sys.stderr
    if fmt == "auto":
        fmt = "console" if getattr(stream, "isatty", lambda: False)() else "json"
    logger = logging.getLogger(LOGGER_NAME)
    logger.handlers = [h for h in logger.handlers if not getattr(h, "_guardrail", False)]
    handler = logging.StreamHandler(stream)
    handler._guardrail = True  # type: ignore[attr-defined]
    handler.setFormatter(_ConsoleFormatter() if fmt == "console" else logging.Formatter("%(message)s"))
    logger.addHandler(handler)
    logger.setLevel(level.upper())
    logger.propagate = False


class _ConsoleFormatter(logging.Formatter):
    def format(self, record: logging.LogRecord) -> str:
        import json

        try:
            event = json.loads(record.getMessage())
        except ValueError:
            return _escape(record.getMessage())
        return format_console_event(event) if isinstance(event, dict) else _escape(record.getMessage())


# C0, DEL, C1 and the Unicode line/paragraph separators: anything a terminal or `splitlines` reads as a break
# or a control sequence, so content (a prompt with "\n..." or ESC codes) cannot forge or hide a log line.
_CONTROL = re.compile(r"[\x00-\x1f\x7f-\x9f\u2028\u2029]")
_NAMED = {"\n": "\\n", "\r": "\\r", "\t": "\\t"}
_NEEDS_QUOTES = re.compile(r'[\s="\\]')


def _escape(text: str) -> str:
    """`text` with every control character written as an escape (\\n, \\x1b, \\u2028)."""
    return _CONTROL.sub(_escape_one, text)


def _escape_one(match: re.Match[str]) -> str:
    char = match[0]
    return _NAMED.get(char) or (f"\\x{ord(char):02x}" if ord(char) < 0x100 else f"\\u{ord(char):04x}")


def _console_value(value: Any) -> str:
    """A value as it appears after `key=`: bare when plain, else double-quoted with backslash escapes, so a value
    can hold neither a line break nor a forged `key=value`."""
    text = value if isinstance(value, str) else str(value)
    if text and not _NEEDS_QUOTES.search(text) and not _CONTROL.search(text):
        return text
    return '"' + _escape(text.replace("\\", "\\\\").replace('"', '\\"')) + '"'


def format_console_event(event: dict[str, Any]) -> str:
    """One event as one readable line: `timestamp level event key=value ...`; every value escaped."""
    event = dict(event)
    head = " ".join(_escape(str(event.pop(key, ""))) for key in ("timestamp", "level", "event"))
    return head + " " + " ".join(f"{_escape(str(k))}={_console_value(v)}" for k, v in event.items())


def decision_event(result: GuardResult, request: dict[str, Any] | None, log_content: bool) -> dict[str, Any]:
    """The fields of one decision event (content only when allowed)."""
    d = result.decision
    event = {
        "request_id": d.request_id,
        "policy": d.policy,
        "adapter": d.adapter,
        "gate_mode": d.gate_mode,
        "steered": d.steered,
        "blocked": d.blocked,
        "probe_score": d.probe_score,
        "reason": d.reason,
        "steered_layers": len(d.layers),
        "alpha": d.alpha,
        "artifact_id": d.artifact_id,
        "prompt_tokens": d.prompt_tokens,
        "completion_tokens": d.completion_tokens,
        "finish_reason": d.finish_reason,
        "tool_calls": [c.name for c in result.tool_calls],
        "prefill_ms": round(d.timings.prefill_ms, 2),
        "decode_ms": round(d.timings.decode_ms, 2),
        "total_ms": round(d.timings.total_ms, 2),
    }
    if log_content:
        event["prompt_text"] = (request or {}).get("text")
        event["has_audio"] = (request or {}).get("audio") is not None
        event["earlier_turns"] = len((request or {}).get("history") or ())
        event["response_text"] = result.text
    return event
