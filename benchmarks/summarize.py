"""Print the README's efficacy tables from the committed reports in benchmarks/results/.

python benchmarks/summarize.py
"""

from __future__ import annotations

import json
from pathlib import Path

RESULTS = Path(__file__).resolve().parent / "results"


def table(name: str, keep=lambda label: True) -> str:
    path = RESULTS / name / "report.json"
    if not path.is_file():
        return f"({name}: not run yet)\n"
    report = json.loads(path.read_text())
    rows = [
        "| setting | harmful refusal % | benign response % | KL | gate open harmful / benign % |",
        "|---|---|---|---|---|",
    ]
    for r in report["results"]:
        if not keep(r["label"]):
            continue
        ci = lambda v, c: f"{100 * v:.0f} [{100 * c[0]:.0f}-{100 * c[1]:.0f}]"
        gate = (
            f"{100 * r.get('steered_harmful', 0):.0f} / {100 * r.get('steered_safe', 0):.0f}"
            if "steered_harmful" in r
            else "-"
        )
        rows.append(
            f"| {r['label']} | {ci(r['harmful_refusal'], r['harmful_refusal_ci'])} | "
            f"{ci(r['benign_response'], r['benign_response_ci'])} | {r['kl_benign']:.3f} | {gate} |"
        )
    return (
        f"`{report['model']}`, {report['max_new_tokens']} new tokens (`{report['command']}`):\n\n"
        + "\n".join(rows)
        + "\n"
    )


def grid(name: str) -> str:
    """Methods x alpha, each cell "harmful refusal / benign response" in %."""
    path = RESULTS / name / "report.json"
    if not path.is_file():
        return f"({name}: not run yet)\n"
    results = json.loads(path.read_text())["results"]
    alphas = sorted({r["setting"]["alpha"] for r in results if r["setting"]["alpha"]})
    rows: dict[str, dict[float, str]] = {}
    for r in results:
        s = r["setting"]
        gate = {"always": "", "probe": " +probe", "probe_exact": " +probe exact"}[s.get("gate", "always")]
        key = (
            r["label"].split(" alpha=")[0]
            + (f" k={s['rank']}" if s["method"] == "sarsteer" else "")
            + gate
            + (f" t={s['threshold']:g}" if s.get("threshold") is not None else "")
        )
        cell = f"{100 * r['harmful_refusal']:.0f} / {100 * r['benign_response']:.0f}"
        rows.setdefault(key, {})[s["alpha"] if s["method"] not in ("none", "system_prompt") else 0.0] = cell
    head = "| method | " + " | ".join(f"alpha {a:g}" for a in alphas) + " |"
    lines = [head, "|---|" + "---|" * len(alphas)]
    for key, cells in rows.items():
        if 0.0 in cells and len(cells) == 1:
            lines.append(f"| {key} | " + " | ".join(cells[0.0] for _ in alphas) + " |")
        else:
            lines.append(f"| {key} | " + " | ".join(cells.get(a, "") for a in alphas) + " |")
    return "\n".join(lines) + "\n"


def main() -> None:
    for name in (
        "efficacy_qwen05b",
        "gated_qwen05b",
        "gated_thresholds_qwen05b",
        "frontier_qwen05b",
        "efficacy_qwen15b",
        "efficacy_smollm2",
    ):
        print(f"### {name}\n")
        print(table(name))
        print(grid(name))


if __name__ == "__main__":
    main()
