"""Deployment policy: which model, what to steer, how hard, when, within which limits, and what to log.

A policy is a YAML file validated strictly: an unknown key or a wrong value is a `PolicyError`
that names the file, the field path and the values the field accepts. Files can build on each
other and on the environment:

- `extends: ../default.yaml` (a path relative to the extending file) or `extends: default` (a
  policy shipped with the package) loads that policy first and deep-merges this file over it:
  mappings merge key by key, lists and scalars (and `null`) replace. Chains are allowed; a cycle
  is an error that names it.
- `${NAME}` in a string value is replaced by the environment variable NAME, `${NAME:-fallback}`
  by its value or `fallback` when it is unset or empty, and `$${` writes a literal `${`. An unset
  variable without a fallback is an error naming the variable, the file and the field path.
  Substitution happens before validation, so `alpha: ${ALPHA:-0.1}` still has to be a number.
- Relative `model.artifact` and `model.probe` paths (and `model.path` when it starts with `.` or
  names a folder next to the policy) are resolved against the folder of the file that sets them.
- A file that does not set `name` is named after itself (`kids-voice-app.yaml` -> kids-voice-app).

Loading is all-or-nothing: the inputs are never mutated and an invalid policy yields no object.
Editors can check files against `policies/policy.schema.json` (`Policy.json_schema()`), e.g. with a
first line `# yaml-language-server: $schema=policy.schema.json`.
"""

from __future__ import annotations

import copy
import json
import os
import re
from collections.abc import Mapping
from functools import lru_cache
from pathlib import Path
from typing import Annotated, Any, Literal

import yaml
from pydantic import (BaseModel, BeforeValidator, ConfigDict, Field, PrivateAttr, ValidationError,
                      WithJsonSchema, field_validator, model_validator)

from guardrail.errors import PolicyError
from guardrail.steering.vectors import DEFAULT_ALPHA, DEFAULT_RANK, DEFAULT_REFUSAL_TEXT, DEFAULT_STRENGTH


SCHEMA_FILE = "policy.schema.json"
SCHEMA_URI = "https://json-schema.org/draft/2020-12/schema"


class _Section(BaseModel):
    model_config = ConfigDict(extra="forbid", validate_assignment=True)


# -- model -----------------------------------------------------------------------------------------
def _adapter_enum(schema: dict[str, Any]) -> None:
    """List the shipped adapters in the JSON Schema so editors can complete them."""
    for option in schema.get("anyOf", []):
        if option.get("type") == "string":
            option["enum"] = _adapter_names()


@lru_cache(maxsize=1)
def _adapter_names() -> list[str]:
    from guardrail.models.adapter import supported_families
    return sorted(supported_families())


class ModelPolicy(_Section):
    """Which model a deployment serves and where its calibrated files are. Every field is optional:
    code that builds a `Guard` itself passes these objects directly."""

    adapter: str | None = Field(None, json_schema_extra=_adapter_enum,
                                description="model family adapter (see `guardrail families`); null = chosen "
                                            "from the model's config")
    path: str | None = Field(None, description="model directory or hub id; a relative directory (starting with "
                                               "'.' or existing next to the policy) is resolved against the "
                                               "policy file's folder")
    artifact: str | None = Field(None, description="steering artifact directory (guardrail calibrate --out); "
                                                   "relative to the policy file's folder")
    probe: str | None = Field(None, description="gate probe directory; relative to the policy file's folder; "
                                                "null = ARTIFACT/probe when the gate needs one")

    @field_validator("adapter")
    @classmethod
    def _known_adapter(cls, value: str | None) -> str | None:
        if value is not None and value not in _adapter_names():
            raise ValueError(f"no adapter named {value!r}")
        return value


# -- steering --------------------------------------------------------------------------------------
_RANGE = re.compile(r"\s*(\d+)\s*-\s*(\d+)\s*")
_LAYERS_FORMS = ('"all", a list of layer indices, a range "START-END" or a mapping {start: S, end: E} '
                 "(both ends included)")

