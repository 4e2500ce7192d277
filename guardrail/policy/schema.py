"""Deployment policy: which model, what to steer, how hard, when, within which limits, and what to log.

A policy is a YAML file validated strictly: an unknown key or a wrong value is a `PolicyError`
that names the file, the field path and the values the field accepts (`guardrail.policy.explain`).
Files can extend other files and read the environment (`extends:`, `${NAME}`; see
`guardrail.policy.loader`). This module holds the models and their JSON Schema.

Loading is all-or-nothing: the inputs are never mutated and an invalid policy yields no object.
Editors can check files against `policies/policy.schema.json` (`Policy.json_schema()`), e.g. with a
first line `# yaml-language-server: $schema=policy.schema.json`.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from functools import lru_cache
from pathlib import Path
from typing import Annotated, Any, Literal

from pydantic import ConfigDict, Field, PlainSerializer, PlainValidator, PrivateAttr, ValidationError, field_validator

from guardrail.errors import PolicyError
from guardrail.policy.explain import explain_validation_error
from guardrail.policy.layers import LAYERS_FORMS, Layers
from guardrail.policy.loader import PolicyLayer, chain_from_dict, chain_from_file, locate_policy, merge_chain
from guardrail.policy.sections import InputPolicy, LimitsPolicy, LoggingPolicy, RuntimePolicy, Section
from guardrail.steering.vectors import DEFAULT_ALPHA, DEFAULT_RANK, DEFAULT_REFUSAL_TEXT, DEFAULT_STRENGTH

SCHEMA_FILE = "policy.schema.json"
# bounds a typo (1e9, .inf); alpha scales a vector that is not normalised: 0.05-0.5 on the 7B models measured,
# up to ~200 on the tiny test models (whose refusal vectors are short)
MAX_ALPHA = 10_000.0
SCHEMA_URI = "https://json-schema.org/draft/2020-12/schema"


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


class ModelPolicy(Section):
    """Which model a deployment serves and where its calibrated files are. Every field is optional:
    code that builds a `Guard` itself passes these objects directly."""

    adapter: str | None = Field(
        default=None,
        json_schema_extra=_adapter_enum,
        description="model family adapter (see `guardrail families`); null = chosen from the model's config",
    )
    path: str | None = Field(
        default=None,
        description="model directory or hub id; a relative directory (starting with "
        "'.' or existing next to the policy) is resolved against the "
        "policy file's folder",
    )
    artifact: str | None = Field(
        default=None,
        description="steering artifact directory (guardrail calibrate --out); relative to the policy file's folder",
    )
    probe: str | None = Field(
        default=None,
        description="gate probe directory; relative to the policy file's folder; "
        "null = ARTIFACT/probe when the gate needs one",
    )

    @field_validator("adapter")
    @classmethod
    def _known_adapter(cls, value: str | None) -> str | None:
        if value is not None and value not in _adapter_names():
            raise ValueError("no adapter of that name")
        return value


# -- steering --------------------------------------------------------------------------------------
class SteeringPolicy(Section):
    """SARSteer: add alpha * v'_l to the residual stream of each steered decoder layer."""

    alpha: float = Field(
        default=DEFAULT_ALPHA,
        ge=0.0,
        le=MAX_ALPHA,
        allow_inf_nan=False,
        description="strength of alpha * v' per layer; 0 = no steering (with no artifact). Useful values on "
        f"real models are well below 1 (v' is not normalised); at most {MAX_ALPHA:g}",
    )
    layers: Layers = Field(default="all", description="decoder layers to steer: " + LAYERS_FORMS)
    positions: Literal["last"] = Field(
        default="last",
        description="where to steer: 'last' = the last prompt position during prefill and each "
        "generated token, as in SARSteer; the refusal direction is measured there, so other "
        "positions are not supported yet",
    )
    safe_rank: int = Field(
        default=DEFAULT_RANK,
        ge=0,
        le=100_000,
        description="k: safe-space directions ablated from the refusal vector (0 = plain refusal steering)",
    )
    safe_strength: float = Field(
        default=DEFAULT_STRENGTH,
        ge=0.0,
        le=10.0,
        allow_inf_nan=False,
        description="lambda of the safe-space ablation (1 = remove the safe directions' share entirely)",
    )


