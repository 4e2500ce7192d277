"""Last-prompt-token activations of every decoder layer, in batched forward passes."""

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


@torch.inference_mode()
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
    layers = adapter.decoder_layers(model)
    order = sorted(range(len(requests)), key=lambda i: _size(requests[i]))
    rows: list[torch.Tensor] = [torch.empty(0)] * len(requests)
    for start in range(0, len(order), batch_size):
        chunk = order[start : start + batch_size]
        inputs = model_inputs(model, adapter.build_inputs(processor, [requests[i] for i in chunk], system_prompt))
        with capture_last(layers) as captured:
            forward_last(model, inputs)
        stacked = torch.stack([captured[i] for i in range(len(layers))], dim=0).float().cpu()
        for j, index in enumerate(chunk):
            rows[index] = stacked[:, j]
        if on_batch is not None:
            on_batch(len(chunk))
    return torch.stack(rows, dim=1)


@contextmanager
def capture_last(layers: nn.ModuleList) -> Iterator[dict[int, torch.Tensor]]:
    """Inside the block, each layer's output at the last position (batch, hidden) lands in the
    yielded dict (layer index -> tensor). Only passes run by this thread are recorded: a guard
    generating on the same model from another thread is never captured."""
    owner, captured = threading.get_ident(), {}

    def hook_for(index: int) -> Callable[..., None]:
        def hook(module: nn.Module, args: tuple, output: Any) -> None:
            if threading.get_ident() == owner:
                hidden = output[0] if isinstance(output, tuple) else output
                captured[index] = hidden[:, -1, :].detach()

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