_LAYERS_SCHEMA: dict[str, Any] = {
    "anyOf": [
        {"const": "all", "type": "string"},
        {"type": "array", "items": {"type": "integer", "minimum": 0}, "minItems": 1, "uniqueItems": True},
        {"type": "string", "pattern": r"^\s*\d+\s*-\s*\d+\s*$", "examples": ["8-15"]},
        {"type": "object", "properties": {"start": {"type": "integer", "minimum": 0},
                                          "end": {"type": "integer", "minimum": 0}},
         "required": ["start", "end"], "additionalProperties": False},
    ],
}


def _span(start: Any, end: Any) -> list[int]:
    for value in (start, end):
        if isinstance(value, bool) or not isinstance(value, int):
            raise ValueError(f"range ends must be integers, got {value!r}")
        if value < 0:
            raise ValueError("layer indices start at 0")
    if start > end:
        raise ValueError(f"the range {start}-{end} is empty: START must not exceed END")
    return list(range(start, end + 1))


def _parse_layers(value: Any) -> Any:
    """Normalise every accepted form of `steering.layers` to "all" or a list of indices."""
    if value == "all":
        return "all"
    if isinstance(value, str):
        match = _RANGE.fullmatch(value)
        if match is None:
            raise ValueError("not a layer selection")
        return _span(int(match.group(1)), int(match.group(2)))
    if isinstance(value, Mapping):
        if set(value) != {"start", "end"}:
            raise ValueError(f"a layer range mapping has exactly the keys start and end, got {sorted(value)}")
        return _span(value["start"], value["end"])
    if isinstance(value, (list, tuple)):
        if not value:
            raise ValueError("an empty layer list steers nothing; use gate.mode: off instead")
        if any(isinstance(i, bool) or not isinstance(i, int) for i in value):
            raise ValueError("layer indices are integers")
        if len(set(value)) != len(value):
            raise ValueError("layer indices must be unique")
        if min(value) < 0:
            raise ValueError("layer indices start at 0")
        return list(value)
    raise ValueError("not a layer selection")


Layers = Annotated[Literal["all"] | list[int], BeforeValidator(_parse_layers), WithJsonSchema(_LAYERS_SCHEMA)]


class SteeringPolicy(_Section):
    """SARSteer: add alpha * v'_l to the residual stream of each steered decoder layer."""

    alpha: float = Field(DEFAULT_ALPHA, ge=0.0, description="strength of alpha * v' per layer; 0 = no steering "
                                                            "(with no artifact)")
    layers: Layers = Field("all", description="decoder layers to steer: " + _LAYERS_FORMS)
    positions: Literal["last"] = Field(
        "last", description="where to steer: 'last' = the last prompt position during prefill and each "
                            "generated token, as in SARSteer; the refusal direction is measured there, so other "
                            "positions are not supported yet")
    safe_rank: int = Field(DEFAULT_RANK, ge=0, description="k: safe-space directions ablated from the refusal "
                                                           "vector (0 = plain refusal steering)")
    safe_strength: float = Field(DEFAULT_STRENGTH, ge=0.0, description="lambda of the safe-space ablation")


# -- gate, actions, calibration, limits, logging ---------------------------------------------------
class GatePolicy(_Section):
    """When to steer."""

    mode: Literal["always", "probe", "off"] = Field(
        "always", description="always: steer every request; probe: steer when the probe flags it; off: never")
    threshold: float | None = Field(None, ge=0.0, le=1.0, description="probe score to steer at; null = the "
                                    "probe's calibrated threshold")
    on_error: Literal["steer", "pass"] = Field(
        "steer", description="when the probe fails: steer (fail closed) or pass unsteered (fail open)")
    exact: bool = Field(False, description="score the prompt before generating so that every layer of the "
                        "last prompt token is steered (costs a partial extra prefill)")


class ActionsPolicy(_Section):
    """What to answer instead of generating."""

    refusal_message: str = Field("I can't help with that request.", min_length=1,
                                 description="returned instead of generating when a request is blocked")
    block_above: float | None = Field(None, ge=0.0, le=1.0, description="probe score at or above which the "
                                      "guard answers with refusal_message without generating; null = never")


