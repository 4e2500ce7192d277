"""llama.cpp control vectors (GGUF) from and to steering artifacts; needs `pip install 'lalm-guardrail[gguf]'`.

A control vector file holds one float32 tensor `direction.<k>` (hidden,) per layer and the metadata
`general.architecture = "controlvector"`, `controlvector.model_hint` (the model's architecture) and
`controlvector.layer_count` (how many directions it holds), as llama.cpp's cvector-generator writes it.

What is exported: SARSteer's steering delta alpha * v'_l of each chosen layer (the vector the guard adds),
so `--control-vector FILE` (scale 1) adds exactly the guard's delta. Layer numbering is the same as ours:
llama.cpp adds `direction.<k>` to the output of block k (0-based), which is where the guard adds the delta
of decoder layer k. llama.cpp rejects `direction.0`, so layer 0's delta cannot go out (it is left out,
and said so in `guardrail.skipped_layers`).

The semantics differ: llama.cpp adds the vector at every position, the prompt included, and always;
SARSteer adds it at the last prompt token and at each generated token, and only when the gate says so.
The exported file steers every request, which is what `gate.mode: always` would do, and more strongly
(on every prompt position too).

Import reads any control vector file (ours or another tool's) and, bound to a model, turns it into a
`SteeringArtifact` whose refusal vectors are the file's directions and whose safe basis is empty: steered with
alpha 1 and `safe_rank: 0`, the guard adds the file's vectors at SARSteer's positions.
"""

from __future__ import annotations

import hashlib
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from guardrail.errors import ArtifactError
from guardrail.models.identity import identify
from guardrail.steering.artifact import CalibrationSet, MethodParams, SteeringArtifact, new_metadata

ARCH = "controlvector"
INSTALL_HINT = "pip install 'lalm-guardrail[gguf]'"
METHOD_NAME = "gguf_control_vector"
_DIRECTION = re.compile(r"direction\.(\d+)")


@dataclass
class ControlVector:
    """The directions of a control vector file, by layer (block k's output), and its metadata."""

    directions: dict[int, torch.Tensor]
    model_hint: str | None = None
    layer_count: int | None = None
    metadata: dict[str, Any] = field(default_factory=dict)


def _gguf() -> Any:
    try:
        import gguf
    except ImportError as exc:
        raise ArtifactError(f"reading or writing GGUF control vectors needs the gguf package: {INSTALL_HINT}") from exc
    return gguf


def steering_deltas(
    artifact: SteeringArtifact,
    alpha: float,
    layers: list[int] | None = None,
    safe_rank: int | None = None,
    safe_strength: float | None = None,
) -> dict[int, torch.Tensor]:
    """alpha * v'_l for `layers` (None: all), as the guard computes them for a policy with these values."""
    if not np.isfinite(alpha) or alpha < 0:
        raise ArtifactError(f"alpha must be a finite number >= 0, got {alpha}")
    vectors = artifact.steering_vectors(safe_rank, safe_strength)
    chosen = sorted(vectors) if layers is None else sorted(set(layers))
    outside = [layer for layer in chosen if layer not in vectors]
    if outside:
        raise ArtifactError(
            f"layers {outside} are not in artifact {artifact.id} (decoder layers 0..{artifact.num_layers - 1})"
        )
    return {layer: (alpha * vectors[layer]).float() for layer in chosen}


def export_control_vector(
    artifact: SteeringArtifact,
    path: str | Path,
    alpha: float,
    layers: list[int] | None = None,
    safe_rank: int | None = None,
    safe_strength: float | None = None,
) -> ControlVector:
    """Write `artifact`'s steering deltas alpha * v'_l as a llama.cpp control vector at `path`; return what
    was written (layer 0 is never written: llama.cpp cannot hold it)."""
    _gguf()  # missing package: say so before any work
    deltas = steering_deltas(artifact, alpha, layers, safe_rank, safe_strength)
    skipped = [layer for layer in deltas if layer == 0]
    directions = {layer: delta for layer, delta in deltas.items() if layer != 0}
    if not directions:
        raise ArtifactError("no layer to export: llama.cpp control vectors cannot hold layer 0; choose later layers")
    method = artifact.metadata.method
    hint = str(artifact.metadata.model.config.get("text_model_type") or artifact.metadata.model.config["model_type"])
    extra = {
        "guardrail.artifact_id": artifact.id,
        "guardrail.alpha": float(alpha),
        "guardrail.safe_rank": method.safe_rank if safe_rank is None else safe_rank,
        "guardrail.safe_strength": float(method.safe_strength if safe_strength is None else safe_strength),
        "guardrail.skipped_layers": ",".join(map(str, skipped)),
    }
    vector = ControlVector(directions, hint, len(directions), extra)
    write_control_vector(vector, path)
    return vector


