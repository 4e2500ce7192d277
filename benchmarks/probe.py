"""The gate probe on a real-weight testbed: held-out separability per layer, and latency per decision.

(a) FigStep harmful/safe twins (user text = question + the text instruction): train on items
    0..49 of each list, evaluate on 50..99. For every layer a probe on that layer alone (its CV
    AUC on the training items, its held-out ROC AUC and recall at 1% / 5% FPR), then the default
    probe (layer chosen by CV, threshold at 1% FPR on out-of-fold scores) and a probe on the
    three best CV layers concatenated.
(b) onnxruntime latency on CPU (1 intra-op thread) at batch 1 and 32: median over many runs of
    `OnnxProbe.decide` (numpy and torch input), of the bare `session.run`, and of the torch module.

Activations (one forward pass per query, batch 8) are cached under /tmp, keyed by the model's
identity and the exact texts, so reruns only train and time.

    python benchmarks/probe.py --out benchmarks/results/probe_qwen05b_cpu
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import platform
import statistics
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import torch

from guardrail.defaults import TEXT_INSTRUCTION
from guardrail.gate.onnx_probe import OnnxProbe, evaluate_probe
from guardrail.gate.train import train_probe
from guardrail.models.adapter import resolve_adapter
from guardrail.models.identity import config_fingerprint, config_summary, weight_sample
from guardrail.requests import Request
from guardrail.steering.activations import last_token_activations

FIGSTEP = Path(os.environ.get("GUARDRAIL_FIGSTEP_DIR", "/work/shared/data/figstep"))
CACHE = Path("/tmp/guardrail-probe-cache")


def figstep_questions() -> tuple[list[str], list[str]]:
    """(harmful, safe) questions; item i of each list are twins."""
    load = lambda name: [row["question"] for row in json.loads((FIGSTEP / name).read_text(encoding="utf-8"))]
    return load("harmful_train_100.json"), load("safe_train_100.json")


def activations(testbed: str, batch_size: int) -> tuple[Any, dict[str, torch.Tensor]]:
    """(model, {'harmful', 'safe'}: (layers, 100, hidden)), from the /tmp cache when it matches."""
    from guardrail_testbeds.build import load

    model, tokenizer = load(testbed)
    adapter = resolve_adapter(model)
    layers = adapter.decoder_layers(model)
    harmful, safe = figstep_questions()
    texts = hashlib.sha256(json.dumps([harmful, safe, TEXT_INSTRUCTION]).encode()).hexdigest()
    model_id = config_fingerprint(config_summary(model, layers)) + str(weight_sample(model, layers))
    key = hashlib.sha256(f"{testbed}|{texts}|{model_id}".encode()).hexdigest()[:16]
    path = CACHE / f"{testbed}-figstep-{key}.pt"
    if path.is_file():
        return model, torch.load(path)
    collect = lambda qs: last_token_activations(
        model, tokenizer, adapter, [Request(text=f"{q} {TEXT_INSTRUCTION}") for q in qs], batch_size=batch_size
    )
    data = {"harmful": collect(harmful), "safe": collect(safe), "texts_sha256": texts, "key": key}
    CACHE.mkdir(parents=True, exist_ok=True)
    torch.save(data, path)
    return model, data


def split(data: dict[str, torch.Tensor], items: slice) -> tuple[torch.Tensor, torch.Tensor]:
    h, s = data["harmful"][:, items], data["safe"][:, items]
    return torch.cat([h, s], dim=1), torch.tensor([1] * h.shape[1] + [0] * s.shape[1])


def separability(train: tuple, held_out: tuple) -> dict[str, Any]:
    rounded = lambda d: {k: round(v, 4) if isinstance(v, float) else v for k, v in d.items()}
    per_layer = []
    for layer in range(train[0].shape[0]):
        probe = train_probe(*train, layers=[layer], scan_layers=False)
        per_layer.append(
            {
                "layer": layer,
                "cv_auc": round(probe.cv.auc, 4),
                "l2": probe.cv.l2,
                **rounded(evaluate_probe(probe, *held_out)),
            }
        )
    default = train_probe(*train)
    top3 = sorted(sorted(default.layer_auc, key=default.layer_auc.get, reverse=True)[:3])
    multi = train_probe(*train, layers=top3, scan_layers=False)
    summary = lambda p: {
        "layers": p.layers,
        "threshold": p.threshold,
        "cv": p.cv.model_dump(),
        "held_out": rounded(evaluate_probe(p, *held_out)),
    }
    return {"per_layer": per_layer, "default": summary(default), "top3_concat": summary(multi)}, default


def median_us(fn: Callable[[], Any], runs: int, warmup: int = 300) -> float:
    for _ in range(warmup):
        fn()
    times = []
    for _ in range(runs):
        start = time.perf_counter_ns()
        fn()
        times.append(time.perf_counter_ns() - start)
    return statistics.median(times) / 1e3


def latency(probe_dir: Path, trained, n_features: int, runs: int) -> list[dict[str, Any]]:
    probe = OnnxProbe.load(probe_dir)
    session, name = probe.session, probe.metadata.onnx.input
    rows = []
    for batch in (1, 32):
        x = np.random.default_rng(0).standard_normal((batch, n_features)).astype(np.float32)
        xt = torch.from_numpy(x.copy())
        arms = {
            "OnnxProbe.decide(numpy)": lambda x=x: probe.decide(x),
            "OnnxProbe.decide(torch)": lambda xt=xt: probe.decide(xt),
            "session.run (bare)": lambda x=x: session.run(["score"], {name: x}),
            "TrainedProbe.score (torch)": lambda xt=xt: trained.score(xt),
        }
        for arm, fn in arms.items():
            us = median_us(fn, runs)
            rows.append(
                {
                    "arm": arm,
                    "batch": batch,
                    "median_us_per_call": round(us, 2),
                    "median_us_per_decision": round(us / batch, 3),
                }
            )
    return rows


def markdown(result: dict[str, Any]) -> str:
    d = result["separability"]["default"]
    lines = [
        f"# Gate probe on {result['testbed']} (CPU)",
        "",
        f"Command: `{result['command']}`",
        "",
        f"FigStep twins, train items 0..49 (50 harmful + 50 safe), held-out items 50..99. "
        f"Default probe: layer {d['layers']} (by CV), threshold {d['threshold']:.4f} for 1% FPR on "
        f"out-of-fold scores; held-out ROC AUC {d['held_out']['roc_auc']:.3f}, recall@1% "
        f"{d['held_out']['recall_at_1pct_fpr']:.2f}, recall@5% {d['held_out']['recall_at_5pct_fpr']:.2f}, "
        f"FPR at the threshold {d['held_out']['fpr_at_threshold']:.2f} "
        f"(recall {d['held_out']['recall_at_threshold']:.2f}).",
        "",
        "| layer | CV AUC (train) | held-out AUC | recall@1% | recall@5% |",
        "|---|---|---|---|---|",
    ]
    for r in result["separability"]["per_layer"]:
        lines.append(
            f"| {r['layer']} | {r['cv_auc']:.3f} | {r['roc_auc']:.3f} | {r['recall_at_1pct_fpr']:.2f} | "
            f"{r['recall_at_5pct_fpr']:.2f} |"
        )
    m = result["separability"]["top3_concat"]
    h = m["held_out"]
    lines += [
        "",
        f"Top-3 CV layers {m['layers']} concatenated: held-out AUC {h['roc_auc']:.3f}, "
        f"recall@1% {h['recall_at_1pct_fpr']:.2f}, recall@5% {h['recall_at_5pct_fpr']:.2f}.",
        "",
        f"Latency ({result['machine']['processor'] or result['machine']['machine']}, onnxruntime "
        f"{result['machine']['onnxruntime']}, CPUExecutionProvider, 1 thread, load average "
        f"{result['machine']['loadavg']}; median of {result['runs']} runs):",
        "",
        "| arm | batch | us per call | us per decision |",
        "|---|---|---|---|",
    ]
    lines += [
        f"| {r['arm']} | {r['batch']} | {r['median_us_per_call']} | {r['median_us_per_decision']} |"
        for r in result["latency"]
    ]
    return "\n".join(lines) + "\n"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--testbed", default="qwen2.5-coder-0.5b-instruct")
    parser.add_argument("--batch-size", type=int, default=8)
    parser.add_argument("--runs", type=int, default=5000)
    parser.add_argument("--out", type=Path, help="writes OUT.json and OUT.md")
    args = parser.parse_args()
    import onnxruntime

    model, data = activations(args.testbed, args.batch_size)
    report, default = separability(split(data, slice(0, 50)), split(data, slice(50, 100)))
    with tempfile.TemporaryDirectory() as tmp:
        timings = latency(default.bind(model).save(Path(tmp) / "probe"), default, default.n_features, args.runs)
    command = "python benchmarks/probe.py " + " ".join(
        f"--{k.replace('_', '-')} {v}" for k, v in vars(args).items() if v is not None
    )
    result = {
        "testbed": args.testbed,
        "command": command,
        "runs": args.runs,
        "separability": report,
        "latency": timings,
        "machine": {
            "machine": platform.machine(),
            "processor": platform.processor(),
            "cpus": os.cpu_count(),
            "torch": torch.__version__,
            "onnxruntime": onnxruntime.__version__,
            "loadavg": [round(x, 2) for x in os.getloadavg()],
        },
    }
    text = markdown(result)
    print(text)
    if args.out:
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.with_suffix(".json").write_text(json.dumps(result, indent=2) + "\n")
        args.out.with_suffix(".md").write_text(text)


if __name__ == "__main__":
    main()
