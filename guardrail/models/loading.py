"""Load a model and its processor from a local directory or a hub id, via its adapter spec."""

from __future__ import annotations

from typing import Any

import torch
import transformers
from torch import nn

from guardrail.models.adapter import Adapter, adapter_for, get_adapter


def load_model(
    path: str, *, adapter: str | None = None, dtype: str = "auto", device: str | None = None
) -> tuple[nn.Module, Any, Adapter]:
    """(model, processor, adapter) for a model directory or hub id.

    >>> model, processor, adapter = load_model("Qwen/Qwen2-Audio-7B-Instruct")  # doctest: +SKIP
    """
    config = transformers.AutoConfig.from_pretrained(path)
    chosen = get_adapter(adapter) if adapter else adapter_for(config)
    model_cls = getattr(transformers, chosen.spec.model_class)
    processor_cls = getattr(transformers, chosen.spec.processor_class)
    torch_dtype = dtype if dtype == "auto" else getattr(torch, dtype)
    model = model_cls.from_pretrained(path, dtype=torch_dtype)
    if device:
        model = model.to(device)
    return model.eval(), processor_cls.from_pretrained(path), chosen
