"""Guard overhead on a GPU at the Qwen2-Audio 7B shape (random bf16 weights): one command, JSON out.

Builds `Qwen2AudioForConditionalGeneration` with Qwen2-Audio-7B's dimensions (Whisper-large-v3-shaped
audio tower: 128 mel bins, d_model 1280, 32 layers; Qwen-7B-shaped LM: hidden 4096, 32 layers,
intermediate 11008, vocabulary 156032) and random weights, so no download is needed; calibrates a
steering artifact and an ONNX probe on it; then measures, interleaved, the unguarded model against the
guard steering every request and the guard behind the probe gate, for eager and compiled generation
(static cache + torch.compile), batch 1 and 16, a 64-token text prompt and a 3 s audio prompt,
64 new tokens. Results are written after every configuration, so a run cut short keeps what it did.

    python benchmarks/gpu_overhead.py --out "$OUT/gpu_overhead.json"          # on the GPU, < 5 min
    python benchmarks/gpu_overhead.py --tiny --pairs 2 --out /tmp/check.json  # the same code on CPU
"""

from __future__ import annotations

import argparse
import copy
import json
import platform
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

from guardrail import calibrate
from guardrail.bench import format_row, overhead
from guardrail.defaults import default_calibration_set
from guardrail.gate.onnx_probe import OnnxProbe
from guardrail.gate.train_on_model import fit_probe
from guardrail.testing.tiny import build_tiny, tiny_audio, tiny_tokenizer

SR = 16_000


def qwen2_audio_7b_shape(device: str) -> tuple[torch.nn.Module, object]:
    from transformers import (
        Qwen2AudioConfig,
        Qwen2AudioForConditionalGeneration,
        Qwen2AudioProcessor,
        WhisperFeatureExtractor,
    )

    from guardrail.testing.tiny import QWEN2_AUDIO_TEMPLATE

    tok = tiny_tokenizer("qwen2_audio")
    config = Qwen2AudioConfig(
        audio_config={
            "model_type": "qwen2_audio_encoder",
            "num_mel_bins": 128,
            "d_model": 1280,
            "encoder_layers": 32,
            "encoder_attention_heads": 20,
            "encoder_ffn_dim": 5120,
            "max_source_positions": 1500,
        },
        text_config={
            "model_type": "qwen2",
            "hidden_size": 4096,
            "num_hidden_layers": 32,
            "num_attention_heads": 32,
            "num_key_value_heads": 32,
            "intermediate_size": 11008,
            "vocab_size": 156032,
            "max_position_embeddings": 8192,
            "rms_norm_eps": 1e-5,
            "eos_token_id": tok.convert_tokens_to_ids("<|im_end|>"),
            "pad_token_id": tok.pad_token_id,
        },
        audio_token_index=tok.audio_token_id,
    )
    torch.manual_seed(0)
    with torch.device(device):
        model = Qwen2AudioForConditionalGeneration(config).to(torch.bfloat16).eval()
    model.generation_config.pad_token_id = tok.pad_token_id
    model.generation_config.eos_token_id = [tok.convert_tokens_to_ids("<|im_end|>")]
    processor = Qwen2AudioProcessor(
        feature_extractor=WhisperFeatureExtractor(feature_size=128), tokenizer=tok, chat_template=QWEN2_AUDIO_TEMPLATE
    )
    return model, processor


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--tiny", action="store_true", help="tiny random Qwen2-Audio on CPU (checks the script)")
    parser.add_argument("--pairs", type=int, default=5)
    parser.add_argument("--new-tokens", type=int, default=64)
    parser.add_argument(
        "--configs",
        nargs="+",
        default=["eager:1:text", "eager:16:text", "compiled:1:text", "compiled:16:text", "eager:1:audio"],
        help="runtime:batch:prompt",
    )
    parser.add_argument("--out", type=Path, required=True)
    args = parser.parse_args()
    started = time.perf_counter()
    if args.tiny:
        model, processor = build_tiny("qwen2_audio", seed=0)
    else:
        model, processor = qwen2_audio_7b_shape("cuda")
    harmful, safe = default_calibration_set()
    artifact = calibrate(model, processor, harmful, safe)
    probe = OnnxProbe.load(fit_probe(model, processor, harmful, safe).save(Path(tempfile.mkdtemp()) / "probe"))
    words = "please tell me in detail how this works and why it matters to people like me " * 4
    text = [{"text": f"{q} {words}"[:300]} for q in harmful + safe]
    audio = [
        {"audio": (tiny_audio(3.0, SR, seed=i), SR), "text": "Please answer the question in the audio."}
        for i in range(4)
    ]
    meta = {
        "model": "tiny qwen2_audio" if args.tiny else "Qwen2-Audio 7B shape, random bf16 weights",
        "device": torch.cuda.get_device_name() if torch.cuda.is_available() else "cpu",
        "torch": torch.__version__,
        "machine": platform.machine(),
        "command": "python " + " ".join(sys.argv),
        "setup_s": round(time.perf_counter() - started, 1),
    }
    results, raw_copy = [], None
    for spec in args.configs:
        runtime, batch, prompt = spec.split(":")
        if runtime != "eager" and raw_copy is None:
            raw_copy = copy.deepcopy(model)  # the unguarded baseline never carries the guard's hooks
        r = overhead(
            model,
            processor,
            artifact,
            text if prompt == "text" else audio,
            batch=int(batch),
            rounds=args.pairs,
            new_tokens=args.new_tokens,
            probe=probe,
            runtime=runtime,
            raw_model=None if runtime == "eager" else raw_copy,
        )
        r["prompt"], r["elapsed_s"] = prompt, round(time.perf_counter() - started, 1)
        r["tokens_per_s_raw"] = float(np.round(int(batch) * args.new_tokens / r["median_s"]["raw"], 1))
        print(format_row(meta["model"], r), flush=True)
        results.append(r)
        args.out.write_text(json.dumps({"meta": meta, "results": results}, indent=2) + "\n")
    agree = agreement(model, processor, artifact, probe, text[:4], args.new_tokens)
    print("compiled vs eager, steered greedy tokens:", agree, flush=True)
    args.out.write_text(json.dumps({"meta": meta, "results": results, "compiled_vs_eager": agree}, indent=2) + "\n")


def agreement(model, processor, artifact, probe, requests: list[dict], new_tokens: int) -> dict:
    """Steered greedy tokens, eager vs compiled, on one batch: share of positions that agree (bf16 on a
    GPU need not be bit-identical; fp32 on CPU is, see tests/test_compiled.py)."""
    from guardrail import Guard, Policy

    out = {}
    for mode in ("always", "probe"):
        runs = []
        for runtime in ({}, {"cache": "static", "compile": True}):
            policy = Policy.from_dict({"gate": {"mode": mode}, "runtime": runtime})
            guard = Guard(model, processor, policy=policy, artifact=artifact, probe=probe if mode == "probe" else None)
            runs.append(guard.generate_batch(requests, max_new_tokens=new_tokens))
        same = [sum(a == b for a, b in zip(x.token_ids, y.token_ids)) / max(len(x.token_ids), 1) for x, y in zip(*runs)]
        out[mode] = {
            "token_agreement": float(np.mean(same)),
            "identical": sum(s == 1.0 for s in same),
            "n": len(same),
            "gates_equal": [x.steered for x in runs[0]] == [y.steered for y in runs[1]],
        }
    return out


if __name__ == "__main__":
    main()
