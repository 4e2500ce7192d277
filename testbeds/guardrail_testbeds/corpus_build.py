"""Build the stage-1 speech corpus (:mod:`guardrail_testbeds.speech_corpus`): speak, encode once, write shards.

    python -m guardrail_testbeds.corpus_build train --n 5000 [--out DIR]    # resumable, shard by shard
    python -m guardrail_testbeds.corpus_build held --n 300                  # held-out generated sentences
    python -m guardrail_testbeds.corpus_build figstep --start 50 --stop 100 # spoken FigStep safe questions

``DIR`` defaults to ``cache_dir()/stage1/corpus``. Synthesis runs espeak-ng in ``--workers`` threads (each a
subprocess); encoding runs the Whisper tiny.en tower of the testbed (no LM loaded) on each clip's real frames
(``lalm.encode_audio``), exactly as the testbed's evaluation path does. ``build.jsonl`` logs seconds per shard.
FigStep clips are spoken by ``speech.speak_to_file``, the speaker of ``guardrail eval --spoken``, so the voices
are the evaluation's own; they are for measuring only, never for training.
"""

from __future__ import annotations

import argparse
import json
import time
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from types import SimpleNamespace
from typing import Any

from guardrail_testbeds import build, lalm, speech, speech_corpus, whisper_ct2

SHARD_SIZE = 500  # ~40 MB of fp16 frames: under the device's 64 MiB per file


def default_dir() -> Path:
    return build.cache_dir() / "stage1" / "corpus"


def load_tower(device: str = "cpu") -> Any:
    """The testbed's audio tower (Qwen2-Audio's encoder with Whisper tiny.en's weights), float32, eval mode,
    wrapped so that ``lalm.encode_audio(tower, ...)`` takes it; the LM is not loaded."""
    import torch
    from safetensors.torch import load_file
    from transformers import Qwen2AudioEncoder, Qwen2AudioEncoderConfig, WhisperConfig

    if not whisper_ct2.is_converted():
        whisper_ct2.convert()
    path = whisper_ct2.hf_path()
    w = WhisperConfig.from_pretrained(path)
    config = Qwen2AudioEncoderConfig(
        num_mel_bins=w.num_mel_bins, d_model=w.d_model, encoder_layers=w.encoder_layers,
        encoder_attention_heads=w.encoder_attention_heads, encoder_ffn_dim=w.encoder_ffn_dim,
        max_source_positions=w.max_source_positions, activation_function=w.activation_function,
        scale_embedding=False, dropout=0.0, attention_dropout=0.0, activation_dropout=0.0,
    )  # fmt: skip
    config._attn_implementation = "sdpa"
    sd = {k[len("model.encoder.") :]: v.float() for k, v in load_file(str(path / "model.safetensors")).items()
          if k.startswith("model.encoder.")}  # fmt: skip
    tower = Qwen2AudioEncoder(config)
    tower.load_state_dict(sd, strict=True)
    tower.requires_grad_(False).eval()
    tower.to(torch.device(device))  # type: ignore[arg-type]  # transformers wraps .to; this is nn.Module.to
    return SimpleNamespace(model=SimpleNamespace(audio_tower=tower))


