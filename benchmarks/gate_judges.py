"""Two independent judges on the pipeline's answers (issue #14, item 5): the refusal-phrase judge every
table uses, and a language model as judge (Qwen2.5-Coder-1.5B-Instruct, unsteered; a few-shot rubric read
by the log-odds of its first label token, `LogOddsJudge`: asked to write the label, it wrote REFUSED for
117 of these 120 answers). A stratified sample of the answers in a ``gate_pipeline.py`` report
(harmful / benign x unguarded / steered), their agreement and Cohen's kappa, and every disagreement
listed for a hand check.

    python benchmarks/gate_judges.py --report benchmarks/results/gate_pipeline_qwen05b/report.json \\
        --out benchmarks/results/gate_judges_qwen05b.json
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path
from typing import Any

import numpy as np

from guardrail.evaluation.judges import LLMJudge, LogOddsJudge, RefusalPhraseJudge


def sample(answers: list[dict], per_cell: int, seed: int) -> list[dict]:
    rng = np.random.default_rng(seed)
    rows = []
    for harmful in (True, False):
        pool = [a for a in answers if a["harmful"] == harmful]
        for run in ("plain", "steered"):
            for i in rng.choice(len(pool), size=min(per_cell, len(pool)), replace=False):
                a = pool[int(i)]
                rows.append({"question": a["text"], "answer": a[run], "harmful": harmful, "run": run})
    return rows


def kappa(a: list[bool], b: list[bool]) -> float:
    x, y = np.array(a), np.array(b)
    observed = float(np.mean(x == y))
    expected = float(np.mean(x) * np.mean(y) + np.mean(~x) * np.mean(~y))
    return round((observed - expected) / (1 - expected), 4) if expected < 1 else 1.0


def main() -> None:
    from guardrail_testbeds.build import load

    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--report", required=True)
    ap.add_argument("--judge-testbed", default="qwen2.5-coder-1.5b-instruct")
    ap.add_argument("--per-cell", type=int, default=30)
    ap.add_argument("--out", required=True)
    ap.add_argument("--write-label", action="store_true", help="the model writes its label (LLMJudge) instead")
    args = ap.parse_args()
    rows = sample(json.loads(Path(args.report).read_text(encoding="utf-8"))["answers"], args.per_cell, seed=0)
    questions, answers = [r["question"] for r in rows], [r["answer"] for r in rows]
    phrase = [v.refused for v in RefusalPhraseJudge().judge(questions, answers)]
    model, tok = load(args.judge_testbed)
    judge = LLMJudge.from_model(model, tok) if args.write_label else LogOddsJudge.from_model(model, tok)
    llm_verdicts = judge.judge(questions, answers)
    llm = [v.refused for v in llm_verdicts]
    report: dict[str, Any] = {
        "n": len(rows),
        "agreement": round(float(np.mean(np.array(phrase) == np.array(llm))), 4),
        "cohen_kappa": kappa(phrase, llm),
        "refused_by_phrase": int(sum(phrase)),
        "refused_by_llm": int(sum(llm)),
        "disagreements": [
            {**r, "phrase_judge": p, "llm_judge": q.refused, "llm_reason": q.reason}
            for r, p, q in zip(rows, phrase, llm_verdicts)
            if p != q.refused
        ],
        "command": f"python benchmarks/gate_judges.py --report {args.report} --out {args.out}"
        + (" --write-label" if args.write_label else ""),
    }
    Path(args.out).write_text(json.dumps(report, indent=1) + "\n", encoding="utf-8")
    print(json.dumps({k: v for k, v in report.items() if k != "disagreements"}, indent=1))


if __name__ == "__main__":
    main()
