"""Train the audio testbed's projector so the model treats a spoken question like a typed one.

``Linear(384 -> 896)`` learns, and with ``--lora-rank`` a LoRA adapter on the LM's attention
(``guardrail_testbeds.lora``); the Whisper tower and the LM's own weights stay frozen. Two tasks
share each batch:

* answer: the chat with the spoken question (and, for some clips, an instruction) must give
  the next-token distributions the LM gives on the same chat with the question TYPED, along
  the LM's own greedy answer (forward KL, teacher = the frozen LM on text: behaviour matching);
* transcribe: with "Repeat exactly what was said in the audio." the model must reproduce the
  question's words (cross-entropy), which forces the content, not just the kind of question,
  through the projector (the pilot's failure mode);
* text (only with a LoRA adapter): the adapted LM's answers to the typed chats must stay the
  frozen LM's (KL), so that the adapter teaches listening without moving text behaviour.

Before training the projector starts from a ridge regression of the token embeddings of the
words being spoken onto the encoder frames (tokens spread evenly over each clip): a cheap,
crude alignment that puts each frame near the embedding of what it says.

Work happens in ``work_dir`` (default ``cache_dir()/projector``): ``data.pt`` (encoder
outputs per clip, fp16, plus the teacher's greedy answers), ``ckpt.pt`` (resumable: projector,
optimiser, step, RNG), ``log.jsonl``. Everything is seeded.

    python -m guardrail_testbeds.projector_train prepare
    python -m guardrail_testbeds.projector_train train --steps 3000
    python -m guardrail_testbeds.projector_train train --steps 420 --lora-rank 16 --init PROJECTOR
    python -m guardrail_testbeds.projector_train evaluate
"""

from __future__ import annotations

import argparse
import hashlib
import json
import math
import random
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F

from guardrail_testbeds import build, lalm, lora, speech, speech_corpus, stage1, train_questions
from guardrail_testbeds.train_questions import INSTRUCTIONS, TRANSCRIBE

ANSWER_TOKENS = 16
PROJECTOR_FILE = lalm.PROJECTOR_FILE


def default_work_dir() -> Path:
    return build.cache_dir() / "projector"


def typed_instruction(instruction: str | None) -> str | None:
    """The instruction as it reads when the question is typed instead of spoken."""
    if instruction is None:
        return None
    return instruction.replace(" in the audio", "").replace("spoken ", "")


def typed_chat(processor: Any, question: str, instruction: str | None) -> str:
    """The LM's chat for the typed question (the teacher's view of a clip)."""
    typed = typed_instruction(instruction)
    return lalm.chat(processor, text=question if typed is None else f"{question}\n{typed}")


def audio_chat(processor: Any, n_frames: int, instruction: str | None) -> str:
    """The chat for a spoken question of ``n_frames`` audio tokens (placeholder expanded)."""
    text = lalm.chat(processor, audio=["<clip>"], text=instruction)
    if text.count(lalm.AUDIO_TOKEN) != 1:
        raise ValueError("expected one audio placeholder in the rendered chat")
    return text.replace(lalm.AUDIO_TOKEN, lalm.AUDIO_TOKEN * n_frames)


def _pick(key: str, options: Sequence[Any]) -> Any:
    h = int.from_bytes(hashlib.sha256(key.encode()).digest()[:8], "little")
    return options[h % len(options)]


@dataclass
class Clip:
    question: str
    subject: str
    voice: speech.Voice
    instruction: str | None
    encoded: torch.Tensor  # [frames, 384] fp16
    answer: list[int]  # the LM's greedy answer to the typed chat (token ids)


# --------------------------------------------------------------------------- preparation


