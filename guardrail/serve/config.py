"""The deployment file of `guardrail serve`: which model to load, the policies served over it (each a
deployment id clients name in `model`), API keys, limits and where to listen.

    model: {path: ./my-model, adapter: qwen2_audio, dtype: bfloat16, device: cuda, artifact: ./artifact}
    policies:
      - {id: gated, policy: gated}                    # a shipped policy by name
      - {id: kids, policy: ./kids.yaml, locked: true} # a file, relative to this one
    api_keys: {env: GUARDRAIL_API_KEYS}               # or {file: /etc/guardrail/keys}
    limits: {max_batch: 8, max_wait_ms: 5, queue_size: 64, request_timeout_s: 120, max_body_bytes: 33554432}
    host: 127.0.0.1
    port: 8000
    ray: {num_replicas: 2, ray_actor_options: {num_gpus: 1}}  # only for `guardrail serve --ray` (Ray Serve)

A single policy file with a `model:` section is a deployment file too (`guardrail serve --policy FILE`):
its model and runtime sections say what loads, and the policy is the one deployment id.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, model_validator

from guardrail.errors import PolicyError
from guardrail.models.placement import DeviceMap
from guardrail.policy import Policy

__all__ = [
    "ApiKeys",
    "DeploymentEntry",
    "ModelSection",
    "RayActorOptions",
    "RaySection",
    "ServeConfig",
    "ServeLimits",
    "load_config",
]


class Strict(BaseModel):
    model_config = ConfigDict(extra="forbid")


class ModelSection(Strict):
    """The one model every policy of the deployment shares, and the default artifact and probe."""

    path: str = Field(description="model directory or hub id (already downloaded: nothing is fetched at run time)")
    adapter: str | None = Field(default=None, description="model family adapter; null = chosen from the config")
    dtype: str = Field(default="auto", description="auto, float32, bfloat16 or float16")
    device: str | None = Field(default=None, description="cuda, cuda:1, cpu, mps or auto; exclusive with device_map")
    device_map: DeviceMap | None = Field(default=None, description="accelerate placement; exclusive with device")
    artifact: str | None = Field(default=None, description="steering artifact directory, for every policy")
    probe: str | None = Field(default=None, description="gate probe directory; null = ARTIFACT/probe if needed")


class DeploymentEntry(Strict):
    """One policy served as a deployment id."""

    policy: str = Field(description="a shipped policy name or a policy file (relative to the deployment file)")
    id: str | None = Field(default=None, description="the id clients name in `model`; null = the policy's name")
    locked: bool = Field(
        default=False,
        description="true: a request to this id always runs under its policy (extra_body guardrail.policy "
        "naming another is refused with 403); false: a request may switch to any other served id",
    )


class ApiKeys(Strict):
    """Where the bearer keys are read (at start): an environment variable (comma-separated keys) and/or a file
    (one key a line). No keys configured: the API is open."""

    env: str | None = None
    file: str | None = None


class ServeLimits(Strict):
    max_body_bytes: int = Field(default=32 * 1024 * 1024, ge=1024, description="largest request body (413 above)")
    max_batch: int = Field(default=8, ge=1, le=4096, description="most requests coalesced into one generate_batch")
    max_wait_ms: float = Field(default=5.0, ge=0, le=10_000, description="how long a batch waits for company")
    queue_size: int = Field(default=64, ge=1, description="requests waiting for the worker (429 above)")
    request_timeout_s: float = Field(default=300.0, gt=0, description="a request's whole life, queue included")


class RayActorOptions(Strict):
    """What each replica reserves on its Ray node (Ray's `ray_actor_options`)."""

    num_cpus: float | None = Field(default=None, ge=0, description="CPUs per replica (Ray's default: 1)")
    num_gpus: float | None = Field(default=None, ge=0, description="GPUs per replica; a fraction shares one GPU")
    resources: dict[str, float] | None = Field(default=None, description="custom Ray resources per replica")
    memory: int | None = Field(default=None, ge=0, description="bytes of memory reserved per replica")


class RaySection(Strict):
    """Scale-out on Ray Serve (`guardrail serve --ray`): each replica is a whole server (model, policies, worker).
    `num_replicas` (a count, or "auto": autoscaling with Ray's defaults) or `autoscaling_config` (passed to
    Ray: min_replicas, max_replicas, target_ongoing_requests, ...); neither: one replica."""

    num_replicas: int | Literal["auto"] | None = Field(default=None, description="replicas, or auto")
    autoscaling_config: dict[str, Any] | None = Field(default=None, description="Ray Serve autoscaling_config")
    ray_actor_options: RayActorOptions = Field(default_factory=RayActorOptions)
    max_ongoing_requests: int | None = Field(
        default=None,
        ge=1,
        description="requests a replica holds at once; null = 2 x limits.max_batch, at most queue_size",
    )
    health_check_period_s: float | None = Field(default=None, gt=0, description="Ray's replica health check period")
    health_check_timeout_s: float | None = Field(default=None, gt=0, description="a slower health check fails")
    graceful_shutdown_timeout_s: float | None = Field(
        default=None, ge=0, description="how long a stopping replica may drain its requests (Ray's default: 20)"
    )
    address: str | None = Field(
        default=None, description="Ray cluster: null = this machine's (ray start) or a new one; auto, local, ray://..."
    )
    route_prefix: str = Field(default="/", pattern="^/", description="HTTP path the app is served under")

    @model_validator(mode="after")
    def _replicas(self) -> RaySection:
        if isinstance(self.num_replicas, int) and self.autoscaling_config is not None:
            raise ValueError(
                "num_replicas and autoscaling_config are exclusive: set a fixed count, or autoscaling_config "
                "(with num_replicas absent or auto)"
            )
        if isinstance(self.num_replicas, int) and self.num_replicas < 1:
            raise ValueError("num_replicas must be at least 1 (or auto)")
        return self


class ServeConfig(Strict):
    model: ModelSection
    policies: list[DeploymentEntry] = Field(min_length=1)
    api_keys: ApiKeys = Field(default_factory=ApiKeys)
    limits: ServeLimits = Field(default_factory=ServeLimits)
    host: str = "127.0.0.1"
    port: int = Field(default=8000, ge=0, le=65535)
    ray: RaySection = Field(default_factory=RaySection)
    base_dir: str = Field(default=".", description="where relative paths resolve (set when loading a file)")

    @model_validator(mode="after")
    def _placement(self) -> ServeConfig:
        if self.model.device is not None and self.model.device_map is not None:
            raise ValueError("model.device and model.device_map are exclusive: set one of them")
        return self

    def resolve(self, path: str | None) -> str | None:
        """`path` against the deployment file's folder when it is relative and exists there (else as given:
        a hub id, a shipped policy name)."""
        if path is None or Path(path).is_absolute():
            return path
        candidate = Path(self.base_dir) / path
        return str(candidate) if candidate.exists() else path


def load_config(path: str | Path, **overrides: Any) -> ServeConfig:
    """A deployment file, or a policy file with a `model:` section; `overrides` (host, port, device, dtype)
    replace the file's values where not None."""
    file = Path(path)
    try:
        data = yaml.safe_load(file.read_text(encoding="utf-8"))
    except (OSError, yaml.YAMLError) as exc:
        raise PolicyError(f"cannot read the deployment file {str(file)!r} ({exc}); check the path and YAML") from None
    if not isinstance(data, dict):
        raise PolicyError(f"{str(file)!r} is not a mapping; see docs/serving.md for the deployment file")
    if "policies" not in data:
        return config_from_policy(file, **overrides)
    return _validated({**data, "base_dir": str(file.resolve().parent)}, str(file), overrides)


def config_from_policy(path: str | Path, **overrides: Any) -> ServeConfig:
    """A deployment of one policy file whose `model:` section names the model (`model.path`)."""
    policy = Policy.from_yaml(path)
    if policy.model.path is None:
        raise PolicyError(
            f"policy {policy.name!r} ({path}) has no model.path: name the model to serve there, or write a "
            "deployment file (docs/serving.md)"
        )
    runtime = policy.runtime
    model = {
        "path": policy.model.path,
        "adapter": policy.model.adapter,
        "dtype": runtime.dtype,
        "device": runtime.device,
        "device_map": runtime.device_map,
        "artifact": policy.model.artifact,
        "probe": policy.model.probe,
    }
    data = {"model": model, "policies": [{"policy": str(Path(path).resolve())}], "base_dir": str(Path.cwd())}
    return _validated(data, str(path), overrides)


def _validated(data: dict[str, Any], source: str, overrides: dict[str, Any]) -> ServeConfig:
    for key in ("host", "port"):
        if overrides.get(key) is not None:
            data[key] = overrides[key]
    model = dict(data.get("model") or {}) if isinstance(data.get("model"), dict) else data.get("model")
    if isinstance(model, dict):
        if overrides.get("device") is not None:
            model.update(device=overrides["device"], device_map=None)
        if overrides.get("dtype") is not None:
            model["dtype"] = overrides["dtype"]
        data["model"] = model
    try:
        return ServeConfig.model_validate(data)
    except ValidationError as exc:
        problems = "; ".join(f"{'.'.join(map(str, e['loc'])) or '(top)'}: {e['msg']}" for e in exc.errors())
        raise PolicyError(f"invalid deployment file {source!r}: {problems} (see docs/serving.md)") from None
