"""Evaluation: run paired harmful/safe queries through defences, judge the answers, report."""

from guardrail.evaluation.data import Pair, load_pairs
from guardrail.evaluation.harness import EvalReport, Setting, SettingResult, evaluate
from guardrail.evaluation.judges import Judge, LLMJudge, LogOddsJudge, RefusalPhraseJudge, Verdict
from guardrail.evaluation.report import write_report

__all__ = [
    "EvalReport",
    "Judge",
    "LLMJudge",
    "LogOddsJudge",
    "Pair",
    "RefusalPhraseJudge",
    "Setting",
    "SettingResult",
    "Verdict",
    "evaluate",
    "load_pairs",
    "write_report",
]
