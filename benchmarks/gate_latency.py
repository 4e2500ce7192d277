"""Latency of one gate decision with probe v2 at a real model's shape, on CPU (1 thread).

A v2 probe (last + mean, layers 0 .. 3/4 depth) is trained on random activations of the model's
shape (latency does not depend on what it learned), saved and loaded as ONNX. Timed, median of
many calls at batch 1 and 16: onnxruntime alone (`OnnxProbe.score`), the host decision
(`Gate.decide`: features from captured activations, score, verdict), the torch form the guard
scores on the device inside prefill (`LinearProbe.score`), and the masked prompt mean the hooks
take per probe layer. Compare with a prefill of that model (benchmarks/overhead.py, --new-tokens 1).

    python benchmarks/gate_latency.py --layers 24 --hidden 896 --prompt-tokens 40 \\
        --out benchmarks/results/gate_latency_qwen05b_cpu.json
"""

from __future__ import annotations

import argparse
import json
import platform
import statistics
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

import numpy as np
import torch
from transformers import Qwen2Config, Qwen2ForCausalLM

from guardrail import OnnxProbe, Policy
from guardrail.gate.decide import Gate
from guardrail.gate.linear import LinearProbe, linear_form
from guardrail.gate.stacked import train_stacked_probe
from guardrail.steering.activations import masked_mean


def median_us(fn: Callable[[], object], runs: int) -> float:
    for _ in range(min(50, runs)):
        fn()
    times = []
    for _ in range(runs):
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return round(statistics.median(times) * 1e6, 1)


def random_probe(layers: int, hidden: int, folder: Path) -> OnnxProbe:
    g = torch.Generator().manual_seed(0)
    last, mean = torch.randn(layers, 200, hidden, generator=g), torch.randn(layers, 200, hidden, generator=g)
    probe = train_stacked_probe(last, torch.arange(200) % 2, mean=mean, folds=2)
    config = Qwen2Config(
        hidden_size=hidden, num_hidden_layers=layers, intermediate_size=hidden, num_attention_heads=8,
        num_key_value_heads=2, vocab_size=256,
    )  # fmt: skip
    return OnnxProbe.load(probe.bind(Qwen2ForCausalLM(config)).save(folder / "probe"))


def timings(probe: OnnxProbe, gate: Gate, linear: LinearProbe, batch: int, hidden: int, tokens: int, runs: int):
    acts = {layer: torch.randn(batch, hidden) for layer in probe.layers}
    means = {layer: torch.randn(batch, hidden) for layer in probe.layers}
    states, mask = torch.randn(batch, tokens, hidden), torch.ones(batch, tokens, dtype=torch.long)
    feats = np.random.default_rng(0).standard_normal((batch, probe.n_features)).astype(np.float32)
    return {
        "onnxruntime_score_us": median_us(lambda: probe.score(feats), runs),
        "host_decision_us": median_us(lambda: gate.decide(acts, means), runs),
        "torch_form_score_us": median_us(lambda: linear.score(acts, means), runs),
        "masked_mean_per_layer_us": median_us(lambda: masked_mean(states, mask), runs),
    }


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--layers", type=int, default=24)
    ap.add_argument("--hidden", type=int, default=896)
    ap.add_argument("--prompt-tokens", type=int, default=40)
    ap.add_argument("--runs", type=int, default=2000)
    ap.add_argument("--out", type=Path)
    args = ap.parse_args()
    torch.set_num_threads(1)
    probe = random_probe(args.layers, args.hidden, Path(tempfile.mkdtemp()))
    gate = Gate(Policy.from_dict({"gate": {"mode": "probe"}}), probe, can_steer=True)
    linear = linear_form(probe)
    assert linear is not None, "a v2 probe has a torch form"
    report = {"layers_read": probe.layers, "pools": probe.pools, "n_features": probe.n_features}
    for batch in (1, 16):
        report[f"batch_{batch}"] = timings(probe, gate, linear, batch, args.hidden, args.prompt_tokens, args.runs)
    report["machine"] = {"cpu": platform.processor() or platform.machine(), "torch_threads": 1}
    report["command"] = (
        f"python benchmarks/gate_latency.py --layers {args.layers} --hidden {args.hidden} "
        f"--prompt-tokens {args.prompt_tokens} --out {args.out}"
    )
    print(json.dumps(report, indent=1))
    if args.out:
        args.out.write_text(json.dumps(report, indent=1) + "\n", encoding="utf-8")


if __name__ == "__main__":
    main()
