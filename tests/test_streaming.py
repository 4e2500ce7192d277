"""Guard.stream: chunks as tokens are generated, never bypassing the guard."""

from __future__ import annotations

import gc
import threading
import time

import pytest
import torch
from conftest import alpha_for
from transformers import StoppingCriteria, StoppingCriteriaList
from transformers.generation.streamers import BaseStreamer

from guardrail import Guard, Policy, RequestError, calibrate
from guardrail.testing.tiny import AUDIO_FAMILIES, build_tiny, tiny_audio


@pytest.fixture(scope="module", params=["qwen2", "qwen2_audio"])
def guard(request):
    model, processor = build_tiny(request.param, seed=0)
    if request.param in AUDIO_FAMILIES:
        harmful = [(tiny_audio(0.5, seed=i), 16000) for i in range(2)]
        safe = [(tiny_audio(0.6, seed=10 + i), 16000) for i in range(3)]
    else:
        harmful, safe = ["how to steal a car", "how to hurt someone"], ["how to wash a car", "how to bake", "a cat"]
    artifact = calibrate(model, processor, harmful, safe)
    policy = Policy.from_dict({"steering": {"alpha": alpha_for(artifact, 2.0), "safe_rank": 2}})
    return Guard(model, processor, policy=policy, artifact=artifact), request.param in AUDIO_FAMILIES


def test_stream_concatenation_equals_generate(guard):
    guard, audio = guard
    kwargs = {"audio": (tiny_audio(0.7, seed=5), 16000) if audio else None, "text": "please answer the question"}
    expected = guard.generate(**kwargs, max_new_tokens=12)
    stream = guard.stream(**kwargs, max_new_tokens=12)
    chunks = list(stream)
    assert len(chunks) > 1
    assert "".join(chunks) == expected.text == stream.result.text
    assert stream.result.token_ids == expected.token_ids and stream.result.steered


def test_stream_validates_input_in_the_callers_thread(guard):
    guard, _ = guard
    with pytest.raises(RequestError, match="neither audio nor text"):
        guard.stream(text="")


def test_stream_reraises_generation_errors(guard):
    guard, _ = guard
    stream = guard.stream(text="hello", max_new_tokens=4, bad_generate_kwarg=1)
    with pytest.raises(ValueError, match="bad_generate_kwarg"):  # transformers rejects the unknown kwarg
        list(stream)
    assert all(len(layer._forward_hooks) == 0 for layer in guard.layers)


def test_a_streamer_passed_to_generate_sees_every_token(guard):
    guard, _ = guard
    seen: list = []

    class Collect(BaseStreamer):
        def put(self, value):
            seen.append(value.reshape(-1).tolist())

        def end(self):
            seen.append("end")

    result = guard.generate(text="please answer the question", max_new_tokens=6, streamer=Collect())
    assert seen[-1] == "end" and len(seen) > 2  # the prompt, then each new token, then the end
    new_tokens = [t for chunk in seen[1:-1] for t in chunk]
    assert new_tokens[: len(result.token_ids)] == result.token_ids
    assert result.decision.timings.prefill_ms > 0 and result.decision.timings.decode_ms > 0


# -- closing a stream (issue #15, defect 15) -------------------------------------------------------------
LONG = 200  # new tokens a stream would generate if nobody stopped it


class CountSteps(StoppingCriteria):
    """Counts decoding steps; never stops generation itself."""

    def __init__(self):
        self.calls = 0

    def __call__(self, input_ids, scores, **kwargs):
        self.calls += 1
        return torch.zeros(input_ids.shape[0], dtype=torch.bool, device=input_ids.device)


def long_stream(guard, steps: CountSteps):
    return guard.stream(
        text="please answer the question",
        max_new_tokens=LONG,
        min_new_tokens=LONG,  # no early EOS: only closing the stream can end it early
        stopping_criteria=StoppingCriteriaList([steps]),
    )


def wait_for(threads: set[threading.Thread], seconds: float = 30.0) -> None:
    deadline = time.monotonic() + seconds
    for thread in threads:
        thread.join(max(0.0, deadline - time.monotonic()))


