"""Stage 1 of the audio testbed's projector training (issue 19): no LM in the loop.

The projector (the testbed's ``Linear(384 -> 896)``, the only shape ``Qwen2AudioForConditionalGeneration``'s
``multi_modal_projector`` holds) maps cached Whisper tiny.en encoder frames (:mod:`speech_corpus` shards) into
the LM's input-embedding space. Objectives:

* ``ctc``: CTC whose output layer is the LM's own frozen input-embedding matrix plus a learned blank (a vector
  and a bias): frame logits are dot products with the embedding rows. The softmax is SAMPLED: the batch's
  transcript tokens plus ``negatives`` random ids (uniform over the regular vocabulary), the negatives'
  logits corrected by log(V / K) (each stands for V / K tokens), so a step costs a few thousand columns
  instead of 151,643;
* ``regress``: mean squared error between each frame's projection and the embedding of the transcript
  token at the same relative position (tokens spread evenly over the clip, the alignment of
  ``projector_train.ridge_init``).

Evaluation is greedy CTC over the whole regular vocabulary (151,643 rows; for ``regress`` the nearest row in
Euclidean distance, with no blank), repeats collapsed, word error rate per clip (``whisper_ct2``) averaged,
on held-out generated sentences and on spoken FigStep benign questions 50-99 (``corpus_build figstep``).
The learning curve (step, CPU seconds, train loss, both WERs) goes to ``--curve``; the projector is saved in
the file format ``lalm.build_lalm(projector_state=PATH)`` loads.

    python -m guardrail_testbeds.stage1_train --steps 2000 --curve curve.json --export projector.safetensors
    python -m guardrail_testbeds.stage1_train --device cuda --bf16 --batch 256 ...   # accelerator: GPU.md
"""

from __future__ import annotations

import math
import random
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from guardrail_testbeds import speech_corpus

REGULAR_VOCAB = 151_643  # Qwen2.5's ids below this are ordinary tokens; the rest are special or fillers
EMBED_KEY = "model.embed_tokens.weight"


def load_embeddings(lm_dir: Path | None = None, rows: int = REGULAR_VOCAB) -> torch.Tensor:
    """The LM's input-embedding matrix (its first ``rows`` rows) in its stored precision (bf16), read from the
    built safetensors (or from a file holding only ``EMBED_KEY``, as carried to an accelerator)."""
    from safetensors import safe_open

    from guardrail_testbeds import build, lalm

    path = lm_dir or build.hf_dir(lalm.LM_NAME)
    path = path / "model.safetensors" if path.is_dir() else path
    with safe_open(str(path), framework="pt") as f:
        return f.get_slice(EMBED_KEY)[:rows]


def load_packed_embeddings(path: Path) -> tuple[torch.Tensor, torch.Tensor]:
    """(rows as bf16, their token ids) from ``stage1_pack``'s int8 file (a subset of the matrix)."""
    from safetensors.torch import load_file

    t = load_file(str(path))
    return (t["q"].float() * t["scale"][:, None]).to(torch.bfloat16), t["ids"]


def remap(tokens: torch.Tensor, ids: torch.Tensor) -> torch.Tensor:
    """Token ids -> row numbers of a subset matrix whose rows are the tokens ``ids``."""
    lut = torch.full((int(max(int(ids.max()), int(tokens.max()))) + 1,), -1, dtype=torch.int64)
    lut[ids] = torch.arange(len(ids))
    out = lut[tokens.long()]
    if bool((out < 0).any()):
        missing = sorted(set(tokens[out < 0].tolist()))[:5]
        raise ValueError(f"tokens {missing} have no row in the packed embeddings: pack with more --sentences")
    return out


