"""The calibration artifact: SARSteer vectors and safe-space bases for one model.

On disk it is a directory with `vectors.safetensors` (tensors `refusal.<layer>` (hidden,) and
`basis.<layer>` (hidden, basis_rank) for every decoder layer, finite floats) and `metadata.json` (model
identity, method parameters, calibration-set hash, package version, and the id: a content hash of the
tensors and, from format 2, of every metadata field but the id, `created_at` and `package_version`).
Format 1 files (the tensors-only id, the two-tensor weight sample) still load; their weight check warns.
"""

from __future__ import annotations

import hashlib
import json
import warnings
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path

import torch
from pydantic import Field, model_validator
from safetensors.torch import load_file, save_file
from torch import nn

from guardrail.errors import ArtifactError, ArtifactMismatchError
from guardrail.models.identity import (
    ModelIdentity,
    StrictRecord,
    check_identity,
    read_versioned_record,
    require_parameter_samples,
)
from guardrail.steering.vectors import ablate
from guardrail.version import __version__

FORMAT_VERSION = 2
READS = (1, 2)  # format versions this package loads
VECTORS_FILE = "vectors.safetensors"
METADATA_FILE = "metadata.json"
MAX_METADATA_BYTES = 64 * 2**20
_FLOATS = (torch.float16, torch.bfloat16, torch.float32, torch.float64)
_UNHASHED = {"artifact_id", "created_at", "package_version"}  # provenance, not behaviour


class MethodParams(StrictRecord):
    name: str = "sarsteer"
    refusal_text: str
    instruction: str
    safe_rank: int = Field(ge=0)
    basis_rank: int = Field(ge=0)
    safe_strength: float = Field(allow_inf_nan=False)

    @model_validator(mode="after")
    def _rank_stored(self) -> MethodParams:
        if self.safe_rank > self.basis_rank:
            raise ValueError(f"safe_rank {self.safe_rank} exceeds the {self.basis_rank} stored safe directions")
        return self


class CalibrationSet(StrictRecord):
    n_harmful: int
    n_safe: int
    sha256: str


class ArtifactMetadata(StrictRecord):
    format_version: int = FORMAT_VERSION
    package_version: str
    created_at: str
    artifact_id: str
    model: ModelIdentity
    method: MethodParams
    calibration: CalibrationSet

    @model_validator(mode="after")
    def _complete(self) -> ArtifactMetadata:
        require_parameter_samples(self.model, self.format_version)
        layers = self.model.config.get("num_layers")
        if not isinstance(layers, int) or isinstance(layers, bool) or layers < 1:
            raise ValueError(f"model.config.num_layers must be a positive integer, not {str(layers)[:40]!r}")
        return self


@dataclass
class SteeringArtifact:
    """Per-layer refusal vectors v_l and safe bases U_l (hidden x basis_rank)."""

    refusal: dict[int, torch.Tensor]
    basis: dict[int, torch.Tensor]
    metadata: ArtifactMetadata

    def __post_init__(self) -> None:
        check_tensors(_flat(self.refusal, self.basis), self.metadata, "this artifact")

    @property
    def id(self) -> str:
        return self.metadata.artifact_id

    @property
    def num_layers(self) -> int:
        return int(self.metadata.model.config["num_layers"])

    def steering_vectors(self, rank: int | None = None, strength: float | None = None) -> dict[int, torch.Tensor]:
        """v'_l = v_l - strength * U_k U_k^T v_l for every layer (defaults: calibration's k, lambda)."""
        rank = self.metadata.method.safe_rank if rank is None else rank
        strength = self.metadata.method.safe_strength if strength is None else strength
        if rank > self.metadata.method.basis_rank:
            warnings.warn(
                f"safe_rank {rank} exceeds the {self.metadata.method.basis_rank} safe directions stored "
                f"in artifact {self.id}; using {self.metadata.method.basis_rank}. Calibrate with more "
                "safe queries (at least rank + 1) to ablate more.",
                stacklevel=2,
            )
            rank = self.metadata.method.basis_rank
        return {layer: ablate(v, self.basis[layer][:, :rank], strength) for layer, v in self.refusal.items()}

    def check_model(self, model: nn.Module, layers: nn.ModuleList) -> None:
        """Raise ArtifactMismatchError unless this artifact was made for `model`."""
        check_identity(
            self.metadata.model,
            model,
            layers,
            what=f"artifact {self.id}",
            made="calibrated",
            remedy="calibrate a new artifact on this model with guardrail.calibrate",
            error=ArtifactMismatchError,
        )

    # -- persistence -----------------------------------------------------------------
    def save(self, path: str | Path) -> Path:
        """Write the artifact directory (created if needed) and return its path."""
        path = Path(path)
        path.mkdir(parents=True, exist_ok=True)
        save_file(
            _flat(self.refusal, self.basis),
            str(path / VECTORS_FILE),
            metadata={"artifact_id": self.id, "format_version": str(self.metadata.format_version)},
        )
        (path / METADATA_FILE).write_text(self.metadata.model_dump_json(indent=2) + "\n", encoding="utf-8")
        return path

    @classmethod
    def load(cls, path: str | Path) -> SteeringArtifact:
        """Read an artifact directory written by `save`: validate the metadata and tensors, verify the id."""
        path = Path(path)
        if not (path / METADATA_FILE).is_file() or not (path / VECTORS_FILE).is_file():
            raise ArtifactError(
                f"{path} is not a steering artifact (expected {METADATA_FILE} and "
                f"{VECTORS_FILE}); create one with guardrail.calibrate(...).save(path)"
            )
        metadata = read_metadata(path / METADATA_FILE)
        try:
            tensors = load_file(str(path / VECTORS_FILE))
        except Exception as exc:  # safetensors raises its own error types
            raise ArtifactError(f"{path / VECTORS_FILE} cannot be read ({exc}); recalibrate") from exc
        check_tensors(tensors, metadata, str(path / VECTORS_FILE))
        refusal, basis = _unflat(tensors)
        if content_id(refusal, basis, metadata if metadata.format_version >= 2 else None) != metadata.artifact_id:
            raise ArtifactError(
                f"{path}: vectors or metadata do not match the id in {METADATA_FILE} (edited or "
                "corrupted); recalibrate or restore the original files"
            )
        return cls(refusal=refusal, basis=basis, metadata=metadata)


