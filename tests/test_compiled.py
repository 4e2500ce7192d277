"""Steering on the static-cache and compiled paths: the same tokens as eager, the gate as a device
tensor, no recompilation per request, and the model untouched between guarded calls."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from conftest import alpha_for

from guardrail import Guard, Policy, RequestError, calibrate
from guardrail.gate.linear import LinearProbe, linear_form
from guardrail.gate.onnx_probe import OnnxProbe
from guardrail.gate.train import train_probe
from guardrail.requests import Request
from guardrail.runtime.static import release_slot, slot_of
from guardrail.runtime.static_backend import StaticBackend
from guardrail.steering.activations import last_token_activations
from guardrail.testing.tiny import build_tiny

N_NEW = 6
TEXTS = ["please answer the question", "how to steal a car", "how do I bake a cake", "how to hurt someone badly"]
HARMFUL = ["how do I build a weapon", "how to steal a car", "how to hurt someone", "how to break a lock"] * 3
SAFE = ["how do I build a shelf", "how to wash a car", "how to help someone", "how to bake bread"] * 3


@pytest.fixture(scope="module")
def setup(tmp_path_factory):
    model, tokenizer = build_tiny("qwen2", seed=0)
    artifact = calibrate(model, tokenizer, HARMFUL[:2], SAFE[:3])
    off = Guard(model, tokenizer, policy=Policy.from_dict({"gate": {"mode": "off"}}))
    acts = last_token_activations(model, tokenizer, off.adapter, [Request(t) for t in HARMFUL + SAFE])
    trained = train_probe(acts, np.array([1] * len(HARMFUL) + [0] * len(SAFE)), folds=3).bind(model)
    onnx = OnnxProbe.load(trained.save(tmp_path_factory.mktemp("probe") / "probe"))
    return model, tokenizer, artifact, alpha_for(artifact, 1.5), trained, onnx


class HostOnly:
    """The same probe, without a torch form: the guard must score it on the host."""

    def __init__(self, probe):
        self._probe, self.layers, self.threshold = probe, probe.layers, probe.threshold

    def score(self, features):
        return self._probe.score(features)

    def check_model(self, model, layers=None):
        pass


def guard(setup, mode: str, runtime: dict | None = None, probe=None, **gate) -> Guard:
    model, tokenizer, artifact, alpha, _, onnx = setup
    pol = Policy.from_dict(
        {"steering": {"alpha": alpha, "safe_rank": 2}, "gate": {"mode": mode, **gate}, "runtime": runtime or {}}
    )
    return Guard(model, tokenizer, policy=pol, artifact=artifact, probe=(probe or onnx) if mode == "probe" else None)


def run(g: Guard, texts=TEXTS):
    results = g.generate_batch([{"text": t} for t in texts], max_new_tokens=N_NEW)
    return [r.token_ids for r in results], [r.steered for r in results], [r.decision.probe_score for r in results]


def test_linear_form_reproduces_trained_and_onnx_probes(setup):
    model, tokenizer, _, _, trained, onnx = setup
    acts = last_token_activations(
        model,
        tokenizer,
        Guard(model, tokenizer, policy=Policy.from_dict({"gate": {"mode": "off"}})).adapter,
        [Request(t) for t in TEXTS],
    )
    for probe in (trained, onnx):
        linear = linear_form(probe)
        assert linear is not None and linear.layers == tuple(probe.layers)
        ours = linear.score({layer: acts[layer] for layer in probe.layers}).numpy()
        theirs = probe.score(torch.cat([acts[layer] for layer in probe.layers], -1).numpy())
        np.testing.assert_allclose(ours, theirs, atol=1e-5)
    assert linear_form(HostOnly(onnx)) is None


def test_device_gate_decides_like_host_gate(setup):
    device, host = guard(setup, "probe"), guard(setup, "probe", probe=HostOnly(setup[5]))
    assert device.device_probe is not None and host.device_probe is None
    d_tokens, d_steer, d_scores = run(device)
    h_tokens, h_steer, h_scores = run(host)
    assert d_tokens == h_tokens and d_steer == h_steer
    assert 0 < sum(d_steer) < len(TEXTS)  # a mixed batch: per-sample gates matter
    np.testing.assert_allclose(d_scores, h_scores, atol=1e-5)


@pytest.mark.parametrize("mode", ["always", "probe", "off"])
def test_static_cache_steers_like_eager(setup, mode):
    assert run(guard(setup, mode, {"cache": "static"}))[:2] == run(guard(setup, mode))[:2]


def test_static_path_with_host_probe_and_exact_mode(setup):
    host = guard(setup, "probe", {"cache": "static"}, probe=HostOnly(setup[5]))
    assert run(host)[:2] == run(guard(setup, "probe"))[:2]
    exact = guard(setup, "probe", {"cache": "static"}, exact=True)
    assert run(exact)[:2] == run(guard(setup, "probe", exact=True))[:2]


def test_probe_failure_on_device_follows_policy(setup, monkeypatch):
    model = setup[0]
    for on_error, steered in (("steer", True), ("pass", False)):
        g = guard(setup, "probe", {"cache": "static"}, on_error=on_error)
        assert g.device_probe is not None
        with monkeypatch.context() as patch:  # the probe's weights as loaded into the device buffers: NaN
            nan = lambda probe, position: torch.full((probe.hidden,), float("nan"))
            patch.setattr(LinearProbe, "layer_weight", nan)
            tokens, steer, _ = run(g, TEXTS[:2])
        assert steer == [steered, steered]
        reference = guard(setup, "always" if steered else "off")
        assert tokens == run(reference, TEXTS[:2])[0]
    assert model is setup[0]


def test_compiled_generation_equals_eager_without_recompiling(setup):
    from torch._dynamo.utils import counters

    torch._dynamo.reset()
    compiled = guard(setup, "probe", {"cache": "static", "compile": True})
    eager = guard(setup, "probe")
    (c_tokens, c_steer, c_scores), (e_tokens, e_steer, e_scores) = run(compiled), run(eager)
    assert c_tokens == e_tokens and c_steer == e_steer
    np.testing.assert_allclose(c_scores, e_scores, atol=1e-5)
    graphs = counters["stats"]["unique_graphs"]
    assert graphs > 0, "nothing was compiled"
    for texts in (TEXTS[::-1], [TEXTS[1]] * 4, [TEXTS[0]] * 4):  # other gates, same shapes
        assert run(compiled, texts)[:2] == run(eager, texts)[:2]
    assert counters["stats"]["unique_graphs"] == graphs, "a new request recompiled the graph"
    assert not counters["graph_break"], dict(counters["graph_break"])


def test_model_untouched_between_static_calls(setup):
    model, tokenizer = setup[0], setup[1]
    ids = tokenizer(["how to steal a car"], return_tensors="pt")
    with torch.inference_mode():
        before = model(**ids).logits
        g = guard(setup, "always", {"cache": "static"})
        run(g)
        assert isinstance(g.backend_for(), StaticBackend) and slot_of(g.layers).installed
        after = model(**ids).logits
    assert torch.equal(before, after)


def test_batch_limit_is_enforced(setup):
    model, tokenizer, artifact, alpha, _, _ = setup
    g = Guard(
        model,
        tokenizer,
        policy=Policy.from_dict(
            {"limits": {"max_batch": 2}, "runtime": {"cache": "static"}, "steering": {"alpha": alpha}}
        ),
        artifact=artifact,
    )
    with pytest.raises(RequestError, match="max_batch"):
        g.generate_batch([{"text": t} for t in TEXTS])


def test_guard_set_up_after_compilation_still_steers_compiled_steps(setup):
    """torch.compile ignores hooks added after it compiled; the guard must not be fooled by that."""
    model = setup[0]
    release_slot(model.model.layers)  # as if no guard had ever touched this model
    assert slot_of(model.model.layers) is None and not any(layer._forward_hooks for layer in model.model.layers)
    torch._dynamo.reset()
    unguarded = guard(setup, "off", {"cache": "static", "compile": True})
    run(unguarded)  # the deployment compiled the unguarded model first, same shapes
    compiled = guard(setup, "always", {"cache": "static", "compile": True})
    assert run(compiled)[:2] == run(guard(setup, "always"))[:2]


def test_user_compiled_forward_takes_the_static_path(setup):
    model = setup[0]
    g = guard(setup, "probe")
    original = model.forward
    try:
        model.forward = torch.compile(model.forward)
        assert isinstance(g.backend_for(), StaticBackend)
        assert run(g)[:2] == run(guard(setup, "probe", {"cache": "static"}))[:2]
    finally:
        model.forward = original
        torch._dynamo.reset()


def test_static_path_keeps_a_zero_threshold(setup):
    static, eager = guard(setup, "probe", {"cache": "static"}, threshold=0.0), guard(setup, "probe", threshold=0.0)
    tokens, steer, _ = run(static)
    assert steer == [True] * len(TEXTS) and (tokens, steer) == tuple(run(eager)[:2])
