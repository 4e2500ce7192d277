"""How long a model's prompts are and may be."""

from __future__ import annotations

from typing import Any

from torch import nn

__all__ = ["context_length", "prompt_lengths"]


def prompt_lengths(inputs: dict[str, Any]) -> list[int]:
    """Each row's prompt tokens (its attention mask's ones; the padded width without a mask)."""
    mask = inputs.get("attention_mask")
    if mask is None:
        return [inputs["input_ids"].shape[1]] * inputs["input_ids"].shape[0]
    return mask.sum(dim=1).tolist()


def context_length(model: nn.Module) -> int | None:
    """The model's context length in tokens (`max_position_embeddings` of its text config), None if unknown."""
    config = getattr(model, "config", None)
    if config is None:
        return None
    text_config = config.get_text_config() if hasattr(config, "get_text_config") else config
    value = getattr(text_config, "max_position_embeddings", None)
    return value if isinstance(value, int) and value > 0 else None
