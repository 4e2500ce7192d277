"""Soak: many mixed requests on one model from several threads leave memory, hooks and threads flat.

The mix: eager and static guards (always, probe, off), generate / generate_batch / stream (read to the end,
closed early, or abandoned), requests that fail validation, and static guards set up and dropped along the
way (their slot hooks must leave with the last one). The short run is part of the suite; the long one
(thousands of requests) is marked slow: `python -m pytest tests/test_soak.py -m slow -s` prints its numbers.
"""

from __future__ import annotations

import gc
import os
import random
import threading
import time

import numpy as np
import pytest
import torch
from conftest import alpha_for

from guardrail import Guard, GuardrailError, Policy, calibrate
from guardrail.gate.train import train_probe
from guardrail.requests import Request
from guardrail.runtime.static import slot_of
from guardrail.steering.activations import last_token_activations
from guardrail.testing.tiny import build_tiny

HARMFUL = ["how do I build a weapon", "how to steal a car", "how to hurt someone", "how to break a lock"] * 3
SAFE = ["how do I build a shelf", "how to wash a car", "how to help someone", "how to bake bread"] * 3
TEXTS = ["please answer the question", "how to steal a car", "how do I bake a cake", "tell me about the sea"]


def rss() -> int:
    """Resident memory of this process in bytes (Linux)."""
    with open("/proc/self/statm") as statm:
        return int(statm.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")


def hook_count(layers) -> int:
    return sum(len(layer._forward_hooks) for layer in layers)


class Soak:
    """One model, a few long-lived guards, and a random mix of calls against them."""

    def __init__(self) -> None:
        self.model, self.tokenizer = build_tiny("qwen2", seed=0)
        self.artifact = calibrate(self.model, self.tokenizer, HARMFUL[:2], SAFE[:3])
        off = Guard(self.model, self.tokenizer, policy=Policy.from_dict({"gate": {"mode": "off"}}))
        acts = last_token_activations(self.model, self.tokenizer, off.adapter, [Request(t) for t in HARMFUL + SAFE])
        self.probe = train_probe(acts, np.array([1] * len(HARMFUL) + [0] * len(SAFE)), folds=3).bind(self.model)
        self.alpha = alpha_for(self.artifact, 1.5)
        self.guards = [
            self.guard("off"),
            self.guard("always"),
            self.guard("probe"),
            self.guard("always", {"cache": "static"}),
            self.guard("probe", {"cache": "static"}),
        ]
        self.layers = off.layers
        self.counts = {"ok": 0, "refused": 0, "closed": 0, "abandoned": 0, "guards": 0}
        self.lock = threading.Lock()

    def guard(self, mode: str, runtime: dict | None = None) -> Guard:
        policy = Policy.from_dict(
            {
                "steering": {"alpha": self.alpha, "safe_rank": 2},
                "gate": {"mode": mode},
                "runtime": runtime or {},
                "limits": {"max_new_tokens": 8},
            }
        )
        return Guard(self.model, self.tokenizer, policy=policy, artifact=self.artifact, probe=self.probe)

    def count(self, what: str) -> None:
        with self.lock:
            self.counts[what] += 1

    def one(self, rng: random.Random) -> None:
        """One random call."""
        guard, text, kind = rng.choice(self.guards), rng.choice(TEXTS), rng.randrange(8)
        if kind == 0:
            guard.generate_batch([{"text": t} for t in rng.sample(TEXTS, 2)], max_new_tokens=4)
        elif kind == 1:
            assert "".join(guard.stream(text=text, max_new_tokens=6)) is not None
        elif kind == 2:
            with guard.stream(text=text, max_new_tokens=8) as stream:
                next(iter(stream), None)
            self.count("closed")
            return
        elif kind == 3:
            next(iter(guard.stream(text=text, max_new_tokens=8)), None)  # dropped half-read
            self.count("abandoned")
            return
        elif kind == 4:
            bad = rng.choice([{"max_new_tokens": float("nan")}, {"max_new_tokens": 99}, {"num_return_sequences": 2}])
            with pytest.raises(GuardrailError):
                guard.generate(text=rng.choice([text, "x" * 40_000]), **bad)
            self.count("refused")
            return
        elif kind == 5 and rng.random() < 0.1:  # a short-lived static guard: attach, steer, drop
            self.guard("always", {"cache": "static"}).generate(text=text, max_new_tokens=3)
            self.count("guards")
        else:
            guard.generate(text=text, max_new_tokens=rng.choice([2, 4, 6]))
        self.count("ok")

    def run(self, requests: int, threads: int, seed: int) -> None:
        errors: list[BaseException] = []

        def worker(index: int) -> None:
            rng = random.Random(seed * 1000 + index)
            for _ in range(requests // threads):
                try:
                    self.one(rng)
                except BaseException as exc:  # surfaced by the test
                    errors.append(exc)

        pool = [threading.Thread(target=worker, args=(i,)) for i in range(threads)]
        for thread in pool:
            thread.start()
        for thread in pool:
            thread.join()
        assert not errors, errors[:3]


def settle(baseline_threads: int, seconds: float = 30.0) -> int:
    """Wait for worker threads of abandoned streams to end; the number of threads then."""
    deadline = time.monotonic() + seconds
    while threading.active_count() > baseline_threads and time.monotonic() < deadline:
        gc.collect()
        time.sleep(0.05)
    return threading.active_count()


def soak(requests: int, threads: int = 4) -> dict:
    torch_threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        baseline = threading.active_count()
        world = Soak()
        world.run(max(40, requests // 10), threads, seed=0)  # warm-up: allocator pools, caches
        settle(baseline)
        gc.collect()
        rss_start, started = rss(), time.perf_counter()
        world.run(requests, threads, seed=1)
        thread_count = settle(baseline)
        gc.collect()
        report = {
            "requests": requests,
            "seconds": round(time.perf_counter() - started, 1),
            "rss_growth_mb": round((rss() - rss_start) / 2**20, 1),
            "layers": len(world.layers),
            "hooks_with_guards": hook_count(world.layers),
            "threads_over_baseline": thread_count - baseline,
            **world.counts,
        }
        layers = world.layers
        del world
        gc.collect()
        report["hooks_after_guards"] = hook_count(layers)
        report["slot_after_guards"] = slot_of(layers) is not None
        return report
    finally:
        torch.set_num_threads(torch_threads)


def check(report: dict, rss_budget_mb: float) -> None:
    print("\nsoak:", report)
    assert report["threads_over_baseline"] == 0
    assert report["hooks_with_guards"] == report["layers"]  # the static guards' slot: one hook per layer
    assert report["hooks_after_guards"] == 0 and not report["slot_after_guards"]
    assert report["rss_growth_mb"] < rss_budget_mb
    assert report["closed"] and report["abandoned"] and report["refused"]


@pytest.mark.skipif(not os.path.exists("/proc/self/statm"), reason="reads RSS from /proc")
def test_soak_short():
    check(soak(1000), rss_budget_mb=64)


@pytest.mark.slow
@pytest.mark.skipif(not os.path.exists("/proc/self/statm"), reason="reads RSS from /proc")
def test_soak_long():
    check(soak(10_000), rss_budget_mb=64)
