"""The stage-1 trainer's loop and command line (objectives and decoding: :mod:`guardrail_testbeds.stage1`).

    python -m guardrail_testbeds.stage1_train --objective ctc --steps 2000 --batch 32 \\
        --curve benchmarks/results/audio_testbed/stage1_ctc.json --export WORK/projector.safetensors
    # on an accelerator (testbeds/GPU.md): --device cuda --bf16 --batch 256

Reads the corpus shards (``--corpus``, default ``cache_dir()/stage1/corpus``: ``train-*``, ``held-*`` and
``figstep-safe-50-100``); new train shards written while it runs join at the next evaluation. ``--work``
keeps a resumable checkpoint (``ckpt.pt``: projector, blank, optimiser, step). The curve JSON holds the
command, the settings and one record per evaluation: step, CPU seconds of training (evaluation excluded),
wall seconds, mean train loss since the last record, clips in the pool, WER on held-out generated
sentences and on spoken FigStep benign questions 50-99.
"""

from __future__ import annotations

import argparse
import json
import random
import shlex
import sys
import time
from collections.abc import Sequence
from contextlib import nullcontext
from pathlib import Path
from typing import Any

import torch

from guardrail_testbeds import speech_corpus
from guardrail_testbeds.stage1 import (
    ClipPool,
    Head,
    ctc_loss,
    load_embeddings,
    load_packed_embeddings,
    lr_at,
    make_batch,
    norm_ratio,
    regress_loss,
    remap,
    ridge,
)
from guardrail_testbeds.stage1 import word_error_rate as shard_wer


def default_corpus() -> Path:
    from guardrail_testbeds import build

    return build.cache_dir() / "stage1" / "corpus"


def _load_new(pool: ClipPool | None, corpus: Path, seen: set[Path], cap: int | None, ids: Any = None) -> ClipPool:
    """The pool with any train shard not seen yet (up to ``cap`` clips); tokens as rows of the (packed) matrix."""
    shards = list(pool.shards) if pool else []
    for path in speech_corpus.shard_paths(corpus, "train"):
        if path not in seen and (cap is None or sum(len(s) for s in shards) < cap):
            shard = speech_corpus.read_shard(path)
            if ids is not None:
                shard.tokens = remap(shard.tokens, ids)
            shards.append(shard)
            seen.add(path)
    return ClipPool(shards)


def evaluate(head: Head, emb: torch.Tensor, evals: dict[str, Any], tokenizer: Any, objective: str,
             limit: int | None, ids: Any = None) -> dict[str, Any]:  # fmt: skip
    out: dict[str, Any] = {}
    head.eval()
    for name, shard in evals.items():
        out[f"wer_{name}"], out[f"samples_{name}"] = shard_wer(head, emb, shard, tokenizer, objective, limit, ids)
        out[f"wer_{name}"] = round(out[f"wer_{name}"], 4)
    head.train()
    return out


def _eval_sets(corpus: Path) -> dict[str, Any]:
    sets = {}
    held = speech_corpus.shard_paths(corpus, "held")
    if held:
        sets["held"] = speech_corpus.read_shard(held[0])
    train = speech_corpus.shard_paths(corpus, "train")
    if train:  # the first clips of the first shard: how well the training data itself is fitted
        sets["train"] = speech_corpus.read_shard(train[0])
    figstep = corpus / "figstep-safe-50-100.safetensors"
    if figstep.is_file():
        sets["figstep"] = speech_corpus.read_shard(figstep)
    return sets


def _checkpoint(work: Path | None, head: Head, opt: Any, step: int) -> None:
    if work is None:
        return
    work.mkdir(parents=True, exist_ok=True)
    tmp = work / "ckpt.pt.tmp"
    torch.save({"head": head.state_dict(), "optimizer": opt.state_dict(), "step": step}, tmp)
    tmp.replace(work / "ckpt.pt")


