"""Identify a model so an artifact or probe made for one model is never applied to another.

Two checks, made by `check_identity` for both the steering artifact and the gate probe: a hash of the
architecture fields of the config (catches a different family or size), and 16 values at fixed, evenly
spread positions of every parameter (catches another checkpoint, a fine-tune, or a copy with some
layers edited). The values are compared within the rounding of the precision each side's values hold
(bf16, fp16 or fp32, read from the values themselves), so the same weights in fp32, bf16 or fp16 pass
and a change beyond that rounding does not.

Records written by format 1 hold `weight_sample` instead (16 values of the input embeddings and of one
tensor of the last decoder layer); they are still checked with those, with a warning that the check is
weaker. `read_record` reads the small files these records live in (regular files only, size-capped,
strict UTF-8).
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import json
import os
import stat
import warnings
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TypeVar

import numpy as np
import torch
from pydantic import BaseModel, ConfigDict, ValidationError, field_validator
from torch import nn

from guardrail.errors import ArtifactError, ArtifactMismatchError

_CONFIG_FIELDS = (
    "hidden_size",
    "num_hidden_layers",
    "num_attention_heads",
    "num_key_value_heads",
    "intermediate_size",
    "vocab_size",
)
_SAMPLES = 16
_SAMPLE_BYTES = 4 * _SAMPLES  # float32, little-endian
_ATOL = 2.0**-24  # fp16 subnormals sit on a 2**-24 grid
_CORE = ("decoder[", "embeddings[")  # keys of the decoder layers and input embeddings: stable across versions


def config_summary(model: nn.Module, layers: nn.ModuleList) -> dict[str, Any]:
    """The architecture facts an artifact depends on."""
    config = model.config
    # torch types module attributes as Tensor | Module; config is a transformers PretrainedConfig
    text = config.get_text_config() if hasattr(config, "get_text_config") else config  # type: ignore[operator]
    summary: dict[str, Any] = {
        "model_type": getattr(config, "model_type", None),
        "text_model_type": getattr(text, "model_type", None),
        "num_layers": len(layers),
    }
    for name in _CONFIG_FIELDS:
        summary[name] = getattr(text, name, None)
    return summary


def config_fingerprint(summary: dict[str, Any]) -> str:
    blob = json.dumps(summary, sort_keys=True).encode()
    return hashlib.sha256(blob).hexdigest()[:16]


def weight_sample(model: nn.Module, layers: nn.ModuleList) -> list[float]:
    """Format 1's sample: values at fixed positions of the input embeddings and of the last decoder layer."""
    embeddings = model.get_input_embeddings()  # type: ignore[operator]  # transformers' method, untyped on Module
    tensors = [embeddings.weight, next(layers[-1].parameters())]
    values: list[float] = []
    for tensor in tensors:
        if not tensor.is_floating_point() or tensor.device.type == "meta":
            return []
        flat = tensor.detach().reshape(-1)
        values.extend(flat[sample_positions(flat.numel()).to(flat.device)].float().cpu().tolist())
    return values


def sample_positions(numel: int) -> torch.Tensor:
    """Evenly spread positions, first and last included. Integer arithmetic: a float32
    linspace rounds past the end of tensors over 2**24 elements."""
    return torch.arange(_SAMPLES, dtype=torch.int64) * (numel - 1) // (_SAMPLES - 1)


def same_weights(expected: list[float], actual: list[float]) -> bool:
    """Format 1's rule: the samples agree within bf16/fp16 rounding (or either is unavailable)."""
    if not expected or not actual:
        return True
    a, b = torch.tensor(expected), torch.tensor(actual)
    return a.shape == b.shape and bool(torch.allclose(a, b, rtol=1e-2, atol=1e-4))


