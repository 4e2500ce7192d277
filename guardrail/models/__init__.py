"""Model families: adapter specs (adapters/*.yaml) and the runtime that reads them, the model
identity recorded in artifacts and probes, and loading a model with its processor.

For adapter authors: a family is a YAML spec (`AdapterSpec`); one that needs code names a subclass
of `Adapter` in its `implementation` field (see `guardrail.models.families.voxtral`).
"""

from guardrail.models.adapter import (
    Adapter,
    AdapterSpec,
    adapter_for,
    get_adapter,
    load_specs,
    resolve_adapter,
    supported_families,
)
from guardrail.models.loading import load_model

__all__ = [
    "Adapter",
    "AdapterSpec",
    "adapter_for",
    "get_adapter",
    "load_model",
    "load_specs",
    "resolve_adapter",
    "supported_families",
]