def _model(a: argparse.Namespace, pool: ClipPool, emb: torch.Tensor) -> tuple[Head, Any, int]:
    """The head (fresh, ridge, a projector file, or the checkpoint in ``a.work``), its optimiser, the step."""
    head = Head(a.d_in, emb.shape[1], seed=a.seed, context=a.context, hidden=a.hidden, cosine=a.cosine).to(a.device)
    if a.init == "ridge":
        head.proj.load_state_dict(ridge(pool, emb))
    elif a.init:
        from guardrail_testbeds.lalm import load_projector

        head.proj.load_state_dict(load_projector(a.init))
    params = list(head.parameters()) + ([emb] if emb.requires_grad else [])
    opt = torch.optim.AdamW(params, lr=a.lr, weight_decay=0.0)
    step = 0
    if a.work and (a.work / "ckpt.pt").is_file():
        ck = torch.load(a.work / "ckpt.pt", weights_only=True, map_location=a.device)
        head.load_state_dict(ck["head"])
        opt.load_state_dict(ck["optimizer"])
        step = int(ck["step"])
    return head, opt, step


def _curve(a: argparse.Namespace, step: int) -> tuple[dict[str, Any], float, float]:
    """A new curve, or (resuming) the records before ``step`` and the clocks at ``step``."""
    curve: dict[str, Any] = {"command": a.command, "settings": {k: str(v) for k, v in vars(a).items()},
                             "records": []}  # fmt: skip
    if not (step and a.curve and a.curve.is_file()):
        return curve, 0.0, 0.0
    old = [r for r in json.loads(a.curve.read_text())["records"] if r["step"] <= step]
    # the record at ``step`` itself is made again when ``step`` is an evaluation step
    curve["records"] = [r for r in old if r["step"] < step or step % a.eval_every]
    curve["resumed_at"] = step
    return curve, *((old[-1]["cpu_s"], old[-1]["wall_s"]) if old else (0.0, 0.0))


def train(a: argparse.Namespace, tokenizer: Any) -> tuple[dict[str, Any], Head, torch.Tensor]:
    """The loop: returns the curve (also written to ``a.curve`` after each evaluation), the head and the output
    rows it was trained against."""
    packed = a.embeddings is not None and a.embeddings.name.endswith("int8.safetensors")
    emb, ids = load_packed_embeddings(a.embeddings) if packed else (load_embeddings(a.embeddings), None)
    emb = emb.to(a.device)
    if a.free_output:  # diagnostic: as many rows, learned from scratch (not the LM's; nothing exports)
        g0 = torch.Generator().manual_seed(a.seed)
        emb = torch.nn.Parameter((0.02 * torch.randn(emb.shape, generator=g0)).to(a.device))
    seen: set[Path] = set()
    pool, evals = _load_new(None, a.corpus, seen, a.max_clips, ids), _eval_sets(a.corpus)
    head, opt, step = _model(a, pool, emb)
    rng, g = random.Random(f"stage1:{a.seed}:{step}"), torch.Generator().manual_seed(a.seed + step)
    autocast = torch.autocast(device_type=a.device.split(":")[0], dtype=torch.bfloat16) if a.bf16 else nullcontext()
    curve, cpu, wall = _curve(a, step)
    losses: list[float] = []
    while True:
        if step % a.eval_every == 0 or step >= a.steps:
            rec = {"step": step, "cpu_s": round(cpu, 1), "wall_s": round(wall, 1), "clips": len(pool),
                   "loss": round(sum(losses) / len(losses), 4) if losses else None}  # fmt: skip
            rec.update(evaluate(head, emb, evals, tokenizer, a.objective, a.eval_limit, ids))
            curve["records"].append(rec)
            print(json.dumps({k: v for k, v in rec.items() if not k.startswith("samples")}), flush=True)
            losses = []
            if a.curve:
                a.curve.parent.mkdir(parents=True, exist_ok=True)
                a.curve.write_text(json.dumps(curve, indent=1))
            _checkpoint(a.work, head, opt, step)
            pool = _load_new(pool, a.corpus, seen, a.max_clips, ids)
            if step >= a.steps:
                return curve, head, emb
        c0, w0 = time.process_time(), time.perf_counter()
        for group in opt.param_groups:
            group["lr"] = lr_at(step, a.steps, a.lr)
        batch = make_batch(pool.sample(rng, a.batch), a.device)
        with autocast:
            loss = (
                ctc_loss(head, emb, batch, a.negatives, g) if a.objective == "ctc" else regress_loss(head, emb, batch)
            )
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(head.parameters(), 1.0)
        opt.step()
        step += 1
        losses.append(float(loss.detach()))
        cpu, wall = cpu + time.process_time() - c0, wall + time.perf_counter() - w0


