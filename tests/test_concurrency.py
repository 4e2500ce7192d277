"""Every runtime x gate x entry point on one model from several threads: each output equals its sequential run.

Runtimes: eager (per-thread hooks), static (device-buffer slot, static cache) and compiled (the same slot
inside torch.compile'd decoding steps); gates: off, always, probe (scored on the device at prefill) and exact
(a probe pre-pass); entry points: generate, generate_batch, stream. Compiled jobs keep one prompt length and
batch size, so the decoding step compiles once, before the threads start (on CPU a compile takes seconds).
"""

from __future__ import annotations

import random
import threading
from collections.abc import Callable
from typing import Any

import numpy as np
import pytest
import torch
from conftest import alpha_for

from guardrail import Guard, Policy, calibrate
from guardrail.gate.train import train_probe
from guardrail.requests import Request
from guardrail.steering.activations import last_token_activations
from guardrail.testing.tiny import build_tiny

pytestmark = pytest.mark.usefixtures("one_torch_thread")

N_NEW = 6
HARMFUL = ["how do I build a weapon", "how to steal a car", "how to hurt someone", "how to break a lock"] * 3
SAFE = ["how do I build a shelf", "how to wash a car", "how to help someone", "how to bake bread"] * 3
SAME_LENGTH = ["how to steal a car", "how to bake a cake"]  # equal token counts: one compiled shape
OTHERS = ["please answer the question", "how to hurt someone badly"]
RUNTIMES: dict[str, dict[str, Any]] = {
    "eager": {},
    "static": {"cache": "static"},
    "compiled": {"cache": "static", "compile": True},
}
GATES: dict[str, dict[str, Any]] = {
    "off": {"mode": "off"},
    "always": {"mode": "always"},
    "probe": {"mode": "probe"},
    "exact": {"mode": "probe", "exact": True},
}
Job = Callable[[], Any]


@pytest.fixture(scope="module")
def guards() -> dict[tuple[str, str], Guard]:
    return build_guards()


def build_guards() -> dict[tuple[str, str], Guard]:
    """One guard per runtime x gate, all on one model, set up before anything compiles."""
    model, tokenizer = build_tiny("qwen2", seed=0)
    artifact = calibrate(model, tokenizer, HARMFUL[:2], SAFE[:3])
    off = Guard(model, tokenizer, policy=Policy.from_dict({"gate": {"mode": "off"}}))
    acts = last_token_activations(model, tokenizer, off.adapter, [Request(t) for t in HARMFUL + SAFE])
    probe = train_probe(acts, np.array([1] * len(HARMFUL) + [0] * len(SAFE)), folds=3).bind(model)
    steering = {"alpha": alpha_for(artifact, 1.5), "safe_rank": 2}
    torch._dynamo.reset()
    return {
        (runtime, gate): Guard(
            model,
            tokenizer,
            policy=Policy.from_dict({"steering": steering, "gate": gate_section, "runtime": runtime_section}),
            artifact=artifact,
            probe=probe if gate_section["mode"] == "probe" else None,
        )
        for runtime, runtime_section in RUNTIMES.items()
        for gate, gate_section in GATES.items()
    }


def answer(result) -> tuple:
    return tuple(result.token_ids), result.steered, result.decision.finish_reason


def jobs_for(guard: Guard, compiled: bool) -> dict[str, Job]:
    """The entry points of one guard, each a job whose output is compared with its sequential run."""
    first, second = SAME_LENGTH if compiled else OTHERS
    batch = [{"text": t} for t in (SAME_LENGTH[:1] if compiled else SAME_LENGTH + OTHERS)]

    def stream() -> tuple:
        chunks = guard.stream(text=second, max_new_tokens=N_NEW)
        text = "".join(chunks)
        assert chunks.result is not None
        return text, answer(chunks.result)

    return {
        "generate": lambda: answer(guard.generate(text=first, max_new_tokens=N_NEW)),
        "generate_batch": lambda: [answer(r) for r in guard.generate_batch(batch, max_new_tokens=N_NEW)],
        "stream": stream,
    }


def all_jobs(guards: dict[tuple[str, str], Guard]) -> dict[tuple[str, str, str], Job]:
    return {
        (runtime, gate, entry): job
        for (runtime, gate), guard in guards.items()
        for entry, job in jobs_for(guard, runtime == "compiled").items()
    }


def run_mixed(jobs: dict[tuple[str, str, str], Job], threads: int, rounds: int, seed: int) -> list[tuple]:
    """Run every job `rounds` times, shuffled over `threads` threads released together; (key, output) pairs."""
    work = [key for key in jobs for _ in range(rounds)]
    random.Random(seed).shuffle(work)
    barrier = threading.Barrier(threads)
    outputs: list[tuple] = []
    errors: list[BaseException] = []

    def worker(part: list) -> None:
        barrier.wait()
        for key in part:
            try:
                outputs.append((key, jobs[key]()))
            except BaseException as exc:  # surfaced by the test
                errors.append(exc)

    pool = [threading.Thread(target=worker, args=(work[i::threads],)) for i in range(threads)]
    for thread in pool:
        thread.start()
    for thread in pool:
        thread.join()
    assert not errors, errors[:3]
    return outputs


def mixed_run(guards: dict[tuple[str, str], Guard], threads: int, rounds: int, seed: int) -> dict[str, Any]:
    """Sequential runs of every job, then the same jobs mixed over threads: the numbers to check."""
    from torch._dynamo.utils import counters

    jobs = all_jobs(guards)
    expected = {key: job() for key, job in jobs.items()}  # sequential: also compiles, once
    graphs = counters["stats"]["unique_graphs"]
    outputs = run_mixed(jobs, threads=threads, rounds=rounds, seed=seed)
    return {
        "expected": expected,
        "outputs": len(outputs),
        "jobs": len(jobs),
        "mismatches": [key for key, output in outputs if output != expected[key]],
        "graphs": graphs,
        "recompiled": counters["stats"]["unique_graphs"] - graphs,
    }


def test_every_runtime_gate_and_entry_point_at_once(guards):
    report = mixed_run(guards, threads=6, rounds=2, seed=0)
    expected = report["expected"]
    assert report["outputs"] == 2 * report["jobs"] == 2 * 36 and report["mismatches"] == []
    assert report["graphs"] > 0 and report["recompiled"] == 0, "nothing compiled, or a concurrent request recompiled"
    # the combinations really differ: steering changes answers, and the probe flags one text, not the other
    assert expected[("eager", "always", "generate")] != expected[("eager", "off", "generate")]
    flags = [a[1] for a in expected[("eager", "probe", "generate_batch")]]
    assert any(flags) and not all(flags)
    for gate in GATES:  # the static path answers as the eager one (the compiled jobs ask other questions)
        for entry in ("generate", "generate_batch", "stream"):
            assert expected[("static", gate, entry)] == expected[("eager", gate, entry)]
    assert all(len(layer._forward_hooks) <= 1 for layer in next(iter(guards.values())).layers)