class Head(nn.Module):
    """The projector (exported) and the CTC blank (training only).

    ``context`` > 0 makes it a diagnostic that Qwen2-Audio's class cannot hold: each frame is read with
    ``context`` frames either side (stacked, SLAM-ASR's idea at the same frame rate) through a GELU layer of
    ``hidden`` units before the output layer. It measures what per-frame context would buy; only the plain
    Linear exports. Flat inputs ([frames, d], as decoding passes a shard) are read as one sequence, so the
    ``context`` frames at each clip's edges (silence) see their neighbour clip."""

    def __init__(self, d_in: int, d_out: int, seed: int = 0, context: int = 0, hidden: int = 1024,
                 cosine: bool = False) -> None:  # fmt: skip
        super().__init__()
        g = torch.Generator().manual_seed(seed)
        self.context, self.cosine = context, cosine
        width = d_in * (2 * context + 1)
        self.mix = nn.Sequential(nn.Linear(width, hidden), nn.GELU()) if context else nn.Identity()
        self.proj = nn.Linear(hidden if context else d_in, d_out)
        with torch.no_grad():
            for lin in (m for m in self.modules() if isinstance(m, nn.Linear)):
                bound = 1 / math.sqrt(lin.in_features)
                lin.weight.uniform_(-bound, bound, generator=g)
                lin.bias.uniform_(-bound, bound, generator=g)
        # cosine logits need a blank with a direction; dot-product runs keep their original zero start
        self.blank = nn.Parameter(torch.randn(d_out, generator=g) / math.sqrt(d_out) if cosine else torch.zeros(d_out))
        self.blank_bias = nn.Parameter(torch.zeros(()))
        self.log_scale = nn.Parameter(torch.tensor(math.log(20.0)), requires_grad=cosine)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.context:
            flat = x.dim() == 2
            xs = x[None] if flat else x
            c = self.context
            win = F.pad(xs, (0, 0, c, c)).unfold(1, 2 * c + 1, 1)  # [B, T, d, 2c + 1]
            x = self.mix(win.transpose(2, 3).reshape(*xs.shape[:2], -1))
            x = x[0] if flat else x
        return self.proj(x)

    def scores(self, h: torch.Tensor, rows: torch.Tensor) -> torch.Tensor:
        """Frame-by-row logits: dot products, or (``cosine``) cosines times a learned scale."""
        if self.cosine:
            return self.log_scale.exp() * (F.normalize(h, dim=-1) @ F.normalize(rows, dim=-1).T)
        return h @ rows.T

    def blank_logit(self, h: torch.Tensor) -> torch.Tensor:
        return self.scores(h, self.blank[None].to(h.dtype))[..., 0] + self.blank_bias

    def projector_state(self, scale: float = 1.0) -> dict[str, torch.Tensor]:
        if self.context:
            raise TypeError("only the plain Linear projector fits Qwen2-Audio's class; this head reads context")
        return {k: (v.detach().float() * scale).cpu().contiguous() for k, v in self.proj.state_dict().items()}


def norm_ratio(head: Head, frames: torch.Tensor, emb: torch.Tensor) -> float:
    """Median embedding-row norm over the median norm of the projector's outputs on ``frames``: the factor that
    puts a cosine head's outputs (whose length training never fixed) at the length the LM's inputs have."""
    with torch.no_grad():
        out = head.proj(frames.to(head.proj.weight.device).float())
    return float(emb.float().norm(dim=-1).median() / out.norm(dim=-1).median())


@dataclass
class Batch:
    frames: torch.Tensor  # [B, T, d] padded
    lengths: torch.Tensor  # [B]
    tokens: list[torch.Tensor]  # per clip, int64


def make_batch(clips: Sequence[tuple[torch.Tensor, torch.Tensor]], device: str = "cpu") -> Batch:
    lengths = torch.tensor([len(f) for f, _ in clips])
    frames = torch.nn.utils.rnn.pad_sequence([f for f, _ in clips], batch_first=True)  # one bulk cast below
    return Batch(frames.to(device).float(), lengths, [t.long() for _, t in clips])


