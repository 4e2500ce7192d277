"""`guardrail serve` end to end: a real uvicorn server on 127.0.0.1 over a tiny text model, called with the
official `openai` client (and httpx for what the client cannot send). Answers equal `Guard.generate`."""

from __future__ import annotations

import gc
import os
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import httpx
import openai
import pytest

from guardrail import Guard
from guardrail.serve import BackgroundServer, Deployment, Deployments, KeyCheck, ServeLimits, create_app
from guardrail.testing.tiny import stand_in_request, tiny_guard

pytestmark = pytest.mark.usefixtures("one_torch_thread")

KEY = "sk-test-key"
WEATHER = {
    "type": "function",
    "function": {
        "name": "get_weather",
        "description": "The weather in a city",
        "parameters": {"type": "object", "properties": {"city": {"type": "string"}}, "required": ["city"]},
    },
}


@pytest.fixture(scope="module")
def guards() -> dict[str, Guard]:
    gated = tiny_guard("qwen2", "gated")
    off = Guard(gated.model, gated.processor, policy="off")
    return {"gated": gated, "off": off}


@pytest.fixture(scope="module")
def server(guards):
    deployments = Deployments(
        [
            Deployment.of("gated", guards["gated"]),
            Deployment.of("off", guards["off"]),
            Deployment.of("gated-locked", guards["gated"], locked=True),
        ]
    )
    limits = ServeLimits(max_body_bytes=64 * 1024, max_batch=8, max_wait_ms=50, request_timeout_s=120)
    app = create_app(deployments, limits, KeyCheck([KEY, "sk-other"]))
    with BackgroundServer(app) as running:
        yield running


@pytest.fixture(scope="module")
def client(server) -> openai.OpenAI:
    return openai.OpenAI(base_url=server.base_url, api_key=KEY, max_retries=0)


def question(harmful: bool, index: int = 0) -> str:
    return stand_in_request("qwen2", harmful, index)["text"]


def user(text: str) -> list[dict]:
    return [{"role": "user", "content": text}]


# -- answers ---------------------------------------------------------------------------------
@pytest.mark.parametrize("harmful, index", [(True, 0), (False, 1)])
def test_a_non_streamed_answer_equals_guard_generate(client, guards, harmful, index):
    messages = user(question(harmful, index))
    reply = client.chat.completions.create(model="gated", messages=messages, max_tokens=8)
    expected = guards["gated"].generate(messages=messages, max_new_tokens=8)
    assert reply.choices[0].message.content == expected.text
    assert reply.choices[0].finish_reason in ("stop", "length")
    assert reply.usage.completion_tokens == expected.decision.completion_tokens
    assert reply.usage.prompt_tokens == expected.decision.prompt_tokens
    field = reply.model_extra["guardrail"]
    assert field["steered"] == expected.steered == harmful  # the tiny gate tells these stand-ins apart
    assert field["policy"] == "gated" and field["blocked"] is False and field["request_id"]
    assert field["probe_score"] == pytest.approx(expected.decision.probe_score, abs=1e-4)
    assert "threshold" in field["reason"]


def test_a_streamed_answer_equals_guard_generate(client, guards):
    messages = user(question(True, 1))
    stream = client.chat.completions.create(
        model="gated", messages=messages, max_tokens=10, stream=True, stream_options={"include_usage": True}
    )
    chunks = list(stream)
    expected = guards["gated"].generate(messages=messages, max_new_tokens=10)
    assert chunks[0].choices[0].delta.role == "assistant"
    text = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
    assert text == expected.text
    final = [c for c in chunks if c.choices and c.choices[0].finish_reason][-1]
    assert final.model_extra["guardrail"]["steered"] is True
    assert chunks[-1].choices == [] and chunks[-1].usage.completion_tokens == expected.decision.completion_tokens


