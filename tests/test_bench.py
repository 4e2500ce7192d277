"""The overhead benchmark's bookkeeping (its timings are for benchmarks/, not asserted here)."""

from __future__ import annotations

import pytest
import torch

from guardrail import calibrate
from guardrail.bench import GenerateClock, overhead
from guardrail.defaults import default_calibration_set
from guardrail.testing.tiny import build_tiny


def test_overhead_reports_host_time_outside_generate_and_restores_the_model():
    model, processor = build_tiny("qwen2", seed=0)
    harmful, safe = default_calibration_set()
    artifact = calibrate(model, processor, harmful[:4], safe[:4])
    r = overhead(model, processor, artifact, harmful[:2], batch=2, rounds=3, new_tokens=2)
    assert set(r["host_ms"]) == {"raw", "wrapped", "steered"}
    for arm, ms in r["host_ms"].items():
        assert 0 < ms < 1e3 * r["median_s"][arm]
    assert "generate" not in vars(model)  # the clock's shadowing attribute is gone


def test_generate_clock_counts_only_generate_and_unwinds_on_error():
    model, _ = build_tiny("qwen2", seed=0)
    ids = torch.tensor([[1, 2, 3]])
    with GenerateClock(model, model) as clock:
        total, outside = clock.split(lambda: model.generate(input_ids=ids, max_new_tokens=2, do_sample=False))
        assert len(clock.calls) == 1 and 0 <= outside < total
    assert "generate" not in vars(model)

    class Failing(torch.nn.Module):
        def generate(self, **kwargs):
            raise RuntimeError("out of memory")

    failing = Failing()
    with pytest.raises(RuntimeError, match="out of memory"), GenerateClock(failing) as clock:
        clock.split(failing.generate)
    assert clock.calls and "generate" not in vars(failing)  # timed, and unwound