def encode_clips(model: Any, processor: Any, waves: Sequence[Any]) -> list[torch.Tensor]:
    """Encoder outputs (frozen tower, real frames only) per waveform, fp16 on CPU."""
    fe = processor.feature_extractor
    out = []
    with torch.inference_mode():
        for w in waves:
            f = fe([w], sampling_rate=lalm.SAMPLING_RATE, return_attention_mask=True, return_tensors="pt")
            enc = lalm.encode_audio(model, f["input_features"], f["attention_mask"])
            out.append(enc[0].to(torch.float16).cpu())
    return out


def greedy_answers(model: Any, processor: Any, prompts: Sequence[str], n: int, batch: int = 16) -> list[list[int]]:
    """The LM's greedy continuation (``n`` tokens, stopping at end of turn) per text prompt."""
    tok = processor.tokenizer
    stops = {tok.eos_token_id, tok.convert_tokens_to_ids("<|im_end|>")}
    answers: list[list[int]] = []
    with torch.inference_mode():
        for i in range(0, len(prompts), batch):
            enc = tok(list(prompts[i : i + batch]), return_tensors="pt", padding=True)
            out = model.generate(**enc, max_new_tokens=n, do_sample=False, pad_token_id=tok.pad_token_id)
            for row in out[:, enc["input_ids"].shape[1] :].tolist():
                end = next((k + 1 for k, t in enumerate(row) if t in stops), len(row))  # keep the stop token
                answers.append(row[:end])
    return answers


def prepare(work_dir: Path, voices_per_question: int = 2, seed: int = 0, limit: int | None = None) -> Path:
    """Speak every training question ``voices_per_question`` times, cache encoder outputs and
    the LM's greedy answers to the typed chats. Writes ``work_dir/data.pt``."""
    work_dir.mkdir(parents=True, exist_ok=True)
    model, processor = lalm.build_lalm()
    train, held = train_questions.split_by_subject(train_questions.questions(), seed=seed)
    rows = []
    for split, items in (("train", train), ("held", held)):
        for q in items[:limit]:
            for k in range(voices_per_question):
                key = f"{q.text}|{k}"
                rows.append((split, q, speech.voice_for(key, seed), _pick(key, INSTRUCTIONS)))
    t0 = time.perf_counter()
    waves = [speech.speak_as(q.text, v) for _, q, v, _ in rows]
    print(f"synthesised {len(waves)} clips in {time.perf_counter() - t0:.0f} s", flush=True)
    t0 = time.perf_counter()
    encoded = encode_clips(model, processor, waves)
    print(f"encoded in {time.perf_counter() - t0:.0f} s", flush=True)
    t0 = time.perf_counter()
    prompts = [typed_chat(processor, q.text, ins) for _, q, _, ins in rows]
    unique = sorted(set(prompts))
    answers = dict(zip(unique, greedy_answers(model, processor, unique, ANSWER_TOKENS)))
    print(f"{len(unique)} teacher answers in {time.perf_counter() - t0:.0f} s", flush=True)
    data = {
        "seed": seed,
        "clips": [
            {"split": s, "question": q.text, "subject": q.subject, "voice": list(v), "instruction": ins,
             "encoded": e, "answer": answers[p]}
            for (s, q, v, ins), e, p in zip(rows, encoded, prompts)
        ],
    }  # fmt: skip
    path = work_dir / "data.pt"
    torch.save(data, path)
    return path


def tokenizer_words(tok: Any, max_id: int = 60_000) -> list[str]:
    """Lower-case alphabetic single-token words (4-11 letters) among the tokenizer's first ids."""
    import re

    return sorted(
        {
            t[1:]
            for t, i in tok.get_vocab().items()
            if t.startswith("\u0120") and i < max_id and re.fullmatch(r"[a-z]{4,11}", t[1:])
        }
    )


