"""The serve load benchmark's core (benchmarks/serve_load.py) on a tiny text model: a short run of every arm,
the report's shape, and every request answered with exactly max_tokens tokens (min_tokens). Its timings are
for benchmarks/results, not asserted here."""

from __future__ import annotations

import importlib.util
import sys
from pathlib import Path

import pytest

pytestmark = pytest.mark.usefixtures("one_torch_thread")

SCRIPT = Path(__file__).resolve().parents[1] / "benchmarks" / "serve_load.py"


@pytest.fixture(scope="module")
def serve_load():
    spec = importlib.util.spec_from_file_location("serve_load", SCRIPT)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules["serve_load"] = module  # dataclasses resolve their module by name
    spec.loader.exec_module(module)
    yield module
    sys.modules.pop("serve_load", None)


def test_every_arm_answers_every_request(serve_load):
    deployments = serve_load.tiny_deployments("qwen2", "gated")
    workload = serve_load.Workload(serve_load.text_prompts(8, shout=True), max_tokens=6, stream_every=2)
    report = serve_load.run_load(
        deployments, "gated", workload, clients=3, duration=60.0, requests=2, repetitions=2, warmup=False
    )
    assert len(report["repetitions"]) == 2
    assert [rep["order"] for rep in report["repetitions"]] == [["guarded", "off", "bs1"], ["off", "bs1", "guarded"]]
    for rep in report["repetitions"]:
        for arm in serve_load.ARMS:
            result = rep[arm]
            assert result["requests"] == result["ok"] == 6 and result["errors"] == 0, result["error_samples"]
            assert result["completion_tokens"] == 6 * 6  # min_tokens: no answer ends early
            assert result["streams"] == 3 and result["ttft_p50_ms"] is not None
            assert result["latency_p50_ms"] <= result["latency_p99_ms"]
            assert result["requests_per_s"] > 0 and result["generate_batch_calls"] >= 1
        assert rep["off"]["steered"] == 0 < rep["guarded"]["steered"]  # the stand-in harmful half is steered
        assert set(rep["ratios_requests_per_s"]) == {"guarded_over_off", "coalesced_over_bs1"}
    assert set(report["summary"]["requests_per_s_guarded_over_off"]) == {"median", "min", "max"}


def test_batch_one_never_coalesces(serve_load):
    """The bs1 arm runs one generate_batch per request (no streams here: a stream is not a batch)."""
    deployments = serve_load.tiny_deployments("qwen2", "gated")
    workload = serve_load.Workload(serve_load.text_prompts(4, shout=True), max_tokens=4, stream_every=0)
    report = serve_load.run_load(
        deployments, "gated", workload, clients=4, duration=60.0, requests=2, repetitions=1, warmup=False
    )
    rep = report["repetitions"][0]
    assert rep["bs1"]["generate_batch_calls"] == rep["bs1"]["ok"] == 8


def test_min_tokens_above_max_tokens_is_refused(serve_load):
    from guardrail.errors import RequestError
    from guardrail.policy import Policy
    from guardrail.serve.convert import gen_params
    from guardrail.serve.protocol import ChatCompletionRequest

    body = ChatCompletionRequest(model="m", messages=[{"role": "user", "content": "hi"}], max_tokens=4, min_tokens=5)
    with pytest.raises(RequestError, match="min_tokens"):
        gen_params(body, Policy.of("off"))
    body = ChatCompletionRequest(model="m", messages=[{"role": "user", "content": "hi"}], max_tokens=4, min_tokens=4)
    assert gen_params(body, Policy.of("off")).kwargs()["min_new_tokens"] == 4


def test_paired_waves_send_the_same_requests_to_both_arms(serve_load):
    deployments = serve_load.tiny_deployments("qwen2", "gated")
    workload = serve_load.Workload(serve_load.text_prompts(shout=True), max_tokens=4, stream_every=4)
    report = serve_load.run_waves(deployments, "gated", workload, clients=4, waves=4, blocks=2)
    assert [w["wave"] for w in report["waves"]] == [0, 1, 2, 3]
    for wave in report["waves"]:
        assert wave["guarded_over_off"] == pytest.approx(wave["off"] / wave["guarded"], rel=1e-3)
    summary = report["summary"]
    assert len(summary["guarded_over_off_by_block"]) == 2 and summary["guarded_over_off_median"] > 0
    assert workload.request(0, 1) != workload.request(0, 0)  # each wave sends new requests
