"""`GuardedChatModel`'s constructor arguments before pydantic sees them: aliases renamed, unknown arguments
warned about (or passed to `model.generate` when it knows them), and, without `guard=`, the guard built from
plain parameters, so the model can be made from a config (or by LangChain's test harness):

    GuardedChatModel(model="path/or/hub-id", policy="gated", artifact="dir", device="cpu")
"""

from __future__ import annotations

from collections.abc import Collection
from typing import Any

from guardrail.errors import RequestError
from guardrail.integrations.langchain.options import merge_aliases, split_unknown, warn_ignored
from guardrail.integrations.langchain.pretrained import load_guard

__all__ = ["LOADING_ARGS", "prepare_fields"]

# what builds the guard when no guard= is given (load_guard's arguments besides the model path)
LOADING_ARGS = ("policy", "artifact", "probe", "adapter", "dtype", "device", "device_map")


def _model_name(values: dict[str, Any]) -> Any:
    """The `model` argument, under either of its names (`model`, `model_name`)."""
    model, name = values.pop("model", None), values.pop("model_name", None)
    if model is not None and name is not None and model != name:
        raise RequestError(f"model={model!r} and model_name={name!r} disagree: they are one setting, pass one")
    return model if model is not None else name


def _load(values: dict[str, Any], model: Any) -> None:
    """Sets values['guard'] (and the model name) from the plain parameters."""
    loading = {k: values.pop(k) for k in LOADING_ARGS if k in values}
    if values.get("guard") is not None:
        if loading:
            raise RequestError(
                f"{sorted(loading)} build a guard, but guard= is given too; pass either guard= or the "
                "parameters to build one (model=, policy=, artifact=, probe=, device=, dtype=)"
            )
        values["model_name"] = model
        return
    if model is None and loading.get("policy") is None:
        raise RequestError(
            "GuardedChatModel needs guard=, or model= (a model directory or hub id; with policy=, artifact=, "
            "device= ...), or a policy whose model: section names the model"
        )
    options = {k: loading.pop(k) for k in ("adapter", "dtype", "device", "device_map") if loading.get(k) is not None}
    guard, loaded = load_guard(model, loading.get("policy"), loading.get("artifact"), loading.get("probe"), **options)
    values["guard"], values["model_name"] = guard, model if model is not None else loaded


def prepare_fields(data: Any, fields: Collection[str]) -> Any:
    """The constructor's keyword arguments as the model's fields (`fields`: their names)."""
    if not isinstance(data, dict):
        return data
    values = merge_aliases(dict(data), RequestError)
    model = _model_name(values)
    _load(values, model)
    extra = {k: values.pop(k) for k in list(values) if k not in fields}
    passed, ignored = split_unknown(extra)
    if ignored:
        warn_ignored(ignored, "constructor", stacklevel=6)
    if passed:
        values["generate_kwargs"] = {**passed, **(values.get("generate_kwargs") or {})}
    return values
