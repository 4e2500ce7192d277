"""Bounded load on `guardrail serve` over loopback: the guarded deployment vs policy `off`, coalescing vs batch 1.

One process loads the model once and serves it twice, on 127.0.0.1: a coalescing server (max_batch = the
number of clients) and a batch-1 server (max_batch 1), each with two deployment ids over the same model,
the policy under test and `off`. Three arms, interleaved in a rotating order within each repetition:

  guarded   the policy under test on the coalescing server
  off       policy `off` on the coalescing server
  bs1       the policy under test on the batch-1 server

N concurrent clients (the official `openai` async client, no retries) send requests for a fixed duration per
arm (open requests then finish; their time counts): a fixed rotation of harmful and benign prompts (and, on an
audio model, a spoken clip every other request), every `stream_every`-th request streamed. Greedy decoding,
`max_tokens` with `min_tokens` equal to it (EOS suppressed), so every arm generates the same tokens per
request. Per arm: requests/s, completion tokens/s, p50/p99 latency, p50 time to the first streamed content,
errors, steered count, generate_batch calls. Per repetition: the throughput ratios guarded/off and
guarded/bs1 (coalesced/bs1); their median, min and max over the repetitions.

    python benchmarks/serve_load.py --tiny --out benchmarks/results/serve_load_tiny_cpu.json
    python benchmarks/serve_load.py --testbed qwen2.5-coder-0.5b-instruct --clients 8 --repetitions 3 \\
        --duration 40 --out benchmarks/results/serve_load_qwen05b_cpu.json

`--waves K` measures guarded/off alone, more tightly: K paired waves, each every client's one request sent at
once (one batch), the guarded and off arms back to back with the same requests (see run_waves).
"""

from __future__ import annotations

import argparse
import asyncio
import base64
import io
import json
import os
import platform
import statistics
import sys
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import openai
import soundfile as sf
import torch

from guardrail import Guard
from guardrail.defaults import default_calibration_set
from guardrail.serve import (
    BackgroundServer,
    Deployment,
    Deployments,
    ServeConfig,
    ServeLimits,
    create_app,
    load_deployments,
)
from guardrail.testing.tiny import SAMPLING_RATE, tiny_audio, tiny_guard, tiny_noise

ARMS = ("guarded", "off", "bs1")
AUDIO_PROMPT = "Please answer the question in the audio."


@dataclass(frozen=True)
class Workload:
    """What every client sends: `prompts` (chat messages) in rotation, every `stream_every`-th streamed."""

    prompts: list[list[dict[str, Any]]]
    max_tokens: int = 32
    stream_every: int = 4  # 0: no streams

    def request(self, client: int, index: int) -> tuple[list[dict[str, Any]], bool]:
        messages = self.prompts[(client * 7 + index) % len(self.prompts)]
        stream = self.stream_every > 0 and (client + index) % self.stream_every == 0
        return messages, stream


def text_prompts(count: int = 16, shout: bool = False) -> list[list[dict[str, Any]]]:
    """Harmful and benign questions, alternating (the gate steers about half); `shout`: the harmful ones in
    upper case, the tiny text models' harmful stand-in (guardrail.testing.tiny)."""
    harmful, safe = default_calibration_set()
    pairs = [q for h, b in zip(harmful, safe) for q in (h.upper() if shout else h, b)][:count]
    return [[{"role": "user", "content": q}] for q in pairs]


def wav_part(clip: np.ndarray) -> dict[str, Any]:
    out = io.BytesIO()
    sf.write(out, clip, SAMPLING_RATE, format="WAV", subtype="PCM_16")
    data = base64.b64encode(out.getvalue()).decode()
    return {"type": "input_audio", "input_audio": {"data": data, "format": "wav"}}


def audio_prompts(count: int = 16) -> list[list[dict[str, Any]]]:
    """Text questions and spoken clips (noise: the tiny gate's harmful stand-in; tones: benign), alternating."""
    texts = text_prompts(count, shout=True)
    prompts = []
    for i in range(count):
        if i % 2:
            clip = tiny_noise(1.0, seed=5000 + i) if i % 4 == 1 else tiny_audio(1.0, seed=6000 + i)
            parts = [wav_part(clip), {"type": "text", "text": AUDIO_PROMPT}]
            prompts.append([{"role": "user", "content": parts}])
        else:
            prompts.append(texts[i])
    return prompts


