"""Steering never leaks between guards, threads, or a plain model.generate beside a guard."""

from __future__ import annotations

import threading

import torch
from conftest import alpha_for

from guardrail import Guard, Policy, SteeringArtifact, calibrate
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


def _run_concurrently(jobs):
    """Run callables in threads released together; return their results in order."""
    barrier = threading.Barrier(len(jobs))
    results = [None] * len(jobs)
    errors = []

    def worker(i, job):
        try:
            barrier.wait()
            results[i] = [job() for _ in range(3)]
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
