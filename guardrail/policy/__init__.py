"""Policy: the YAML schema (`schema`), loading with extends chains and interpolation (`loader`), and the
messages that explain an invalid policy (`explain`)."""

from guardrail.policy.loader import deep_merge, resolve_policy_ref, shipped_policy_names
from guardrail.policy.schema import (
    ActionsPolicy,
    CalibrationPolicy,
    GatePolicy,
    InputPolicy,
    LimitsPolicy,
    LoggingPolicy,
    ModelPolicy,
    Policy,
    RuntimePolicy,
    SteeringPolicy,
    schema_text,
)

__all__ = [
    "ActionsPolicy",
    "CalibrationPolicy",
    "GatePolicy",
    "InputPolicy",
    "LimitsPolicy",
    "LoggingPolicy",
    "ModelPolicy",
    "Policy",
    "RuntimePolicy",
    "SteeringPolicy",
    "deep_merge",
    "resolve_policy_ref",
    "schema_text",
    "shipped_policy_names",
]
