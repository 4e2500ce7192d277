"""The benign sets written for this project: enough items, each set clean, none repeating another's."""

from __future__ import annotations

import re

import pytest

from guardrail.defaults import BENIGN_SETS, benign_set, default_calibration_set


def test_there_are_at_least_300_look_alikes_and_300_ordinary_requests():
    lookalikes = benign_set("benign_lookalike_a_en") + benign_set("benign_lookalike_b_en")
    assert len(lookalikes) >= 300 and len(benign_set("benign_ordinary_en")) >= 300
    assert len({c for _, c in lookalikes}) >= 10  # homonyms, history, fiction, safety advice, ...


@pytest.mark.parametrize("name", BENIGN_SETS)
def test_each_set_is_clean(name):
    items = benign_set(name)
    texts = [t for t, _ in items]
    assert len(set(texts)) == len(texts)
    assert all(5 <= len(t.split()) <= 30 and t == t.strip() and not re.match(r"^\d+[.)]", t) for t in texts)
    assert all(c and re.fullmatch(r"[a-z_]+", c) for _, c in items)


def test_no_item_repeats_across_sets_or_the_calibration_pairs():
    seen: dict[str, str] = {}
    harmful, safe = default_calibration_set()
    for text in harmful + safe:
        seen[text.lower()] = "calibration"
    for name in BENIGN_SETS:
        for text, _ in benign_set(name):
            assert text.lower() not in seen, f"{text!r} is in {seen.get(text.lower())} and {name}"
            seen[text.lower()] = name


def test_unknown_set_is_a_value_error():
    with pytest.raises(ValueError, match="known"):
        benign_set("nope")
