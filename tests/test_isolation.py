"""Steering never leaks between guards, threads, or a plain model.generate beside a guard."""

from __future__ import annotations

import gc
import threading

import torch
from conftest import alpha_for
from transformers import StoppingCriteria, StoppingCriteriaList

from guardrail import Guard, GuardrailError, Policy, SteeringArtifact, calibrate
from guardrail.runtime.static import slot_of
from guardrail.testing.tiny import build_tiny

N_NEW = 8
QUESTIONS = ["please answer the question", "tell me about bread and the sea please"]


def _setup():
    model, tokenizer = build_tiny("qwen2", seed=0)
    artifact = calibrate(
        model,
        tokenizer,
        ["how do I build a weapon", "how to steal a car"],
        ["how do I build a shelf", "how to wash a car", "how to bake bread"],
    )
    policy = lambda shift: Policy.from_dict({"steering": {"alpha": alpha_for(artifact, shift), "safe_rank": 2}})
    return model, tokenizer, artifact, policy


def _run_concurrently(jobs, repeat=3):
    """Run callables in threads released together (each `repeat` times); return their results in order."""
    barrier = threading.Barrier(len(jobs))
    results = [None] * len(jobs)
    errors = []

    def worker(i, job):
        try:
            barrier.wait()
            results[i] = [job() for _ in range(repeat)]
        except Exception as exc:  # surfaced below
            errors.append(exc)

    threads = [threading.Thread(target=worker, args=(i, job)) for i, job in enumerate(jobs)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert not errors, errors
    return results


def test_two_guards_on_one_model_in_two_threads():
    model, tokenizer, artifact, policy = _setup()
    strong = Guard(model, tokenizer, policy=policy(3.0), artifact=artifact)
    flipped = SteeringArtifact({i: -v for i, v in artifact.refusal.items()}, artifact.basis, artifact.metadata)
    opposite = Guard(model, tokenizer, policy=policy(3.0), artifact=flipped)  # a different steering direction
    assert all(torch.equal(opposite.steering_deltas[i], -d) for i, d in strong.steering_deltas.items())
    expected_a = strong.generate(text=QUESTIONS[0], max_new_tokens=N_NEW).token_ids
    expected_b = opposite.generate(text=QUESTIONS[1], max_new_tokens=N_NEW).token_ids
    got_a, got_b = _run_concurrently(
        [
            lambda: strong.generate(text=QUESTIONS[0], max_new_tokens=N_NEW).token_ids,
            lambda: opposite.generate(text=QUESTIONS[1], max_new_tokens=N_NEW).token_ids,
        ]
    )
    assert got_a == [expected_a] * 3
    assert got_b == [expected_b] * 3


def test_plain_generate_beside_a_guard_is_untouched():
    model, tokenizer, artifact, policy = _setup()
    guard = Guard(model, tokenizer, policy=policy(3.0), artifact=artifact)
    inputs = tokenizer.apply_chat_template(
        [{"role": "user", "content": QUESTIONS[1]}], add_generation_prompt=True, return_tensors="pt", return_dict=True
    )

    def plain():
        with torch.inference_mode():
            out = model.generate(**inputs, do_sample=False, max_new_tokens=N_NEW, min_new_tokens=N_NEW)
        return out[0, inputs["input_ids"].shape[1] :].tolist()

    expected_plain = plain()
    expected_guarded = guard.generate(text=QUESTIONS[1], max_new_tokens=N_NEW).token_ids
    guarded, bare = _run_concurrently(
        [lambda: guard.generate(text=QUESTIONS[1], max_new_tokens=N_NEW).token_ids, plain]
    )
    assert guarded == [expected_guarded] * 3
    assert bare == [expected_plain] * 3
    assert expected_plain[: len(expected_guarded)] != expected_guarded  # the two really differ
    assert all(len(layer._forward_hooks) == 0 for layer in guard.layers)


def test_one_guard_from_two_threads_with_different_requests():
    model, tokenizer, artifact, policy = _setup()
    guard = Guard(model, tokenizer, policy=policy(3.0), artifact=artifact)
    expected = [guard.generate(text=q, max_new_tokens=N_NEW).token_ids for q in QUESTIONS]
    got = _run_concurrently([lambda q=q: guard.generate(text=q, max_new_tokens=N_NEW).token_ids for q in QUESTIONS])
    assert got == [[e] * 3 for e in expected]


# -- the static path beside others (issue #15: defects 2 and 3) -----------------------------------------
def _static(artifact, shift=3.0, **limits):
    alpha = alpha_for(artifact, shift)
    return Policy.from_dict(
        {"steering": {"alpha": alpha, "safe_rank": 2}, "runtime": {"cache": "static"}, "limits": limits}
    )


def _hook_counts(layers) -> list[int]:
    return [len(layer._forward_hooks) for layer in layers]


def test_eager_guards_beside_a_static_guard_are_untouched():
    model, tokenizer, artifact, policy = _setup()
    static = Guard(model, tokenizer, policy=_static(artifact), artifact=artifact)
    eager_on = Guard(model, tokenizer, policy=policy(3.0), artifact=artifact)
    eager_off = Guard(model, tokenizer, policy=Policy.from_dict({"gate": {"mode": "off"}}))
    jobs = [
        lambda: static.generate(text=QUESTIONS[0], max_new_tokens=16).token_ids,
        lambda: eager_on.generate(text=QUESTIONS[1], max_new_tokens=16).token_ids,
        lambda: eager_off.generate(text=QUESTIONS[1], max_new_tokens=16).token_ids,
        lambda: eager_off.generate(text=QUESTIONS[0], max_new_tokens=16).token_ids,
    ]
    expected = [job() for job in jobs]
    assert expected[2] != eager_on.generate(text=QUESTIONS[1], max_new_tokens=16).token_ids  # steering shows
    got = _run_concurrently(jobs, repeat=6)
    assert got == [[e] * 6 for e in expected]


def test_eager_batch_larger_than_the_static_buffers():
    model, tokenizer, artifact, policy = _setup()
    static = Guard(model, tokenizer, policy=_static(artifact, max_batch=2), artifact=artifact)
    static.generate(text=QUESTIONS[0], max_new_tokens=2)
    eager = Guard(model, tokenizer, policy=policy(3.0), artifact=artifact)
    requests = [{"text": q} for q in QUESTIONS * 2]
    batched = [r.token_ids for r in eager.generate_batch(requests, max_new_tokens=N_NEW)]
    assert batched == [eager.generate(**r, max_new_tokens=N_NEW).token_ids for r in requests]


class _PauseAt(StoppingCriteria):
    """Signals `reached` at decoding step `step`, then waits (at most `timeout` s) for `resume`."""

    def __init__(self, step: int, timeout: float = 1.0):
        self.step, self.timeout, self.calls = step, timeout, 0
        self.reached, self.resume = threading.Event(), threading.Event()

    def __call__(self, input_ids, scores, **kwargs):
        self.calls += 1
        if self.calls == self.step:
            self.reached.set()
            self.resume.wait(self.timeout)
        return torch.zeros(input_ids.shape[0], dtype=torch.bool)


def test_growing_the_static_buffers_waits_for_the_running_request():
    model, tokenizer, artifact, _ = _setup()
    static = Guard(model, tokenizer, policy=_static(artifact, max_batch=2), artifact=artifact)
    kwargs = {"text": QUESTIONS[1], "max_new_tokens": 16, "min_new_tokens": 16}
    expected = static.generate(**kwargs).token_ids
    pause = _PauseAt(step=4)
    bigger: list[Guard] = []

    def grow():
        pause.reached.wait()
        bigger.append(Guard(model, tokenizer, policy=_static(artifact, max_batch=8), artifact=artifact))
        pause.resume.set()

    thread = threading.Thread(target=grow)
    thread.start()
    got = static.generate(**kwargs, stopping_criteria=StoppingCriteriaList([pause])).token_ids
    thread.join()
    assert got == expected  # steering held for the whole answer
    assert slot_of(static.layers).max_batch == 8 and _hook_counts(static.layers) == [1] * len(static.layers)
    assert bigger[0].generate(**kwargs).token_ids == expected and static.generate(**kwargs).token_ids == expected


def test_static_hooks_leave_with_the_last_guard():
    model, tokenizer, artifact, _ = _setup()
    layers = model.model.layers
    first = Guard(model, tokenizer, policy=_static(artifact), artifact=artifact)
    second = Guard(model, tokenizer, policy=_static(artifact, max_batch=64), artifact=artifact)
    expected = first.generate(text=QUESTIONS[0], max_new_tokens=N_NEW).token_ids
    assert _hook_counts(layers) == [1] * len(layers)
    del first
    gc.collect()
    assert _hook_counts(layers) == [1] * len(layers) and slot_of(layers) is not None
    assert second.generate(text=QUESTIONS[0], max_new_tokens=N_NEW).token_ids == expected
    del second
    gc.collect()
    assert _hook_counts(layers) == [0] * len(layers) and slot_of(layers) is None
    third = Guard(model, tokenizer, policy=_static(artifact), artifact=artifact)  # a fresh slot works as before
    assert third.generate(text=QUESTIONS[0], max_new_tokens=N_NEW).token_ids == expected


def test_a_guarded_call_from_inside_a_static_call_is_refused_not_deadlocked():
    model, tokenizer, artifact, policy = _setup()
    static = Guard(model, tokenizer, policy=_static(artifact), artifact=artifact)
    eager = Guard(model, tokenizer, policy=policy(3.0), artifact=artifact)
    refused: list[Exception] = []

    class CallsAnotherGuard(StoppingCriteria):
        def __call__(self, input_ids, scores, **kwargs):
            if not refused:
                try:
                    eager.generate(text=QUESTIONS[0], max_new_tokens=2)
                except GuardrailError as exc:
                    refused.append(exc)
            return torch.zeros(input_ids.shape[0], dtype=torch.bool)

    static.generate(text=QUESTIONS[1], max_new_tokens=3, stopping_criteria=StoppingCriteriaList([CallsAnotherGuard()]))
    assert refused and "inside another guarded call" in str(refused[0])
    assert eager.generate(text=QUESTIONS[0], max_new_tokens=2).token_ids  # nothing left held
