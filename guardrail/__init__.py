"""lalm-guardrail: SARSteer refusal steering for large audio-language models.

What an application needs is here: wrap a model in a `Guard` under a `Policy`, with a
`SteeringArtifact` from `calibrate` and, for a probe gate, a probe from `fit_probe`. Adapter
authoring lives in `guardrail.models`; the LangChain chat model in `guardrail.integrations.langchain`
(also importable from here as `guardrail.GuardedChatModel`, which loads langchain-core on first use).
"""

import warnings
from typing import Any

from guardrail.audio import load_audio
from guardrail.errors import (
    ArtifactError,
    ArtifactMismatchError,
    AudioInputError,
    AudioTypeError,
    DeviceError,
    GuardrailError,
    PolicyError,
    ProbeError,
    ProbeMismatchError,
    RequestError,
    TestbedsNotInstalledError,
    UnsupportedContentError,
    UnsupportedMessageError,
    UnsupportedModelError,
)
from guardrail.gate import OnnxProbe, TrainedProbe, fit_probe
from guardrail.guard import Guard
from guardrail.models.loading import load_model
from guardrail.obs.logs import configure_logging
from guardrail.policy import Policy
from guardrail.requests import Request
from guardrail.results import Decision, GuardResult, Timings
from guardrail.steering.artifact import SteeringArtifact
from guardrail.steering.calibrate import calibrate
from guardrail.version import __version__

__all__ = [
    "ArtifactError",
    "ArtifactMismatchError",
    "AudioInputError",
    "AudioTypeError",
    "Decision",
    "DeviceError",
    "Guard",
    "GuardResult",
    "GuardedChatModel",
    "GuardrailError",
    "OnnxProbe",
    "Policy",
    "PolicyError",
    "ProbeError",
    "ProbeMismatchError",
    "Request",
    "RequestError",
    "SteeringArtifact",
    "TestbedsNotInstalledError",
    "Timings",
    "TrainedProbe",
    "UnsupportedContentError",
    "UnsupportedMessageError",
    "UnsupportedModelError",
    "__version__",
    "calibrate",
    "configure_logging",
    "fit_probe",
    "load_audio",
    "load_model",
]

# Adapter-authoring names were exported here in 0.1; they live in guardrail.models now.
_MOVED_TO_MODELS = {"Adapter", "AdapterSpec", "get_adapter", "resolve_adapter", "supported_families"}


def __getattr__(name: str) -> Any:
    if name == "GuardedChatModel":  # langchain-core is imported only when it is used
        from guardrail.integrations.langchain import GuardedChatModel

        return GuardedChatModel
    if name in _MOVED_TO_MODELS:
        warnings.warn(
            f"guardrail.{name} moved to guardrail.models.{name}; import it from there", DeprecationWarning, stacklevel=2
        )
        import guardrail.models

        return getattr(guardrail.models, name)
    raise AttributeError(f"module 'guardrail' has no attribute {name!r}")