def candidates(tokens: Sequence[torch.Tensor], negatives: int, vocab: int, g: torch.Generator) -> tuple[Any, Any]:
    """(sorted positive ids, negative ids not among them) for a sampled softmax."""
    pos = torch.unique(torch.cat(list(tokens)))
    neg = torch.randint(vocab, (negatives,), generator=g).unique()
    return pos, neg[~torch.isin(neg, pos)]


def ctc_loss(head: Head, emb: torch.Tensor, batch: Batch, negatives: int, g: torch.Generator) -> torch.Tensor:
    """CTC with the sampled softmax: columns blank | positives | negatives (logit + log(V / K))."""
    pos, neg = candidates(batch.tokens, negatives, emb.shape[0], g)
    h = head(batch.frames)  # [B, T, D]
    dev = h.device
    w = emb[torch.cat([pos, neg]).to(emb.device)].to(dev, h.dtype)
    logits = head.scores(h, w)
    if len(neg):
        shift = torch.zeros(w.shape[0], device=dev, dtype=h.dtype)
        shift[len(pos) :] = math.log(emb.shape[0] / negatives)
        logits = logits + shift
    blank = head.blank_logit(h).unsqueeze(-1)
    logp = F.log_softmax(torch.cat([blank, logits], dim=-1).float(), dim=-1).transpose(0, 1)  # [T, B, C]
    targets = torch.cat([torch.searchsorted(pos, t) + 1 for t in batch.tokens])
    target_lengths = torch.tensor([len(t) for t in batch.tokens])
    return F.ctc_loss(logp, targets.to(dev), batch.lengths.to(dev), target_lengths.to(dev), blank=0,
                      reduction="mean", zero_infinity=True)  # fmt: skip