# -- one arm -----------------------------------------------------------------------------------------
async def one_request(client: openai.AsyncOpenAI, model: str, messages: list, stream: bool, tokens: int) -> dict:
    """One request's record: ok, latency_s, ttft_s (streams), completion_tokens, steered, error."""
    start = time.perf_counter()
    extra = {"min_tokens": tokens}
    record: dict[str, Any] = {"stream": stream, "audio": not isinstance(messages[0]["content"], str)}
    try:
        if stream:
            chunks = await client.chat.completions.create(
                model=model, messages=messages, max_tokens=tokens, stream=True,
                stream_options={"include_usage": True}, extra_body=extra,
            )  # fmt: skip
            async for chunk in chunks:
                if chunk.choices and chunk.choices[0].delta.content and "ttft_s" not in record:
                    record["ttft_s"] = time.perf_counter() - start
                field = (chunk.model_extra or {}).get("guardrail")
                if field:
                    record["steered"] = bool(field["steered"])
                if chunk.usage is not None:
                    record["completion_tokens"] = chunk.usage.completion_tokens
        else:
            reply = await client.chat.completions.create(
                model=model, messages=messages, max_tokens=tokens, extra_body=extra
            )
            record["steered"] = bool((reply.model_extra or {})["guardrail"]["steered"])
            record["completion_tokens"] = reply.usage.completion_tokens if reply.usage else 0
        record["ok"] = True
    except (openai.OpenAIError, KeyError) as exc:
        record.update(ok=False, error=f"{type(exc).__name__}: {str(exc)[:200]}")
    record["latency_s"] = time.perf_counter() - start
    return record


async def drive(
    base_url: str, model: str, workload: Workload, clients: int, duration: float, requests: int | None, offset: int = 0
):
    """`clients` concurrent loops, each sending until `duration` has passed (or `requests` each are done), the
    k-th request of a loop being the workload's request `offset + k`."""
    client = openai.AsyncOpenAI(base_url=base_url, api_key="unused", max_retries=0, timeout=600)
    deadline = time.perf_counter() + duration
    records: list[dict] = []

    async def loop(c: int) -> None:
        index = 0
        while time.perf_counter() < deadline and (requests is None or index < requests):
            messages, stream = workload.request(c, offset + index)
            records.append(await one_request(client, model, messages, stream, workload.max_tokens))
            index += 1

    start = time.perf_counter()
    try:
        await asyncio.gather(*(loop(c) for c in range(clients)))
    finally:
        await client.close()
    return records, time.perf_counter() - start


def percentile(values: Sequence[float], q: float) -> float | None:
    """Nearest-rank percentile (q in 0..100); None for no values."""
    if not values:
        return None
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, max(0, int(np.ceil(q / 100 * len(ordered))) - 1))]


def ms(value: float | None) -> float | None:
    return None if value is None else round(value * 1e3, 1)


def summarize(records: list[dict], elapsed: float) -> dict[str, Any]:
    ok = [r for r in records if r["ok"]]
    latencies = [r["latency_s"] for r in ok]
    ttfts = [r["ttft_s"] for r in ok if r["stream"] and "ttft_s" in r]
    tokens = sum(r.get("completion_tokens", 0) for r in ok)
    return {
        "requests": len(records),
        "ok": len(ok),
        "errors": len(records) - len(ok),
        "error_samples": sorted({r["error"] for r in records if not r["ok"]})[:3],
        "streams": sum(r["stream"] for r in records),
        "audio": sum(r["audio"] for r in records),
        "steered": sum(bool(r.get("steered")) for r in ok),
        "completion_tokens": tokens,
        "elapsed_s": round(elapsed, 2),
        "requests_per_s": round(len(ok) / elapsed, 3),
        "tokens_per_s": round(tokens / elapsed, 2),
        "latency_p50_ms": ms(percentile(latencies, 50)),
        "latency_p99_ms": ms(percentile(latencies, 99)),
        "ttft_p50_ms": ms(percentile(ttfts, 50)),
    }


# -- the servers and the repetitions ------------------------------------------------------------------
@dataclass
class Target:
    """An arm's server and deployment id."""

    server: BackgroundServer
    model: str

    @property
    def batches(self) -> int:
        return int(self.server.app.state.serving.worker.batches)


def start_servers(deployments: Deployments, clients: int, max_wait_ms: float) -> dict[str, BackgroundServer]:
    """The coalescing server (max_batch = clients) and the batch-1 server, both over `deployments`."""
    servers = {}
    for name, batch in (("coalesced", clients), ("bs1", 1)):
        limits = ServeLimits(max_batch=batch, max_wait_ms=max_wait_ms, queue_size=max(64, 4 * clients))
        servers[name] = BackgroundServer(create_app(deployments, limits), ready_timeout=600).start()
    return servers


