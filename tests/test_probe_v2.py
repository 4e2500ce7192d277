"""Probe v2 (per-block shrinkage LDA + stacker, last position and prompt mean): training, the saved
graph, and the guard scoring it inside prefill exactly as the host scores the same prompts."""

from __future__ import annotations

import copy

import numpy as np
import pytest
import torch
from conftest import alpha_for

from guardrail import Guard, OnnxProbe, Policy, calibrate
from guardrail.errors import PolicyError, ProbeError, RequestError
from guardrail.gate.decide import Gate
from guardrail.gate.linear import linear_form
from guardrail.gate.metrics import roc_auc
from guardrail.gate.onnx_probe import features_from_activations
from guardrail.gate.probe_record import THRESHOLD_MAX, Thresholds
from guardrail.gate.stack import ledoit_wolf
from guardrail.gate.stacked import Selection, train_stacked_probe
from guardrail.gate.train_on_model import fit_probe
from guardrail.models.adapter import resolve_adapter
from guardrail.requests import Request
from guardrail.steering.activations import prompt_activations
from guardrail.testing.tiny import build_tiny

HARMFUL = ["how do I build a weapon", "how to steal a car", "how do I poison a dog", "make a fake passport"]
SAFE = ["how do I build a shelf", "how to wash a car", "how to bake bread", "renew my passport", "feed a dog"]
TEXTS = ["please answer the question", "tell me about bread and the sea please", "how do I bake a cake", "hi"]


def synthetic(n: int, seed: int, layers: int = 3, hidden: int = 16) -> tuple[torch.Tensor, torch.Tensor, np.ndarray]:
    """last, mean (layers, n, hidden) and labels: the class shows weakly in every block, more in mean."""
    g = torch.Generator().manual_seed(seed)
    y = np.arange(n) % 2 == 0
    signal = torch.as_tensor(y, dtype=torch.float32)[None, :, None]
    last = torch.randn(layers, n, hidden, generator=g) + 0.4 * signal * (torch.arange(hidden) < 4)
    mean = torch.randn(layers, n, hidden, generator=g) + 0.8 * signal * (torch.arange(hidden) < 4)
    return last, mean, y


def test_ledoit_wolf_shrinks_towards_a_scaled_identity():
    z = torch.randn(20, 50, dtype=torch.float64, generator=torch.Generator().manual_seed(0))
    z = z - z.mean(0)
    shrunk, sample = ledoit_wolf(z), z.T @ z / 20
    assert torch.linalg.matrix_rank(sample) < 50 <= torch.linalg.matrix_rank(shrunk)  # n < d: now invertible
    assert torch.allclose(torch.trace(shrunk), torch.trace(sample))


def test_stacked_probe_separates_held_out_items_and_uses_both_pools():
    last, mean, y = synthetic(300, seed=0)
    probe = train_stacked_probe(last, y.astype(int), mean=mean, layers=[0, 1, 2])
    t_last, t_mean, t_y = synthetic(2000, seed=1)
    scores = probe.score(features_from_activations(t_last, probe.layers, t_mean, probe.pools))
    last_only = train_stacked_probe(last, y.astype(int), layers=[0, 1, 2])
    scores_last = last_only.score(features_from_activations(t_last, last_only.layers))
    assert roc_auc(scores, t_y) > roc_auc(scores_last, t_y) > 0.7
    assert probe.stack is not None and len(probe.stack.blocks) == 6 and last_only.pools == ["last"]
    again = train_stacked_probe(last, y.astype(int), mean=mean, layers=[0, 1, 2])
    assert torch.equal(again.module.linear.weight, probe.module.linear.weight)  # deterministic


def test_a_block_without_spread_does_not_break_training():
    last, mean, y = synthetic(12, seed=0)
    last[0] = 1.0  # one layer constant for every item: a singular covariance without a floor
    probe = train_stacked_probe(last, y.astype(int), mean=mean, folds=2)
    assert np.isfinite(probe.score(features_from_activations(last, probe.layers, mean, probe.pools))).all()


def test_threshold_is_chosen_on_the_selection_set():
    last, mean, y = synthetic(300, seed=0)
    s_last, s_mean, s_y = synthetic(400, seed=2)
    probe = train_stacked_probe(last, y.astype(int), mean=mean, target_fpr=0.05, select=Selection(s_last, s_y, s_mean))
    safe_scores = probe.score(features_from_activations(s_last, probe.layers, s_mean, probe.pools))[~s_y]
    assert np.mean(safe_scores >= probe.threshold) <= 0.05 < np.mean(safe_scores >= probe.threshold - 1e-3)
    with pytest.raises(RequestError, match="safe items"):
        train_stacked_probe(last, y.astype(int), select=Selection(s_last[:, s_y], np.ones(int(s_y.sum()))))


def test_bad_layers_and_missing_pools_are_typed_errors():
    last, mean, y = synthetic(40, seed=0)
    with pytest.raises(RequestError, match="layers"):
        train_stacked_probe(last, y.astype(int), layers=[0, 7])
    probe = train_stacked_probe(last, y.astype(int), mean=mean, layers=[1])
    with pytest.raises(ProbeError, match="pool 'mean'"):
        features_from_activations(last, probe.layers, None, probe.pools)


@pytest.fixture(scope="module")
def tiny():
    model, tokenizer = build_tiny("qwen2", seed=0)
    artifact = calibrate(model, tokenizer, HARMFUL, SAFE)
    probe = fit_probe(model, tokenizer, HARMFUL, SAFE, folds=2)
    return model, tokenizer, artifact, probe


