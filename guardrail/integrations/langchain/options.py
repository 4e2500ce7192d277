"""`GuardedChatModel`'s generation parameters: LangChain's standard names, set as fields and per call, turned
into the arguments of `Guard.generate`/`generate_batch`/`stream`.

- `max_tokens` (alias `max_new_tokens`): the new-token budget; None = the policy's `limits.max_new_tokens`.
  A budget above that limit is the guard's `RequestError`.
- `temperature`: 0 = greedy decoding (`do_sample=False`), > 0 = sampling at that temperature; None leaves
  decoding to `generate_kwargs` (greedy unless they sample).
- `top_p`: nucleus sampling; only acts while sampling (with neither a temperature nor sampling
  `generate_kwargs`, a warning says so).
- `stop`: strings that end the answer (cut before the first one; `finish_reason` "stop"). A per-call
  `stop` replaces the field's, as LangChain's provider models do.
- `seed`: the call samples reproducibly (same seed, same answer).
- `timeout`: seconds; transformers' `max_time`: generation ends after that long with what it has
  (`finish_reason` "length"). It bounds generation, not prefill or audio decoding.
- `generate_kwargs` (alias `model_kwargs`): other `model.generate` arguments; a per-call dict updates the
  field's; the named parameters above win over the same keys there.

Any other per-call argument that `model.generate` knows (a `GenerationConfig` attribute such as `top_k`,
`repetition_penalty`, `min_new_tokens`, or a `generate()` parameter such as `logits_processor`) is passed to it;
anything else is ignored with a `UserWarning` that names it.
"""

from __future__ import annotations

import functools
import inspect
import math
import numbers
import warnings
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from guardrail.errors import RequestError

__all__ = [
    "ALIASES",
    "STANDARD_PARAMS",
    "CallOptions",
    "call_options",
    "generate_arg_names",
    "merge_aliases",
    "split_unknown",
    "stop_list",
    "warn_ignored",
]

STANDARD_PARAMS = ("max_tokens", "temperature", "top_p", "stop", "seed", "timeout")
ALIASES = {"max_new_tokens": "max_tokens", "model_kwargs": "generate_kwargs"}  # alias -> field
# LangChain's own plumbing, and the arguments that shape the request (tools...): not generation settings
_INTERNAL = ("stream", "ls_structured_output_format", "tools", "tool_choice", "parallel_tool_calls", "response_format")
_NOT_PER_CALL = frozenset({"self", "inputs", "kwargs", "transformers_version"})


@functools.cache
def generate_arg_names() -> frozenset[str]:
    """The argument names `model.generate` understands: `GenerationConfig` attributes and `generate()`'s own."""
    from transformers import GenerationConfig
    from transformers.generation.utils import GenerationMixin

    names = set(GenerationConfig().to_dict()) | set(inspect.signature(GenerationMixin.generate).parameters)
    return frozenset(n for n in names if not n.startswith("_")) - _NOT_PER_CALL


def merge_aliases(values: dict[str, Any], error: type[Exception]) -> dict[str, Any]:
    """`values` with each alias renamed to its field (`max_new_tokens` -> `max_tokens`, `model_kwargs` ->
    `generate_kwargs`); both names with different values raise `error`."""
    for alias, name in ALIASES.items():
        if alias not in values:
            continue
        value = values.pop(alias)
        if name in values and values[name] is not None and value is not None and values[name] != value:
            raise error(f"{alias}={value!r} and {name}={values[name]!r} disagree: they are one setting, pass one")
        if values.get(name) is None:
            values[name] = value
    return values


def split_unknown(extra: Mapping[str, Any]) -> tuple[dict[str, Any], list[str]]:
    """(the arguments `model.generate` knows, the names of the others)."""
    known = generate_arg_names()
    return {k: v for k, v in extra.items() if k in known}, sorted(k for k in extra if k not in known)


def warn_ignored(names: Sequence[str], where: str, stacklevel: int = 3) -> None:
    """A `UserWarning` naming arguments that are ignored, and what is accepted instead."""
    warnings.warn(
        f"GuardedChatModel ignores the {where} argument(s) {list(names)}: it takes the standard parameters "
        f"{list(STANDARD_PARAMS)} (max_new_tokens is an alias of max_tokens), model_kwargs/generate_kwargs, "
        "and any model.generate argument (top_k, repetition_penalty, ...); remove them, or put generation "
        "settings in generate_kwargs",
        UserWarning,
        stacklevel=stacklevel,
    )


def stop_list(stop: object) -> list[str] | None:
    """`stop` as a list of non-empty strings (a lone string is one sequence); None or empty: None."""
    if stop is None:
        return None
    sequences = [stop] if isinstance(stop, str) else stop
    if not isinstance(sequences, Sequence) or not all(isinstance(s, str) and s for s in sequences):
        raise RequestError(f"stop={stop!r} is not a list of non-empty strings; pass e.g. stop=['\\n\\n']")
    return list(sequences) or None


