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
    rows = ["| setting | harmful refusal % | benign response % | KL | gate open harmful / benign % |",
            "|---|---|---|---|---|"]
    for r in report["results"]:
        if not keep(r["label"]):
            continue
        ci = lambda v, c: f"{100 * v:.0f} [{100 * c[0]:.0f}-{100 * c[1]:.0f}]"
        gate = f"{100 * r.get('steered_harmful', 0):.0f} / {100 * r.get('steered_safe', 0):.0f}" \
            if "steered_harmful" in r else "-"
        rows.append(f"| {r['label']} | {ci(r['harmful_refusal'], r['harmful_refusal_ci'])} | "
                    f"{ci(r['benign_response'], r['benign_response_ci'])} | {r['kl_benign']:.3f} | {gate} |")
    return f"`{report['model']}`, {report['max_new_tokens']} new tokens (`{report['command']}`):\n\n" + \
        "\n".join(rows) + "\n"


def main() -> None:
    for name in ("efficacy_qwen05b", "gated_qwen05b", "gated_thresholds_qwen05b", "frontier_qwen05b",
                 "efficacy_qwen15b", "efficacy_smollm2"):
        print(f"### {name}\n")
        print(table(name))


if __name__ == "__main__":
    main()