def prepare_words(work_dir: Path, n: int = 2500, seed: int = 0) -> Path:
    """Transcription-only clips of generated sentences (``train_questions.word_sentences``):
    ``work_dir/words.pt``; training mixes them into the transcription task."""
    model, processor = lalm.build_lalm()
    sentences = train_questions.word_sentences(tokenizer_words(processor.tokenizer), n, seed)
    voices = [speech.voice_for(f"words|{t}", seed) for t in sentences]
    waves = [speech.speak_as(t, v) for t, v in zip(sentences, voices)]
    encoded = encode_clips(model, processor, waves)
    clips = [
        {
            "split": "words",
            "question": t,
            "subject": "",
            "voice": list(v),
            "instruction": TRANSCRIBE,
            "encoded": e,
            "answer": [],
        }
        for t, v, e in zip(sentences, voices, encoded)
    ]
    path = work_dir / "words.pt"
    torch.save({"seed": seed, "clips": clips}, path)
    return path


def load_clips(work_dir: Path, split: str) -> list[Clip]:
    data = torch.load(work_dir / ("words.pt" if split == "words" else "data.pt"), weights_only=False)
    return [
        Clip(c["question"], c["subject"], speech.Voice(*c["voice"]), c["instruction"], c["encoded"], c["answer"])
        for c in data["clips"]
        if c["split"] == split
    ]


def corpus_clips(folder: Path, limit: int | None = None) -> list[Clip]:
    """Transcription clips from stage 1's generated corpus (its ``train`` shards; no teacher answers): a
    vocabulary far wider than the training questions', never the evaluation questions."""
    clips: list[Clip] = []
    for path in speech_corpus.shard_paths(folder, "train"):
        shard = speech_corpus.read_shard(path)
        for i, text in enumerate(shard.texts[: (limit - len(clips)) if limit else None]):
            clips.append(Clip(text, "", speech.Voice(), None, shard.clip(i)[0], []))
        if limit and len(clips) >= limit:
            break
    if not clips:
        raise ValueError(f"no stage-1 train shards in {folder}: python -m guardrail_testbeds.corpus_build train")
    return clips


# --------------------------------------------------------------------------- initialisation


def _ids(tok: Any, text: str) -> list[int]:
    return tok(text, add_special_tokens=False)["input_ids"]


def ridge_init(model: Any, processor: Any, clips: Sequence[Clip], ridge: float = 1.0) -> dict[str, torch.Tensor]:
    """Projector from a ridge regression of word-token embeddings onto encoder frames, with the
    question's tokens spread evenly over each clip's frames."""
    tok = processor.tokenizer
    emb = model.get_input_embeddings().weight
    xs, ys = [], []
    for c in clips:
        xs.append(c.encoded.float())
        ys.append(emb[stage1.spread(c.encoded.shape[0], torch.tensor(_ids(tok, c.question)))].float())
    x, y = torch.cat(xs), torch.cat(ys)
    x1 = torch.cat([x, torch.ones(len(x), 1)], dim=1)
    return stage1.ridge_state(x1.T @ x1, x1.T @ y, ridge)  # weight [896, 384]


# --------------------------------------------------------------------------- training


def _batch_tensors(rows: list[list[int]], pad: int, left: bool = False) -> tuple[torch.Tensor, torch.Tensor]:
    """Padded ids and attention mask: right padding for training, left padding for generation."""
    width = max(len(r) for r in rows)
    ids = torch.full((len(rows), width), pad, dtype=torch.long)
    mask = torch.zeros((len(rows), width), dtype=torch.long)
    for i, r in enumerate(rows):
        cols = slice(width - len(r), width) if left else slice(0, len(r))
        ids[i, cols] = torch.tensor(r)
        mask[i, cols] = 1
    return ids, mask


def _target_logits(model: Any, embeds: torch.Tensor, mask: torch.Tensor, spans: list[tuple[int, int]]) -> torch.Tensor:
    """Log-probabilities at the positions that predict each row's target span (concatenated)."""
    lm = model.model.language_model
    hidden = lm(inputs_embeds=embeds, attention_mask=mask).last_hidden_state
    picked = torch.cat([hidden[i, s - 1 : e - 1] for i, (s, e) in enumerate(spans)])
    return F.log_softmax(model.lm_head(picked).float(), dim=-1)