def spread(n_frames: int, ids: torch.Tensor) -> torch.Tensor:
    """The token each frame says under an even alignment (``projector_train.ridge_init``'s)."""
    return ids[torch.tensor([min(len(ids) - 1, j * len(ids) // n_frames) for j in range(n_frames)])]


def regress_loss(head: Head, emb: torch.Tensor, batch: Batch) -> torch.Tensor:
    h = head(batch.frames)
    rows = [h[i, : int(n)] for i, n in enumerate(batch.lengths)]
    targets = [emb[spread(int(n), t).to(emb.device)].to(h.device) for n, t in zip(batch.lengths, batch.tokens)]
    return F.mse_loss(torch.cat(rows).float(), torch.cat(targets).float()) * emb.shape[1]  # sum over dims


# --------------------------------------------------------------------------- decoding


def frame_ids(head: Head, emb: torch.Tensor, frames: torch.Tensor, objective: str, chunk: int = 4096) -> torch.Tensor:
    """Per frame: 0 for blank, else 1 + the best row of ``emb`` (dot product; ``regress``: Euclidean). Scores
    are computed in ``emb``'s dtype (bf16: about 4x faster on CPUs with AVX-512 BF16 than float32)."""
    out = []
    dev = head.proj.weight.device
    with torch.no_grad():
        sq = (emb.float() ** 2).sum(-1) / 2 if objective == "regress" else None
        for i in range(0, len(frames), chunk):
            h = head(frames[i : i + chunk].to(dev).float())
            scores = head.scores(h.to(emb.dtype), emb).float()
            if sq is not None:
                scores = scores - sq
            best, idx = scores.max(-1)
            if objective == "ctc":
                blank = head.blank_logit(h)
                idx = torch.where(blank > best, -1, idx)
            out.append(idx.cpu() + 1)
    return torch.cat(out)


def collapse(ids: Sequence[int]) -> list[int]:
    """Greedy CTC: merge repeats, drop blanks (0); returns token ids (shifted back by one)."""
    out, prev = [], None
    for i in ids:
        if i != prev and i != 0:
            out.append(i - 1)
        prev = i
    return out


def word_error_rate(
    head: Head,
    emb: torch.Tensor,
    shard: speech_corpus.Shard,
    tokenizer: Any,
    objective: str,
    limit: int | None,
    ids: torch.Tensor | None = None,
) -> tuple[float, list[dict[str, str]]]:
    """Mean per-clip WER of greedy decoding over ``shard``'s first ``limit`` clips, and a few samples.
    ``ids``: the token id of each row of ``emb`` when it is a subset (``load_packed_embeddings``)."""
    from guardrail_testbeds.whisper_ct2 import word_error_rate as wer

    n = min(len(shard), limit or len(shard))
    ends = shard.frame_offsets[: n + 1]
    best = frame_ids(head, emb, shard.frames[: int(ends[-1])], objective)
    wers: list[float] = []
    samples: list[dict[str, str]] = []
    for i in range(n):
        rows = collapse(best[int(ends[i]) : int(ends[i + 1])].tolist())
        heard = tokenizer.decode(rows if ids is None else ids[rows].tolist())
        wers.append(wer(shard.texts[i], heard))
        if len(samples) < 3:
            samples.append({"said": shard.texts[i], "heard": heard})
    return sum(wers) / max(1, len(wers)), samples


# --------------------------------------------------------------------------- data


class ClipPool:
    """Every clip of some shards, drawn at random for batches."""

    def __init__(self, shards: Sequence[speech_corpus.Shard]) -> None:
        self.shards = list(shards)
        for sh in self.shards:  # bf16: what bf16 autocast feeds the projector anyway; casts fast on CPUs
            sh.frames = sh.frames.to(torch.bfloat16)
        self.index = [(s, i) for s, sh in enumerate(self.shards) for i in range(len(sh))]
        if not self.index:
            raise ValueError("no clips: build the corpus first (python -m guardrail_testbeds.corpus_build train)")

    def __len__(self) -> int:
        return len(self.index)

    def sample(self, rng: random.Random, n: int) -> list[tuple[torch.Tensor, torch.Tensor]]:
        return [self.shards[s].clip(i) for s, i in rng.sample(self.index, min(n, len(self.index)))]


def ridge(pool: ClipPool, emb: torch.Tensor, ridge: float = 1.0, limit: int = 5000) -> dict[str, torch.Tensor]:
    """The ``regress`` objective solved in closed form (``projector_train.ridge_init`` on cached frames): a
    projector state from the first ``limit`` clips of the pool."""
    d_in = pool.shards[0].frames.shape[1]
    xtx = torch.zeros(d_in + 1, d_in + 1, dtype=torch.float64)
    xty = torch.zeros(d_in + 1, emb.shape[1], dtype=torch.float64)
    for s, i in pool.index[:limit]:
        f, t = pool.shards[s].clip(i)
        x = torch.cat([f.float(), torch.ones(len(f), 1)], dim=1).double()
        xtx += x.T @ x
        xty += x.T @ emb[spread(len(f), t.long()).to(emb.device)].double().cpu()
    return ridge_state(xtx, xty, ridge)


def ridge_state(xtx: torch.Tensor, xty: torch.Tensor, ridge: float) -> dict[str, torch.Tensor]:
    """The Linear projector's state (weight, bias) that solves (X^T X + ridge I) W = X^T Y, for frames X with a
    ones column last (the bias) and target embedding rows Y."""
    w = torch.linalg.solve(xtx + ridge * torch.eye(len(xtx), dtype=xtx.dtype), xty).float()
    return {"weight": w[:-1].T.contiguous(), "bias": w[-1].contiguous()}


def lr_at(step: int, total: int, peak: float, warmup: int = 50) -> float:
    if step < warmup:
        return peak * (step + 1) / warmup
    frac = min(1.0, (step - warmup) / max(1, total - warmup))
    return peak * (0.05 + 0.95 * 0.5 * (1 + math.cos(math.pi * frac)))