# -- every parameter ------------------------------------------------------------------------
def keyed_parameters(model: nn.Module, layers: nn.ModuleList) -> dict[str, torch.Tensor]:
    """Every parameter of `model` (tied ones once) under a key: `decoder[i].<name>` inside decoder layer i,
    `embeddings[input].<name>` in the input embeddings (names that do not depend on how a family nests
    its language model), the full name elsewhere."""
    keys: dict[int, str] = {}
    for i, layer in enumerate(layers):
        for name, param in layer.named_parameters():
            keys.setdefault(id(param), f"decoder[{i}].{name}")
    try:
        embeddings = model.get_input_embeddings()  # type: ignore[operator]  # transformers' method
    except (AttributeError, NotImplementedError):
        embeddings = None
    if isinstance(embeddings, nn.Module):
        for name, param in embeddings.named_parameters():
            keys.setdefault(id(param), f"embeddings[input].{name}")
    return {keys.get(id(param), name): param for name, param in model.named_parameters()}


def sample_parameters(model: nn.Module, layers: nn.ModuleList) -> dict[str, torch.Tensor | None]:
    """Per parameter key, its float32 values at `sample_positions` (CPU), or None when it cannot be read
    as floats (quantized integers, meta/offloaded). Indexes in place, one host copy per device."""
    found: dict[str, torch.Tensor | None] = {}
    per_device: dict[torch.device, list[tuple[str, torch.Tensor]]] = {}
    for key, param in keyed_parameters(model, layers).items():
        found[key] = None
        if not param.is_floating_point() or param.device.type == "meta" or param.numel() == 0:
            continue
        tensor = param.detach().reshape(1) if param.ndim == 0 else param.detach()
        positions = sample_positions(tensor.numel()).to(tensor.device)
        try:
            values = tensor[torch.unravel_index(positions, tensor.shape)].float()
        except (RuntimeError, NotImplementedError, TypeError):  # a tensor subclass that cannot be indexed
            continue
        per_device.setdefault(tensor.device, []).append((key, values))
    for items in per_device.values():
        host = torch.cat([values for _, values in items]).cpu()
        for i, (key, _) in enumerate(items):
            found[key] = host[i * _SAMPLES : (i + 1) * _SAMPLES]
    return found


def encode_samples(values: torch.Tensor) -> str:
    return base64.b64encode(values.numpy().astype("<f4").tobytes()).decode("ascii")


def decode_samples(text: str) -> torch.Tensor:
    """The float32 values of `encode_samples`; ValueError unless `text` is base64 of exactly 16 of them."""
    try:
        blob = base64.b64decode(text.encode("ascii"), validate=True)
    except (binascii.Error, UnicodeEncodeError):
        raise ValueError("a parameter sample is not base64") from None
    if len(blob) != _SAMPLE_BYTES:
        raise ValueError(f"a parameter sample holds {len(blob)} bytes, not {_SAMPLE_BYTES} ({_SAMPLES} float32)")
    return torch.from_numpy(np.frombuffer(blob, dtype="<f4").astype(np.float32))


def unit_roundoff(values: torch.Tensor) -> float:
    """Half the machine epsilon of the coarsest format (bf16, fp16, else fp32) holding every value exactly:
    the rounding these values may carry. Read from the values, so a bf16 copy cast back to fp32 counts as bf16."""
    for dtype in (torch.bfloat16, torch.float16):
        if torch.equal(values.to(dtype).float(), values):
            return torch.finfo(dtype).eps / 2
    return torch.finfo(torch.float32).eps / 2


def samples_agree(expected: torch.Tensor, actual: torch.Tensor) -> bool:
    """True when two float32 samples of one parameter are the same weights up to the rounding each side
    may carry: |a - b| <= 2 (u_a + u_b) max(|a|, |b|) + 2**-24 (twice the bound of one rounding per side,
    so a cast through fp16 then bf16 passes too). A change of 1.6% or more on any value never passes."""
    if expected.shape != actual.shape:
        return False
    a, b = expected.double(), actual.double()
    rtol = 2 * (unit_roundoff(expected) + unit_roundoff(actual))
    return bool(((a - b).abs() <= rtol * torch.maximum(a.abs(), b.abs()) + _ATOL).all())


