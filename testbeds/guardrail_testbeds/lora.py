"""Low-rank adapters (peft LoRA) on the audio testbed's LM: training, saving and merging.

Real LALMs fine-tune their LM on audio; the testbed may do the same with a small adapter on the
attention projections. Training uses peft's layers; the testbed builder merges the saved
adapter into the LM's plain weights (``W += alpha / r * B @ A``), so the assembled model is an
ordinary Qwen2AudioForConditionalGeneration with no peft module left in it.
"""

from __future__ import annotations

import contextlib
import os
from collections.abc import Iterator, Mapping
from pathlib import Path

import torch

TARGETS = ("q_proj", "k_proj", "v_proj", "o_proj")


def add_lora(lm: torch.nn.Module, rank: int, alpha: float | None = None) -> torch.nn.Module:
    """Inject trainable LoRA layers (B starts at zero: the LM is unchanged until trained)."""
    from peft import LoraConfig, inject_adapter_in_model

    config = LoraConfig(r=rank, lora_alpha=alpha or 2 * rank, target_modules=list(TARGETS), lora_dropout=0.0)
    return inject_adapter_in_model(config, lm)


def _lora_layers(lm: torch.nn.Module) -> list[tuple[str, torch.nn.Module]]:
    """(module path, peft LoRA layer) for every adapted layer of the LM."""
    from peft.tuners.lora import LoraLayer

    return [(name, m) for name, m in lm.named_modules() if isinstance(m, LoraLayer)]


def adapter_parameters(lm: torch.nn.Module) -> list[torch.nn.Parameter]:
    """The adapter's trainable tensors (empty when the LM has no adapter)."""
    return [p for _, m in _lora_layers(lm) for part in (m.lora_A, m.lora_B) for p in part.parameters()]


@contextlib.contextmanager
def adapters_off(lm: torch.nn.Module) -> Iterator[None]:
    """The LM as it was before the adapter (the frozen teacher), inside the block."""
    layers = [m for _, m in _lora_layers(lm)]
    for m in layers:
        m.enable_adapters(False)
    try:
        yield
    finally:
        for m in layers:
            m.enable_adapters(True)


def lora_state(lm: torch.nn.Module) -> dict[str, torch.Tensor]:
    """``{module path + '.lora_A' / '.lora_B': tensor}`` plus ``scale`` (a 0-d tensor)."""
    state: dict[str, torch.Tensor] = {}
    scale = None
    for name, m in _lora_layers(lm):
        state[f"{name}.lora_A"] = m.lora_A["default"].weight.detach().clone()
        state[f"{name}.lora_B"] = m.lora_B["default"].weight.detach().clone()
        scale = m.scaling["default"]
    if scale is None:
        raise ValueError("the model holds no LoRA adapter")
    state["scale"] = torch.tensor(float(scale))
    return state


def merge_lora(lm: torch.nn.Module, state: Mapping[str, torch.Tensor]) -> None:
    """Add a saved adapter into the LM's weights in place (``W += scale * B @ A``)."""
    scale = float(state["scale"])
    modules = dict(lm.named_modules())
    for key, a in state.items():
        if not key.endswith(".lora_A"):
            continue
        path = key[: -len(".lora_A")]
        if path not in modules:
            raise KeyError(f"the adapter targets {path!r}, which this LM does not have")
        weight = modules[path].weight
        delta = scale * (state[f"{path}.lora_B"].float() @ a.float())
        if delta.shape != weight.shape:
            raise ValueError(f"adapter for {path} has shape {tuple(delta.shape)}, the layer {tuple(weight.shape)}")
        with torch.no_grad():
            weight.copy_((weight.float() + delta).to(weight.dtype))


def save_lora(state: Mapping[str, torch.Tensor], path: str | os.PathLike[str], metadata: Mapping[str, str]) -> Path:
    from safetensors.torch import save_file

    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tensors = {k: (v if k == "scale" else v.to(torch.bfloat16)).contiguous() for k, v in state.items()}
    save_file(tensors, str(path), metadata={"format": "pt", **metadata})
    return path


def load_lora(path: str | os.PathLike[str]) -> dict[str, torch.Tensor]:
    from safetensors.torch import load_file

    return load_file(str(path))


def set_lora(lm: torch.nn.Module, state: Mapping[str, torch.Tensor]) -> None:
    """Load a saved adapter into the LM's (injected, same-rank) LoRA layers, e.g. to resume training."""
    modules = dict(lm.named_modules())
    with torch.no_grad():
        for key, value in state.items():
            if key == "scale":
                continue
            path, part = key.rsplit(".", 1)
            getattr(modules[path], part)["default"].weight.copy_(value)