def features(fe: Any, waves: Sequence[Any], device: str = "cpu") -> tuple[Any, Any]:
    """Whisper log-mel features and frame mask as the processor's 30-second padding gives them, computed on
    each batch's longest clip plus one second of silence instead (~7x less work for 4-second clips): the
    global maximum that clamps the log-mel comes from the speech, and every frame ``encode_audio`` reads
    (the real ones and the two after) sees the same samples and zeros either way."""
    import numpy as np
    import torch

    pad = np.zeros(lalm.SAMPLING_RATE, dtype=np.float32)
    padded = [np.concatenate([np.asarray(w, dtype=np.float32), pad]) for w in waves]
    f = fe(padded, sampling_rate=lalm.SAMPLING_RATE, padding="longest", return_tensors="pt", device=device)
    frames = torch.tensor([-(-len(w) // fe.hop_length) for w in waves])
    mask = (torch.arange(f["input_features"].shape[-1])[None, :] < frames[:, None]).long()
    return f["input_features"], mask


def encode(tower: Any, waves: Sequence[Any]) -> list[Any]:
    """Encoder outputs per waveform (16 kHz float32), fp16 on CPU, one clip at a time."""
    import torch
    from transformers import WhisperFeatureExtractor

    bins = tower.model.audio_tower.config.num_mel_bins
    fe = WhisperFeatureExtractor(feature_size=bins, sampling_rate=lalm.SAMPLING_RATE)
    out = []
    with torch.inference_mode():
        for w in waves:
            feats, mask = features(fe, [w])
            out.append(lalm.encode_audio(tower, feats, mask)[0].to(torch.float16).cpu())
    return out


def encode_batched(tower: Any, waves: Sequence[Any], batch: int = 64) -> list[Any]:
    """``encode`` for many clips at once (an accelerator's way): the same layers as ``lalm.encode_audio`` on
    each batch's longest real length, with every clip's attention limited to its own frames; matches the
    per-clip outputs to float rounding. Features are computed on the tower's device."""
    import torch
    from transformers import WhisperFeatureExtractor

    enc = tower.model.audio_tower
    dev = enc.conv1.weight.device
    fe = WhisperFeatureExtractor(feature_size=enc.config.num_mel_bins, sampling_rate=lalm.SAMPLING_RATE)
    out: list[Any] = [None] * len(waves)
    order = sorted(range(len(waves)), key=lambda i: len(waves[i]))  # similar lengths share a batch
    with torch.inference_mode():
        for k in range(0, len(order), batch):
            idx = order[k : k + batch]
            feats, mask = features(fe, [waves[i] for i in idx], str(dev))
            for i, x in zip(idx, _tower_batch(enc, feats.to(dev), mask.to(dev))):
                out[i] = x.to(torch.float16).cpu()
    return out


def _tower_batch(tower: Any, feats: Any, mask: Any) -> list[Any]:
    import torch
    from torch import nn

    n = mask.sum(-1)
    n_conv, n_tok = tower._get_feat_extract_output_lengths(n)
    x = feats[:, :, : int(n.max()) + 2].to(tower.conv1.weight.dtype)
    x = nn.functional.gelu(tower.conv1(x))
    x = nn.functional.gelu(tower.conv2(x)).permute(0, 2, 1)[:, : int(n_conv.max())]
    x = x + tower.embed_positions.weight[: x.shape[1]]
    keys = torch.arange(x.shape[1], device=x.device)[None, :] < n_conv[:, None]  # [B, T]
    attn = torch.zeros(keys.shape, dtype=x.dtype, device=x.device).masked_fill(~keys, torch.finfo(x.dtype).min)
    attn = attn[:, None, None, :]
    for layer in tower.layers:
        x = layer(x, attn)
        x = x[0] if isinstance(x, tuple) else x
    x = tower.layer_norm(tower.avg_pooler(x.permute(0, 2, 1)).permute(0, 2, 1))
    return [x[i, : int(t)] for i, t in enumerate(n_tok)]


def speak_all(texts: Sequence[str], voices: Sequence[speech.Voice], workers: int = 2) -> list[Any]:
    """espeak-ng waveforms at 16 kHz, not cached on disk (the corpus is big and spoken once)."""
    with ThreadPoolExecutor(max_workers=workers) as pool:
        return list(pool.map(lambda tv: speech.speak_as(tv[0], tv[1], cache=False), zip(texts, voices)))


def write_clips(path: Path, tower: Any, tokenizer: Any, texts: Sequence[str], voices: Sequence[speech.Voice],
                workers: int = 2, waves: Sequence[Any] | None = None, batch: int = 1) -> dict[str, float]:  # fmt: skip
    """Speak (unless ``waves`` are given), encode and write one shard; returns the seconds each step took."""
    t0 = time.perf_counter()
    waves = list(waves) if waves is not None else speak_all(texts, voices, workers)
    t1 = time.perf_counter()
    frames = encode(tower, waves) if batch <= 1 else encode_batched(tower, waves, batch)
    t2 = time.perf_counter()
    tokens = [tokenizer(t, add_special_tokens=False)["input_ids"] for t in texts]
    speech_corpus.write_shard(path, frames, tokens, texts, [str(v) for v in voices])
    audio_s = sum(len(w) for w in waves) / lalm.SAMPLING_RATE
    return {"clips": len(texts), "speak_s": round(t1 - t0, 2), "encode_s": round(t2 - t1, 2),
            "audio_s": round(audio_s, 1), "frames": sum(len(f) for f in frames)}  # fmt: skip


def build_split(out: Path, split: str, n: int, seed: int = 0, workers: int = 2, device: str = "cpu",
                batch: int = 1) -> None:  # fmt: skip
    """Shards ``{split}-NNNNN.safetensors`` of ``SHARD_SIZE`` clips until ``n`` clips exist (resumes)."""
    exclude = speech_corpus.Exclusion(speech_corpus.evaluation_texts())
    texts = speech_corpus.sentences(n, seed, split=split, exclude=exclude)
    if split == "train":  # never a held-out sentence
        held = set(speech_corpus.sentences(1000, seed, split="held", exclude=exclude))
        texts = [t for t in texts if t not in held]
    tower, tokenizer = load_tower(device), lalm.build_tokenizer()
    log = (out / "build.jsonl").open("a")
    for k, start in enumerate(range(0, len(texts), SHARD_SIZE)):
        path = out / f"{split}-{k:05d}.safetensors"
        if path.is_file():
            continue
        part = texts[start : start + SHARD_SIZE]
        voices = [speech_corpus.voice(start + i, seed, split) for i in range(len(part))]
        rec = {"shard": path.name, **write_clips(path, tower, tokenizer, part, voices, workers, batch=batch)}
        log.write(json.dumps(rec) + "\n")
        log.flush()
        print(json.dumps(rec), flush=True)


def build_figstep(out: Path, start: int = 50, stop: int = 100, which: str = "safe") -> Path:
    """FigStep's questions ``start:stop``, spoken as ``guardrail eval --spoken`` speaks them."""
    from guardrail.audio import load_audio

    texts = speech_corpus.figstep_questions(which)[start:stop]
    spoken = [speech.speak_to_file(t) for t in texts]
    waves = [load_audio(s, target_sr=lalm.SAMPLING_RATE) for s in spoken]
    path = out / f"figstep-{which}-{start}-{stop}.safetensors"
    voices = [speech.voice_for(t, 0) for t in texts]
    print(write_clips(path, load_tower(), lalm.build_tokenizer(), texts, voices, waves=waves), flush=True)
    return path


def main(argv: Sequence[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m guardrail_testbeds.corpus_build")
    p.add_argument("what", choices=["train", "held", "figstep"])
    p.add_argument("--n", type=int, default=5000)
    p.add_argument("--out", type=Path, default=None)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--workers", type=int, default=2, help="espeak-ng processes at a time")
    p.add_argument("--threads", type=int, default=2, help="torch CPU threads")
    p.add_argument("--device", default="cpu")
    p.add_argument("--batch", type=int, default=1, help="clips encoded at once (1: one by one; 256 on a GPU)")
    p.add_argument("--start", type=int, default=50)
    p.add_argument("--stop", type=int, default=100)
    a = p.parse_args(argv)
    import torch

    torch.set_num_threads(a.threads)
    out = a.out or default_dir()
    out.mkdir(parents=True, exist_ok=True)
    if a.what == "figstep":
        build_figstep(out, a.start, a.stop)
    else:
        build_split(out, a.what, a.n, a.seed, a.workers, a.device, a.batch)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