@dataclass
class WeightComparison:
    """How a model's parameters compare with a record of `sample_parameters`."""

    differing: list[str] = field(default_factory=list)  # sampled values differ beyond rounding
    missing: list[str] = field(default_factory=list)  # decoder/embedding parameters in only one of the two
    unmatched: int = 0  # other parameters in only one of the two (another transformers version's names?)
    compared: int = 0

    def problem(self) -> str | None:
        if self.missing:
            return f"parameters {', '.join(self.missing[:4])} are in only one of the record and this model"
        if self.differing:
            return (
                f"{len(self.differing)} of {self.compared} sampled parameters differ beyond dtype rounding, "
                f"e.g. {', '.join(self.differing[:3])}"
            )
        return None


def compare_parameters(recorded: dict[str, str], current: dict[str, torch.Tensor | None]) -> WeightComparison:
    result = WeightComparison()
    for key in sorted(set(recorded) ^ set(current)):
        if key.startswith(_CORE):
            result.missing.append(key)
        else:
            result.unmatched += 1
    for key, text in recorded.items():
        values = current.get(key)
        if values is not None:
            result.compared += 1
            if not samples_agree(decode_samples(text), values):
                result.differing.append(key)
    return result


# -- the record -------------------------------------------------------------------------------
class StrictRecord(BaseModel):
    """Base of the metadata records written beside artifacts and probes: unknown fields are errors."""

    model_config = ConfigDict(extra="forbid")


class ModelIdentity(StrictRecord):
    """The identity recorded in an artifact's or probe's metadata (`model` field; layout fixed on disk).

    `parameter_samples` (format 2): parameter key -> base64 of 16 float32 values; `weight_sample`
    (format 1): 32 values of two tensors. A record holds one of the two."""

    fingerprint: str
    config: dict[str, Any]
    weight_sample: list[float] | None = None
    parameter_samples: dict[str, str] | None = None
    dtype: str
    adapter: str

    @field_validator("parameter_samples")
    @classmethod
    def _samples_decode(cls, value: dict[str, str] | None) -> dict[str, str] | None:
        for key, text in (value or {}).items():
            try:
                decode_samples(text)
            except ValueError as exc:
                raise ValueError(f"{exc} (parameter {key[:80]!r})") from None
        return value


def require_parameter_samples(identity: ModelIdentity, format_version: int) -> None:
    """Format 2 records a sample of every parameter: a file without one was edited (ValueError)."""
    if format_version >= 2 and not identity.parameter_samples:
        raise ValueError(
            "model.parameter_samples is missing or empty; format 2 records a sample of every parameter "
            "(the file was edited or truncated)"
        )


def identify(model: nn.Module, layers: nn.ModuleList, adapter: str) -> ModelIdentity:
    """`model`'s identity; `layers` are its decoder layers, `adapter` the family's name."""
    summary = config_summary(model, layers)
    dtype = str(next(layers[0].parameters()).dtype).removeprefix("torch.")
    samples = sample_parameters(model, layers)
    return ModelIdentity(
        fingerprint=config_fingerprint(summary),
        config=summary,
        parameter_samples={key: encode_samples(values) for key, values in samples.items() if values is not None},
        dtype=dtype,
        adapter=adapter,
    )


