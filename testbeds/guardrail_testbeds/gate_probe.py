"""Train the gate's probe for your model on the gate's data (`gate_sets`): probe v2 fitted on `fit`, its
threshold table chosen on `select`, bound to the model and saved. This is the recipe behind the figures
of docs/gate.md; `guardrail calibrate --probe` trains on the calibration pairs alone, which is far narrower
(the 0.1 probe trained that way scored AUROC 0.62 on the held-out requests).

    python -m guardrail_testbeds.gate_probe --model DIR --out artifacts/my-model/probe [--figstep DIR]
"""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import Any

import numpy as np
import torch

from guardrail.gate.stacked import Selection, train_stacked_probe
from guardrail.gate.train import TrainedProbe
from guardrail.models.adapter import resolve_adapter
from guardrail.requests import Request
from guardrail.steering.activations import prompt_activations
from guardrail_testbeds.gate_sets import Item, gate_items


def fit_gate_probe(
    model: Any, processor: Any, items: list[Item] | None = None, *, batch_size: int = 16, target_fpr: float = 0.01
) -> TrainedProbe:
    """Probe v2 for `model` trained on the `fit` items, thresholds on `select` (default: every gate item
    without FigStep; pass `gate_items(figstep_dir)` to include it)."""
    items = gate_items(None) if items is None else items
    adapter = resolve_adapter(model)
    chosen = [i for i in items if i.split in ("fit", "select")]
    last, mean = prompt_activations(
        model, processor, adapter, [Request(text=i.text) for i in chosen], batch_size=batch_size, pooled=True
    )
    assert mean is not None, "pooled=True returns the prompt means"
    y, split = np.array([i.harmful for i in chosen]), np.array([i.split for i in chosen])
    return train_on_splits(last, mean, y, split, target_fpr).bind(model, adapter.name)


def train_on_splits(
    last: torch.Tensor, mean: torch.Tensor, y: np.ndarray, split: np.ndarray, target_fpr: float = 0.01
) -> TrainedProbe:
    """Probe v2 on the `fit` columns of (layers, n, hidden) activations, thresholds on the `select` ones."""
    fit = torch.as_tensor(np.flatnonzero(split == "fit"))
    sel = torch.as_tensor(np.flatnonzero(split == "select"))
    return train_stacked_probe(
        last[:, fit].float(), y[fit.numpy()].astype(int), mean=mean[:, fit].float(), target_fpr=target_fpr,
        select=Selection(last[:, sel].float(), y[sel.numpy()], mean[:, sel].float()),
    )  # fmt: skip


def main(argv: list[str] | None = None) -> int:
    from guardrail.models.loading import load_model

    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--model", required=True, help="model directory or hub id")
    ap.add_argument("--out", required=True, help="probe directory to write")
    ap.add_argument("--figstep", help="folder with FigStep's harmful_train_100.json / safe_train_100.json")
    ap.add_argument("--batch-size", type=int, default=16)
    args = ap.parse_args(argv)
    model, processor, _ = load_model(args.model)
    probe = fit_gate_probe(
        model, processor, gate_items(Path(args.figstep) if args.figstep else None), batch_size=args.batch_size
    )
    path = probe.save(args.out)
    print(f"wrote probe (v2, {len(probe.layers)} layers, threshold {probe.threshold:.3f}) to {path}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