# -- gate, actions, calibration (limits, input, runtime, logging: in guardrail.policy.sections) --------
Probability = Annotated[float, Field(ge=0.0, le=1.0, allow_inf_nan=False)]


class AtFpr(Section):
    """A probe threshold named by the false-positive rate it was chosen for (the probe's threshold table)."""

    fpr: float = Field(gt=0.0, lt=1.0, allow_inf_nan=False, description="false-positive rate, e.g. 0.01")


def _threshold(value: Any) -> float | AtFpr | None:
    """A score in [0, 1] or {fpr: r}; one error message for both forms (a union would report two)."""
    if value is None or isinstance(value, AtFpr):
        return value
    if isinstance(value, Mapping):
        try:
            return AtFpr.model_validate(value)
        except ValidationError:
            pass
    elif isinstance(value, (int, float)) and not isinstance(value, bool) and 0.0 <= value <= 1.0:
        return float(value)
    raise ValueError("expected a probe score in [0, 1], or {fpr: r} with 0 < r < 1 (a false-positive rate)")


def _dump_threshold(value: float | AtFpr | None) -> float | dict[str, float] | None:
    return value.model_dump() if isinstance(value, AtFpr) else value


Threshold = Annotated[
    Probability | AtFpr | None,
    PlainValidator(_threshold, json_schema_input_type=Probability | AtFpr | None),
    PlainSerializer(_dump_threshold),  # pydantic's own union serializer warns on the AtFpr branch
]


class GatePolicy(Section):
    """When to steer."""

    mode: Literal["always", "probe", "off"] = Field(
        default="always", description="always: steer every request; probe: steer when the probe flags it; off: never"
    )
    threshold: Threshold = Field(
        default=None,
        description="probe score to steer at, or {fpr: 0.02}: the probe's threshold for that false-positive "
        "rate, read from its threshold table (chosen on held-out safe requests), so it means the same on "
        "every model; null = the probe's calibrated threshold",
    )
    on_error: Literal["steer", "pass"] = Field(
        default="steer", description="when the probe fails: steer (fail closed) or pass unsteered (fail open)"
    )
    exact: bool = Field(
        default=False,
        description="score the prompt before generating so that every layer of the "
        "last prompt token is steered (costs a partial extra prefill)",
    )


class ActionsPolicy(Section):
    """What to answer instead of generating."""

    refusal_message: str = Field(
        default="I can't help with that request.",
        min_length=1,
        description="returned instead of generating when a request is blocked",
    )
    block_above: Threshold = Field(
        default=None,
        description="probe score at or above which the guard answers with refusal_message without "
        "generating, or {fpr: 0.01} (as gate.threshold); null = never",
    )


class CalibrationPolicy(Section):
    """Inputs of `guardrail calibrate`."""

    instruction: str | None = Field(default=None, description="instruction text; null = the modality's default")
    refusal_text: str = Field(
        default=DEFAULT_REFUSAL_TEXT, min_length=1, description="the refusal appended to measure the refusal direction"
    )


def _doc(cls: type) -> str:
    return " ".join((cls.__doc__ or "").split())