def write_control_vector(vector: ControlVector, path: str | Path) -> Path:
    """Write `vector` as a GGUF control vector (float32 directions, llama.cpp's metadata keys)."""
    gguf = _gguf()
    if any(layer < 1 for layer in vector.directions):
        raise ArtifactError("control vector layers start at 1 (llama.cpp rejects direction.0)")
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    writer = gguf.GGUFWriter(str(path), ARCH)
    writer.add_string(f"{ARCH}.model_hint", vector.model_hint or "unknown")
    writer.add_int32(f"{ARCH}.layer_count", len(vector.directions))
    for key, value in vector.metadata.items():
        if isinstance(value, float):
            writer.add_float32(key, value)
        elif isinstance(value, int):
            writer.add_int32(key, value)
        else:
            writer.add_string(key, str(value))
    for layer, direction in sorted(vector.directions.items()):
        writer.add_tensor(f"direction.{layer}", direction.detach().float().cpu().numpy().astype(np.float32))
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file()
    writer.close()
    return path


def read_control_vector(path: str | Path) -> ControlVector:
    """The directions and metadata of a GGUF control vector file (ArtifactError if it is not one)."""
    gguf = _gguf()
    path = Path(path)
    if not path.is_file():
        raise ArtifactError(f"{path} does not exist; give a .gguf control vector file")
    try:
        reader = gguf.GGUFReader(str(path))
    except Exception as exc:  # gguf raises ValueError, struct.error, ... on a file that is not GGUF
        raise ArtifactError(f"{path} is not a GGUF file ({exc}); give a llama.cpp control vector") from exc
    directions: dict[int, torch.Tensor] = {}
    for tensor in reader.tensors:
        match = _DIRECTION.fullmatch(tensor.name)
        if match is None or int(match.group(1)) == 0:
            raise ArtifactError(
                f"{path}: tensor {tensor.name!r} is not direction.<k> with k >= 1; not a control vector"
            )
        layer = int(match.group(1))
        values = torch.from_numpy(np.array(tensor.data, dtype=np.float32).reshape(-1))
        directions[layer] = values
    if not directions:
        raise ArtifactError(f"{path} holds no direction tensors; not a control vector")
    if len({v.numel() for v in directions.values()}) != 1:
        raise ArtifactError(f"{path}: direction tensors differ in length; the file is corrupt")
    fields = {name: _field_value(reader, name) for name in reader.fields}
    count = fields.get(f"{ARCH}.layer_count")
    hint = fields.get(f"{ARCH}.model_hint")
    return ControlVector(
        dict(sorted(directions.items())),
        hint if isinstance(hint, str) else None,
        int(count) if isinstance(count, (int, float)) else None,
        {k: v for k, v in fields.items() if k.startswith("guardrail.")},
    )


def _field_value(reader: Any, name: str) -> Any:
    value = reader.get_field(name)
    try:
        return value.contents()
    except Exception:  # a field type this gguf version cannot read back: skip it
        return None


def artifact_from_control_vector(
    vector: ControlVector, model: nn.Module, layers: nn.ModuleList, adapter: str, source: str = ""
) -> SteeringArtifact:
    """A `SteeringArtifact` for `model` whose refusal vectors are `vector`'s directions (zero at layers the file
    lacks, layer 0 always) and whose safe basis is empty: alpha 1 adds the file's vectors."""
    hidden = next(iter(vector.directions.values())).numel()
    outside = [layer for layer in vector.directions if layer >= len(layers)]
    if outside:
        raise ArtifactError(
            f"the control vector has layers {outside}; the model has {len(layers)} decoder layers: "
            "import it for the model it was made for"
        )
    identity = identify(model, layers, adapter)
    expected = identity.config.get("hidden_size")
    if expected is not None and expected != hidden:
        raise ArtifactError(
            f"the control vector's directions have {hidden} values; the model's hidden size is {expected}: "
            "import it for the model it was made for"
        )
    refusal = {i: vector.directions.get(i, torch.zeros(hidden)).float().clone() for i in range(len(layers))}
    basis = {i: torch.zeros(hidden, 0) for i in range(len(layers))}
    params = MethodParams(
        name=METHOD_NAME, refusal_text="", instruction=source, safe_rank=0, basis_rank=0, safe_strength=0.0
    )
    digest = hashlib.sha256(b"".join(v.numpy().tobytes() for v in refusal.values())).hexdigest()
    calibration = CalibrationSet(n_harmful=0, n_safe=0, sha256=digest)
    return SteeringArtifact(refusal, basis, new_metadata(identity, params, calibration, refusal, basis))
