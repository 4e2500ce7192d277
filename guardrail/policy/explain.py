"""Turning a pydantic `ValidationError` into the message a user sees: the file (and the files it
extends), each wrong field's path, what was given, what the field accepts, and which file of the
`extends` chain set the field when it was not the file being loaded.

A message stays short whatever the input: values are cut to `SHOWN_CHARS`, at most `MAX_ERRORS`
fields are listed, and a value read from the environment is named by its variable, never shown.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from pydantic import ValidationError

from guardrail.policy.loader import PolicyLayer, env_names, field_path
from guardrail.policy.reading import SHOWN_CHARS, shown

MAX_ERRORS = 20


def explain_validation_error(exc: ValidationError, chain: list[PolicyLayer], schema: dict[str, Any]) -> str:
    """The lines of a `PolicyError` for `exc`, raised validating the merge of `chain` against the JSON
    Schema `schema` (what `Policy.json_schema()` returns)."""
    source = chain[-1].source
    header = f"invalid policy {source}"
    if len(chain) > 1:
        header += f" (extends {' -> '.join(layer.source for layer in reversed(chain[:-1]))})"
    lines = [header + ":"]
    errors = exc.errors()
    for err in errors[:MAX_ERRORS]:
        loc = tuple(err["loc"])
        line = f"  {field_path(loc)}: {_problem(err, _env_names(chain, loc), schema)}"
        origin = _origin(chain, loc)
        if origin is not None and origin != source:
            line += f" [set in {origin}]"
        lines.append(line)
    if len(errors) > MAX_ERRORS:
        lines.append(f"  ... and {len(errors) - MAX_ERRORS} more")
    return "\n".join(lines)


def _problem(err: Any, env: list[str], schema: dict[str, Any]) -> str:
    """What is wrong with one field: the message, what was given (or which variable gave it), what it accepts."""
    loc = tuple(err["loc"])
    if err["type"] == "extra_forbidden":
        parent = _schema_at(schema, loc[:-1])
        fields = ", ".join((parent or {}).get("properties", {}))
        return f"unknown field; check the spelling. Accepted fields: {fields}"
    message = err["msg"].removeprefix("Value error, ")[:SHOWN_CHARS]
    if err["type"] == "literal_error":
        message = "not an accepted value"
        if isinstance(err.get("input"), bool):
            message += " (YAML reads unquoted on/off/yes/no as true/false: quote the value)"
    given = " and ".join(f"${{{name}}}" for name in dict.fromkeys(env))
    given = f"the value of {given}, not shown" if env else shown(err.get("input"))
    accepted = _accepted(schema, loc)
    return f"{message} (got {given})" + (f"; accepted: {accepted}" if accepted else "")


def _env_names(chain: list[PolicyLayer], loc: tuple[Any, ...]) -> list[str]:
    return [name for layer in chain for name in env_names(layer.from_env, loc)]


def _origin(chain: list[PolicyLayer], loc: tuple[Any, ...]) -> str | None:
    """The last file in the chain that sets the field at `loc`."""
    keys = []
    for part in loc:
        if not isinstance(part, str):
            break
        keys.append(part)
    for layer in reversed(chain):
        node: Any = layer.data
        for key in keys:
            if not isinstance(node, Mapping) or key not in node:
                break
            node = node[key]
        else:
            return layer.source
    return None


# -- what a field accepts, read from the JSON Schema ----------------------------------------------------
def _deref(schema: dict[str, Any], root: dict[str, Any]) -> dict[str, Any]:
    """`schema` with its `$ref` (or single-entry `allOf`) replaced by what it points at in `root`."""
    while True:
        if "$ref" in schema:
            target = root["$defs"][schema["$ref"].rsplit("/", 1)[-1]]
            schema = {**target, **{k: v for k, v in schema.items() if k != "$ref"}}
        elif len(schema.get("allOf", [])) == 1:
            schema = {**schema["allOf"][0], **{k: v for k, v in schema.items() if k != "allOf"}}
        else:
            return schema


def _schema_at(root: dict[str, Any], loc: tuple[Any, ...]) -> dict[str, Any] | None:
    schema = _deref(root, root)
    for part in loc:
        if isinstance(part, str) and part in schema.get("properties", {}):
            schema = _deref(schema["properties"][part], root)
        else:
            return None
    return schema


def _accepted(root: dict[str, Any], loc: tuple[Any, ...]) -> str | None:
    schema = _schema_at(root, loc)
    return _describe(schema, root) if schema is not None else None


def _number(value: float) -> str:
    """1000000 for an integral bound (not 1e+06), 0.5 for a fraction."""
    return str(int(value)) if float(value).is_integer() else f"{value:g}"


def _describe(schema: dict[str, Any], root: dict[str, Any], plural: bool = False) -> str:
    schema = _deref(schema, root)
    if "anyOf" in schema:
        parts = [_describe(option, root, plural) for option in schema["anyOf"]]
        return " or ".join(dict.fromkeys(parts))
    if "const" in schema:
        return repr(schema["const"])
    if "enum" in schema:
        return "one of " + ", ".join(repr(v) for v in schema["enum"])
    kind = schema.get("type")
    if kind == "null":
        return "null"
    if kind == "boolean":
        return "true or false"
    if kind in ("integer", "number"):
        noun = {"integer": "an integer", "number": "a number"}[kind]
        if plural:
            noun = {"integer": "integers", "number": "numbers"}[kind]
        bounds = [
            f"{op} {_number(schema[key])}"
            for key, op in (("minimum", ">="), ("exclusiveMinimum", ">"), ("maximum", "<="), ("exclusiveMaximum", "<"))
            if key in schema
        ]
        return " ".join([noun, " and ".join(bounds)]) if bounds else noun
    if kind == "string":
        if "examples" in schema:
            return f"a string like {schema['examples'][0]!r}"
        return (
            ("non-empty strings" if plural else "a non-empty string")
            if schema.get("minLength")
            else ("strings" if plural else "a string")
        )
    if kind == "array":
        unique = "unique " if schema.get("uniqueItems") else ""
        size = "a non-empty list" if schema.get("minItems") else "a list"
        return f"{size} of {unique}{_describe(schema.get('items', {}), root, plural=True)}"
    if "properties" in schema:
        return "a mapping with fields " + ", ".join(schema["properties"])
    if kind == "object":
        values = schema.get("additionalProperties")
        return f"a mapping of names to {_describe(values, root, plural=True)}" if values else "a mapping"
    return "any value"
