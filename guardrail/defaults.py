"""The package's own default calibration set (text questions, English)."""

from __future__ import annotations

import json
from importlib.resources import files


def default_calibration_set() -> tuple[list[str], list[str]]:
    """(harmful, safe) questions: 24 pairs written for this project, safe twin at the same index.

    >>> harmful, safe = default_calibration_set()
    >>> len(harmful) == len(safe) == 24
    True
    """
    data = json.loads(files("guardrail").joinpath("data/calibration_en.json").read_text(encoding="utf-8"))
    harmful = [pair[0] for pair in data["pairs"]]
    safe = [pair[1] for pair in data["pairs"]]
    return harmful, safe