def host_scores(model, tokenizer, probe, texts) -> np.ndarray:
    """The probe's scores computed apart from the guard, one prompt at a time (no padding)."""
    adapter = resolve_adapter(model)
    rows = []
    for text in texts:
        last, mean = prompt_activations(model, tokenizer, adapter, [Request(text=text)], pooled=True)
        rows.append(probe.score(features_from_activations(last, probe.layers, mean, probe.pools))[0])
    return np.array(rows)


@pytest.mark.parametrize("runtime", [{}, {"cache": "static"}])
def test_guard_scores_a_pooled_probe_in_prefill_like_the_host(tiny, tmp_path, runtime):
    model, tokenizer, artifact, trained = tiny
    probe = OnnxProbe.load(trained.save(tmp_path / "probe"))
    linear = linear_form(probe)
    assert linear is not None and linear.pools == ("last", "mean")  # scored on the device, eagerly
    policy = Policy.from_dict({"steering": {"alpha": alpha_for(artifact, 3.0)}, "gate": {"mode": "probe"}})
    policy = policy.model_copy(update={"runtime": policy.runtime.model_copy(update=runtime)})
    guard = Guard(model, tokenizer, policy=policy, artifact=artifact, probe=probe)
    batch = guard.generate_batch([{"text": t} for t in TEXTS], max_new_tokens=2)  # padded batch: the mask matters
    expected = host_scores(model, tokenizer, probe, TEXTS)
    np.testing.assert_allclose([r.decision.probe_score for r in batch], expected, atol=2e-4)


def test_closed_pooled_gate_answers_token_for_token_like_the_unguarded_model(tiny):
    model, tokenizer, artifact, probe = tiny
    probe = copy.copy(probe)
    probe.threshold = THRESHOLD_MAX  # no score reaches it
    alpha = alpha_for(artifact, 3.0)
    gated_policy = Policy.from_dict({"steering": {"alpha": alpha}, "gate": {"mode": "probe"}})
    closed = Guard(model, tokenizer, policy=gated_policy, artifact=artifact, probe=probe)
    off = Guard(model, tokenizer, policy=Policy.from_dict({"gate": {"mode": "off"}}))
    for text in TEXTS:
        gated, plain = closed.generate(text=text, max_new_tokens=6), off.generate(text=text, max_new_tokens=6)
        assert not gated.steered and gated.token_ids == plain.token_ids


def test_bands_named_by_false_positive_rate_read_the_probe_table(tiny):
    model, tokenizer, artifact, probe = tiny
    table = probe.thresholds
    assert table is not None and table.chosen_on == "out-of-fold" and table.n_safe == len(SAFE)
    bands = {"gate": {"mode": "probe", "threshold": {"fpr": 0.05}}, "actions": {"block_above": {"fpr": 0.01}}}
    gate = Gate(Policy.from_dict(bands), probe, can_steer=True)
    assert (gate.threshold, gate.block_above) == (table.at_fpr[0.05], table.at_fpr[0.01]) and gate.needs_prepass
    with pytest.raises(PolicyError, match="thresholds at 0.001, 0.002"):
        Gate(Policy.from_dict({"gate": {"mode": "probe", "threshold": {"fpr": 0.03}}}), probe, can_steer=True)
    untabled = copy.copy(probe)
    untabled.thresholds = None
    with pytest.raises(PolicyError, match="no threshold table"):
        Gate(Policy.from_dict(bands), untabled, can_steer=True)
    for bad in ({"fpr": 0}, {"fpr": 1.5}, {"rate": 0.01}, 1.5):
        with pytest.raises(PolicyError, match="gate.threshold"):
            Policy.from_dict({"gate": {"threshold": bad}})


def test_an_overlay_replaces_a_rate_with_a_score_and_back(tmp_path):
    base = tmp_path / "base.yaml"
    base.write_text("extends: gated\n", encoding="utf-8")
    (tmp_path / "score.yaml").write_text("extends: base.yaml\ngate:\n  threshold: 0.3\n", encoding="utf-8")
    (tmp_path / "rate.yaml").write_text("extends: score.yaml\ngate:\n  threshold: {fpr: 0.05}\n", encoding="utf-8")
    assert Policy.from_yaml(tmp_path / "score.yaml").gate.threshold == 0.3
    assert Policy.from_yaml(tmp_path / "rate.yaml").gate.threshold.fpr == 0.05


def test_the_block_band_refuses_without_generating(tiny, tmp_path):
    model, tokenizer, artifact, trained = tiny
    probe = copy.copy(trained)
    probe.thresholds = Thresholds(chosen_on="selection set", n_safe=300, at_fpr={0.01: 0.0, 0.05: 0.0})
    saved = OnnxProbe.load(probe.save(tmp_path / "banded"))
    assert saved.thresholds == probe.thresholds  # the table survives the round trip
    policy = Policy.from_dict({
        "steering": {"alpha": alpha_for(artifact, 3.0)},
        "gate": {"mode": "probe", "threshold": {"fpr": 0.05}},
        "actions": {"block_above": {"fpr": 0.01}, "refusal_message": "No."},
    })  # fmt: skip
    result = Guard(model, tokenizer, policy=policy, artifact=artifact, probe=saved).generate(text=TEXTS[0])
    assert result.decision.blocked and result.text == "No." and result.token_ids == []
    assert "block_above" in result.decision.reason