def loss_on_batch(model: Any, processor: Any, clips: Sequence[Clip], tasks: Sequence[str]) -> dict[str, torch.Tensor]:
    """KL to the typed teacher on answer clips, cross-entropy on transcription clips. With a LoRA
    adapter on the LM, the teacher is the LM without it, and a third term (``text``) keeps the
    adapted LM's answers to the typed chats where the teacher's are (its text behaviour, refusals
    included, must not drift)."""
    tok = processor.tokenizer
    end = tok.convert_tokens_to_ids("<|im_end|>")
    student, teacher, spans, tspans, targets = [], [], [], [], []
    for c, task in zip(clips, tasks):
        n = c.encoded.shape[0]
        if task == "transcribe":
            prompt = _ids(tok, audio_chat(processor, n, TRANSCRIBE))
            target = _ids(tok, c.question) + [end]
        else:
            prompt = _ids(tok, audio_chat(processor, n, c.instruction))
            target = list(c.answer)
            tprompt = _ids(tok, typed_chat(processor, c.question, c.instruction))
            teacher.append(tprompt + target)
            tspans.append((len(tprompt), len(tprompt) + len(target)))
        student.append(prompt + target)
        spans.append((len(prompt), len(prompt) + len(target)))
        targets.append((task, target))
    ids, mask = _batch_tensors(student, tok.pad_token_id)
    embeds = lalm.inputs_embeds_with_audio(model, ids, [c.encoded for c in clips])
    logp = _target_logits(model, embeds, mask, spans)
    out: dict[str, torch.Tensor] = {}
    offsets = [0]
    for s, e in spans:
        offsets.append(offsets[-1] + e - s)
    tr_rows = [i for i, (t, _) in enumerate(targets) if t == "transcribe"]
    an_rows = [i for i, (t, _) in enumerate(targets) if t != "transcribe"]
    if tr_rows:
        lp = torch.cat([logp[offsets[i] : offsets[i + 1]] for i in tr_rows])
        tgt = torch.tensor([t for i in tr_rows for t in targets[i][1]])
        out["transcribe"] = F.nll_loss(lp, tgt)
    if an_rows:
        lm = model.model.language_model
        tids, tmask = _batch_tensors(teacher, tok.pad_token_id)
        typed = model.get_input_embeddings()(tids)
        with torch.no_grad(), lora.adapters_off(lm):
            tlogp = _target_logits(model, typed, tmask, tspans)
        lp = torch.cat([logp[offsets[i] : offsets[i + 1]] for i in an_rows])
        out["answer"] = F.kl_div(lp, tlogp, log_target=True, reduction="batchmean")
        if lora.adapter_parameters(lm):
            text_lp = _target_logits(model, typed, tmask, tspans)
            out["text"] = F.kl_div(text_lp, tlogp, log_target=True, reduction="batchmean")
    return out


def _lr(step: int, total: int, peak: float, warmup: int) -> float:
    if step < warmup:
        return peak * (step + 1) / warmup
    frac = (step - warmup) / max(1, total - warmup)
    return peak * (0.1 + 0.9 * 0.5 * (1 + math.cos(math.pi * min(1.0, frac))))


def transcribe_share(step: int, total: int) -> float:
    """Curriculum: mostly transcription first (content), then mostly answering (behaviour)."""
    return 0.7 if step < total // 5 else 0.35


