"""Markdown tables for docs/gate.md from the gate reports under benchmarks/results/ (no model runs).

python benchmarks/gate_tables.py
"""

from __future__ import annotations

import json
from pathlib import Path

RESULTS = Path(__file__).resolve().parent / "results"
MODELS = (("0.5B", "qwen05b"), ("1.5B", "qwen15b"))


def interval(cell: list[float]) -> str:
    return f"{cell[0]:.3f} [{cell[1]:.3f}, {cell[2]:.3f}]"


def rate(cell: list[float]) -> str:
    """k/n (percent) from a [k, n, ...] cell."""
    return f"{cell[0]}/{cell[1]} ({100 * cell[0] / max(cell[1], 1):.1f}%)"


def probe_table() -> str:
    rows = [
        "| model | probe | eval AUROC | eval TPR @1% FPR | eval TPR @5% FPR | FigStep 50-99 AUROC "
        "| threshold from select (1%): eval TPR, FPR |",
        "|---|---|---|---|---|---|---|",
    ]
    for label, key in MODELS:
        path = RESULTS / f"gate_probe_{key}" / "report.json"
        if not path.is_file():
            continue
        for name, v in json.loads(path.read_text(encoding="utf-8"))["variants"].items():
            deployed = v["deployed_1pct"]["eval"]
            rows.append(
                f"| {label} | {name} | {interval(v['eval']['auc'])} | {interval(v['eval']['tpr_at_1pct_fpr'])} "
                f"| {interval(v['eval']['tpr_at_5pct_fpr'])} | {interval(v['figstep_eval']['auc'])} "
                f"| {rate(deployed['tpr'])}, {rate(deployed['fpr'])} |"
            )
    return "\n".join(rows)


def pipeline_table() -> str:
    rows = [
        "| model | setting | FigStep 50-99: harmful refused / benign answered | eval: harmful refused / benign "
        "answered | eval: gate open on benign |",
        "|---|---|---|---|---|",
    ]
    for label, key in MODELS:
        path = RESULTS / f"gate_pipeline_{key}" / "report.json"
        if not path.is_file():
            continue
        report = json.loads(path.read_text(encoding="utf-8"))
        for name in ("unguarded", "always_steered"):
            f, e = report[name]["figstep_eval"], report[name]["eval"]
            setting = "unguarded" if name == "unguarded" else f"always steered (alpha {report['alpha']})"
            rows.append(f"| {label} | {setting} | {pct(f)} | {pct(e)} | |")
        for p in report["points"]:
            if p["steer_fpr_on_select"] in (0.01, 0.02, 0.05) and p["block_fpr_on_select"] in (None, 0.01):
                block = "none" if p["block_fpr_on_select"] is None else f"{p['block_fpr_on_select']:.0%}"
                setting = f"steer at {p['steer_fpr_on_select']:.0%}, block at {block}"
                gate = p["eval"]["gate_open_benign"]
                rows.append(f"| {label} | {setting} | {pct(p['figstep_eval'])} | {pct(p['eval'])} | {rate(gate)} |")
    return "\n".join(rows)


def pct(cell: dict) -> str:
    return f"{100 * cell['harmful_refused'][2]:.0f} / {100 * cell['benign_answered'][2]:.0f}"


if __name__ == "__main__":
    print(probe_table())
    print()
    print(pipeline_table())
