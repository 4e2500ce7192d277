"""Overhead of the guard: guarded vs unguarded greedy generation, interleaved in one run.

Arms run interleaved (A B C, A B C, ...) so machine noise hits them alike, each generating exactly
`new_tokens` tokens (min_new_tokens); the result is the median and spread of per-round ratios:
  raw      the processor call, then model.generate: the unguarded model (on the static/compiled paths
           a copy of the model, so that the guard's hooks never touch it)
  wrapped  Guard.generate_batch with gate.mode off (input building + decoding, no steering)
  steered  Guard.generate_batch steering every request (gate always)
  gated    the same behind the probe gate, when a probe is given
`runtime` picks the generation path for every arm: eager (dynamic cache), static (static cache)
or compiled (static cache + torch.compile of the decoding step).
"""

from __future__ import annotations

import copy
import statistics
import time
from collections.abc import Callable, Mapping, Sequence
from typing import Any

import torch
from torch import nn

from guardrail.guard import Guard
from guardrail.policy.schema import Policy, RuntimePolicy
from guardrail.runtime.static_backend import runtime_generate_kwargs
from guardrail.steering.artifact import SteeringArtifact

RUNTIMES: dict[str, dict[str, Any]] = {
    "eager": {},
    "static": {"cache": "static"},
    "compiled": {"cache": "static", "compile": True},
}


def _timed(fn: Callable[[], Any]) -> float:
    if torch.cuda.is_available():
        torch.cuda.synchronize()
    start = time.perf_counter()
    fn()
    if torch.cuda.is_available():
        torch.cuda.synchronize()
    return time.perf_counter() - start


class GenerateClock:
    """Times ``generate`` of the given models (an instance attribute shadows the method while
    active). A call's time minus its time in generate is host work: input preparation for every
    arm, plus the guard's own for the guarded ones. Unlike the ratios, the machine's noise does
    not swamp this difference."""

    def __init__(self, *models: nn.Module) -> None:
        # their generate (transformers') is patched per instance: untyped on nn.Module, hence Any
        self.models: list[Any] = list({id(m): m for m in models}.values())
        self.calls: list[float] = []

    def _wrap(self, real: Callable[..., Any]) -> Callable[..., Any]:
        def generate(*args: Any, **kwargs: Any) -> Any:
            start = time.perf_counter()
            try:
                return real(*args, **kwargs)
            finally:
                if torch.cuda.is_available():
                    torch.cuda.synchronize()
                self.calls.append(time.perf_counter() - start)

        return generate

    def __enter__(self) -> GenerateClock:
        for m in self.models:
            m.generate = self._wrap(m.generate)
        return self

    def __exit__(self, *exc: Any) -> None:
        for m in self.models:
            del m.generate

    def split(self, fn: Callable[[], Any]) -> tuple[float, float]:
        """(total seconds, seconds outside model.generate) for one call."""
        self.calls.clear()
        total = _timed(fn)
        return total, total - sum(self.calls)


def _policy(base: Policy, mode: str, runtime: str) -> Policy:
    data = base.model_dump()
    data["gate"]["mode"] = mode
    data["runtime"] = RUNTIMES[runtime]
    data["limits"]["max_batch"] = max(data["limits"]["max_batch"], 64)
    return Policy.from_dict(data)


def overhead(
    model: nn.Module,
    processor: Any,
    artifact: SteeringArtifact,
    requests: Sequence[str | Mapping[str, Any]],
    *,
    batch: int = 1,
    rounds: int = 5,
    new_tokens: int = 32,
    policy: Policy | None = None,
    probe: Any = None,
    runtime: str = "eager",
    raw_model: nn.Module | None = None,
) -> dict[str, Any]:
    """Median and spread of per-round time ratios against the raw model for one configuration.

    `requests`: questions (str) or request dicts ({"text", "audio"}), cycled to fill the batch.
    `raw_model`: the unguarded model for the static/compiled paths (default: a deep copy).

    >>> overhead(model, tokenizer, artifact, ["How do I bake bread?"] * 8, batch=8)  # doctest: +SKIP
    {'batch': 8, 'median_s': {...}, 'steered_over_raw': {'median': 1.01, 'min': ..., 'max': ...}, ...}
    """
    base = policy or Policy()
    chosen = [requests[i % len(requests)] for i in range(batch)]
    dicts = [{"text": r} if isinstance(r, str) else dict(r) for r in chosen]
    arms, inputs, raw_model = _arms(model, processor, artifact, dicts, base, new_tokens, probe, runtime, raw_model)
    times, host = _interleaved(arms, rounds, GenerateClock(model, raw_model))
    result: dict[str, Any] = {
        "runtime": runtime,
        "batch": batch,
        "rounds": rounds,
        "new_tokens": new_tokens,
        "prompt_tokens": int(inputs["input_ids"].shape[1]),
        "audio": any(r.get("audio") is not None for r in dicts),
        "median_s": {k: statistics.median(v) for k, v in times.items()},
        "host_ms": {k: 1e3 * statistics.median(v) for k, v in host.items()},
    }
    for name in arms:
        if name != "raw":
            result[f"{name}_over_raw"] = _ratio(times[name], times["raw"])
    result["steered_over_wrapped"] = _ratio(times["steered"], times["wrapped"])
    return result