def train(
    work_dir: Path, steps: int = 3000, batch: int = 8, lr: float = 2e-3, seed: int = 0,
    save_every: int = 25, threads: int | None = None, lora_rank: int = 0, init: Path | None = None,
    corpus: Path | None = None, corpus_share: float = 0.5, corpus_limit: int | None = 20_000,
    projector_lr: float | None = None,
) -> dict[str, torch.Tensor]:  # fmt: skip
    """Train (or resume) the projector, and with ``lora_rank`` a LoRA adapter on the LM's
    attention; checkpoints to ``work_dir/ckpt.pt``. ``init``: start from this projector file
    instead of the ridge regression (stage 2 of issue 19: stage 1's projector). ``corpus``: stage 1's
    generated corpus; ``corpus_share`` of the transcription clips are drawn from it. ``projector_lr``: the
    projector's own peak rate (default ``lr``): a stage-1 projector rescaled to the embeddings' length has
    weights ~100x smaller than a fresh one, and Adam's steps are absolute."""
    if threads:
        torch.set_num_threads(threads)
    model, processor = lalm.build_lalm()
    model.requires_grad_(False)
    proj = model.model.multi_modal_projector.linear
    lm = model.model.language_model
    if lora_rank:
        lora.add_lora(lm, lora_rank)
    clips = load_clips(work_dir, "train")
    words = load_clips(work_dir, "words") if (work_dir / "words.pt").exists() else []
    words += corpus_clips(corpus, corpus_limit) if corpus else []
    share_words = corpus_share if corpus else 0.5
    ckpt_path = work_dir / "ckpt.pt"
    step, rng = 0, random.Random(seed)
    ck = torch.load(ckpt_path, weights_only=False) if ckpt_path.exists() else None
    if ck is not None:
        if bool(lora_rank) != ("lora" in ck):
            held = "holds a LoRA adapter" if "lora" in ck else "holds no LoRA adapter"
            raise ValueError(
                f"{ckpt_path} {held}, but --lora-rank is {lora_rank}: resume with the rank it was "
                "trained with, or use another --work-dir"
            )
        proj.load_state_dict(ck["projector"])
        if lora_rank:
            lora.set_lora(lm, ck["lora"])
        step, rng = ck["step"], ck["rng"]
        print(f"resumed at step {step}", flush=True)
    elif init is not None:
        proj.load_state_dict(lalm.load_projector(init))
    else:
        proj.load_state_dict(ridge_init(model, processor, clips))
    proj.requires_grad_(True)
    groups = [{"params": list(proj.parameters()), "peak": projector_lr or lr}]
    groups += [{"params": lora.adapter_parameters(lm), "peak": lr}] if lora_rank else []
    params = [p for g in groups for p in g["params"]]
    opt = torch.optim.AdamW(groups, lr=lr, weight_decay=0.0)
    if ck is not None:
        opt.load_state_dict(ck["optimizer"])
    log = (work_dir / "log.jsonl").open("a")
    t0 = time.perf_counter()
    while step < steps:
        for g in opt.param_groups:
            g["lr"] = _lr(step, steps, g["peak"], warmup=50)
        share = transcribe_share(step, steps)
        tasks = ["transcribe" if rng.random() < share else "answer" for _ in range(batch)]
        # a share of the transcription clips (half, or ``corpus_share``) come from generated sentences
        picked = [
            rng.choice(words) if t == "transcribe" and words and rng.random() < share_words else rng.choice(clips)
            for t in tasks
        ]
        losses = loss_on_batch(model, processor, picked, tasks)
        total = sum(losses.values())
        opt.zero_grad(set_to_none=True)
        total.backward()
        torch.nn.utils.clip_grad_norm_(params, 1.0)
        opt.step()
        step += 1
        rec = {
            "step": step,
            **{k: round(v.item(), 4) for k, v in losses.items()},
            "s": round(time.perf_counter() - t0, 1),
        }
        log.write(json.dumps(rec) + "\n")
        log.flush()
        if step % 10 == 0:
            print(json.dumps(rec), flush=True)
        if step % save_every == 0 or step == steps:
            state = {"projector": proj.state_dict(), "optimizer": opt.state_dict(), "step": step, "rng": rng}
            if lora_rank:
                state["lora"] = lora.lora_state(lm)
            tmp = ckpt_path.with_suffix(".tmp")
            torch.save(state, tmp)
            tmp.replace(ckpt_path)
    return lalm.projector_state_dict(model)


