"""Adapter selection and the shipped specs."""

import pytest
import yaml
from pydantic import ValidationError
from transformers import BertConfig, BertModel

from guardrail import UnsupportedModelError
from guardrail.models import get_adapter, resolve_adapter, supported_families
from guardrail.models.adapter import AdapterSpec, adapter_for
from guardrail.requests import Request
from guardrail.resources import data_dir
from guardrail.testing.tiny import FAMILIES, TEXT_FAMILIES, build_tiny

REQUIRED = {
    "qwen2_audio",
    "qwen2_5_omni",
    "voxtral",
    "granite_speech",
    "phi4_multimodal",
    "audioflamingo3",
    "causal_lm",
}


def test_required_families_ship():
    assert REQUIRED <= set(supported_families())


@pytest.mark.parametrize("family", FAMILIES)
def test_adapter_chosen_from_config(family):
    model, _ = build_tiny(family)
    adapter = resolve_adapter(model)
    assert adapter.name == ("causal_lm" if family in TEXT_FAMILIES else family)
    assert len(adapter.decoder_layers(model)) == model.config.get_text_config().num_hidden_layers


def test_unsupported_model_lists_supported_families():
    model = BertModel(BertConfig(hidden_size=32, num_hidden_layers=1, num_attention_heads=2, intermediate_size=64))
    with pytest.raises(UnsupportedModelError, match="no adapter fits BertModel") as info:
        resolve_adapter(model)
    assert all(name in str(info.value) for name in REQUIRED)
    assert isinstance(info.value, TypeError)


def test_adapter_for_a_config_read_before_loading():
    """load_model's rule and resolve_adapter's are one: family by model_type or architecture, then the
    causal-LM fallback."""
    assert adapter_for(build_tiny("qwen2_audio")[0].config).name == "qwen2_audio"
    assert adapter_for(BertConfig(architectures=["MyLMForCausalLM"])).name == "causal_lm"
    with pytest.raises(UnsupportedModelError, match="no adapter fits BertForMaskedLM .*causal_lm"):
        adapter_for(BertConfig(architectures=["BertForMaskedLM"]))


def test_unknown_adapter_name():
    with pytest.raises(UnsupportedModelError, match="supported: "):
        get_adapter("whisper")


def test_wrong_layer_path_is_explained():
    model, _ = build_tiny("qwen2")
    with pytest.raises(UnsupportedModelError, match="found no decoder layers"):
        get_adapter("qwen2_audio").decoder_layers(model)


def test_prompt_ends_with_generation_prefix_and_pads_left():
    model, processor = build_tiny("qwen2_audio")
    adapter = resolve_adapter(model)
    import numpy as np

    requests = [
        Request("short", np.zeros(8000, np.float32)),
        Request("a much longer question " * 3, np.zeros(16000, np.float32)),
    ]
    inputs = adapter.build_inputs(processor, requests)
    assert inputs["attention_mask"][:, -1].all() and not inputs["attention_mask"][:, 0].all()
    text = processor.tokenizer.decode(inputs["input_ids"][0])
    assert text.endswith("<|im_start|>assistant\n")


def test_text_only_adapter_rejects_audio():
    import numpy as np

    model, tokenizer = build_tiny("qwen2")
    with pytest.raises(ValueError, match="text-only"):
        resolve_adapter(model).build_inputs(tokenizer, [Request("hi", np.zeros(10, np.float32))])


@pytest.mark.parametrize("path", sorted(data_dir("adapters").glob("*.yaml")), ids=lambda p: p.stem)
def test_specs_are_strict(path):
    data = yaml.safe_load(path.read_text())
    AdapterSpec.model_validate(data)
    with pytest.raises(ValidationError):
        AdapterSpec.model_validate({**data, "decoder_layer": ["x"]})
