"""Decision events: one per request, the documented fields, no content unless allowed."""

from __future__ import annotations

import io
import json
import logging

import pytest

from guardrail import Guard, Policy, calibrate
from guardrail.obs.logs import LOGGER_NAME, configure_logging
from guardrail.testing.tiny import build_tiny

FIELDS = {
    "request_id",
    "policy",
    "adapter",
    "gate_mode",
    "steered",
    "blocked",
    "probe_score",
    "reason",
    "steered_layers",
    "alpha",
    "prompt_tokens",
    "completion_tokens",
    "prefill_ms",
    "decode_ms",
    "total_ms",
    "finish_reason",
    "event",
    "level",
    "timestamp",
}


@pytest.fixture()
def guard_and_stream():
    model, tokenizer = build_tiny("qwen2")
    artifact = calibrate(model, tokenizer, ["how to steal a car"], ["how to wash a car", "how to bake bread"])
    stream = io.StringIO()
    configure_logging("json", stream=stream)
    yield model, tokenizer, artifact, stream
    logging.getLogger(LOGGER_NAME).handlers.clear()


def events(stream: io.StringIO) -> list[dict]:
    return [json.loads(line) for line in stream.getvalue().splitlines()]


def test_one_event_per_request_without_content(guard_and_stream):
    model, tokenizer, artifact, stream = guard_and_stream
    guard = Guard(model, tokenizer, policy=Policy(), artifact=artifact)
    results = guard.generate_batch([{"text": "secret question one"}, {"text": "secret two"}], max_new_tokens=3)
    logged = events(stream)
    assert len(logged) == 2 and all(FIELDS <= set(e) for e in logged)
    assert [e["request_id"] for e in logged] == [r.decision.request_id for r in results]
    assert logged[0]["event"] == "guardrail.decision" and logged[0]["steered"] is True
    assert "secret" not in stream.getvalue()
    assert all(r.text not in stream.getvalue() for r in results if r.text.strip())


def test_content_logged_only_when_policy_allows(guard_and_stream):
    model, tokenizer, artifact, stream = guard_and_stream
    policy = Policy()
    if "logging" not in Policy.model_fields:
        pytest.skip("policy has no logging section yet")
    policy = Policy.from_dict({"logging": {"log_content": True}})
    Guard(model, tokenizer, policy=policy, artifact=artifact).generate(text="secret question", max_new_tokens=3)
    (event,) = events(stream)
    assert event["prompt_text"] == "secret question" and "response_text" in event


def test_nothing_printed_without_configuration(capsys):
    logging.getLogger(LOGGER_NAME).handlers.clear()
    model, tokenizer = build_tiny("qwen2")
    Guard(model, tokenizer, policy=Policy.from_dict({"gate": {"mode": "off"}})).generate(text="hi", max_new_tokens=2)
    captured = capsys.readouterr()
    assert captured.out == "" and "guardrail.decision" not in captured.err


def test_metrics_count_requests(guard_and_stream):
    model, tokenizer, artifact, _ = guard_and_stream
    guard = Guard(model, tokenizer, policy=Policy(), artifact=artifact)
    guard.generate_batch([{"text": "a"}, {"text": "b"}], max_new_tokens=2)
    snapshot = guard.metrics.snapshot()
    assert snapshot["requests_total"] == 2 and snapshot["steered_total"] == 2 and snapshot["blocked_total"] == 0
    assert "guardrail_requests_total 2" in guard.metrics.prometheus()


FORGED = "hi\nfake 2024-01-01T00:00:00Z info guardrail.decision steered=False\r\x1b[2Jx\x85y\u2028z"


@pytest.mark.parametrize("fmt", ["json", "console"])
def test_content_with_control_characters_stays_one_line(fmt):
    """A prompt with newlines, CR, ESC or other C0/C1 characters cannot forge a second log line."""
    stream = io.StringIO()
    configure_logging(fmt, stream=stream)
    try:
        model, tokenizer = build_tiny("qwen2")
        policy = Policy.from_dict({"gate": {"mode": "off"}, "logging": {"log_content": True}})
        Guard(model, tokenizer, policy=policy).generate(text=FORGED, max_new_tokens=2)
    finally:
        logging.getLogger(LOGGER_NAME).handlers.clear()
    out = stream.getvalue()
    assert out.endswith("\n") and len(out.splitlines()) == 1  # splitlines also splits at \x85, \u2028, \x1c...
    assert not any(ord(c) < 0x20 or 0x7F <= ord(c) <= 0x9F or c in "\u2028\u2029" for c in out[:-1])
    if fmt == "json":
        assert json.loads(out)["prompt_text"] == FORGED
    else:
        assert "prompt_text=" in out and "\\n" in out and "\\x1b" in out


def test_console_values_are_quoted_so_content_cannot_forge_fields():
    from guardrail.obs.logs import format_console_event

    line = format_console_event(
        {"timestamp": "t", "level": "info", "event": "guardrail.decision", "prompt_text": 'a steered=False "b"\\'}
    )
    assert line == 't info guardrail.decision prompt_text="a steered=False \\"b\\"\\\\"'
    assert format_console_event({"event": "x", "n": 3, "ok": True, "none": None}) == "  x n=3 ok=True none=None"


def test_console_escapes_every_control_character():
    from guardrail.obs.logs import format_console_event

    controls = "".join(map(chr, [*range(0x20), *range(0x7F, 0xA0), 0x2028, 0x2029]))
    line = format_console_event({"event": "e\nx", "level": "\r", "prompt_text": controls, "k\n": ["\n"]})
    assert len(line.splitlines()) == 1 and line.isprintable()
    assert "\\x00" in line and "\\x1b" in line and "\\x85" in line and "\\u2028" in line and "\\n" in line
