"""FigStep harmful/safe twins on a real-weight testbed: last-prompt-token activations, cached.

The cache (a torch file under /tmp) is keyed by the testbed's config fingerprint, its weight
sample and the exact request texts, so a stale cache is recomputed rather than reused.
"""

from __future__ import annotations

import hashlib
import json
import os
from pathlib import Path

import torch

from guardrail.activations import last_token_activations
from guardrail.adapter import Request, resolve_adapter
from guardrail.fingerprint import config_fingerprint, config_summary, weight_sample
from guardrail.policy import TEXT_INSTRUCTION

FIGSTEP = Path(os.environ.get("GUARDRAIL_FIGSTEP_DIR", "/work/shared/data/figstep"))
TESTBED = "qwen2.5-coder-0.5b-instruct"
CACHE = Path("/tmp/guardrail-probe-cache")


def figstep_questions() -> tuple[list[str], list[str]]:
    """(harmful, safe) questions, item i of each list being twins."""
    load = lambda name: [row["question"] for row in json.loads((FIGSTEP / name).read_text(encoding="utf-8"))]
    return load("harmful_train_100.json"), load("safe_train_100.json")


def requests_for(questions: list[str]) -> list[Request]:
    return [Request(text=f"{q} {TEXT_INSTRUCTION}") for q in questions]


def cached_activations(testbed: str = TESTBED, batch_size: int = 8) -> dict:
    """{'harmful': (L, n, H), 'safe': (L, n, H), 'texts_sha256', 'model'} for every FigStep item."""
    from guardrail.testing.testbeds import load
    model, tokenizer = load(testbed)
    adapter = resolve_adapter(model)
    layers = adapter.decoder_layers(model)
    harmful, safe = figstep_questions()
    texts = hashlib.sha256(json.dumps([harmful, safe, TEXT_INSTRUCTION]).encode()).hexdigest()
    model_id = config_fingerprint(config_summary(model, layers)) + str(weight_sample(model, layers))
    key = hashlib.sha256(f"{testbed}|{texts}|{model_id}".encode()).hexdigest()[:16]
    path = CACHE / f"{testbed}-figstep-{key}.pt"
    if path.is_file():
        return torch.load(path)
    collect = lambda qs: last_token_activations(model, tokenizer, adapter, requests_for(qs), batch_size=batch_size)
    data = {"harmful": collect(harmful), "safe": collect(safe), "texts_sha256": texts, "key": key}
    CACHE.mkdir(parents=True, exist_ok=True)
    torch.save(data, path)
    return data
