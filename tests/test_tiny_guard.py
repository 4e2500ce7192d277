"""`guardrail.testing.tiny`'s ready guards (`tiny_guard`, stand-in requests) and saved tiny models."""

from __future__ import annotations

import pytest
import torch

from guardrail import Guard, UnsupportedModelError, load_model
from guardrail.testing.tiny import build_tiny, save_tiny, stand_in_request, stand_in_set, tiny_guard

N_NEW = 4
pytestmark = pytest.mark.usefixtures("one_torch_thread")


@pytest.fixture(scope="module")
def gated_audio() -> Guard:
    return tiny_guard("qwen2_audio", "gated")


def test_the_gate_tells_the_audio_stand_ins_apart(gated_audio):
    """Unseen noise clips (the harmful stand-in) are steered, unseen tones are not."""
    harmful = [gated_audio.generate(**stand_in_request("qwen2_audio", True, i), max_new_tokens=N_NEW) for i in (0, 1)]
    safe = [gated_audio.generate(**stand_in_request("qwen2_audio", False, i), max_new_tokens=N_NEW) for i in (0, 1)]
    assert [r.steered for r in harmful + safe] == [True, True, False, False]
    assert min(r.decision.probe_score for r in harmful) > max(r.decision.probe_score for r in safe)
    assert gated_audio.policy.name == "gated" and gated_audio.policy.gate.mode == "probe"


def test_text_stand_ins_are_held_out_and_steering_changes_the_answer():
    harmful, safe = stand_in_set("qwen2")
    assert len(harmful) == len(safe) == 20 and all(q == q.upper() for q in harmful)
    request = stand_in_request("qwen2", harmful=True)
    assert all(q not in request["text"] for q in harmful)
    guard = tiny_guard("qwen2", "default")
    off = Guard(guard.model, guard.processor, policy="off")
    steered, plain = (g.generate(**request, max_new_tokens=N_NEW) for g in (guard, off))
    assert steered.steered and not plain.steered and steered.token_ids != plain.token_ids


def test_alpha_zero_stays_zero_and_an_explicit_alpha_is_kept():
    monitor = tiny_guard("qwen2", "monitor")
    result = monitor.generate(**stand_in_request("qwen2", harmful=True), max_new_tokens=N_NEW)
    assert monitor.policy.steering.alpha == 0 and not result.steered and result.decision.probe_score is not None
    assert tiny_guard("qwen2", "default", alpha=0.5).policy.steering.alpha == 0.5


def test_unknown_family_is_a_typed_error():
    for call in (lambda: stand_in_set("whisper"), lambda: stand_in_request("whisper", True)):
        with pytest.raises(UnsupportedModelError, match="choose one of"):
            call()


def test_saved_tiny_model_loads_back_with_the_same_weights(tmp_path):
    model, _, adapter = load_model(str(save_tiny("qwen2", tmp_path / "m")))
    original, _ = build_tiny("qwen2")
    ids = torch.tensor([[5, 6, 7, 8]])
    with torch.no_grad():
        assert torch.equal(model(ids).logits, original(ids).logits)
    assert adapter.name == "causal_lm"
    with pytest.raises(UnsupportedModelError, match="cannot be saved"):
        save_tiny("voxtral", tmp_path / "v")
