"""Load a model and its processor from a local directory or a hub id, via its adapter spec."""

from __future__ import annotations

from typing import Any

import torch
import transformers
from torch import nn

from guardrail.models.adapter import Adapter, adapter_for_config, get_adapter, supported_families
from guardrail.errors import UnsupportedModelError


def spec_for_config(config: Any) -> Adapter:
    """The adapter for a config read before the model is loaded."""
    found = adapter_for_config(config)
    if found is not None:
        return found
    if any(a.endswith("ForCausalLM") for a in getattr(config, "architectures", None) or []):
        return get_adapter("causal_lm")
    raise UnsupportedModelError(f"no adapter for model_type {getattr(config, 'model_type', None)!r}; "
                                f"supported: {', '.join(supported_families())}")


def load_model(path: str, *, adapter: str | None = None, dtype: str = "auto",
               device: str | None = None) -> tuple[nn.Module, Any, Adapter]:
    """(model, processor, adapter) for a model directory or hub id.

    >>> model, processor, adapter = load_model("Qwen/Qwen2-Audio-7B-Instruct")  # doctest: +SKIP
    """
    config = transformers.AutoConfig.from_pretrained(path)
    chosen = get_adapter(adapter) if adapter else spec_for_config(config)
    model_cls = getattr(transformers, chosen.spec.model_class)
    processor_cls = getattr(transformers, chosen.spec.processor_class)
    torch_dtype = dtype if dtype == "auto" else getattr(torch, dtype)
    model = model_cls.from_pretrained(path, dtype=torch_dtype)
    if device:
        model = model.to(device)
    return model.eval(), processor_cls.from_pretrained(path), chosen
