"""Paired harmful/safe queries for calibration and evaluation."""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from guardrail.errors import RequestError


@dataclass(frozen=True)
class Pair:
    """A harmful query and its safe twin: text questions, or audio sources for audio models."""

    harmful: Any
    safe: Any
    category: str = ""


def load_pairs(harmful: str | Path, safe: str | Path) -> list[Pair]:
    """Pairs from two files with the same item at each index: JSON lists of strings, JSON lists of
    objects with a "question" field (FigStep format, "scenario" as category), or one item per line.

    >>> pairs = load_pairs("harmful_train_100.json", "safe_train_100.json")  # doctest: +SKIP
    """
    harmful_items, safe_items = _read(Path(harmful)), _read(Path(safe))
    if len(harmful_items) != len(safe_items):
        raise RequestError(
            f"{harmful} has {len(harmful_items)} items but {safe} has {len(safe_items)}; "
            "pairs need the safe twin of each harmful item at the same position"
        )
    return [Pair(h[0], s[0], h[1]) for h, s in zip(harmful_items, safe_items)]


def default_pairs() -> list[Pair]:
    """The package's own 24 pairs (guardrail/data/calibration_en.json)."""
    from guardrail.defaults import default_calibration_set

    harmful, safe = default_calibration_set()
    return [Pair(h, s) for h, s in zip(harmful, safe)]


def parse_slice(text: str, length: int) -> slice:
    """'0:50' -> slice(0, 50); bounds checked against `length`."""
    try:
        start_text, end_text = text.split(":")
        start, end = int(start_text or 0), int(end_text or length)
    except ValueError:
        raise RequestError(f"bad range {text!r}: write START:END, e.g. 0:50") from None
    if not 0 <= start < end <= length:
        raise RequestError(f"range {text!r} is outside the {length} available pairs")
    return slice(start, end)


def read_questions(path: str | Path) -> list[str]:
    """The questions of one file (FigStep JSON, JSON list of strings, or one per line)."""
    return [question for question, _ in _read(Path(path))]


def read_items_text(path: Path) -> str:
    """A file of items as text; a file that cannot be read is a `RequestError` naming it."""
    try:
        return path.read_text(encoding="utf-8")
    except OSError as exc:
        raise RequestError(f"cannot read {path}: {exc.strerror or exc}") from exc


def _read(path: Path) -> list[tuple[str, str]]:
    text = read_items_text(path)
    if path.suffix == ".json" or text.lstrip().startswith("["):
        try:
            items = json.loads(text)
            return [(i["question"], i.get("scenario", "")) if isinstance(i, dict) else (str(i), "") for i in items]
        except (ValueError, KeyError, TypeError) as exc:
            raise RequestError(
                f"{path} is not a JSON list of strings or of objects with a 'question' field ({exc}); "
                "or give one item per line"
            ) from None
    return [(line.strip(), "") for line in text.splitlines() if line.strip()]
