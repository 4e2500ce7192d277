"""Overhead of the guard on a text model: guarded vs unguarded greedy generation.

Arms run interleaved (A B C, A B C, ...) so machine noise hits them alike, each generating exactly
`new_tokens` tokens (min_new_tokens), and the result is the median of the per-round ratios:
  raw      model.generate on prepared inputs (the unguarded model)
  wrapped  Guard.generate_batch with gate.mode off (input building + decoding, no hooks)
  steered  Guard.generate_batch steering every request (the given policy, gate always)
  gated    the same behind the probe gate, when a probe is given
"""

from __future__ import annotations

import statistics
import time
from collections.abc import Callable
from typing import Any

import torch
from torch import nn

from .activations import model_inputs
from .adapter import Request
from .artifact import SteeringArtifact
from .guard import Guard
from .policy import Policy


def _timed(fn: Callable[[], Any]) -> float:
    start = time.perf_counter()
    fn()
    return time.perf_counter() - start


def overhead(model: nn.Module, processor: Any, artifact: SteeringArtifact, questions: list[str], *,
             batch: int = 1, rounds: int = 5, new_tokens: int = 32, policy: Policy | None = None,
             probe: Any = None) -> dict[str, Any]:
    """Median and spread of per-round time ratios against the raw model for one batch size.

    >>> overhead(model, tokenizer, artifact, ["How do I bake bread?"] * 8, batch=8)  # doctest: +SKIP
    {'batch': 8, 'median_s': {...}, 'steered_over_raw': {'median': 1.01, 'min': ..., 'max': ...}, ...}
    """
    policy = policy or Policy()
    steered = Guard(model, processor, policy=policy.model_copy(update={"gate": policy.gate.model_copy(
        update={"mode": "always"})}), artifact=artifact)
    wrapped = Guard(model, processor, policy=Policy.from_dict({"name": "off", "gate": {"mode": "off"}}))
    chosen = [questions[i % len(questions)] for i in range(batch)]
    requests = [{"text": q} for q in chosen]
    inputs = model_inputs(model, steered.adapter.build_inputs(processor, [Request(q) for q in chosen]))
    gen = {"max_new_tokens": new_tokens, "min_new_tokens": new_tokens, "do_sample": False}
    pad = steered.adapter.pad_token_id(model, processor)
    arms: dict[str, Callable[[], Any]] = {
        "raw": lambda: model.generate(**inputs, **gen, pad_token_id=pad),
        "wrapped": lambda: wrapped.generate_batch(requests, **gen),
        "steered": lambda: steered.generate_batch(requests, **gen),
    }
    if probe is not None:
        gated = Guard(model, processor, policy=Policy.from_dict({"name": "gated", "gate": {"mode": "probe"}}),
                      artifact=artifact, probe=probe)
        arms["gated"] = lambda: gated.generate_batch(requests, **gen)
    with torch.inference_mode():
        for fn in arms.values():  # warm-up
            fn()
        times: dict[str, list[float]] = {name: [] for name in arms}
        for _ in range(rounds):
            for name, fn in arms.items():
                times[name].append(_timed(fn))
    result: dict[str, Any] = {"batch": batch, "rounds": rounds, "new_tokens": new_tokens,
                              "median_s": {k: statistics.median(v) for k, v in times.items()}}
    for name in arms:
        if name != "raw":
            result[f"{name}_over_raw"] = _ratio(times[name], times["raw"])
    result["steered_over_wrapped"] = _ratio(times["steered"], times["wrapped"])
    return result


def _ratio(a: list[float], b: list[float]) -> dict[str, float]:
    ratios = [x / y for x, y in zip(a, b)]
    return {"median": statistics.median(ratios), "min": min(ratios), "max": max(ratios)}


def format_row(name: str, r: dict[str, Any]) -> str:
    s = r["steered_over_raw"]
    line = (f"{name} batch {r['batch']:>2}: raw {r['median_s']['raw'] * 1e3:8.1f} ms | steered/raw median "
            f"{s['median']:.3f} [{s['min']:.3f}..{s['max']:.3f}] | wrapped/raw {r['wrapped_over_raw']['median']:.3f}")
    if "gated_over_raw" in r:
        g = r["gated_over_raw"]
        line += f" | gated/raw {g['median']:.3f} [{g['min']:.3f}..{g['max']:.3f}]"
    return line
