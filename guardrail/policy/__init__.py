"""Policy: the YAML schema, loading (extends chains, interpolation) and error explanations."""

from guardrail.policy.schema import Policy

__all__ = ["Policy"]