class CalibrationPolicy(_Section):
    """Inputs of `guardrail calibrate`."""

    instruction: str | None = Field(None, description="instruction text; null = the modality's default")
    refusal_text: str = Field(DEFAULT_REFUSAL_TEXT, min_length=1,
                              description="the refusal appended to measure the refusal direction")


class LimitsPolicy(_Section):
    """Per-request limits; requests beyond them are rejected with a RequestError/AudioInputError."""

    max_audio_seconds: float = Field(30.0, gt=0, description="longest accepted audio clip, in seconds")
    max_new_tokens: int = Field(512, ge=1, description="most tokens one request may generate")
    max_batch: int = Field(32, ge=1, description="most requests generated together in one batch")


class RuntimePolicy(_Section):
    """How the guarded model generates (steering follows it onto the compiled path)."""

    cache: Literal["dynamic", "static"] = Field(
        "dynamic", description="KV cache: dynamic (grows per step) or static (fixed size, what compile needs)")
    compile: bool = Field(False, description="torch.compile the decoding step (transformers' generate "
                                             "compiles it; needs cache: static); steering stays in the graph")

    @model_validator(mode="after")
    def _compile_needs_static(self) -> "RuntimePolicy":
        if self.compile and self.cache != "static":
            raise ValueError("runtime.compile: true needs runtime.cache: static (a compiled decoding step needs "
                             "a fixed-size KV cache)")
        return self


def _lower(value: Any) -> Any:
    return value.lower() if isinstance(value, str) else value


class LoggingPolicy(_Section):
    """Decision logs (one event per request)."""

    level: Annotated[Literal["debug", "info", "warning", "error"], BeforeValidator(_lower)] = Field(
        "info", description="least severe level emitted")
    log_content: bool = Field(False, description="include prompt and response text in log events; off by "
                                                 "default so content stays out of logs")
    format: Literal["json", "console", "auto"] = Field(
        "auto", description="json: one JSON object per line; console: readable; auto: console on a terminal, "
                            "json otherwise")


def _doc(cls: type) -> str:
    return " ".join((cls.__doc__ or "").split())


# -- the policy ------------------------------------------------------------------------------------
class Policy(_Section):
    """A deployment's guard configuration. `Policy()` holds the paper's defaults."""

    model_config = ConfigDict(extra="forbid", validate_assignment=True, title="lalm-guardrail policy")

    name: str = Field("default", description="shown in decision records and logs; default: the file's name")
    description: str = Field("", description="free text for people")
    system_prompt: str | None = Field(None, description="system turn added to every request; null = none")
    model: ModelPolicy = Field(default_factory=ModelPolicy, description=_doc(ModelPolicy))
    steering: SteeringPolicy = Field(default_factory=SteeringPolicy, description=_doc(SteeringPolicy))
    gate: GatePolicy = Field(default_factory=GatePolicy, description=_doc(GatePolicy))
    actions: ActionsPolicy = Field(default_factory=ActionsPolicy, description=_doc(ActionsPolicy))
    calibration: CalibrationPolicy = Field(default_factory=CalibrationPolicy, description=_doc(CalibrationPolicy))
    limits: LimitsPolicy = Field(default_factory=LimitsPolicy, description=_doc(LimitsPolicy))
    runtime: RuntimePolicy = Field(default_factory=RuntimePolicy, description=_doc(RuntimePolicy))
    logging: LoggingPolicy = Field(default_factory=LoggingPolicy, description=_doc(LoggingPolicy))

    _sources: tuple[str, ...] = PrivateAttr(default=())

    @property
    def sources(self) -> tuple[str, ...]:
        """The files this policy was merged from, base first (empty for a policy built in code)."""
        return self._sources

    @classmethod
    def from_yaml(cls, path: str | Path) -> "Policy":
        """Load and validate a policy file (following `extends:`).

        >>> from guardrail.resources import shipped_policy
        >>> Policy.from_yaml(shipped_policy("default")).steering.alpha
        0.1
        """
        return _build(_load_chain(Path(path), ()))

    @classmethod
    def from_dict(cls, data: Mapping[str, Any], source: str = "<dict>",
                  base_dir: str | Path | None = None) -> "Policy":
        """Validate a policy given as a mapping. `extends:` and relative model paths are resolved
        against `base_dir` (default: the working directory for `extends`; paths are kept as given)."""
        if not isinstance(data, Mapping):
            raise PolicyError(f"{source}: a policy is a mapping of sections, got {type(data).__name__}")
        folder = Path(base_dir) if base_dir is not None else None
        return _build(_chain_from(data, source, folder, ()))

    @classmethod
    def load(cls, ref: str | Path) -> "Policy":
        """A policy file path, or the name of a policy shipped with the package ("default", "gated", ...)."""
        path = resolve_policy_ref(str(ref))
        if not path.exists() and path.parent == _shipped_dir():
            raise PolicyError(f"no policy file {str(ref)!r} and no shipped policy of that name; shipped: "
                              f"{', '.join(shipped_policy_names())}")
        return cls.from_yaml(path)

    @classmethod
    def json_schema(cls) -> dict[str, Any]:
        """JSON Schema of policy files (what `guardrail policy schema` prints), for editors and CI."""
        schema = cls.model_json_schema()
        schema = {"$schema": SCHEMA_URI, **schema}
        schema["description"] = ("A deployment policy of lalm-guardrail: which model, how to steer, when (gate), "
                                 "what to answer instead, limits, and logging. Every field is optional.")
        schema["properties"] = {
            "extends": {"type": "string", "title": "Extends",
                        "description": "a policy file (relative to this one) or a shipped policy name, "
                                       "loaded first; this file is deep-merged over it"},
            **schema["properties"]}
        return schema