@dataclass
class CallOptions:
    """The settings of one call, as the guard takes them."""

    max_new_tokens: int | None
    stop: list[str] | None
    seed: int | None
    generate_kwargs: dict[str, Any]

    def guard_kwargs(self) -> dict[str, Any]:
        """Keyword arguments of `Guard.generate`/`generate_batch`/`stream` (`stop`/`seed` only when set)."""
        kwargs: dict[str, Any] = {"max_new_tokens": self.max_new_tokens, **self.generate_kwargs}
        if self.stop:
            kwargs["stop"] = list(self.stop)
        if self.seed is not None:
            kwargs["seed"] = self.seed
        return kwargs


def _number(name: str, value: object, low: float, high: float, low_open: bool) -> float:
    number = float(value) if isinstance(value, numbers.Real) and not isinstance(value, bool) else math.nan
    if math.isfinite(number) and (number > low if low_open else number >= low) and number <= high:
        return number
    bound = f"{'>' if low_open else '>='} {low:g}" + ("" if math.isinf(high) else f" and <= {high:g}")
    raise RequestError(f"{name}={value!r} is not a number {bound}; pass one in that range, or None for the default")


def _checked(params: dict[str, Any]) -> dict[str, Any]:
    """Per-call values checked as the fields' types are (a wrong one is a RequestError)."""
    if params["temperature"] is not None:
        params["temperature"] = _number("temperature", params["temperature"], 0.0, math.inf, low_open=False)
    if params["top_p"] is not None:
        params["top_p"] = _number("top_p", params["top_p"], 0.0, 1.0, low_open=True)
    if params["timeout"] is not None:
        params["timeout"] = _number("timeout", params["timeout"], 0.0, math.inf, low_open=True)
    seed = params["seed"]
    if seed is not None and (isinstance(seed, bool) or not isinstance(seed, numbers.Integral)):
        raise RequestError(f"seed={seed!r} is not an int; pass a whole number, or None for no fixed seed")
    params["stop"] = stop_list(params["stop"])
    return params


def _decoding(params: Mapping[str, Any], generate_kwargs: dict[str, Any]) -> dict[str, Any]:
    """`generate_kwargs` with the decoding the named parameters ask for (they win over the same keys)."""
    kwargs = dict(generate_kwargs)
    temperature, top_p = params["temperature"], params["top_p"]
    if temperature == 0:
        kwargs["do_sample"] = False
        kwargs.pop("temperature", None)
        kwargs.pop("top_p", None)
    elif temperature is not None:
        kwargs.update(do_sample=True, temperature=temperature)
    if top_p is not None:
        if kwargs.get("do_sample"):
            kwargs["top_p"] = top_p
        elif temperature is None:  # temperature=0 asked for greedy decoding: top_p is moot, knowingly
            warnings.warn(
                f"top_p={top_p} has no effect with greedy decoding; set temperature > 0 to sample",
                UserWarning,
                stacklevel=5,
            )
    if params["timeout"] is not None:
        kwargs["max_time"] = params["timeout"]
    return kwargs


def call_options(
    defaults: Mapping[str, Any], stop: list[str] | None, kwargs: Mapping[str, Any], served_model: str
) -> CallOptions:
    """The options of one call: `defaults` (the model's fields: the standard parameters and
    `generate_kwargs`) updated by the call's `stop` and keyword arguments. A per-call `model` must name the
    model being served (one model is loaded; it cannot switch)."""
    per_call = merge_aliases(dict(kwargs), RequestError)
    for key in _INTERNAL:
        per_call.pop(key, None)
    model = per_call.pop("model", None)
    if model is not None and model != served_model:
        raise RequestError(
            f"model={model!r} per call, but this GuardedChatModel serves {served_model!r} and cannot switch "
            "models; build another GuardedChatModel(model=...) for that one"
        )
    call_kwargs = per_call.pop("generate_kwargs", None) or {}
    if not isinstance(call_kwargs, Mapping):
        raise RequestError(f"generate_kwargs={call_kwargs!r} is not a dict of model.generate arguments")
    if stop is not None:
        per_call["stop"] = stop
    extra = {k: per_call.pop(k) for k in list(per_call) if k not in STANDARD_PARAMS}
    passed, ignored = split_unknown(extra)
    if ignored:
        warn_ignored(ignored, "per-call", stacklevel=4)
    params = {
        name: per_call[name] if per_call.get(name) is not None else defaults.get(name) for name in STANDARD_PARAMS
    }
    params = _checked(params)
    generate_kwargs = _decoding(params, {**defaults.get("generate_kwargs", {}), **call_kwargs, **passed})
    return CallOptions(params["max_tokens"], params["stop"], params["seed"], generate_kwargs)
