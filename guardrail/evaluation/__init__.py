"""Evaluation: run paired harmful/safe queries through defences, judge the answers, report."""

from .data import Pair, load_pairs
from .harness import EvalReport, Setting, SettingResult, evaluate
from .judges import Judge, LLMJudge, RefusalPhraseJudge, Verdict
from .report import write_report

__all__ = ["EvalReport", "Judge", "LLMJudge", "Pair", "RefusalPhraseJudge", "Setting", "SettingResult", "Verdict",
           "evaluate", "load_pairs", "write_report"]
