"""Every error this package raises on purpose, in one hierarchy.

Catch `GuardrailError` for all of them. Errors about bad input also subclass the built-in
`ValueError` (a wrong value) or `TypeError` (a wrong type), so code that already catches those
keeps working; `GuardrailError` itself, raised for failures inside the runtime (a model split
across devices for static steering, say), subclasses neither. Each message says what went
wrong and what to do about it.

    GuardrailError
    +-- AudioInputError (ValueError)          empty, corrupt, non-finite, undecodable, too long
    |   +-- AudioTypeError (TypeError)        a bare array, a list, a file object...
    +-- UnsupportedModelError (TypeError)     no adapter for this model
    +-- ArtifactError (ValueError)            a steering artifact is missing or corrupt
    |   +-- ArtifactMismatchError             ... or made for another model
    |   +-- ProbeError                        a gate probe is missing, corrupt or failed
    |       +-- ProbeMismatchError            ... or made for another model (also an ArtifactMismatchError)
    +-- PolicyError (ValueError)              a policy file or object is invalid
    +-- RequestError (ValueError)             a malformed generation request
    |   +-- UnsupportedContentError           a content block the model cannot take
    |   +-- UnsupportedMessageError           a message sequence the guard cannot represent
    +-- TestbedsNotInstalledError (ImportError)  no real-weight testbeds package (pip install -e ./testbeds)
    +-- DeviceError (ValueError)              a device, device map or dtype this machine cannot honour
"""

from __future__ import annotations


class GuardrailError(Exception):
    """Base of every error this package raises on purpose."""


class AudioInputError(GuardrailError, ValueError):
    """An audio input is empty, corrupt, non-finite, undecodable or too long."""


class AudioTypeError(AudioInputError, TypeError):
    """An audio input has the wrong type (a bare array, a list, a file object...)."""


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


class UnsupportedContentError(RequestError):
    """A message content block the guarded model cannot take (images, remote URLs, several audios...)."""


class UnsupportedMessageError(RequestError):
    """A message sequence the guard cannot represent (a conversation ending with an AI message, an unknown kind)."""


class ProbeError(ArtifactError):
    """A gate probe file is missing, corrupt or unusable (or a probe could not score its input)."""


class ProbeMismatchError(ArtifactMismatchError, ProbeError):
    """A gate probe was trained for another model (architecture, weights, hidden size or layers)."""


class TestbedsNotInstalledError(GuardrailError, ImportError):
    """No real-weight testbeds are installed (the `guardrail.testbeds` entry point is missing or broken)."""

    __test__ = False  # not a pytest test class


class DeviceError(GuardrailError, ValueError):
    """A device, device map or dtype that cannot be honoured: a GPU torch does not see, `device_map` without
    accelerate, `device` and `device_map` together, an unknown dtype."""
