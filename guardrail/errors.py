"""Typed errors. Each subclasses ValueError or TypeError so callers can catch broadly,
and each message says what went wrong and what to do about it."""

from __future__ import annotations


class GuardrailError(Exception):
    """Base of every error this package raises on purpose."""


class AudioInputError(GuardrailError, ValueError):
    """An audio input is empty, corrupt, non-finite, undecodable or too long."""


class UnsupportedModelError(GuardrailError, TypeError):
    """No adapter spec matches the model."""


class ArtifactError(GuardrailError, ValueError):
    """A steering artifact is missing, corrupt, or was made for another model."""


class ArtifactMismatchError(ArtifactError):
    """A steering artifact does not belong to the model it is being loaded into."""


class PolicyError(GuardrailError, ValueError):
    """A policy file or object is invalid."""


class RequestError(GuardrailError, ValueError):
    """A generation request is malformed (missing text, audio for a text model, ...)."""


class ProbeError(ArtifactError):
    """A gate probe file is missing, corrupt or unusable (or a probe could not score its input)."""


class ProbeMismatchError(ArtifactMismatchError, ProbeError):
    """A gate probe was trained for another model (architecture, weights, hidden size or layers)."""