def export_scale(a: argparse.Namespace, head: Head, emb: torch.Tensor) -> float:
    """A cosine head's export factor (``stage1.norm_ratio`` against the rows it trained on), measured on the
    held-out clips' frames."""
    held = speech_corpus.shard_paths(a.corpus, "held") or speech_corpus.shard_paths(a.corpus, "train")
    return norm_ratio(head, speech_corpus.read_shard(held[0]).frames[:20_000], emb)


def parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="python -m guardrail_testbeds.stage1_train")
    p.add_argument("--objective", choices=["ctc", "regress"], default="ctc")
    p.add_argument("--corpus", type=Path, default=None)
    p.add_argument("--embeddings", type=Path, default=None, help="LM folder or a safetensors file with the matrix")
    p.add_argument("--steps", type=int, default=2000)
    p.add_argument("--batch", type=int, default=32)
    p.add_argument("--lr", type=float, default=2e-3)
    p.add_argument("--negatives", type=int, default=2048, help="random negative ids per step (sampled softmax)")
    p.add_argument("--eval-every", type=int, default=200)
    p.add_argument("--eval-limit", type=int, default=100, help="held-out clips per evaluation (FigStep: all 50)")
    p.add_argument("--max-clips", type=int, default=None, help="use at most this many training clips")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--device", default="cpu")
    p.add_argument("--bf16", action="store_true", help="bf16 autocast (accelerators)")
    p.add_argument("--init", default=None, help="ridge (the regression objective in closed form) or a projector file")
    p.add_argument("--work", type=Path, default=None, help="checkpoint folder (resumes from it)")
    p.add_argument("--curve", type=Path, default=None, help="learning-curve JSON")
    p.add_argument("--export", type=Path, default=None, help="write the trained projector here (lalm's format)")
    p.add_argument("--d-in", type=int, default=384)
    p.add_argument("--context", type=int, default=0, help="diagnostic head: frames read either side (not exportable)")
    p.add_argument("--hidden", type=int, default=1024, help="the diagnostic head's hidden width")
    p.add_argument("--cosine", action="store_true", help="cosine logits with a learned scale (else dot products)")
    p.add_argument("--free-output", action="store_true", help="diagnostic: learned output rows (not resumable)")
    p.add_argument("--tokenizer-dir", type=Path, default=None, help="the LM's folder (tokenizer.json, config.json)")
    return p


def main(argv: Sequence[str] | None = None) -> int:
    args = list(sys.argv[1:] if argv is None else argv)
    a = parser().parse_args(args)
    a.command = "python -m guardrail_testbeds.stage1_train " + shlex.join(args)
    a.corpus = a.corpus or default_corpus()
    torch.set_num_threads(a.threads)
    from guardrail_testbeds.lalm import build_tokenizer, save_projector

    tokenizer = build_tokenizer(a.tokenizer_dir)
    curve, head, emb = train(a, tokenizer)
    if a.export and (a.context or a.free_output):
        print("not exported: a head with --context does not fit Qwen2-Audio's projector")
    elif a.export:
        final = curve["records"][-1]
        scale = export_scale(a, head, emb) if a.cosine else 1.0
        meta = {"stage": "1", "objective": a.objective, "command": a.command, "scale": str(scale),
                "wer_figstep": str(final.get("wer_figstep")), "wer_held": str(final.get("wer_held"))}  # fmt: skip
        print(save_projector(head.projector_state(scale), a.export, meta))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