def targets(servers: dict[str, BackgroundServer], policy_id: str) -> dict[str, Target]:
    return {
        "guarded": Target(servers["coalesced"], policy_id),
        "off": Target(servers["coalesced"], "off"),
        "bs1": Target(servers["bs1"], policy_id),
    }


def run_arm(
    target: Target, workload: Workload, clients: int, duration: float, requests: int | None, offset: int = 0
) -> dict:
    before, load = target.batches, os.getloadavg()[0]
    url = target.server.base_url
    records, elapsed = asyncio.run(drive(url, target.model, workload, clients, duration, requests, offset))
    report = summarize(records, elapsed)
    report["generate_batch_calls"] = target.batches - before
    report["loadavg_1m_before"] = round(load, 2)
    return report


def ratios(rep: dict[str, dict], key: str) -> dict[str, float | None]:
    def ratio(a: str, b: str) -> float | None:
        return round(rep[a][key] / rep[b][key], 3) if rep[b][key] else None

    return {"guarded_over_off": ratio("guarded", "off"), "coalesced_over_bs1": ratio("guarded", "bs1")}


def spread(values: list[float | None]) -> dict[str, float | None]:
    present = [v for v in values if v is not None]
    if not present:
        return {"median": None, "min": None, "max": None}
    return {"median": round(statistics.median(present), 3), "min": min(present), "max": max(present)}


def run_load(
    deployments: Deployments,
    policy_id: str,
    workload: Workload,
    *,
    clients: int = 8,
    duration: float = 30.0,
    requests: int | None = None,
    repetitions: int = 3,
    max_wait_ms: float = 5.0,
    warmup: bool = True,
) -> dict[str, Any]:
    """Start both servers, run the arms interleaved `repetitions` times, stop the servers; the report."""
    servers = start_servers(deployments, clients, max_wait_ms)
    try:
        arms = targets(servers, policy_id)
        if warmup:  # first-call allocations at every batch shape, unrecorded
            for target in arms.values():
                run_arm(target, workload, clients, 3600.0, 1)
        reps = []
        for r in range(repetitions):
            order = ARMS[r % len(ARMS) :] + ARMS[: r % len(ARMS)]
            rep: dict[str, Any] = {}
            for arm in order:
                rep[arm] = run_arm(arms[arm], workload, clients, duration, requests)
                print(f"repetition {r + 1} {arm}: {rep[arm]['requests_per_s']} req/s", file=sys.stderr, flush=True)
            rep["order"] = list(order)
            rep["ratios_requests_per_s"] = ratios(rep, "requests_per_s")
            rep["ratios_tokens_per_s"] = ratios(rep, "tokens_per_s")
            reps.append(rep)
    finally:
        for server in servers.values():
            server.stop()
    summary = {
        f"{key}_{name}": spread([rep[f"ratios_{key}"][name] for rep in reps])
        for key in ("requests_per_s", "tokens_per_s")
        for name in ("guarded_over_off", "coalesced_over_bs1")
    }
    return {"repetitions": reps, "summary": summary}