def read_metadata(file: Path) -> ArtifactMetadata:
    """Parse an artifact's `metadata.json`, raising ArtifactError that names the file and the fix."""
    return read_versioned_record(
        file,
        ArtifactMetadata,
        reads=READS,
        limit=MAX_METADATA_BYTES,
        error=ArtifactError,
        fix="recalibrate (guardrail.calibrate) or restore the original files",
        redo="recalibrate",
    )


def check_tensors(tensors: dict[str, torch.Tensor], metadata: ArtifactMetadata, where: str) -> None:
    """ArtifactError unless `tensors` are exactly `refusal.<l>` (hidden,) and `basis.<l>` (hidden, basis_rank)
    for every decoder layer l, in a float dtype, all finite."""
    layers = metadata.model.config["num_layers"]
    expected = {f"{kind}.{layer}" for kind in ("refusal", "basis") for layer in range(min(layers, len(tensors)))}
    if len(tensors) != 2 * layers or set(tensors) != expected:
        extra, missing = sorted(set(tensors) - expected), sorted(expected - set(tensors))
        raise ArtifactError(
            f"{where} holds tensors {extra[:4]} it should not and lacks {missing[:4]} (expected refusal.<l> and "
            f"basis.<l> for the {layers} decoder layers); recalibrate"
        )
    hidden = metadata.model.config.get("hidden_size") or tensors["refusal.0"].numel()
    rank = metadata.method.basis_rank
    for name, tensor in sorted(tensors.items()):
        shape = (hidden,) if name.startswith("refusal.") else (hidden, rank)
        if tensor.dtype not in _FLOATS:
            raise ArtifactError(f"{where}: {name} has dtype {tensor.dtype}, not a float dtype; recalibrate")
        if tuple(tensor.shape) != shape:
            raise ArtifactError(f"{where}: {name} has shape {tuple(tensor.shape)}, expected {shape}; recalibrate")
        if not bool(torch.isfinite(tensor).all()):
            raise ArtifactError(f"{where}: {name} is not finite (NaN or inf values); recalibrate")


def content_id(
    refusal: dict[int, torch.Tensor], basis: dict[int, torch.Tensor], metadata: ArtifactMetadata | None = None
) -> str:
    """Content hash (stable across save/load): of the tensors' float32 values (format 1, `metadata` None),
    or of their names, dtypes, shapes and values and of every metadata field but the provenance (format 2)."""
    digest = hashlib.sha256()
    if metadata is not None:
        fields = metadata.model_dump(mode="json", exclude=_UNHASHED)
        digest.update(json.dumps(fields, sort_keys=True, separators=(",", ":")).encode())
    for name, tensor in sorted(_flat(refusal, basis).items()):
        digest.update(name.encode())
        if metadata is not None:
            digest.update(f"{tensor.dtype}{tuple(tensor.shape)}".encode())
        digest.update(tensor.detach().float().contiguous().cpu().numpy().tobytes())
    return digest.hexdigest()[:16]


def new_metadata(
    identity: ModelIdentity,
    method: MethodParams,
    calibration: CalibrationSet,
    refusal: dict[int, torch.Tensor],
    basis: dict[int, torch.Tensor],
) -> ArtifactMetadata:
    metadata = ArtifactMetadata(
        package_version=__version__,
        created_at=datetime.now(timezone.utc).isoformat(timespec="seconds"),
        artifact_id="",
        model=identity,
        method=method,
        calibration=calibration,
    )
    return metadata.model_copy(update={"artifact_id": content_id(refusal, basis, metadata)})


def _flat(refusal: dict[int, torch.Tensor], basis: dict[int, torch.Tensor]) -> dict[str, torch.Tensor]:
    tensors = {f"refusal.{layer}": v.contiguous() for layer, v in refusal.items()}
    tensors.update({f"basis.{layer}": u.contiguous() for layer, u in basis.items()})
    return tensors


def _unflat(tensors: dict[str, torch.Tensor]) -> tuple[dict[int, torch.Tensor], dict[int, torch.Tensor]]:
    refusal: dict[int, torch.Tensor] = {}
    basis: dict[int, torch.Tensor] = {}
    for name, tensor in tensors.items():  # names already checked by check_tensors
        kind, _, layer = name.partition(".")
        (refusal if kind == "refusal" else basis)[int(layer)] = tensor
    return dict(sorted(refusal.items())), dict(sorted(basis.items()))
