"""Load a model and its processor from a local directory or a hub id, via its adapter spec."""

from __future__ import annotations

from typing import Any

import torch
import transformers
from torch import nn

from guardrail.models.adapter import Adapter, adapter_for, get_adapter
from guardrail.models.placement import DeviceMap, device_map_arguments, resolve_device, torch_dtype


def load_model(
    path: str,
    *,
    adapter: str | None = None,
    dtype: str = "auto",
    device: str | None = None,
    device_map: DeviceMap | None = None,
) -> tuple[nn.Module, Any, Adapter]:
    """(model, processor, adapter) for a model directory or hub id, in eval mode.

    `dtype`: "auto" (the checkpoint's), "float32", "bfloat16" or "float16". `device`: one device for the
    whole model ("cuda", "cuda:1", "cpu", "mps", or "auto": a GPU when torch sees one, else the CPU);
    None leaves it where transformers loads it (the CPU). `device_map`: accelerate's placement over
    devices ("auto", "balanced", "sequential", or {module name: device}); needs `pip install accelerate`.
    A placement this machine cannot honour (a GPU it lacks, device and device_map together, no
    accelerate) is a `DeviceError`, raised before any file is read.

    >>> model, processor, adapter = load_model("Qwen/Qwen2-Audio-7B-Instruct", device="cuda")  # doctest: +SKIP
    """
    weights = torch_dtype(dtype)
    placed = device_map_arguments(device, device_map)
    target = resolve_device(device)
    config = transformers.AutoConfig.from_pretrained(path)
    chosen = get_adapter(adapter) if adapter else adapter_for(config)
    model_cls = getattr(transformers, chosen.spec.model_class)
    processor_cls = getattr(transformers, chosen.spec.processor_class)
    model = model_cls.from_pretrained(path, dtype=weights, **placed)
    if target is not None:
        model = model.to(target)
    return model.eval(), processor_cls.from_pretrained(path), chosen


def place_model(model: nn.Module, *, dtype: str = "auto", device: str | None = None) -> nn.Module:
    """Move and cast a model that is already loaded (a testbed, a tiny model) as `load_model` would load
    it: `dtype` "auto" keeps its dtype; `device` as in `load_model`."""
    weights = torch_dtype(dtype)
    target = resolve_device(device)
    if isinstance(weights, torch.dtype):
        model = model.to(dtype=weights)
    return model.to(target) if target is not None else model
