"""A `Guard` from a model directory or hub id and a policy, for `GuardedChatModel.from_pretrained`: what the
caller leaves out (model path, adapter, artifact, probe) comes from the policy's `model:` section."""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path
from typing import Any

from guardrail.defaults import default_probe
from guardrail.errors import RequestError
from guardrail.gate.decide import ScoringProbe
from guardrail.guard import Guard
from guardrail.policy import Policy, resolve_policy_ref
from guardrail.steering.artifact import SteeringArtifact

__all__ = ["load_guard"]


def load_guard(
    model_path: str | Path | None = None,
    policy: Policy | str | Path | Mapping[str, Any] | None = None,
    artifact: SteeringArtifact | str | Path | None = None,
    probe: ScoringProbe | str | Path | None = None,
    *,
    adapter: str | None = None,
    dtype: str | None = None,
    device: str | None = None,
    device_map: str | Mapping[str, int | str] | None = None,
) -> tuple[Guard, str]:
    """(the guard, the model path it loaded). `policy`: a `Policy`, a policy file or shipped policy name,
    or a dict (None: the paper's defaults); `probe` defaults to ARTIFACT/probe when the policy gates by probe.
    `dtype`, `device`, `device_map` left None come from the policy's `runtime:` section (as `Guard.from_policy`)."""
    from guardrail.models.loading import load_model

    if isinstance(policy, (str, Path)):
        policy = Policy.from_yaml(resolve_policy_ref(str(policy)))
    elif isinstance(policy, Mapping):
        policy = Policy.from_dict(dict(policy))
    policy = policy or Policy()
    section = policy.model  # the policy's model: section (path, adapter, artifact, probe)
    model_path = model_path or section.path
    if not model_path:
        raise RequestError("no model to load: pass model_path, or set model.path in the policy")
    adapter = adapter or section.adapter
    artifact = artifact if artifact is not None else section.artifact
    probe = probe if probe is not None else section.probe
    if probe is None and not isinstance(artifact, SteeringArtifact):  # a loaded artifact names no folder
        probe = default_probe(artifact, policy.gate.mode)
    if isinstance(artifact, (str, Path)):
        artifact = SteeringArtifact.load(artifact)
    placement = policy.runtime.placement(dtype=dtype, device=device, device_map=device_map)
    model, processor, chosen = load_model(str(model_path), adapter=adapter, **placement)
    guard = Guard(model, processor, policy=policy, artifact=artifact, adapter=chosen, probe=probe)
    return guard, str(model_path)
