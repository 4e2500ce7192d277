"""The probe's metadata record (`probe.json`): what a probe reads, how it was trained, which model
it belongs to, its thresholds. Validated on load; `guardrail.gate.onnx_probe` reads the files."""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any, Literal

import numpy as np
from pydantic import field_validator, model_validator

from guardrail.models.identity import ModelIdentity, StrictRecord, require_parameter_samples

FORMAT_VERSION = 3  # 3: pools and the stacker's record (probe v2)
READS = (1, 2, 3)  # format versions this package loads (1: a two-tensor weight sample, checked with a warning)
POOLS = ("last", "mean")
Pool = Literal["last", "mean"]
MAX_ONNX_BYTES = 64 * 2**20  # a logistic probe over 8 layers of a 8192-wide model is 256 kB
MAX_METADATA_BYTES = 64 * 2**20
THRESHOLD_MAX = float(np.nextafter(np.float32(1), np.float32(2)))  # training's "no score reaches it"
ONNX_FILE = "probe.onnx"
METADATA_FILE = "probe.json"
INPUT_NAME = "features"
OUTPUT_NAME = "score"


class Normalisation(StrictRecord):
    kind: str = "standardise + Platt scaling, folded into the Gemm weights"
    n_fitted: int
    mean_abs_max: float
    std_min: float
    std_median: float
    std_max: float
    n_constant: int


class TrainingSet(StrictRecord):
    n_harmful: int
    n_safe: int
    activations_sha256: str
    queries_sha256: str | None = None


class CrossValidation(StrictRecord):
    folds: int
    seed: int
    l2: float
    l2_grid: list[float]
    auc: float
    platt: list[float]  # slope, intercept applied to the raw logit
    fpr_at_threshold: float
    recall_at_threshold: float


class StackInfo(StrictRecord):
    """Probe v2: one shrinkage-LDA direction per (pool, layer) block, combined by a logistic stacker."""

    blocks: list[str]  # "last:12", "mean:3", ... in feature order
    block_auc: list[float]  # out-of-fold ROC AUC of each block's LDA score
    stacker_weights: list[float]  # per block, on standardised block scores


TABLE_FPRS = (0.001, 0.002, 0.005, 0.01, 0.02, 0.05, 0.1, 0.2)  # rows of a probe's threshold table


class Thresholds(StrictRecord):
    """Thresholds at fixed false-positive rates, for policies that name a rate (gate.threshold_fpr)."""

    chosen_on: Literal["selection set", "out-of-fold"]
    n_safe: int  # safe items the rates were measured on: 1% of 300 is 3 items, 1% of 50 is none
    at_fpr: dict[float, float]

    @field_validator("at_fpr")
    @classmethod
    def _probabilities(cls, table: dict[float, float]) -> dict[float, float]:
        bad = {f: t for f, t in table.items() if not (0 < f < 1 and math.isfinite(t) and 0 <= t <= THRESHOLD_MAX)}
        if bad:
            raise ValueError(f"thresholds must map rates in (0, 1) to finite probabilities; got {bad}")
        return table


class OnnxInfo(StrictRecord):
    file: str = ONNX_FILE
    sha256: str
    opset: int
    input: str = INPUT_NAME
    output: str = OUTPUT_NAME

    @field_validator("file")
    @classmethod
    def _plain_name(cls, name: str) -> str:
        if name in ("", ".", "..") or any(sep in name for sep in ("/", "\\", ":", "\0")) or Path(name).is_absolute():
            raise ValueError(
                f"onnx.file must be a plain file name inside the probe directory (no path separators or drive, no "
                f"absolute path, no '..'); got {name[:200]!r}"
            )
        return name


class ProbeMetadata(StrictRecord):
    format_version: int = FORMAT_VERSION
    kind: str = "logistic"
    package_version: str
    created_at: str
    model: ModelIdentity
    layers: list[int]
    pools: list[Pool] = ["last"]
    hidden_size: int
    n_features: int
    threshold: float
    target_fpr: float
    layer_auc: dict[int, float]
    normalisation: Normalisation
    training: TrainingSet
    cv: CrossValidation
    stack: StackInfo | None = None
    thresholds: Thresholds | None = None
    onnx: OnnxInfo

    @field_validator("threshold")
    @classmethod
    def _probability(cls, value: float) -> float:
        if not (math.isfinite(value) and 0.0 <= value <= THRESHOLD_MAX):
            raise ValueError(
                f"threshold must be a finite probability in [0, 1] (score >= threshold steers); got {value}"
            )
        return value

    @model_validator(mode="after")
    def _consistent(self) -> ProbeMetadata:
        require_parameter_samples(self.model, self.format_version)
        if not self.layers or len(set(self.layers)) != len(self.layers) or min(self.layers) < 0:
            raise ValueError(
                f"layers must be distinct non-negative layer indices, at least one; got {self.layers[:16]}"
            )
        if self.pools not in (["last"], list(POOLS)):
            raise ValueError(f"pools must be ['last'] or {list(POOLS)}; got {self.pools}")
        if self.hidden_size < 1 or self.n_features != len(self.pools) * len(self.layers) * self.hidden_size:
            raise ValueError(
                f"n_features ({self.n_features}) must be len(pools) ({len(self.pools)}) x len(layers) "
                f"({len(self.layers)}) x hidden_size ({self.hidden_size}), hidden_size at least 1"
            )
        return self


def probe_pools(probe: Any) -> tuple[Pool, ...]:
    """The pools a probe object reads: its `pools`, or the last position alone (v1 and custom probes)."""
    return tuple(getattr(probe, "pools", ("last",)))