def run_waves(
    deployments: Deployments,
    policy_id: str,
    workload: Workload,
    *,
    clients: int = 8,
    waves: int = 30,
    max_wait_ms: float = 5.0,
    blocks: int = 3,
) -> dict[str, Any]:
    """Paired waves, guarded vs off: in each wave every client sends one request at once (one batch of `clients`,
    the same requests in both arms, new ones each wave), the two arms back to back in alternating order. The
    ratio of a pair is off's wave time over guarded's (throughput guarded/off); its median over all waves, and
    over each of `blocks` consecutive blocks of waves (the spread between runs)."""
    servers = start_servers(deployments, clients, max_wait_ms)
    try:
        arms = targets(servers, policy_id)
        for arm in ("guarded", "off"):  # first-call allocations, unrecorded
            run_arm(arms[arm], workload, clients, 3600.0, 1)
        pairs = []
        for w in range(waves):
            times = {}
            for arm in ("guarded", "off") if w % 2 == 0 else ("off", "guarded"):
                report = run_arm(arms[arm], workload, clients, 3600.0, 1, offset=w)
                assert report["errors"] == 0, report["error_samples"]
                times[arm] = report["elapsed_s"]
            pairs.append({"wave": w, **times, "guarded_over_off": round(times["off"] / times["guarded"], 4)})
    finally:
        for server in servers.values():
            server.stop()
    ratios = [p["guarded_over_off"] for p in pairs]
    size = max(1, len(ratios) // blocks)
    by_block = [round(statistics.median(ratios[i * size : (i + 1) * size]), 3) for i in range(blocks)]
    quartiles = statistics.quantiles(ratios, n=4) if len(ratios) > 1 else [ratios[0]] * 3
    return {
        "waves": pairs,
        "summary": {
            "guarded_over_off_median": round(statistics.median(ratios), 3),
            "guarded_over_off_iqr": [round(quartiles[0], 3), round(quartiles[2], 3)],
            "guarded_over_off_by_block": by_block,
        },
    }


# -- models ------------------------------------------------------------------------------------------
def tiny_deployments(family: str, policy: str) -> Deployments:
    guarded = tiny_guard(family, policy)
    off = Guard(guarded.model, guarded.processor, policy="off")
    return Deployments([Deployment.of(policy, guarded), Deployment.of("off", off)])


def testbed_deployments(name: str, policy: str) -> tuple[Deployments, bool]:
    """The testbed's model with its cached artifact and probe (guardrail_testbeds), as the server loads it."""
    from guardrail_testbeds.guarded import guarded_testbed

    model_dir, artifact = guarded_testbed(name)
    config = ServeConfig.model_validate(
        {
            "model": {"path": str(model_dir), "artifact": str(artifact), "device": "cpu"},
            "policies": [{"policy": policy, "id": policy}, {"policy": "off", "id": "off"}],
        }
    )
    deployments = load_deployments(config)
    return deployments, bool(deployments.first.guard.adapter.takes_audio)


def parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    ap = argparse.ArgumentParser(description=(__doc__ or "").splitlines()[0])
    source = ap.add_mutually_exclusive_group(required=True)
    source.add_argument("--tiny", action="store_true", help="a tiny random model built in-process")
    source.add_argument("--testbed", help="a built testbed, e.g. qwen2.5-coder-0.5b-instruct")
    ap.add_argument("--family", default="qwen2_audio", help="--tiny: the tiny model's family")
    ap.add_argument("--policy", default="gated", help="the policy under test")
    ap.add_argument("--clients", type=int, default=8)
    ap.add_argument("--duration", type=float, default=10.0, help="seconds each arm sends new requests")
    ap.add_argument("--repetitions", type=int, default=3)
    ap.add_argument("--max-tokens", type=int, default=32)
    ap.add_argument("--stream-every", type=int, default=4, help="every k-th request streamed (0: none)")
    ap.add_argument("--max-wait-ms", type=float, default=5.0)
    ap.add_argument("--threads", type=int, default=None, help="torch intra-op threads (default: torch's)")
    ap.add_argument("--waves", type=int, default=0, help="paired waves guarded vs off instead of timed arms")
    ap.add_argument("--out", type=Path)
    return ap.parse_args(argv)


def main(argv: Sequence[str] | None = None) -> None:
    args = parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    loaded = time.perf_counter()
    if args.tiny:
        deployments, audio = tiny_deployments(args.family, args.policy), "audio" in args.family
    else:
        deployments, audio = testbed_deployments(args.testbed, args.policy)
    prompts = audio_prompts() if audio else text_prompts(shout=bool(args.tiny))
    workload = Workload(prompts, args.max_tokens, args.stream_every)
    load_before = os.getloadavg()
    report: dict[str, Any] = {
        "model": f"tiny {args.family}" if args.tiny else args.testbed,
        "policy": args.policy,
        "clients": args.clients,
        "duration_s": args.duration,
        "max_tokens": args.max_tokens,
        "min_tokens": args.max_tokens,
        "stream_every": args.stream_every,
        "audio_prompts": audio,
        "max_wait_ms": args.max_wait_ms,
        "load_s": round(time.perf_counter() - loaded, 1),
    }
    if args.waves:
        report |= run_waves(
            deployments, args.policy, workload, clients=args.clients, waves=args.waves, max_wait_ms=args.max_wait_ms
        )
    else:
        report |= run_load(
            deployments, args.policy, workload, clients=args.clients, duration=args.duration,
            repetitions=args.repetitions, max_wait_ms=args.max_wait_ms,
        )  # fmt: skip
    report["machine"] = {
        "cpu": platform.processor() or platform.machine(),
        "cores": os.cpu_count(),
        "torch_threads": torch.get_num_threads(),
        "loadavg_before": [round(x, 2) for x in load_before],
        "loadavg_after": [round(x, 2) for x in os.getloadavg()],
    }
    report["command"] = "python " + " ".join(["benchmarks/serve_load.py", *(argv or sys.argv[1:])])
    print(json.dumps(report, indent=1))
    if args.out:
        args.out.write_text(json.dumps(report, indent=1) + "\n", encoding="utf-8")


if __name__ == "__main__":
    main()
