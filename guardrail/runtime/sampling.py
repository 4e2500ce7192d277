"""Per-call generation controls the guard adds to `model.generate`: a seed for reproducible sampling, and
answer openings forced token by token (a forced tool choice) without changing the prompt the gate reads."""

from __future__ import annotations

import threading
from collections.abc import Iterator, Mapping, Sequence
from contextlib import contextmanager
from typing import Any

import torch
from transformers import LogitsProcessor, LogitsProcessorList

from guardrail.models.tool_calls import forced_opening
from guardrail.requests import Request

__all__ = ["ForcedOpening", "answer_controls", "seeded"]

# torch's default generator is process-wide: seeded calls take turns, so that one call's seed is not
# consumed by another's sampling (an unseeded sampling call running meanwhile still draws from it)
_SEED_LOCK = threading.Lock()


@contextmanager
def seeded(seed: int | None, device: torch.device) -> Iterator[None]:
    """Sampling inside the block draws from generators seeded with `seed` (host and `device`), restored after."""
    if seed is None:
        yield
        return
    devices = [device] if device.type == "cuda" else []
    with _SEED_LOCK, torch.random.fork_rng(devices=devices, device_type="cuda"):
        torch.manual_seed(seed)
        yield


class ForcedOpening(LogitsProcessor):
    """Makes row r's first new tokens `openings[r]` (an empty list: no constraint), whatever the logits say."""

    def __init__(self, openings: Sequence[Sequence[int]], prompt_length: int):
        self.openings = [list(o) for o in openings]
        self.prompt_length = prompt_length

    def __call__(self, input_ids: torch.LongTensor, scores: torch.FloatTensor) -> torch.FloatTensor:
        step = input_ids.shape[1] - self.prompt_length
        for row, opening in enumerate(self.openings):
            if step < len(opening):
                forced = torch.full_like(scores[row], float("-inf"))
                forced[opening[step]] = 0.0
                scores[row] = forced
        return scores


def answer_controls(
    batch: Sequence[Request],
    inputs: Mapping[str, Any],
    stops: Sequence[str],
    tokenizer: Any,
    generate_kwargs: Mapping[str, Any],
) -> dict[str, Any]:
    """The `model.generate` arguments that end the answers at `stops` and force each request's opening (a
    forced tool choice, a JSON answer), beside the caller's own logits processors."""
    kwargs: dict[str, Any] = {"stop_strings": list(stops), "tokenizer": tokenizer} if stops else {}
    openings = [forced_opening(r.tool_choice, r.response_format) or "" for r in batch]
    if any(openings):
        ids = [tokenizer.encode(o, add_special_tokens=False) if o else [] for o in openings]
        forced = ForcedOpening(ids, inputs["input_ids"].shape[1])
        kwargs["logits_processor"] = LogitsProcessorList([*(generate_kwargs.get("logits_processor") or []), forced])
    return kwargs