# --------------------------------------------------------------------------- evaluation


def _generate(
    model: Any, tok: Any, prompts: list[list[int]], encoded: list[torch.Tensor] | None, n: int
) -> list[list[int]]:
    ids, mask = _batch_tensors(prompts, tok.pad_token_id, left=True)
    with torch.inference_mode():
        if encoded is None:
            embeds = model.get_input_embeddings()(ids)
        else:
            embeds = lalm.inputs_embeds_with_audio(model, ids, encoded)
        out = model.generate(inputs_embeds=embeds, attention_mask=mask, max_new_tokens=n, do_sample=False,
                             pad_token_id=tok.pad_token_id)  # fmt: skip
    return out.tolist()


def agreement(a: Sequence[int], b: Sequence[int], n: int = 10) -> float:
    """Share of the first ``n`` positions where two token sequences agree."""
    return sum(1 for x, y in zip(a[:n], b[:n]) if x == y) / n


def evaluate(model: Any, processor: Any, clips: Sequence[Clip], batch: int = 8, original: Any = None) -> dict[str, Any]:
    """First-10-token agreement with the typed answer, and transcription word error rate. With an
    adapted LM, ``original`` (the testbed without the adapter) answers the typed questions too:
    ``agreement10_original_lm`` compares the spoken answers with those."""
    from guardrail_testbeds.whisper_ct2 import word_error_rate

    tok = processor.tokenizer
    agree, agree_orig, wers, samples = [], [], [], []
    for i in range(0, len(clips), batch):
        part = list(clips[i : i + batch])
        enc = [c.encoded for c in part]
        ans_prompts = [_ids(tok, audio_chat(processor, c.encoded.shape[0], c.instruction)) for c in part]
        typed_prompts = [_ids(tok, typed_chat(processor, c.question, c.instruction)) for c in part]
        tr_prompts = [_ids(tok, audio_chat(processor, c.encoded.shape[0], TRANSCRIBE)) for c in part]
        spoken = _generate(model, tok, ans_prompts, enc, 10)
        typed = _generate(model, tok, typed_prompts, None, 10)
        heard = _generate(model, tok, tr_prompts, enc, 40)
        if original is not None:
            agree_orig += [agreement(s, t) for s, t in zip(spoken, _generate(original, tok, typed_prompts, None, 10))]
        for c, s, t, h in zip(part, spoken, typed, heard):
            agree.append(agreement(s, t))
            text = tok.decode(h, skip_special_tokens=True)
            wers.append(word_error_rate(c.question, text))
            samples.append({"question": c.question, "heard": text, "spoken": tok.decode(s), "typed": tok.decode(t)})
    out: dict[str, Any] = {"n": len(clips), "agreement10": sum(agree) / len(agree), "wer": sum(wers) / len(wers)}
    if agree_orig:
        out["agreement10_original_lm"] = sum(agree_orig) / len(agree_orig)
    return {**out, "samples": samples[:6]}


def spoken_clips(model: Any, processor: Any, questions: Sequence[str], instruction: str | None) -> list[Clip]:
    """Clips for questions outside the training data (e.g. FigStep's), spoken as evaluation speaks them."""
    from guardrail.audio import load_audio

    spoken = [speech.speak_to_file(q) for q in questions]
    waves = [load_audio(s, target_sr=lalm.SAMPLING_RATE) for s in spoken]
    encoded = encode_clips(model, processor, waves)
    return [Clip(q, "", speech.Voice(), instruction, e, []) for q, e in zip(questions, encoded)]