def test_multi_turn_system_stop_and_seed(client, guards):
    messages = [
        {"role": "system", "content": "You answer briefly."},
        {"role": "user", "content": "How do I bake bread?"},
        {"role": "assistant", "content": "Mix flour and water."},
        {"role": "user", "content": [{"type": "text", "text": "And then?"}]},
    ]
    guard = guards["off"]
    free = guard.generate(messages=messages, max_new_tokens=12).text
    stop = free[3:5] if len(free) > 5 else None
    reply = client.chat.completions.create(model="off", messages=messages, max_tokens=12, stop=stop, seed=7)
    assert reply.choices[0].message.content == guard.generate(messages=messages, max_new_tokens=12, stop=stop).text
    sampled = [
        client.chat.completions.create(model="off", messages=messages, max_tokens=6, temperature=1.0, seed=3)
        for _ in range(2)
    ]
    assert sampled[0].choices[0].message.content == sampled[1].choices[0].message.content  # seeded
    assert sampled[0].model_extra["guardrail"]["steered"] is False


def test_tools_pass_through_and_come_back_as_openai_tool_calls(client, guards):
    messages = user("What is the weather in Paris?")
    reply = client.chat.completions.create(
        model="off", messages=messages, tools=[WEATHER], tool_choice="required", max_tokens=40
    )
    expected = guards["off"].generate(messages=messages, tools=[WEATHER], tool_choice="required", max_new_tokens=40)
    message = reply.choices[0].message
    calls = [(c.function.name, c.function.arguments) for c in message.tool_calls or []]
    assert calls == [(c.name, c.to_dict()["function"]["arguments"]) for c in expected.tool_calls]
    assert (message.content or "") == expected.text
    assert reply.choices[0].finish_reason == ("tool_calls" if expected.tool_calls else "length")


def test_extra_body_picks_another_policy_unless_locked(client):
    messages = user(question(True, 2))
    switched = client.chat.completions.create(
        model="gated", messages=messages, max_tokens=4, extra_body={"guardrail": {"policy": "off"}}
    )
    assert switched.model_extra["guardrail"]["policy"] == "off"
    assert switched.model_extra["guardrail"]["steered"] is False
    with pytest.raises(openai.PermissionDeniedError) as locked:
        client.chat.completions.create(
            model="gated-locked", messages=messages, max_tokens=4, extra_body={"guardrail": {"policy": "off"}}
        )
    assert locked.value.body["code"] == "policy_locked"
    with pytest.raises(openai.NotFoundError):
        client.chat.completions.create(
            model="gated", messages=messages, max_tokens=4, extra_body={"guardrail": {"policy": "nope"}}
        )


