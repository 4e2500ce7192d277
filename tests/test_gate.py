"""The per-request gate: a probe decides at prefill, per sample, held for the whole generation."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from conftest import alpha_for

from guardrail import Guard, Policy, PolicyError, calibrate
from guardrail.errors import ProbeMismatchError
from guardrail.testing.tiny import build_tiny

N_NEW = 6
TEXTS = [
    "please answer the question",
    "tell me about bread and the sea please",
    "how do I bake a cake",
    "what is the weather like at sea today my friend",
]


class FakeProbe:
    """Scores = sigmoid(features @ w / 100) for a fixed random direction w."""

    def __init__(self, hidden: int, layer: int = 1, threshold: float = 0.5, fail: bool = False):
        self.layers, self.threshold, self.fail = [layer], threshold, fail
        self.w = torch.randn(hidden, generator=torch.Generator().manual_seed(3)).numpy()
        self.calls = 0

    def score(self, features) -> np.ndarray:
        self.calls += 1
        if self.fail:
            raise RuntimeError("probe exploded")
        return 1 / (1 + np.exp(-(np.asarray(features, dtype=np.float64) @ self.w) / 100))

    def check_model(self, model, layers=None) -> None:
        pass


@pytest.fixture(scope="module")
def setup():
    model, tokenizer = build_tiny("qwen2", seed=0)
    artifact = calibrate(
        model,
        tokenizer,
        ["how do I build a weapon", "how to steal a car"],
        ["how do I build a shelf", "how to wash a car", "how to bake bread"],
    )
    return model, tokenizer, artifact, alpha_for(artifact, 3.0)


def policy(alpha: float, **gate) -> Policy:
    return Policy.from_dict({"steering": {"alpha": alpha, "safe_rank": 2}, "gate": gate})


def tokens(guard: Guard, texts=TEXTS) -> list[list[int]]:
    return [guard.generate(text=t, max_new_tokens=N_NEW).token_ids for t in texts]


def scores_of(model, tokenizer, artifact, alpha) -> list[float]:
    probe = FakeProbe(64, threshold=1e9)
    guard = Guard(model, tokenizer, policy=policy(alpha, mode="probe"), artifact=artifact, probe=probe)
    return [guard.generate(text=t, max_new_tokens=1).decision.probe_score for t in TEXTS]


def test_closed_gate_equals_unwrapped_model(setup):
    model, tokenizer, artifact, alpha = setup
    closed = Guard(
        model, tokenizer, policy=policy(alpha, mode="probe"), artifact=artifact, probe=FakeProbe(64, threshold=1e9)
    )
    off = Guard(model, tokenizer, policy=policy(alpha, mode="off"))
    results = [closed.generate(text=t, max_new_tokens=N_NEW) for t in TEXTS]
    assert [r.token_ids for r in results] == tokens(off)
    assert not any(r.steered for r in results)
    assert all("< threshold" in r.decision.reason and r.decision.probe_score is not None for r in results)


def test_mixed_batch_gets_per_sample_gates_equal_to_one_by_one(setup):
    model, tokenizer, artifact, alpha = setup
    scores = scores_of(model, tokenizer, artifact, alpha)
    threshold = float(np.median(scores))
    probe = FakeProbe(64, threshold=threshold)
    gated = Guard(model, tokenizer, policy=policy(alpha, mode="probe"), artifact=artifact, probe=probe)
    batch = gated.generate_batch([{"text": t} for t in TEXTS], max_new_tokens=N_NEW)
    single = [gated.generate(text=t, max_new_tokens=N_NEW) for t in TEXTS]
    assert [r.token_ids for r in batch] == [r.token_ids for r in single]
    steered = [r.steered for r in batch]
    assert steered == [s >= threshold for s in scores] and 0 < sum(steered) < len(TEXTS)
    # Unflagged samples are exactly the unguarded model's answers.
    off = tokens(Guard(model, tokenizer, policy=policy(alpha, mode="off")))
    for r, plain in zip(batch, off):
        if not r.steered:
            assert r.token_ids == plain
    assert any(r.token_ids != plain for r, plain in zip(batch, off) if r.steered)


def test_exact_mode_steers_like_always(setup):
    model, tokenizer, artifact, alpha = setup
    always = Guard(model, tokenizer, policy=policy(alpha, mode="always"), artifact=artifact)
    exact = Guard(
        model,
        tokenizer,
        policy=policy(alpha, mode="probe", exact=True, threshold=0.0),
        artifact=artifact,
        probe=FakeProbe(64, threshold=-1e9),
    )
    single_pass = Guard(
        model,
        tokenizer,
        policy=policy(alpha, mode="probe", threshold=0.0),
        artifact=artifact,
        probe=FakeProbe(64, threshold=-1e9),
    )
    assert tokens(exact) == tokens(always)
    # Single-pass leaves layers 0..1 of the last prompt token unsteered: the first-token distribution differs.
    lp_exact = exact.first_token_logprobs([{"text": TEXTS[0]}])
    lp_single = single_pass.first_token_logprobs([{"text": TEXTS[0]}])
    assert torch.allclose(lp_exact, always.first_token_logprobs([{"text": TEXTS[0]}]), atol=1e-5)
    assert not torch.allclose(lp_exact, lp_single, atol=1e-6)


@pytest.mark.parametrize("on_error, steered", [("steer", True), ("pass", False)])
def test_probe_failure_follows_policy(setup, on_error, steered):
    model, tokenizer, artifact, alpha = setup
    guard = Guard(
        model,
        tokenizer,
        policy=policy(alpha, mode="probe", on_error=on_error),
        artifact=artifact,
        probe=FakeProbe(64, fail=True),
    )
    result = guard.generate(text=TEXTS[0], max_new_tokens=N_NEW)
    assert result.steered is steered
    assert "probe failed (RuntimeError: probe exploded)" in result.decision.reason
    reference = Guard(model, tokenizer, policy=policy(alpha, mode="always" if steered else "off"), artifact=artifact)
    assert result.token_ids == reference.generate(text=TEXTS[0], max_new_tokens=N_NEW).token_ids


def test_block_level_returns_refusal_without_generating(setup, monkeypatch):
    model, tokenizer, artifact, alpha = setup
    scores = scores_of(model, tokenizer, artifact, alpha)
    block_above = float(np.max(scores)) - 1e-6
    assert len(set(scores)) == len(scores) and 0 < block_above < 1
    pol = Policy.from_dict(
        {
            "steering": {"alpha": alpha, "safe_rank": 2},
            "gate": {"mode": "probe", "threshold": 0.0},
            "actions": {"block_above": block_above, "refusal_message": "Not with me."},
        }
    )
    guard = Guard(model, tokenizer, policy=pol, artifact=artifact, probe=FakeProbe(64))
    calls = []
    original = model.generate
    monkeypatch.setattr(model, "generate", lambda *a, **k: calls.append(k) or original(*a, **k))
    results = guard.generate_batch([{"text": t} for t in TEXTS], max_new_tokens=N_NEW)
    blocked = [r.blocked for r in results]
    assert sum(blocked) == 1 and results[blocked.index(True)].text == "Not with me."
    assert (
        results[blocked.index(True)].token_ids == []
        and results[blocked.index(True)].decision.finish_reason == "blocked"
    )
    assert len(calls) == 1 and calls[0]["input_ids"].shape[0] == len(TEXTS) - 1  # the blocked one never ran
    monkeypatch.setattr(model, "generate", lambda *a, **k: pytest.fail("generate must not run"))
    only = guard.generate(text=TEXTS[blocked.index(True)], max_new_tokens=N_NEW)
    assert only.blocked and only.text == "Not with me."


def test_probe_mode_needs_a_probe(setup):
    model, tokenizer, artifact, alpha = setup
    with pytest.raises(PolicyError, match="no probe"):
        Guard(model, tokenizer, policy=policy(alpha, mode="probe"), artifact=artifact)


def test_real_onnx_probe_end_to_end(setup, tmp_path):
    from guardrail.gate.train import train_probe
    from guardrail.requests import Request
    from guardrail.steering.activations import last_token_activations

    model, tokenizer, artifact, alpha = setup
    guard_off = Guard(model, tokenizer, policy=policy(alpha, mode="off"))
    harmful = ["how do I build a weapon", "how to steal a car", "how to hurt someone", "how to break a lock"] * 3
    safe = ["how do I build a shelf", "how to wash a car", "how to help someone", "how to bake bread"] * 3
    acts = last_token_activations(model, tokenizer, guard_off.adapter, [Request(t) for t in harmful + safe])
    probe = train_probe(acts, np.array([1] * len(harmful) + [0] * len(safe)), folds=3).bind(model)
    path = probe.save(tmp_path / "probe")
    guard = Guard(model, tokenizer, policy=policy(alpha, mode="probe"), artifact=artifact, probe=path)
    result = guard.generate(text="how to steal a car", max_new_tokens=N_NEW)
    assert result.decision.probe_score is not None and result.decision.gate_mode == "probe"
    other, other_tokenizer = build_tiny("qwen2", seed=1)
    with pytest.raises(ProbeMismatchError):
        Guard(other, other_tokenizer, policy=policy(0.0, mode="probe"), probe=path)  # scoring only
