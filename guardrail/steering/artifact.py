"""The calibration artifact: SARSteer vectors and safe-space bases for one model.

On disk it is a directory with `vectors.safetensors` (tensors `refusal.<layer>` and
`basis.<layer>`) and `metadata.json` (model identity, method parameters, calibration-set
hash, package version, content hash of the tensors).
"""

from __future__ import annotations

import hashlib
import warnings
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path

import torch
from pydantic import ValidationError
from safetensors.torch import load_file, save_file
from torch import nn

from guardrail.errors import ArtifactError, ArtifactMismatchError
from guardrail.models.identity import ModelIdentity, StrictRecord, check_identity
from guardrail.steering.vectors import ablate
from guardrail.version import __version__

FORMAT_VERSION = 1
VECTORS_FILE = "vectors.safetensors"
METADATA_FILE = "metadata.json"


class MethodParams(StrictRecord):
    name: str = "sarsteer"
    refusal_text: str
    instruction: str
    safe_rank: int
    basis_rank: int
    safe_strength: float


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


@dataclass
class SteeringArtifact:
    """Per-layer refusal vectors v_l and safe bases U_l (hidden x basis_rank)."""

    refusal: dict[int, torch.Tensor]
    basis: dict[int, torch.Tensor]
    metadata: ArtifactMetadata

    @property
    def id(self) -> str:
        return self.metadata.artifact_id

    @property
    def num_layers(self) -> int:
        return self.metadata.model.config["num_layers"]

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
            metadata={"artifact_id": self.id, "format_version": str(FORMAT_VERSION)},
        )
        (path / METADATA_FILE).write_text(self.metadata.model_dump_json(indent=2) + "\n", encoding="utf-8")
        return path

    @classmethod
    def load(cls, path: str | Path) -> SteeringArtifact:
        """Read an artifact directory written by `save`, verifying its content hash."""
        path = Path(path)
        if not (path / METADATA_FILE).is_file() or not (path / VECTORS_FILE).is_file():
            raise ArtifactError(
                f"{path} is not a steering artifact (expected {METADATA_FILE} and "
                f"{VECTORS_FILE}); create one with guardrail.calibrate(...).save(path)"
            )
        try:
            metadata = ArtifactMetadata.model_validate_json((path / METADATA_FILE).read_text(encoding="utf-8"))
        except ValidationError as exc:
            raise ArtifactError(
                f"{path / METADATA_FILE} is malformed: {exc.errors()[0]['msg']} at "
                f"{'.'.join(map(str, exc.errors()[0]['loc']))}; recalibrate"
            ) from None
        if metadata.format_version != FORMAT_VERSION:
            raise ArtifactError(
                f"{path} has format version {metadata.format_version}; this package reads "
                f"{FORMAT_VERSION}: recalibrate with this version"
            )
        try:
            tensors = load_file(str(path / VECTORS_FILE))
        except Exception as exc:  # safetensors raises its own error types
            raise ArtifactError(f"{path / VECTORS_FILE} cannot be read ({exc}); recalibrate") from exc
        refusal, basis = _unflat(tensors)
        if content_id(refusal, basis) != metadata.artifact_id:
            raise ArtifactError(
                f"{path}: vectors do not match the id in {METADATA_FILE} (edited or "
                "corrupted); recalibrate or restore the original files"
            )
        return cls(refusal=refusal, basis=basis, metadata=metadata)


def content_id(refusal: dict[int, torch.Tensor], basis: dict[int, torch.Tensor]) -> str:
    """Content hash of the tensors (stable across save/load)."""
    digest = hashlib.sha256()
    for name, tensor in sorted(_flat(refusal, basis).items()):
        digest.update(name.encode())
        digest.update(tensor.detach().float().contiguous().cpu().numpy().tobytes())
    return digest.hexdigest()[:16]


def new_metadata(
    identity: ModelIdentity,
    method: MethodParams,
    calibration: CalibrationSet,
    refusal: dict[int, torch.Tensor],
    basis: dict[int, torch.Tensor],
) -> ArtifactMetadata:
    return ArtifactMetadata(
        package_version=__version__,
        created_at=datetime.now(timezone.utc).isoformat(timespec="seconds"),
        artifact_id=content_id(refusal, basis),
        model=identity,
        method=method,
        calibration=calibration,
    )


def _flat(refusal: dict[int, torch.Tensor], basis: dict[int, torch.Tensor]) -> dict[str, torch.Tensor]:
    tensors = {f"refusal.{layer}": v.contiguous() for layer, v in refusal.items()}
    tensors.update({f"basis.{layer}": u.contiguous() for layer, u in basis.items()})
    return tensors


def _unflat(tensors: dict[str, torch.Tensor]) -> tuple[dict[int, torch.Tensor], dict[int, torch.Tensor]]:
    refusal: dict[int, torch.Tensor] = {}
    basis: dict[int, torch.Tensor] = {}
    for name, tensor in tensors.items():
        kind, _, layer = name.partition(".")
        {"refusal": refusal, "basis": basis}[kind][int(layer)] = tensor
    if set(refusal) != set(basis):
        raise ArtifactError("artifact has refusal vectors and safe bases for different layers; recalibrate")
    return dict(sorted(refusal.items())), dict(sorted(basis.items()))
