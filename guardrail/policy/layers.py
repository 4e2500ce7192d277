"""`steering.layers`: the accepted forms ("all", a list, "START-END", {start, end}), normalised to "all" or
a list of indices below `MAX_LAYERS`. Errors never show the given values: they may be huge (a range is
checked before its list is built), or read from the environment."""

from __future__ import annotations

import re
from collections.abc import Mapping
from typing import Annotated, Any, Literal

from pydantic import BeforeValidator, WithJsonSchema

MAX_LAYERS = 10_000  # layer indices are below this (no model has that many; bounds the list a range builds)
_RANGE = re.compile(r"\s*(\d+)\s*-\s*(\d+)\s*")
LAYERS_FORMS = (
    '"all", a list of layer indices, a range "START-END" or a mapping {start: S, end: E} (both ends included); '
    f"indices are below {MAX_LAYERS}"
)
_INDEX: dict[str, Any] = {"type": "integer", "minimum": 0, "maximum": MAX_LAYERS - 1}

_LAYERS_SCHEMA: dict[str, Any] = {
    "anyOf": [
        {"const": "all", "type": "string"},
        {"type": "array", "items": _INDEX, "minItems": 1, "uniqueItems": True},
        {"type": "string", "pattern": r"^\s*\d{1,4}\s*-\s*\d{1,4}\s*$", "examples": ["8-15"]},
        {
            "type": "object",
            "properties": {"start": _INDEX, "end": _INDEX},
            "required": ["start", "end"],
            "additionalProperties": False,
        },
    ]
}


def _check_indices(values: Any) -> None:
    """Errors never show the values: they may be huge, or read from the environment."""
    if any(isinstance(i, bool) or not isinstance(i, int) for i in values):
        raise ValueError("layer indices are integers")
    if min(values) < 0:
        raise ValueError("layer indices start at 0")
    if max(values) >= MAX_LAYERS:
        raise ValueError(f"layer indices are below {MAX_LAYERS}")


def _index(digits: str) -> int:
    if len(digits) > len(str(MAX_LAYERS)):  # int() of a 5000-digit string fails (and is slow before that)
        raise ValueError(f"layer indices are below {MAX_LAYERS}")
    return int(digits)


def _span(start: Any, end: Any) -> list[int]:
    _check_indices((start, end))
    if start > end:
        raise ValueError("the range is empty: START must not exceed END")
    return list(range(start, end + 1))


def _parse_layers(value: Any) -> Any:
    """Normalise every accepted form of `steering.layers` to "all" or a list of indices."""
    if value == "all":
        return "all"
    if isinstance(value, str):
        match = _RANGE.fullmatch(value)
        if match is None:
            raise ValueError("not a layer selection")
        return _span(_index(match.group(1)), _index(match.group(2)))
    if isinstance(value, Mapping):
        if set(value) != {"start", "end"}:
            raise ValueError("a layer range mapping has exactly the keys start and end")
        return _span(value["start"], value["end"])
    if isinstance(value, (list, tuple)):
        if not value:
            raise ValueError("an empty layer list steers nothing; use gate.mode: off instead")
        _check_indices(value)
        if len(set(value)) != len(value):
            raise ValueError("layer indices must be unique")
        return list(value)
    raise ValueError("not a layer selection")


Layers = Annotated[Literal["all"] | list[int], BeforeValidator(_parse_layers), WithJsonSchema(_LAYERS_SCHEMA)]
