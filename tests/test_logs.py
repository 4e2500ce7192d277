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