def _arms(
    model: nn.Module,
    processor: Any,
    artifact: SteeringArtifact,
    chosen: list[dict[str, Any]],
    base: Policy,
    new_tokens: int,
    probe: Any,
    runtime: str,
    raw_model: nn.Module | None,
) -> tuple[dict[str, Callable[[], Any]], dict[str, Any], nn.Module]:
    """The timed call of each arm, the batch's model inputs, and the model the raw arm runs."""
    steered = Guard(model, processor, policy=_policy(base, "always", runtime), artifact=artifact)
    wrapped = Guard(model, processor, policy=_policy(base, "off", runtime))
    # the unguarded arm prepares its inputs as the guard does (audio decoding, chat template, processor)
    # in every round: what any serving code pays, so the ratios show what the guard itself adds
    prepare = lambda: steered.prepare_inputs(chosen)
    inputs = prepare()
    gen: dict[str, Any] = {"max_new_tokens": new_tokens, "min_new_tokens": new_tokens, "do_sample": False}
    raw_kwargs = {
        **gen,
        **runtime_generate_kwargs(RuntimePolicy(**RUNTIMES[runtime])),
        "pad_token_id": steered.adapter.pad_token_id(model, processor),
    }
    raw: Any = raw_model  # Any: the raw arm calls transformers' generate, untyped on nn.Module
    if raw is None:
        raw = model if runtime == "eager" else copy.deepcopy(model)
    arms: dict[str, Callable[[], Any]] = {
        "raw": lambda: raw.generate(**prepare(), **raw_kwargs),
        "wrapped": lambda: wrapped.generate_batch(chosen, **gen),
        "steered": lambda: steered.generate_batch(chosen, **gen),
    }
    if probe is not None:
        gated = Guard(model, processor, policy=_policy(base, "probe", runtime), artifact=artifact, probe=probe)
        arms["gated"] = lambda: gated.generate_batch(chosen, **gen)
    return arms, inputs, raw


def _interleaved(
    arms: dict[str, Callable[[], Any]], rounds: int, clock: GenerateClock
) -> tuple[dict[str, list[float]], dict[str, list[float]]]:
    """Per arm, the total and the host seconds (outside model.generate) of each round, after two
    warm-up calls (and compilation); arms rotate so that none always runs first."""
    with torch.inference_mode():
        for fn in arms.values():  # warm-up (and compilation)
            fn()
            fn()
        times: dict[str, list[float]] = {name: [] for name in arms}
        host: dict[str, list[float]] = {name: [] for name in arms}
        names = list(arms)
        with clock:
            for r in range(rounds):
                for name in names[r % len(names) :] + names[: r % len(names)]:  # rotate: no arm always first
                    total, outside = clock.split(arms[name])
                    times[name].append(total)
                    host[name].append(outside)
    return times, host


def _ratio(a: list[float], b: list[float]) -> dict[str, float]:
    ratios = [x / y for x, y in zip(a, b)]
    return {"median": statistics.median(ratios), "min": min(ratios), "max": max(ratios)}


def format_row(name: str, r: dict[str, Any]) -> str:
    s = r["steered_over_raw"]
    audio = " audio" if r.get("audio") else ""
    where = f"{r.get('runtime', 'eager')} b{r['batch']} p{r.get('prompt_tokens', '?')}{audio}"
    line = (
        f"{name} {where}: raw {r['median_s']['raw'] * 1e3:8.1f} ms | steered/raw "
        f"{s['median']:.3f} [{s['min']:.3f}..{s['max']:.3f}] | wrapped/raw {r['wrapped_over_raw']['median']:.3f}"
    )
    if "gated_over_raw" in r:
        g = r["gated_over_raw"]
        line += f" | gated/raw {g['median']:.3f} [{g['min']:.3f}..{g['max']:.3f}]"
    if "host_ms" in r:
        line += " | host ms " + " ".join(f"{k} {v:.2f}" for k, v in r["host_ms"].items())
    return line