def main(argv: Sequence[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m guardrail_testbeds.projector_train")
    p.add_argument("command", choices=["prepare", "prepare-words", "train", "evaluate", "export"])
    p.add_argument("--work-dir", type=Path, default=None)
    p.add_argument("--steps", type=int, default=3000)
    p.add_argument("--batch", type=int, default=8)
    p.add_argument("--lr", type=float, default=2e-3)
    p.add_argument("--threads", type=int, default=None)
    p.add_argument("--lora-rank", type=int, default=0, help="train a LoRA adapter of this rank on the LM too")
    p.add_argument("--init", type=Path, help="start from this projector file (default: ridge regression)")
    p.add_argument("--corpus", type=Path, help="stage 1's corpus: transcription clips from its train shards")
    p.add_argument("--projector-lr", type=float, default=None, help="the projector's peak rate (default --lr)")
    p.add_argument("--corpus-share", type=float, default=0.5, help="share of transcription clips from --corpus")
    p.add_argument("--limit", type=int, default=None, help="questions per split (smoke runs)")
    p.add_argument("--offset", type=int, default=0, help="skip this many --questions (e.g. 50: held-out pairs)")
    p.add_argument("--split", default="held", help="held (held-out subjects) or train")
    p.add_argument(
        "--questions",
        type=Path,
        help="evaluate on these questions instead (JSON: FigStep format "
        "or a list of strings), spoken with the evaluation instruction",
    )
    p.add_argument(
        "--projector",
        default="checkpoint",
        help="checkpoint | testbed (the shipped parts) | ridge | fresh | PATH (a projector file)",
    )
    a = p.parse_args(argv)
    work = a.work_dir or default_work_dir()
    if a.command == "prepare":
        print(prepare(work, limit=a.limit))
    elif a.command == "prepare-words":
        print(prepare_words(work, n=a.limit or 2500))
    elif a.command == "train":
        train(work, steps=a.steps, batch=a.batch, lr=a.lr, threads=a.threads, lora_rank=a.lora_rank, init=a.init,
              corpus=a.corpus, corpus_share=a.corpus_share, projector_lr=a.projector_lr)  # fmt: skip
    elif a.command in ("evaluate", "export"):
        model, processor = lalm.load_testbed() if a.projector == "testbed" else lalm.build_lalm()
        proj = model.model.multi_modal_projector.linear
        adapter = lora.load_lora(lalm.LORA_FILE) if a.projector == "testbed" and lalm.LORA_FILE.is_file() else None
        if a.projector == "checkpoint":
            ck = torch.load(work / "ckpt.pt", weights_only=False)
            proj.load_state_dict(ck["projector"])
            adapter = ck.get("lora")
            if adapter is not None:
                lora.merge_lora(model.model.language_model, adapter)
        elif a.projector == "ridge":
            proj.load_state_dict(ridge_init(model, processor, load_clips(work, "train")))
        elif a.projector not in ("fresh", "testbed"):
            proj.load_state_dict(lalm.load_projector(a.projector))
        if a.command == "export":
            print(lalm.save_projector(model, PROJECTOR_FILE))
            if adapter is not None:
                print(
                    lora.save_lora(
                        adapter, lalm.LORA_FILE, {"kind": "qwen2-audio-testbed LM adapter", "lm": lalm.LM_NAME}
                    )
                )
            else:
                lalm.LORA_FILE.unlink(missing_ok=True)
        else:
            if a.questions:
                from guardrail.defaults import AUDIO_INSTRUCTION
                from guardrail.evaluation.data import read_questions

                texts = read_questions(a.questions)[a.offset :][: a.limit]
                clips = spoken_clips(model, processor, texts, AUDIO_INSTRUCTION)
            else:
                clips = load_clips(work, a.split)
                if a.limit:  # spread over the split (clips come grouped by subject)
                    clips = clips[:: max(1, len(clips) // a.limit)][: a.limit]
            original = lalm.build_lalm()[0] if adapter is not None else None
            print(json.dumps(evaluate(model, processor, clips, original=original), indent=1))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
