"""Prompt activations of every decoder layer, in batched forward passes: the residual stream at the
last prompt position, and optionally its mean over the prompt's (unpadded) positions."""

from __future__ import annotations

import threading
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from typing import Any, cast

import torch
from torch import nn

from guardrail.models.adapter import Adapter
from guardrail.requests import Request


def model_inputs(model: nn.Module, inputs: dict[str, Any]) -> dict[str, Any]:
    """Move processor outputs to the model's device; floating features to its dtype."""
    # transformers' PreTrainedModel properties (torch types module attributes as Tensor | Module)
    device, dtype = cast(torch.device, model.device), cast(torch.dtype, model.dtype)
    moved: dict[str, Any] = {}
    for key, value in inputs.items():
        if isinstance(value, torch.Tensor):
            value = value.to(device=device, dtype=dtype if value.is_floating_point() else None)
        moved[key] = value
    return moved


def last_token_activations(
    model: nn.Module,
    processor: Any,
    adapter: Adapter,
    requests: Sequence[Request],
    *,
    batch_size: int = 8,
    system_prompt: str | None = None,
    on_batch: Callable[[int], None] | None = None,
) -> torch.Tensor:
    """Activations h_l at the last prompt position, shaped (layers, requests, hidden), float32 on CPU.

    Requests are batched by similar length (less padding), one forward pass per batch,
    all layers captured in that pass; results come back in the caller's order.
    """
    last, _ = prompt_activations(
        model, processor, adapter, requests, batch_size=batch_size, system_prompt=system_prompt, on_batch=on_batch
    )
    return last


@torch.inference_mode()
def prompt_activations(
    model: nn.Module,
    processor: Any,
    adapter: Adapter,
    requests: Sequence[Request],
    *,
    batch_size: int = 8,
    system_prompt: str | None = None,
    on_batch: Callable[[int], None] | None = None,
    pooled: bool = False,
) -> tuple[torch.Tensor, torch.Tensor | None]:
    """(last, mean): activations at the last prompt position and, with `pooled`, their mean over the
    prompt's unpadded positions; each (layers, requests, hidden), float32 on CPU (mean None without
    `pooled`). Batched as `last_token_activations`."""
    layers = adapter.decoder_layers(model)
    order = sorted(range(len(requests)), key=lambda i: _size(requests[i]))
    last_rows: list[torch.Tensor] = [torch.empty(0)] * len(requests)
    mean_rows: list[torch.Tensor] = [torch.empty(0)] * len(requests)
    for start in range(0, len(order), batch_size):
        chunk = order[start : start + batch_size]
        inputs = model_inputs(model, adapter.build_inputs(processor, [requests[i] for i in chunk], system_prompt))
        mask = inputs.get("attention_mask") if pooled else None
        with capture_last(layers, pool_mask=mask, pooled=pooled) as captured:
            forward_last(model, inputs)
        sources: list[tuple[list[torch.Tensor], dict[int, torch.Tensor]]] = [(last_rows, captured)]
        for rows, source in sources + ([(mean_rows, captured.pooled)] if pooled else []):
            stacked = torch.stack([source[i] for i in range(len(layers))], dim=0).float().cpu()
            for j, index in enumerate(chunk):
                rows[index] = stacked[:, j]
        if on_batch is not None:
            on_batch(len(chunk))
    return torch.stack(last_rows, dim=1), torch.stack(mean_rows, dim=1) if pooled else None


class Captured(dict):
    """layer index -> (batch, hidden) at the last position; `pooled`: layer index -> masked mean."""

    def __init__(self) -> None:
        super().__init__()
        self.pooled: dict[int, torch.Tensor] = {}


def masked_mean(hidden: torch.Tensor, mask: torch.Tensor | None) -> torch.Tensor:
    """Mean of (batch, seq, hidden) over the positions where `mask` (batch, seq) is 1 (all when None)."""
    if mask is None or mask.shape[-1] != hidden.shape[1]:
        return hidden.float().mean(dim=1)
    weights = mask.to(hidden.device, torch.float32).unsqueeze(-1)
    return (hidden.float() * weights).sum(dim=1) / weights.sum(dim=1).clamp_min(1.0)


@contextmanager
def capture_last(
    layers: nn.ModuleList, *, pool_mask: torch.Tensor | None = None, pooled: bool = False
) -> Iterator[Captured]:
    """Inside the block, each layer's output at the last position (batch, hidden) lands in the
    yielded dict (layer index -> tensor), and with `pooled` its mean over the positions where
    `pool_mask` is 1 in `.pooled`. Only passes run by this thread are recorded: a guard
    generating on the same model from another thread is never captured."""
    owner, captured = threading.get_ident(), Captured()

    def hook_for(index: int) -> Callable[..., None]:
        def hook(module: nn.Module, args: tuple, output: Any) -> None:
            if threading.get_ident() == owner:
                hidden = output[0] if isinstance(output, tuple) else output
                captured[index] = hidden[:, -1, :].detach()
                if pooled:
                    captured.pooled[index] = masked_mean(hidden.detach(), pool_mask)

        return hook

    handles = [layer.register_forward_hook(hook_for(i)) for i, layer in enumerate(layers)]
    try:
        yield captured
    finally:
        for handle in handles:
            handle.remove()


def forward_last(model: nn.Module, inputs: dict[str, Any]) -> Any:
    """One prefill pass without KV cache, computing logits for the last position only where
    the model allows it (full-vocabulary logits dominate a small model's pass)."""
    try:
        return model(**inputs, use_cache=False, logits_to_keep=1)
    except TypeError:
        return model(**inputs, use_cache=False)


def _size(request: Request) -> int:
    return len(request.text) + (0 if request.audio is None else len(request.audio) // 160)
