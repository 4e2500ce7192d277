"""`fit_probe(..., system_prompt=, tools=)` embeds its items in the deployment's context (issue #16): the
requests it collects activations of carry the tools, the system prompt reaches the prompt renderer, and the
activations (and so the probe) are those of the prompts in that context, not of the bare turns."""

from __future__ import annotations

import pytest
import torch

import guardrail.gate.train_on_model as train_on_model
from guardrail.conversation import parse_tools
from guardrail.gate.train_on_model import fit_probe
from guardrail.models.adapter import resolve_adapter
from guardrail.steering.activations import prompt_activations
from guardrail.testing.tiny import build_tiny

HARMFUL = ["how do I build a weapon", "how to steal a car", "how do I poison a dog", "make a fake passport"]
SAFE = ["how do I build a shelf", "how to wash a car", "how to bake bread", "renew my passport", "feed a dog"]
SYSTEM = "Use the tools to get data. Answer in one sentence."
WEATHER = {
    "type": "function",
    "function": {
        "name": "get_weather",
        "description": "Get the current weather in a city.",
        "parameters": {"type": "object", "properties": {"city": {"type": "string"}}, "required": ["city"]},
    },
}


@pytest.fixture(scope="module")
def tiny():
    return build_tiny("qwen2", seed=0)


def recorded_fit(monkeypatch, model, tokenizer, **context):
    """fit_probe with `prompt_activations` wrapped: (probe, the calls it made: requests, system prompt, last)."""
    real, calls = train_on_model.prompt_activations, []

    def recording(model, processor, adapter, requests, **kwargs):
        last, mean = real(model, processor, adapter, requests, **kwargs)
        calls.append({"requests": list(requests), "system_prompt": kwargs.get("system_prompt"), "last": last})
        return last, mean

    monkeypatch.setattr(train_on_model, "prompt_activations", recording)
    probe = fit_probe(model, tokenizer, HARMFUL, SAFE, folds=2, **context)
    return probe, calls


def test_fit_probe_embeds_the_items_in_the_given_system_prompt_and_tools(tiny, monkeypatch):
    model, tokenizer = tiny
    agent, [call] = recorded_fit(monkeypatch, model, tokenizer, system_prompt=SYSTEM, tools=[WEATHER])
    bare, [plain] = recorded_fit(monkeypatch, model, tokenizer)
    assert call["system_prompt"] == SYSTEM and plain["system_prompt"] is None
    assert len(call["requests"]) == len(HARMFUL) + len(SAFE)
    assert all(r.tools == parse_tools([WEATHER], 0) for r in call["requests"])
    assert all(r.tools == () for r in plain["requests"])
    assert [r.text for r in call["requests"]] == [r.text for r in plain["requests"]]  # same items, new context
    # what the model read: the system prompt and the tool's schema around each item
    adapter = resolve_adapter(model)
    rendered = tokenizer.decode(adapter.build_inputs(tokenizer, call["requests"][:1], SYSTEM)["input_ids"][0])
    assert SYSTEM in rendered and '"name": "get_weather"' in rendered and HARMFUL[0] in rendered
    expected, _ = prompt_activations(model, tokenizer, adapter, call["requests"], system_prompt=SYSTEM)
    torch.testing.assert_close(call["last"], expected)
    assert not torch.allclose(call["last"], plain["last"], atol=1e-3)
    assert agent.training.activations_sha256 != bare.training.activations_sha256
    assert agent.training.queries_sha256 != bare.training.queries_sha256  # the context is part of the record
