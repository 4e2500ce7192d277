"""Calibrate -> steer -> generate on a tiny random model of every supported family."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from conftest import SR, alpha_for, request_for, silence
from transformers import StoppingCriteria, StoppingCriteriaList

from guardrail import (
    ArtifactMismatchError,
    AudioInputError,
    Guard,
    Policy,
    PolicyError,
    RequestError,
    SteeringArtifact,
    load_audio,
)
from guardrail.requests import Request
from guardrail.steering.activations import model_inputs
from guardrail.testing.tiny import AUDIO_FAMILIES, TEXT_FAMILIES, build_tiny

N_NEW = 6


def strong(artifact: SteeringArtifact, **steering) -> Policy:
    """A policy whose steering moves each steered position by ~2."""
    return Policy.from_dict({"name": "strong", "steering": {"alpha": alpha_for(artifact, 2.0), **steering}})


def unwrapped_tokens(guard: Guard, request: dict) -> list[int]:
    """Greedy tokens of the bare model for one request (no guard in the loop)."""
    audio = None if request.get("audio") is None else request["audio"][0]
    inputs = model_inputs(guard.model, guard.adapter.build_inputs(guard.processor, [Request(request["text"], audio)]))
    out = guard.model.generate(
        **inputs,
        do_sample=False,
        max_new_tokens=N_NEW,
        pad_token_id=guard.adapter.pad_token_id(guard.model, guard.processor),
    )
    ids = out[0, inputs["input_ids"].shape[1] :].tolist()
    eos = guard.adapter.eos_token_ids(guard.model, guard.processor)
    return next((ids[:i] for i, t in enumerate(ids) if t in eos), ids)


def test_calibrate_steer_generate(bundle):
    family, model, processor, artifact = bundle
    guard = Guard(model, processor, policy=Policy(), artifact=artifact)
    result = guard.generate(**request_for(family, 0), max_new_tokens=N_NEW)
    assert result.steered and result.decision.steered
    assert isinstance(result.text, str) and 0 < len(result.token_ids) <= N_NEW
    assert result.decision.layers == list(range(len(guard.layers)))
    assert result.decision.adapter == ("causal_lm" if family in TEXT_FAMILIES else family)
    assert result.decision.timings.total_ms > 0


def test_alpha_zero_matches_unwrapped_model(bundle):
    family, model, processor, artifact = bundle
    guard = Guard(model, processor, policy=Policy.from_dict({"steering": {"alpha": 0.0}}), artifact=artifact)
    request = request_for(family, 1)
    assert guard.generate(**request, max_new_tokens=N_NEW).token_ids == unwrapped_tokens(guard, request)


def test_alpha_positive_changes_tokens(bundle):
    family, model, processor, artifact = bundle
    guard = Guard(model, processor, policy=strong(artifact), artifact=artifact)
    request = request_for(family, 1)
    assert guard.generate(**request, max_new_tokens=N_NEW).token_ids != unwrapped_tokens(guard, request)


def test_gate_off_leaves_model_untouched(bundle):
    family, model, processor, artifact = bundle
    guard = Guard(model, processor, policy=Policy.from_dict({"gate": {"mode": "off"}}), artifact=artifact)
    request = request_for(family, 2)
    result = guard.generate(**request, max_new_tokens=N_NEW)
    assert not result.steered and result.decision.layers == []
    assert result.token_ids == unwrapped_tokens(guard, request)


def test_batch_equals_one_by_one(bundle):
    family, model, processor, artifact = bundle
    guard = Guard(model, processor, policy=strong(artifact), artifact=artifact)
    requests = [request_for(family, i) for i in range(4)]
    batched = guard.generate_batch(requests, max_new_tokens=N_NEW)
    single = [guard.generate(**r, max_new_tokens=N_NEW) for r in requests]
    assert [r.token_ids for r in batched] == [r.token_ids for r in single]
    assert len({r.decision.prompt_tokens for r in batched}) > 1  # the batch really was padded


class _Boom(StoppingCriteria):
    def __init__(self, layers):
        self.layers = layers
        self.hooks_seen = False

    def __call__(self, input_ids, scores, **kwargs):
        self.hooks_seen = all(len(layer._forward_hooks) == 1 for layer in self.layers)
        raise RuntimeError("boom inside generate")


def test_generate_batch_takes_request_objects(bundle):
    family, model, processor, artifact = bundle
    guard = Guard(model, processor, policy=strong(artifact), artifact=artifact)
    raw = [request_for(family, i) for i in range(2)]
    rate = guard.adapter.sampling_rate(processor)
    typed = [
        Request(r["text"], None if r.get("audio") is None else load_audio(r["audio"], target_sr=rate)) for r in raw
    ]
    expected = [r.token_ids for r in guard.generate_batch(raw, max_new_tokens=N_NEW)]
    assert [r.token_ids for r in guard.generate_batch(typed, max_new_tokens=N_NEW)] == expected
    assert [r.token_ids for r in guard.generate_batch([typed[0], raw[1]], max_new_tokens=N_NEW)] == expected
    with pytest.raises(RequestError, match="request 0 has neither audio nor text"):
        guard.generate_batch([Request("  ")])


def test_hooks_removed_after_exception(bundle):
    family, model, processor, artifact = bundle
    guard = Guard(model, processor, policy=Policy(), artifact=artifact)
    boom = _Boom(guard.layers)
    with pytest.raises(RuntimeError, match="boom"):
        guard.generate(**request_for(family, 0), max_new_tokens=N_NEW, stopping_criteria=StoppingCriteriaList([boom]))
    assert boom.hooks_seen
    assert all(len(layer._forward_hooks) == 0 for layer in guard.layers)


def test_ablated_vectors_orthogonal_to_safe_basis(bundle):
    _, _, _, artifact = bundle
    rank = artifact.metadata.method.basis_rank
    for layer, v_prime in artifact.steering_vectors(rank=rank, strength=1.0).items():
        u = artifact.basis[layer]
        assert (u.T @ v_prime).abs().max() <= 1e-4 * max(1.0, artifact.refusal[layer].norm().item())


def test_artifact_round_trip(bundle, tmp_path):
    family, model, processor, artifact = bundle
    loaded = SteeringArtifact.load(artifact.save(tmp_path / "art"))
    assert loaded.id == artifact.id and loaded.metadata == artifact.metadata
    for layer in artifact.refusal:
        assert torch.equal(loaded.refusal[layer], artifact.refusal[layer])
        assert torch.equal(loaded.basis[layer], artifact.basis[layer])
    a = Guard(model, processor, policy=strong(artifact), artifact=artifact).generate(
        **request_for(family, 0), max_new_tokens=N_NEW
    )
    b = Guard(model, processor, policy=strong(artifact), artifact=loaded).generate(
        **request_for(family, 0), max_new_tokens=N_NEW
    )
    assert a.token_ids == b.token_ids


def test_artifact_for_other_weights_is_refused(bundle):
    family, _, _, artifact = bundle
    other, other_processor = build_tiny(family, seed=1)
    with pytest.raises(ArtifactMismatchError, match="different weights"):
        Guard(other, other_processor, policy=Policy(), artifact=artifact)


def test_artifact_for_other_family_is_refused(bundle):
    family, _, _, artifact = bundle
    other_family = "qwen2_audio" if family != "qwen2_audio" else "qwen2"
    other, other_processor = build_tiny(other_family, seed=0)
    with pytest.raises(ArtifactMismatchError, match="another model"):
        Guard(other, other_processor, policy=Policy(), artifact=artifact)


def test_policy_layers_out_of_range(bundle):
    _, model, processor, artifact = bundle
    with pytest.raises(PolicyError, match="decoder layers"):
        Guard(model, processor, policy=Policy.from_dict({"steering": {"layers": [0, 99]}}), artifact=artifact)


def test_selected_layers_only(bundle):
    family, model, processor, artifact = bundle
    guard = Guard(model, processor, policy=strong(artifact, layers=[1]), artifact=artifact)
    result = guard.generate(**request_for(family, 0), max_new_tokens=N_NEW)
    assert result.decision.layers == [1]


def test_bad_audio_inputs_get_typed_errors(bundle):
    family, model, processor, artifact = bundle
    if family not in AUDIO_FAMILIES:
        with pytest.raises(RequestError, match="text-only"):
            Guard(model, processor, artifact=artifact).generate(audio=silence(0.5), text="hi")
        return
    guard = Guard(model, processor, policy=Policy.from_dict({"limits": {"max_audio_seconds": 1.0}}), artifact=artifact)
    cases = [
        ((np.zeros(0, dtype=np.float32), SR), AudioInputError, "empty|no samples"),
        ((np.full(SR // 2, np.nan, dtype=np.float32), SR), AudioInputError, "NaN"),
        (silence(2.0), AudioInputError, "limit"),
        (b"definitely not audio", AudioInputError, "could not be decoded"),
        ("/no/such/file.wav", AudioInputError, "not found|does not exist|No such"),
        (np.zeros(SR, dtype=np.float32), TypeError, "sampling_rate"),
    ]
    for audio, error, match in cases:
        with pytest.raises(error, match=match):
            guard.generate(audio=audio, text="hi", max_new_tokens=2)


def test_request_errors(bundle):
    family, model, processor, artifact = bundle
    guard = Guard(model, processor, artifact=artifact)
    with pytest.raises(RequestError, match="neither audio nor text"):
        guard.generate(text="  ")
    with pytest.raises(RequestError, match="unknown keys"):
        guard.generate_batch([{"txt": "hi"}])
    with pytest.raises(RequestError, match="max_new_tokens"):
        guard.generate(text="hi", max_new_tokens=10_000)


def test_steering_needs_an_artifact(bundle):
    _, model, processor, _ = bundle
    with pytest.raises(PolicyError, match="no artifact"):
        Guard(model, processor, policy=Policy())