def schema_text() -> str:
    """The committed policies/policy.schema.json, byte for byte."""
    return json.dumps(Policy.json_schema(), indent=2, ensure_ascii=False) + "\n"


# -- loading: extends, environment, paths ----------------------------------------------------------
class _Layer:
    """One file of an `extends` chain, after interpolation and path resolution."""

    def __init__(self, source: str, data: dict[str, Any]):
        self.source, self.data = source, data


def _shipped_dir() -> Path:
    from guardrail.resources import data_dir
    return data_dir("policies")


def shipped_policy_names() -> list[str]:
    return sorted(p.stem for p in _shipped_dir().glob("*.yaml"))


def resolve_policy_ref(ref: str, relative_to: Path | None = None) -> Path:
    """A policy reference as written in `extends:` or on the command line: a path (relative to
    `relative_to`, default the working directory) or the name of a shipped policy."""
    from guardrail.resources import shipped_policy
    path = Path(ref).expanduser()
    candidate = path if path.is_absolute() or relative_to is None else relative_to / path
    looks_like_path = any(sep in ref for sep in ("/", os.sep)) or path.suffix in (".yaml", ".yml")
    if looks_like_path or candidate.exists():
        return Path(os.path.normpath(candidate))
    return shipped_policy(ref)


def _read(path: Path) -> dict[str, Any]:
    try:
        data = yaml.safe_load(path.read_text(encoding="utf-8")) or {}
    except OSError as exc:
        raise PolicyError(f"cannot read policy file {path}: {exc.strerror or exc}") from exc
    except yaml.YAMLError as exc:
        raise PolicyError(f"{path} is not valid YAML: {exc}") from exc
    if not isinstance(data, dict):
        raise PolicyError(f"{path}: a policy is a mapping of sections, got {type(data).__name__}")
    return data


def _load_chain(path: Path, stack: tuple[Path, ...]) -> list[_Layer]:
    real = path.resolve()
    if real in stack:
        cycle = " -> ".join(str(p) for p in (*stack[stack.index(real):], real))
        raise PolicyError(f"policy extends cycle: {cycle}")
    data = _read(path)
    if "name" not in data:
        data = {**data, "name": path.stem}
    return _chain_from(data, str(path), path.parent, (*stack, real))


