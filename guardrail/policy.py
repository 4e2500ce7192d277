"""Deployment policy: what to steer, how hard, when, and within which limits.

Loaded from YAML and validated strictly: an unknown key or a wrong value is a
`PolicyError` that names the file and the field path.
"""

from __future__ import annotations

from pathlib import Path
from typing import Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator

from .errors import PolicyError
from .steering import DEFAULT_ALPHA, DEFAULT_RANK, DEFAULT_REFUSAL_TEXT, DEFAULT_STRENGTH

AUDIO_INSTRUCTION = "Please generate detailed steps for the question in the audio."
TEXT_INSTRUCTION = "Please generate detailed steps for the question."


class _Section(BaseModel):
    model_config = ConfigDict(extra="forbid", validate_assignment=True)


class SteeringPolicy(_Section):
    alpha: float = Field(DEFAULT_ALPHA, ge=0.0, description="strength of alpha * v' per layer")
    layers: Literal["all"] | list[int] = Field("all", description="decoder layers to steer")
    safe_rank: int = Field(DEFAULT_RANK, ge=0, description="k: safe-space directions ablated")
    safe_strength: float = Field(DEFAULT_STRENGTH, ge=0.0, description="lambda of the ablation")

    @field_validator("layers")
    @classmethod
    def _layers_valid(cls, value: Literal["all"] | list[int]) -> Literal["all"] | list[int]:
        if isinstance(value, list):
            if not value:
                raise ValueError("an empty layer list steers nothing; use gate.mode: off instead")
            if len(set(value)) != len(value):
                raise ValueError("layer indices must be unique")
            if min(value) < 0:
                raise ValueError("layer indices start at 0")
        return value


class GatePolicy(_Section):
    mode: Literal["always", "probe", "off"] = Field(
        "always", description="always: steer every request; probe: steer when the probe flags it; off: never")
    threshold: float | None = Field(None, ge=0.0, le=1.0, description="probe score to steer at; None = the "
                                    "probe's calibrated threshold")
    on_error: Literal["steer", "pass"] = Field(
        "steer", description="when the probe fails: steer (fail closed) or pass unsteered (fail open)")
    exact: bool = Field(False, description="score the prompt before generating so that every layer of the "
                        "last prompt token is steered (costs a partial extra prefill)")


class ActionsPolicy(_Section):
    refusal_message: str = Field("I can't help with that request.", min_length=1,
                                 description="returned instead of generating when a request is blocked")
    block_above: float | None = Field(None, ge=0.0, le=1.0, description="probe score at or above which the "
                                      "guard answers with refusal_message without generating; None = never")


class CalibrationPolicy(_Section):
    instruction: str | None = Field(None, description="instruction text; None = the modality's default")
    refusal_text: str = Field(DEFAULT_REFUSAL_TEXT, min_length=1)


class LimitsPolicy(_Section):
    max_audio_seconds: float = Field(30.0, gt=0)
    max_new_tokens: int = Field(512, ge=1)


class Policy(_Section):
    """A deployment's guard configuration. `Policy()` holds the paper's defaults."""

    name: str = "default"
    description: str = ""
    system_prompt: str | None = None
    steering: SteeringPolicy = SteeringPolicy()
    gate: GatePolicy = GatePolicy()
    actions: ActionsPolicy = ActionsPolicy()
    calibration: CalibrationPolicy = CalibrationPolicy()
    limits: LimitsPolicy = LimitsPolicy()

    @classmethod
    def from_yaml(cls, path: str | Path) -> "Policy":
        """Load and validate a policy file.

        >>> from guardrail.resources import shipped_policy
        >>> Policy.from_yaml(shipped_policy("default")).steering.alpha
        0.1
        """
        path = Path(path)
        try:
            data = yaml.safe_load(path.read_text(encoding="utf-8")) or {}
        except OSError as exc:
            raise PolicyError(f"cannot read policy file {path}: {exc.strerror or exc}") from exc
        except yaml.YAMLError as exc:
            raise PolicyError(f"{path} is not valid YAML: {exc}") from exc
        if not isinstance(data, dict):
            raise PolicyError(f"{path}: a policy is a mapping of sections, got {type(data).__name__}")
        return cls.from_dict(data, source=str(path))

    @classmethod
    def from_dict(cls, data: dict, source: str = "<dict>") -> "Policy":
        try:
            return cls.model_validate(data)
        except ValidationError as exc:
            raise PolicyError(_explain(exc, source)) from None


def _explain(exc: ValidationError, source: str) -> str:
    lines = [f"invalid policy {source}:"]
    for err in exc.errors():
        where = ".".join(str(p) for p in err["loc"]) or "<root>"
        if err["type"] == "extra_forbidden":
            lines.append(f"  {where}: unknown field; check the spelling (see `Policy.model_json_schema()`)")
        else:
            lines.append(f"  {where}: {err['msg']} (got {err.get('input')!r})")
    return "\n".join(lines)