def check_identity(
    expected: ModelIdentity,
    model: nn.Module,
    layers: nn.ModuleList,
    *,
    what: str,
    made: str,
    remedy: str,
    error: type[ArtifactMismatchError],
) -> None:
    """Raise `error` unless `model` is the model `expected` describes.

    `what` names the thing checked ("artifact 1a2b...", "probe dir/"), `made` how it was made
    ("calibrated", "trained"), `remedy` what to do instead; the message lists every differing
    config field, or says the weights differ (same architecture, another checkpoint).
    """
    summary = config_summary(model, layers)
    if config_fingerprint(summary) != expected.fingerprint:
        detail = ", ".join(
            f"{key} {expected.config.get(key)!r} vs {value!r} in this model"
            for key, value in summary.items()
            if expected.config.get(key) != value
        )
        raise error(f"{what} was {made} for another model ({detail}); {remedy}")
    weaker: str | None = None  # why the weight check is weaker than usual, when it is
    if expected.parameter_samples is None:  # format 1: 32 values of two tensors
        same = same_weights(expected.weight_sample or [], weight_sample(model, layers))
        problem = None if same else "another checkpoint or fine-tune"
        weaker = (
            f"{what} was written by an earlier version (format 1): its weight record samples "
            f"{len(expected.weight_sample or [])} values of 2 tensors, so the weight check is weaker (a partly "
            f"edited or fine-tuned copy can pass); {remedy} to record a sample of every parameter"
        )
    else:
        comparison = compare_parameters(expected.parameter_samples, sample_parameters(model, layers))
        problem = comparison.problem()
        if comparison.unmatched or not comparison.compared:
            weaker = (
                f"{what}: {comparison.compared} of {len(expected.parameter_samples)} recorded parameters were "
                f"compared ({comparison.unmatched} outside the decoder are named differently in this model or "
                "the record; the rest are offloaded or quantized): the weight check is weaker"
            )
    if problem is not None:
        raise error(f"{what} matches this architecture but was {made} on different weights ({problem}); {remedy}")
    if weaker is not None:
        warnings.warn(weaker, stacklevel=3)


# -- the files --------------------------------------------------------------------------------
def read_record(file: Path, limit: int, error: type[ArtifactError], fix: str) -> bytes:
    """The bytes of `file`: a regular file (not a device, FIFO or directory: opened without blocking and
    checked before reading) of at most `limit` bytes; otherwise `error` naming the file, ending with `fix`."""
    try:
        fd = os.open(file, os.O_RDONLY | getattr(os, "O_NONBLOCK", 0) | getattr(os, "O_BINARY", 0))
    except OSError as exc:
        raise error(f"cannot read {file} ({exc.strerror or exc}); {fix}") from None
    info = os.fstat(fd)
    if not stat.S_ISREG(info.st_mode):
        os.close(fd)
        raise error(f"{file} is not a regular file; {fix}")
    with os.fdopen(fd, "rb") as handle:
        blob = handle.read(limit + 1) if info.st_size <= limit else b""
    if info.st_size > limit or len(blob) > limit:
        raise error(f"{file} is larger than {limit} bytes, more than any file this package writes; {fix}")
    return blob


def record_text(blob: bytes, file: Path, error: type[ArtifactError], fix: str) -> str:
    """`blob` decoded as strict UTF-8, or `error` naming the file and the first bad byte."""
    try:
        return blob.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise error(f"{file} is not valid UTF-8 text (byte {exc.start}); {fix}") from None


Record = TypeVar("Record", bound=BaseModel)


def read_versioned_record(
    file: Path,
    record: type[Record],
    *,
    reads: tuple[int, ...],
    limit: int,
    error: type[ArtifactError],
    fix: str,
    redo: str,
) -> Record:
    """Parse the JSON metadata `file` (read as `read_record` reads) into `record`. A format version outside
    `reads` or a malformed file raises `error` naming the file and ending with `redo` ("recalibrate", ...);
    unreadable bytes end with `fix`."""
    text = record_text(read_record(file, limit, error, fix), file, error, fix)
    try:
        version = json.loads(text).get("format_version", reads[0])
    except (ValueError, AttributeError):
        version = reads[0]  # not JSON, or not an object: validation says so
    if version not in reads:
        raise error(
            f"{file} has format version {str(version)[:20]}; this package reads "
            f"{' and '.join(map(str, reads))}: {redo} with this version"
        )
    try:
        return record.model_validate_json(text)
    except ValidationError as exc:
        err = exc.errors()[0]
        where = ".".join(map(str, err["loc"])) or "top level"
        raise error(f"{file} is malformed ({err['msg']} at {where}); {redo}") from None