def _chain_from(data: Mapping[str, Any], source: str, folder: Path | None, stack: tuple[Path, ...]) -> list[_Layer]:
    data = _interpolate(data, source, ())
    parent = data.pop("extends", None)
    if folder is not None:
        data = _resolve_model_paths(data, folder)
    chain: list[_Layer] = []
    if parent is not None:
        if not isinstance(parent, str) or not parent.strip():
            raise PolicyError(f"invalid policy {source}:\n  extends: expected a policy file path or the name of a "
                              f"shipped policy (got {parent!r}); accepted names: {', '.join(shipped_policy_names())}")
        target = resolve_policy_ref(parent.strip(), folder)
        if not target.is_file():
            raise PolicyError(f"invalid policy {source}:\n  extends: no policy file {str(target)!r} (from "
                              f"{parent!r}); give a path relative to {source} or one of the shipped policies: "
                              f"{', '.join(shipped_policy_names())}")
        chain = _load_chain(target, stack)
    return [*chain, _Layer(source, data)]


_PLACEHOLDER = re.compile(r"\$\$\{|\$\{([^}]*)\}|\$\{")
_VAR_NAME = re.compile(r"[A-Za-z_][A-Za-z0-9_]*")


def _where(path: tuple[Any, ...]) -> str:
    return ".".join(str(p) for p in path) or "<root>"


def _interpolate(node: Any, source: str, path: tuple[Any, ...]) -> Any:
    """A copy of `node` with ${NAME} / ${NAME:-default} substituted in every string value."""
    if isinstance(node, Mapping):
        return {key: _interpolate(value, source, (*path, key)) for key, value in node.items()}
    if isinstance(node, (list, tuple)):
        return [_interpolate(value, source, (*path, i)) for i, value in enumerate(node)]
    if isinstance(node, str) and "${" in node:
        return _PLACEHOLDER.sub(lambda m: _substitute(m, source, path), node)
    return copy.deepcopy(node)


def _substitute(match: re.Match[str], source: str, path: tuple[Any, ...]) -> str:
    text = match.group(0)
    if text == "$${":
        return "${"
    if match.group(1) is None:
        raise PolicyError(f"invalid policy {source}:\n  {_where(path)}: unclosed '${{'; write ${{NAME}}, "
                          "${NAME:-default}, or $${ for a literal ${")
    name, has_default, default = match.group(1).partition(":-")
    if not _VAR_NAME.fullmatch(name):
        raise PolicyError(f"invalid policy {source}:\n  {_where(path)}: malformed placeholder {text!r}; accepted: "
                          "${NAME} or ${NAME:-default} with NAME made of letters, digits and _")
    value = os.environ.get(name)
    if value is None or (value == "" and has_default):
        if has_default:
            return default
        raise PolicyError(f"invalid policy {source}:\n  {_where(path)}: environment variable {name} is not set "
                          f"and {text} has no default; set {name} or write ${{{name}:-default}}")
    return value


def _resolve_model_paths(data: dict[str, Any], folder: Path) -> dict[str, Any]:
    model = data.get("model")
    if not isinstance(model, Mapping):
        return data
    model = dict(model)
    base = Path(os.path.abspath(folder))
    for key in ("artifact", "probe", "path"):
        value = model.get(key)
        if not isinstance(value, str) or not value:
            continue
        path = Path(value).expanduser()
        if path.is_absolute():
            model[key] = str(path)
        elif key != "path" or value.startswith(".") or (base / path).exists():
            model[key] = os.path.normpath(base / path)
        # else: a hub id such as "Qwen/Qwen2-Audio-7B-Instruct", kept as written
    return {**data, "model": model}


def deep_merge(base: Mapping[str, Any], override: Mapping[str, Any]) -> dict[str, Any]:
    """`override` over `base`: mappings merge recursively; lists, scalars and null replace. Returns a
    new mapping; neither input is modified."""
    merged = copy.deepcopy(dict(base))
    for key, value in override.items():
        if isinstance(value, Mapping) and isinstance(merged.get(key), Mapping):
            merged[key] = deep_merge(merged[key], value)
        else:
            merged[key] = copy.deepcopy(value)
    return merged