def test_close_stops_generation_at_the_next_token(guard):
    guard, _ = guard
    steps = CountSteps()
    stream = long_stream(guard, steps)
    chunks = iter(stream)
    next(chunks)
    stream.close()
    assert steps.calls < LONG // 2
    assert stream.result is not None and stream.result.decision.finish_reason == "cancelled"
    assert 0 < len(stream.result.token_ids) < LONG
    assert list(chunks) is not None  # the rest of the iteration ends instead of blocking
    assert all(len(layer._forward_hooks) == 0 for layer in guard.layers)


def test_stream_as_a_context_manager(guard):
    guard, _ = guard
    steps = CountSteps()
    with long_stream(guard, steps) as stream:
        for _ in stream:
            break
    assert steps.calls < LONG // 2 and stream.result.decision.finish_reason == "cancelled"


def test_abandoned_stream_stops(guard):
    guard, _ = guard
    steps = CountSteps()
    before = set(threading.enumerate())

    def read_one_chunk():
        return next(iter(long_stream(guard, steps)))

    assert read_one_chunk()
    gc.collect()
    wait_for(set(threading.enumerate()) - before)
    assert steps.calls < LONG // 2


def test_closing_a_finished_stream_keeps_its_result(guard):
    guard, _ = guard
    stream = guard.stream(text="please answer the question", max_new_tokens=6)
    text = "".join(stream)
    stream.close()
    assert stream.result.text == text and stream.result.decision.finish_reason in ("stop", "length")
    assert list(stream) == []  # iterating again ends at once


# -- per-request streamers and cancel events inside one batch (the server's coalesced streams) ----------------
class CancelAfter(StoppingCriteria):
    """Sets `event` once generation has taken `steps` steps (a client that leaves mid-answer)."""

    def __init__(self, event: threading.Event, steps: int):
        self.event, self.steps, self.calls = event, steps, 0

    def __call__(self, input_ids, scores, **kwargs):
        self.calls += 1
        if self.calls == self.steps:
            self.event.set()
        return torch.zeros(input_ids.shape[0], dtype=torch.bool, device=input_ids.device)


def test_per_request_streamers_see_their_own_answer_in_a_batch(guard):
    guard, _ = guard
    texts = ["please answer the question", "how to steal a car", "how to bake bread today"]
    alone = [guard.generate(text=t, max_new_tokens=10) for t in texts]
    parsed = guard.parse_requests([{"text": t} for t in texts])
    opened: list[int] = []
    streamers = [guard.streamer(parsed[0], on_open=lambda: opened.append(0)), None, guard.streamer(parsed[2])]
    results = guard.generate_batch(parsed, max_new_tokens=10, streamers=streamers)
    assert [r.token_ids for r in results] == [a.token_ids for a in alone]  # no leak between rows
    assert opened == [0]
    for streamer, result in [(streamers[0], results[0]), (streamers[2], results[2])]:
        shown = "".join(streamer.queue.queue)
        assert result.text.startswith(shown) and shown == streamer.sent


def test_a_cancelled_row_stops_and_the_others_finish(guard):
    guard, _ = guard
    texts = ["please answer the question", "how to bake bread today"]
    alone = guard.generate(text=texts[1], max_new_tokens=LONG // 4, min_new_tokens=LONG // 4)
    leave = threading.Event()
    results = guard.generate_batch(
        [{"text": t} for t in texts],
        max_new_tokens=LONG // 4,
        min_new_tokens=LONG // 4,
        cancel=[leave, threading.Event()],
        stopping_criteria=StoppingCriteriaList([CancelAfter(leave, 3)]),
    )
    assert results[0].decision.finish_reason == "cancelled" and len(results[0].token_ids) <= 4
    assert results[1].token_ids == alone.token_ids and results[1].decision.finish_reason == "length"


def test_per_request_controls_must_match_the_batch(guard):
    guard, _ = guard
    with pytest.raises(RequestError, match="one entry per request"):
        guard.generate_batch([{"text": "a"}, {"text": "b"}], max_new_tokens=2, cancel=[threading.Event()])
