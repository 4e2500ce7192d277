"""Identify a model so an artifact or probe made for one model is never applied to another.

Two checks, made by `check_identity` for both the steering artifact and the gate probe: a hash
of the architecture fields of the config (catches a different family or size), and a few weight
values sampled at fixed positions, compared with a dtype-tolerant tolerance (catches a different
checkpoint of the same architecture, while accepting the same weights in fp32, bf16 or fp16).
"""

from __future__ import annotations

import hashlib
import json
from typing import Any

import torch
from pydantic import BaseModel, ConfigDict
from torch import nn

from guardrail.errors import ArtifactMismatchError

_CONFIG_FIELDS = (
    "hidden_size",
    "num_hidden_layers",
    "num_attention_heads",
    "num_key_value_heads",
    "intermediate_size",
    "vocab_size",
)
_SAMPLES = 16


def config_summary(model: nn.Module, layers: nn.ModuleList) -> dict[str, Any]:
    """The architecture facts an artifact depends on."""
    config = model.config
    # torch types module attributes as Tensor | Module; config is a transformers PretrainedConfig
    text = config.get_text_config() if hasattr(config, "get_text_config") else config  # type: ignore[operator]
    summary: dict[str, Any] = {
        "model_type": getattr(config, "model_type", None),
        "text_model_type": getattr(text, "model_type", None),
        "num_layers": len(layers),
    }
    for name in _CONFIG_FIELDS:
        summary[name] = getattr(text, name, None)
    return summary


def config_fingerprint(summary: dict[str, Any]) -> str:
    blob = json.dumps(summary, sort_keys=True).encode()
    return hashlib.sha256(blob).hexdigest()[:16]


def weight_sample(model: nn.Module, layers: nn.ModuleList) -> list[float]:
    """Values at fixed positions of the input embeddings and of the last decoder layer."""
    embeddings = model.get_input_embeddings()  # type: ignore[operator]  # transformers' method, untyped on Module
    tensors = [embeddings.weight, next(layers[-1].parameters())]
    values: list[float] = []
    for tensor in tensors:
        if not tensor.is_floating_point() or tensor.device.type == "meta":
            return []
        flat = tensor.detach().reshape(-1)
        values.extend(flat[sample_positions(flat.numel()).to(flat.device)].float().cpu().tolist())
    return values


def sample_positions(numel: int) -> torch.Tensor:
    """Evenly spread positions, first and last included. Integer arithmetic: a float32
    linspace rounds past the end of tensors over 2**24 elements."""
    return torch.arange(_SAMPLES, dtype=torch.int64) * (numel - 1) // (_SAMPLES - 1)


def same_weights(expected: list[float], actual: list[float]) -> bool:
    """True when the samples agree within bf16/fp16 rounding (or either is unavailable)."""
    if not expected or not actual:
        return True
    a, b = torch.tensor(expected), torch.tensor(actual)
    return a.shape == b.shape and bool(torch.allclose(a, b, rtol=1e-2, atol=1e-4))


class StrictRecord(BaseModel):
    """Base of the metadata records written beside artifacts and probes: unknown fields are errors."""

    model_config = ConfigDict(extra="forbid")


class ModelIdentity(StrictRecord):
    """The identity recorded in an artifact's or probe's metadata (`model` field; layout fixed on disk)."""

    fingerprint: str
    config: dict[str, Any]
    weight_sample: list[float]
    dtype: str
    adapter: str


def identify(model: nn.Module, layers: nn.ModuleList, adapter: str) -> ModelIdentity:
    """`model`'s identity; `layers` are its decoder layers, `adapter` the family's name."""
    summary = config_summary(model, layers)
    dtype = str(next(layers[0].parameters()).dtype).removeprefix("torch.")
    return ModelIdentity(
        fingerprint=config_fingerprint(summary),
        config=summary,
        weight_sample=weight_sample(model, layers),
        dtype=dtype,
        adapter=adapter,
    )


def check_identity(
    expected: ModelIdentity,
    model: nn.Module,
    layers: nn.ModuleList,
    *,
    what: str,
    made: str,
    remedy: str,
    error: type[ArtifactMismatchError],
) -> None:
    """Raise `error` unless `model` is the model `expected` describes.

    `what` names the thing checked ("artifact 1a2b...", "probe dir/"), `made` how it was made
    ("calibrated", "trained"), `remedy` what to do instead; the message lists every differing
    config field, or says the weights differ (same architecture, another checkpoint).
    """
    summary = config_summary(model, layers)
    if config_fingerprint(summary) != expected.fingerprint:
        detail = ", ".join(
            f"{key} {expected.config.get(key)!r} vs {value!r} in this model"
            for key, value in summary.items()
            if expected.config.get(key) != value
        )
        raise error(f"{what} was {made} for another model ({detail}); {remedy}")
    if not same_weights(expected.weight_sample, weight_sample(model, layers)):
        raise error(
            f"{what} matches this architecture but was {made} on different weights "
            f"(another checkpoint or fine-tune); {remedy}"
        )
