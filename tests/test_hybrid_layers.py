"""Nemotron-H Omni's hybrid decoder (Mamba-2, attention and MoE blocks): which layers carry a residual stream
that steering can use. Every block returns residual + mixer(norm(residual)) and hands it to the next block, so
all of them do; a delta added at any one block's output changes the answer."""

from __future__ import annotations

import pytest
import torch
from conftest import request_for

from guardrail.models.adapter import resolve_adapter
from guardrail.requests import Request
from guardrail.runtime.eager import HookState, hooks_for
from guardrail.steering.activations import model_inputs
from guardrail.testing.tiny import build_tiny
from guardrail.testing.tiny.newer import NEMOTRON_H_LAYER_TYPES


@pytest.fixture(scope="module")
def hybrid():
    model, processor = build_tiny("nemotron_h_omni")
    adapter = resolve_adapter(model)
    raw = request_for("nemotron_h_omni", 0)
    inputs = model_inputs(model, adapter.build_inputs(processor, [Request(raw["text"], raw["audio"][0])]))
    plain = model.generate(**inputs, max_new_tokens=3, do_sample=False)
    return model, adapter.decoder_layers(model), inputs, plain


def test_steered_layers_are_every_hybrid_block(hybrid):
    _, layers, _, _ = hybrid
    assert [layer.block_type for layer in layers] == list(NEMOTRON_H_LAYER_TYPES)
    assert {type(layer.mixer).__name__ for layer in layers} == {
        "NemotronHMamba2Mixer",
        "NemotronHAttention",
        "NemotronHMoE",
    }


@torch.inference_mode()
def test_every_block_output_is_the_residual_stream(hybrid):
    """Block k's output is its input plus its mixer's output, and it is exactly block k+1's input: the
    stream the guard reads (activation capture) and adds to (steering hooks), for each kind of block."""
    model, layers, inputs, _ = hybrid
    seen: list[tuple[torch.Tensor, torch.Tensor]] = []
    handles = [
        layer.register_forward_hook(lambda module, args, output: seen.append((args[0], output))) for layer in layers
    ]
    try:
        model(**inputs, use_cache=False)
    finally:
        for handle in handles:
            handle.remove()
    assert len(seen) == len(layers)
    for k, (layer, (block_in, block_out)) in enumerate(zip(layers, seen, strict=True)):
        assert isinstance(block_out, torch.Tensor) and block_out.shape == block_in.shape
        mixed = layer.mixer(layer.norm(block_in))  # one unpadded prompt: no padding mask is needed
        mixed = mixed[0] if isinstance(mixed, tuple) else mixed  # attention also returns its weights
        torch.testing.assert_close(block_out, block_in + mixed, rtol=1e-5, atol=1e-5)
        if k + 1 < len(layers):
            assert torch.equal(seen[k + 1][0], block_out)


@pytest.mark.parametrize("index", range(len(NEMOTRON_H_LAYER_TYPES)))
def test_a_delta_at_any_single_block_changes_the_answer(hybrid, index):
    """The guard's own steering hooks, on one block at a time (Mamba-2, MoE, attention, MoE): the delta
    reaches the answer through each, and the hooks are gone afterwards."""
    model, layers, inputs, plain = hybrid
    before = [len(layer._forward_hooks) for layer in layers]
    delta = torch.randn(model.config.text_config.hidden_size, generator=torch.Generator().manual_seed(index))
    with hooks_for(layers).activate(HookState(deltas={index: delta / delta.norm() * 10.0})) as state:
        steered = model.generate(**inputs, max_new_tokens=3, do_sample=False)
    assert state.deltas.keys() == {index}
    assert not torch.equal(plain, steered)
    assert [len(layer._forward_hooks) for layer in layers] == before
