"""lalm-guardrail: SARSteer refusal steering for large audio-language models."""

from guardrail.version import __version__

from guardrail.models.adapter import Adapter, AdapterSpec, get_adapter, resolve_adapter, supported_families

from guardrail.requests import Request
from guardrail.steering.artifact import SteeringArtifact
from guardrail.audio import load_audio
from guardrail.steering.calibrate import calibrate
from guardrail.errors import (ArtifactError, ArtifactMismatchError, AudioInputError, GuardrailError, PolicyError,
                     RequestError, UnsupportedModelError)
from guardrail.guard import Guard
from guardrail.results import Decision, GuardResult
from guardrail.policy.schema import Policy

__all__ = [
    "Adapter", "AdapterSpec", "ArtifactError", "ArtifactMismatchError", "AudioInputError", "Decision", "Guard",
    "GuardResult", "GuardrailError", "Policy", "PolicyError", "Request", "RequestError", "SteeringArtifact",
    "UnsupportedModelError", "__version__", "calibrate", "get_adapter", "load_audio", "resolve_adapter",
    "supported_families",
]


def __getattr__(name: str):  # GuardedChatModel: langchain-core is imported only when it is used
    if name == "GuardedChatModel":
        from guardrail.integrations.langchain import GuardedChatModel
        return GuardedChatModel
    raise AttributeError(f"module 'guardrail' has no attribute {name!r}")
