"""The served deployment ids: one `Guard` per policy, all over the one loaded model, and the rule that
picks a request's deployment (`model`, or `extra_body.guardrail.policy` unless the id is locked)."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field

from guardrail.defaults import default_probe
from guardrail.errors import PolicyError
from guardrail.guard import Guard
from guardrail.policy import Policy
from guardrail.policy.audio_files import AudioFiles
from guardrail.serve.config import ServeConfig
from guardrail.serve.errors import ApiError
from guardrail.steering.artifact import SteeringArtifact

__all__ = ["Deployment", "Deployments", "load_deployments"]


@dataclass(frozen=True)
class Deployment:
    """A deployment id served under one guard; `locked`: requests to it cannot switch to another policy."""

    id: str
    guard: Guard
    locked: bool = False
    files: AudioFiles = field(default_factory=AudioFiles)

    @classmethod
    def of(cls, id: str, guard: Guard, locked: bool = False) -> Deployment:
        return cls(id, guard, locked, AudioFiles.from_policy(guard.policy))

    @property
    def policy(self) -> Policy:
        return self.guard.policy


class Deployments:
    """The deployment ids of one server, which all share one model (and so one worker)."""

    def __init__(self, deployments: Sequence[Deployment]):
        if not deployments:
            raise PolicyError("a server needs at least one deployment (a policy to serve)")
        ids = [d.id for d in deployments]
        if len(set(ids)) < len(ids):
            raise PolicyError(f"deployment ids repeat ({ids}); give each policy its own id")
        models = {id(d.guard.model) for d in deployments}
        if len(models) > 1:
            raise PolicyError("the deployments' guards wrap different models; one server serves one model")
        self.by_id = {d.id: d for d in deployments}

    @property
    def ids(self) -> list[str]:
        return list(self.by_id)

    @property
    def first(self) -> Deployment:
        return next(iter(self.by_id.values()))

    def pick(self, model: str, policy: str | None) -> Deployment:
        """The deployment `model` names, or the one `policy` (extra_body guardrail.policy) names when
        `model`'s deployment is not locked. Unknown ids are 404; switching away from a locked id is 403."""
        chosen = self._get(model, "model")
        if policy is None or policy == model:
            return chosen
        if chosen.locked:
            raise ApiError(
                403,
                f"deployment {model!r} is locked to its policy; guardrail.policy={policy!r} is not allowed: "
                "leave guardrail.policy unset, or name that deployment in `model`",
                code="policy_locked",
                param="guardrail.policy",
            )
        return self._get(policy, "guardrail.policy")

    def _get(self, name: str, param: str) -> Deployment:
        found = self.by_id.get(name)
        if found is None:
            raise ApiError(
                404,
                f"{param} {name!r} is not served here; served deployment ids: {', '.join(self.by_id)} (GET /v1/models)",
                code="model_not_found",
                param=param,
            )
        return found


def load_deployments(config: ServeConfig) -> Deployments:
    """Load the config's model once and build one guard per policy over it."""
    from guardrail.models.loading import load_model

    spec = config.model
    path = config.resolve(spec.path)
    assert path is not None
    model, processor, adapter = load_model(
        path, adapter=spec.adapter, dtype=spec.dtype, device=spec.device, device_map=spec.device_map
    )
    artifacts: dict[str, SteeringArtifact] = {}
    served = []
    for entry in config.policies:
        policy = Policy.of(config.resolve(entry.policy))
        artifact_dir = policy.model.artifact or config.resolve(spec.artifact)
        artifact = None
        if artifact_dir is not None:
            artifact = artifacts.setdefault(artifact_dir, SteeringArtifact.load(artifact_dir))
        probe = policy.model.probe or config.resolve(spec.probe) or default_probe(artifact_dir, policy.gate.mode)
        guard = Guard(model, processor, policy=policy, artifact=artifact, adapter=adapter, probe=probe)
        served.append(Deployment.of(entry.id or policy.name, guard, entry.locked))
    return Deployments(served)