# -- many clients ------------------------------------------------------------------------------
def test_concurrent_clients_get_their_sequential_answers_and_are_coalesced(client, server, guards):
    requests = [(question(i % 2 == 0, i % 4) + " " * (i // 4), i % 3 == 0) for i in range(12)]  # steered or not
    expected = [guards["gated"].generate(messages=user(text), max_new_tokens=8) for text, _ in requests]
    worker = server.app.state.serving.worker
    batches_before = worker.batches

    def ask(item: tuple[str, bool]) -> tuple[str, bool]:
        text, stream = item
        if stream:
            chunks = list(client.chat.completions.create(model="gated", messages=user(text), max_tokens=8, stream=True))
            final = [c for c in chunks if c.choices and c.choices[0].finish_reason][-1]
            return "".join(c.choices[0].delta.content or "" for c in chunks if c.choices), final.model_extra[
                "guardrail"
            ]["steered"]
        reply = client.chat.completions.create(model="gated", messages=user(text), max_tokens=8)
        return reply.choices[0].message.content, reply.model_extra["guardrail"]["steered"]

    with ThreadPoolExecutor(12) as pool:
        answers = list(pool.map(ask, requests))
    assert answers == [(e.text, e.steered) for e in expected]  # no steering leaks between coalesced requests
    assert {steered for _, steered in answers} == {True, False}
    assert worker.largest_batch > 1  # the worker did coalesce
    assert worker.batches - batches_before < 12  # fewer generate_batch calls than requests
    names = [t.name for t in threading.enumerate()]
    assert sum(n.startswith("guardrail-worker") for n in names) == 1
    assert not any(n == "guardrail-stream" for n in names)


def test_streams_share_batches_with_each_other(client, server, guards):
    texts = [question(i % 2 == 0, i % 4) + " " * i for i in range(6)]
    expected = [guards["gated"].generate(messages=user(t), max_new_tokens=8).text for t in texts]
    worker = server.app.state.serving.worker
    worker.largest_batch = 0

    def ask(text: str) -> str:
        chunks = client.chat.completions.create(model="gated", messages=user(text), max_tokens=8, stream=True)
        return "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)

    with ThreadPoolExecutor(6) as pool:
        assert list(pool.map(ask, texts)) == expected
    assert worker.largest_batch > 1  # only streams were sent: streams were coalesced


def cancelled_generations(server) -> float:
    text = httpx.get(f"{server.base_url.removesuffix('/v1')}/metrics").text
    lines = [ln for ln in text.splitlines() if ln.startswith('guardrail_cancelled_generations_total{policy="gated"}')]
    return float(lines[0].split()[-1]) if lines else 0.0


def test_a_client_that_leaves_stops_its_row_and_its_batch_mate_finishes(client, server, guards):
    long = {"max_tokens": 300, "extra_body": {"min_tokens": 300}}
    texts = [question(True, 2) + " and more", question(False, 3) + " and more"]
    expected = guards["gated"].generate(messages=user(texts[1]), max_new_tokens=300, min_new_tokens=300).text
    before = cancelled_generations(server)

    def leave_after_one_chunk() -> None:
        stream = client.chat.completions.create(model="gated", messages=user(texts[0]), stream=True, **long)
        next(iter(stream))  # the role chunk: sent once generation has started
        stream.close()

    def stay() -> str:
        return client.chat.completions.create(model="gated", messages=user(texts[1]), **long).choices[0].message.content

    slow = guards["gated"].model.register_forward_pre_hook(lambda *_: time.sleep(0.01))  # ~3 s per answer
    try:
        with ThreadPoolExecutor(2) as pool:
            left, stayed = pool.submit(leave_after_one_chunk), pool.submit(stay)
            left.result()
            assert stayed.result() == expected
    finally:
        slow.remove()
    deadline = time.monotonic() + 30
    while cancelled_generations(server) == before and time.monotonic() < deadline:
        time.sleep(0.05)
    assert cancelled_generations(server) == before + 1


# -- errors ------------------------------------------------------------------------------------
def raw(server, body: bytes | dict, key: str | None = KEY) -> httpx.Response:
    headers = {"Authorization": f"Bearer {key}"} if key else {}
    if isinstance(body, dict):
        return httpx.post(f"{server.base_url}/chat/completions", json=body, headers=headers, timeout=60)
    headers["Content-Type"] = "application/json"
    return httpx.post(f"{server.base_url}/chat/completions", content=body, headers=headers, timeout=60)


def assert_error(reply: httpx.Response, status: int, code: str | None = None) -> dict:
    assert reply.status_code == status, reply.text
    error = reply.json()["error"]
    assert set(error) == {"message", "type", "param", "code"} and error["message"]
    if code is not None:
        assert error["code"] == code
    return error


GOOD = {"model": "off", "messages": user("Hello"), "max_tokens": 2}


@pytest.mark.parametrize(
    "body, status, code",
    [
        (b'{"model": "off", "messages": [', 400, "invalid_json"),
        (b"\xff\xfe not utf-8", 400, "invalid_json"),
        ({"model": "off"}, 400, "invalid_request"),  # no messages
        ({**GOOD, "temperature": "hot"}, 400, "invalid_request"),
        ({**GOOD, "n": 2}, 400, "invalid_request"),
        ({**GOOD, "max_tokens": 10**6}, 400, "invalid_request"),  # over the policy's limits.max_new_tokens
        ({**GOOD, "max_completion_tokens": 0}, 400, "invalid_request"),
        ({**GOOD, "messages": [{"role": "robot", "content": "hi"}]}, 400, "invalid_request"),
        ({**GOOD, "messages": [{"role": "user", "content": [{"type": "image_url", "image_url": {}}]}]}, 400, None),
        ({**GOOD, "model": "gpt-4o"}, 404, "model_not_found"),
        ({**GOOD, "stop": [""]}, 400, "invalid_request"),
        ({**GOOD, "messages": [{"role": "assistant", "content": "hi"}]}, 400, "invalid_request"),
    ],
)
def test_bad_requests_get_openai_errors_and_the_server_keeps_answering(server, client, body, status, code):
    assert_error(raw(server, body), status, code)
    assert client.chat.completions.create(**GOOD).choices[0].message.content is not None


def test_an_oversized_body_is_413(server):
    body = {**GOOD, "messages": user("x" * 100_000)}
    assert_error(raw(server, body), 413, "body_too_large")


def test_missing_or_wrong_keys_are_401(server):
    assert_error(raw(server, GOOD, key=None), 401, "missing_api_key")
    assert_error(raw(server, GOOD, key="sk-wrong"), 401, "invalid_api_key")
    assert raw(server, GOOD, key="sk-other").status_code == 200
    wrong = openai.OpenAI(base_url=server.base_url, api_key="sk-wrong", max_retries=0)
    with pytest.raises(openai.AuthenticationError):
        wrong.models.list()


def test_a_bad_request_in_a_coalesced_batch_fails_alone(server, client):
    too_long = {**GOOD, "messages": user("word " * 10_000)}  # past the tiny model's context: found on the worker
    with ThreadPoolExecutor(4) as pool:
        good = [pool.submit(client.chat.completions.create, **GOOD) for _ in range(3)]
        bad = pool.submit(raw, server, {**too_long, "max_tokens": 2})
        replies = [g.result() for g in good]
    assert all(r.choices[0].message.content is not None for r in replies)
    assert_error(bad.result(), 400, "invalid_request")


# -- endpoints ---------------------------------------------------------------------------------
def test_models_health_ready_and_metrics(server, client):
    assert [m.id for m in client.models.list()] == ["gated", "off", "gated-locked"]
    assert httpx.get(f"{server.url}/health").json() == {"status": "ok"}
    ready = httpx.get(f"{server.url}/ready").json()
    assert ready["status"] == "ready"
    client.chat.completions.create(model="gated", messages=user(question(True, 3)), max_tokens=2)
    metrics = httpx.get(f"{server.url}/metrics").text
    for name in (
        'guardrail_requests_total{outcome="ok",policy="gated"}',
        'guardrail_steered_total{policy="gated"}',
        "guardrail_probe_score_bucket",
        "guardrail_queue_wait_seconds_bucket",
        "guardrail_prefill_seconds_bucket",
        "guardrail_decode_seconds_bucket",
        "guardrail_queue_depth",
        "guardrail_batch_size_bucket",
    ):
        assert name in metrics
    assert 'outcome="client_error"' in metrics or 'outcome="not_found"' in metrics
    assert KEY not in metrics


def test_unknown_routes_answer_in_the_openai_shape(server):
    assert_error(httpx.get(f"{server.url}/v1/nothing"), 404)


def rss_mib() -> float:
    """This process's resident memory (Linux)."""
    pages = int(Path("/proc/self/statm").read_text().split()[1])
    return pages * os.sysconf("SC_PAGE_SIZE") / 2**20


def test_a_soak_of_64_clients_and_1000_requests(client, server, guards):
    texts = [question(i % 2 == 0, i % 4) + " " * (i // 4) for i in range(8)]
    expected = {t: guards["gated"].generate(messages=user(t), max_new_tokens=6).text for t in texts}
    threads_before = threading.active_count()

    def ask(i: int) -> bool:
        text = texts[i % len(texts)]
        if i % 4 == 0:
            chunks = client.chat.completions.create(model="gated", messages=user(text), max_tokens=6, stream=True)
            return "".join(c.choices[0].delta.content or "" for c in chunks if c.choices) == expected[text]
        reply = client.chat.completions.create(model="gated", messages=user(text), max_tokens=6)
        return reply.choices[0].message.content == expected[text]

    with ThreadPoolExecutor(64) as pool:
        assert all(pool.map(ask, range(200)))  # warm-up: pools, caches and allocator arenas reach their size
        gc.collect()
        warm = rss_mib()
        assert all(pool.map(ask, range(1000)))
    gc.collect()
    grown = rss_mib() - warm
    print(f"resident memory over 1,000 requests: {warm:.0f} MiB -> {warm + grown:.0f} MiB")
    assert grown < 32, f"the server's process grew {grown:.0f} MiB over 1,000 requests"  # a leak of ~33 KB/request
    assert threading.active_count() == threads_before