# -- the policy ------------------------------------------------------------------------------------
class Policy(Section):
    """A deployment's guard configuration. `Policy()` holds the paper's defaults."""

    model_config = ConfigDict(extra="forbid", validate_assignment=True, title="lalm-guardrail policy")

    name: str = Field(default="default", description="shown in decision records and logs; default: the file's name")
    description: str = Field(default="", description="free text for people")
    system_prompt: str | None = Field(default=None, description="system turn added to every request; null = none")
    model: ModelPolicy = Field(default_factory=ModelPolicy, description=_doc(ModelPolicy))
    steering: SteeringPolicy = Field(default_factory=SteeringPolicy, description=_doc(SteeringPolicy))
    gate: GatePolicy = Field(default_factory=GatePolicy, description=_doc(GatePolicy))
    actions: ActionsPolicy = Field(default_factory=ActionsPolicy, description=_doc(ActionsPolicy))
    calibration: CalibrationPolicy = Field(default_factory=CalibrationPolicy, description=_doc(CalibrationPolicy))
    limits: LimitsPolicy = Field(default_factory=LimitsPolicy, description=_doc(LimitsPolicy))
    input: InputPolicy = Field(default_factory=InputPolicy, description=_doc(InputPolicy))
    runtime: RuntimePolicy = Field(default_factory=RuntimePolicy, description=_doc(RuntimePolicy))
    logging: LoggingPolicy = Field(default_factory=LoggingPolicy, description=_doc(LoggingPolicy))

    _sources: tuple[str, ...] = PrivateAttr(default=())

    @property
    def sources(self) -> tuple[str, ...]:
        """The files this policy was merged from, base first (empty for a policy built in code)."""
        return self._sources

    @classmethod
    def from_yaml(cls, path: str | Path) -> Policy:
        """Load and validate a policy file (following `extends:`); a shipped policy's name works too.

        >>> Policy.from_yaml("default").steering.alpha
        0.1
        """
        return _build(cls, chain_from_file(locate_policy(path)))

    @classmethod
    def from_dict(cls, data: Mapping[str, Any], source: str = "<dict>", base_dir: str | Path | None = None) -> Policy:
        """Validate a policy given as a mapping. `extends:` and relative model paths are resolved
        against `base_dir` (default: the working directory for `extends`; paths are kept as given)."""
        return _build(cls, chain_from_dict(data, source, base_dir))

    @classmethod
    def load(cls, ref: str | Path) -> Policy:
        """A policy file path, or the name of a policy shipped with the package ("default", "gated", ...)."""
        return cls.from_yaml(ref)

    @classmethod
    def of(cls, policy: Policy | str | Path | Mapping[str, Any] | None) -> Policy:
        """A policy given any way the package takes one: a `Policy`, a file path or shipped name, a mapping,
        or None (the defaults)."""
        if policy is None:
            return cls()
        if isinstance(policy, Policy):
            return policy
        if isinstance(policy, (str, Path)):
            return cls.load(policy)
        if isinstance(policy, Mapping):
            return cls.from_dict(policy)
        raise PolicyError(
            f"policy must be a Policy, a file path or shipped name, or a mapping; got {type(policy).__name__}"
        )

    @classmethod
    def json_schema(cls) -> dict[str, Any]:
        """JSON Schema of policy files (what `guardrail policy schema` prints), for editors and CI."""
        schema = cls.model_json_schema()
        schema = {"$schema": SCHEMA_URI, **schema}
        schema["description"] = (
            "A deployment policy of lalm-guardrail: which model, how to steer, when (gate), "
            "what to answer instead, limits, and logging. Every field is optional."
        )
        schema["properties"] = {
            "extends": {
                "type": "string",
                "title": "Extends",
                "description": "a policy file (relative to this one) or a shipped policy name, "
                "loaded first; this file is deep-merged over it. Only .yaml/.yml files in this file's "
                "folder or below (links resolved) or shipped policies may be named",
            },
            **schema["properties"],
        }
        return schema


def schema_text() -> str:
    """The committed policies/policy.schema.json, byte for byte."""
    return json.dumps(Policy.json_schema(), indent=2, ensure_ascii=False) + "\n"


@lru_cache(maxsize=8)
def _schema_of(cls: type[Policy]) -> dict[str, Any]:
    """`cls.json_schema()`, built once: error messages read it, never change it."""
    return cls.json_schema()


def _build(cls: type[Policy], chain: list[PolicyLayer]) -> Policy:
    """Validate the merged chain as a `cls`, remembering the files it came from."""
    try:
        policy = cls.model_validate(merge_chain(chain))
    except ValidationError as exc:
        raise PolicyError(explain_validation_error(exc, chain, _schema_of(cls))) from None
    policy._sources = tuple(layer.source for layer in chain)
    return policy