def _build(chain: list[_Layer]) -> Policy:
    merged: dict[str, Any] = {}
    for layer in chain:
        merged = deep_merge(merged, layer.data)
    try:
        policy = Policy.model_validate(merged)
    except ValidationError as exc:
        raise PolicyError(_explain(exc, chain)) from None
    policy._sources = tuple(layer.source for layer in chain)
    return policy


# -- error messages --------------------------------------------------------------------------------
def _explain(exc: ValidationError, chain: list[_Layer] | str) -> str:
    if isinstance(chain, str):
        chain = [_Layer(chain, {})]
    source = chain[-1].source
    header = f"invalid policy {source}"
    if len(chain) > 1:
        header += f" (extends {' -> '.join(layer.source for layer in reversed(chain[:-1]))})"
    lines = [header + ":"]
    for err in exc.errors():
        loc = tuple(err["loc"])
        where = _where(loc)
        accepted = _accepted(loc)
        if err["type"] == "extra_forbidden":
            parent = _schema_at(loc[:-1])
            fields = ", ".join((parent or {}).get("properties", {}))
            line = f"  {where}: unknown field; check the spelling. Accepted fields: {fields}"
        else:
            message = err["msg"].removeprefix("Value error, ")
            if err["type"] == "literal_error":
                message = "not an accepted value"
                if isinstance(err.get("input"), bool):
                    message += " (YAML reads unquoted on/off/yes/no as true/false: quote the value)"
            line = f"  {where}: {message} (got {err.get('input')!r})"
            if accepted:
                line += f"; accepted: {accepted}"
        origin = _origin(chain, loc)
        if origin is not None and origin != source:
            line += f" [set in {origin}]"
        lines.append(line)
    return "\n".join(lines)


def _origin(chain: list[_Layer], loc: tuple[Any, ...]) -> str | None:
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


@lru_cache(maxsize=1)
def _root_schema() -> dict[str, Any]:
    return Policy.json_schema()


def _deref(schema: dict[str, Any]) -> dict[str, Any]:
    while True:
        if "$ref" in schema:
            target = _root_schema()["$defs"][schema["$ref"].rsplit("/", 1)[-1]]
            schema = {**target, **{k: v for k, v in schema.items() if k != "$ref"}}
        elif len(schema.get("allOf", [])) == 1:
            schema = {**schema["allOf"][0], **{k: v for k, v in schema.items() if k != "allOf"}}
        else:
            return schema


def _schema_at(loc: tuple[Any, ...]) -> dict[str, Any] | None:
    schema = _deref(_root_schema())
    for part in loc:
        if isinstance(part, str) and part in schema.get("properties", {}):
            schema = _deref(schema["properties"][part])
        else:
            return None
    return schema


def _accepted(loc: tuple[Any, ...]) -> str | None:
    schema = _schema_at(loc)
    return _describe(schema) if schema is not None else None


def _describe(schema: dict[str, Any], plural: bool = False) -> str:
    schema = _deref(schema)
    if "anyOf" in schema:
        parts = [_describe(option, plural) for option in schema["anyOf"]]
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
        bounds = [f"{op} {schema[key]:g}" for key, op in (("minimum", ">="), ("exclusiveMinimum", ">"),
                                                          ("maximum", "<="), ("exclusiveMaximum", "<"))
                  if key in schema]
        return " ".join([noun, " and ".join(bounds)]) if bounds else noun
    if kind == "string":
        if "examples" in schema:
            return f"a string like {schema['examples'][0]!r}"
        return ("non-empty strings" if plural else "a non-empty string") if schema.get("minLength") else (
            "strings" if plural else "a string")
    if kind == "array":
        unique = "unique " if schema.get("uniqueItems") else ""
        size = "a non-empty list" if schema.get("minItems") else "a list"
        return f"{size} of {unique}{_describe(schema.get('items', {}), plural=True)}"
    if kind == "object" or "properties" in schema:
        return "a mapping with fields " + ", ".join(schema.get("properties", {}))
    return "any value"
