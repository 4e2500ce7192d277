"""A generated speech corpus for the audio testbed's first training stage (issue 19): sentences, voices, shards.

Sentences are drawn from a seeded generator: a question or statement frame written here ("How would someone", "The
article explains") and 3-9 content words sampled from the word table (the LM tokenizer's whole-word tokens that
are English dictionary words, with their corpus frequency: built once into the cache by ``words_table`` from the
pinned ``pyspellchecker`` package, whose English frequencies come from OpenSubtitles 2018 via its build script;
package MIT, see its README for the data's sources), some behind a function word. The sampling weight is
frequency**0.35, flatter than Zipf, so that rare words are heard too. No evaluation question is ever produced: a
sentence sharing a five-word run with any of them (FigStep's harmful and safe questions 0-99, the package's
calibration pairs and benign sets, the templated questions of ``train_questions``) is dropped
(:class:`Exclusion`).

Each clip is spoken by espeak-ng with its own seeded voice (accent, variant, 130-200 wpm, pitch 25-75),
encoded once by Whisper tiny.en's encoder (:func:`load_tower`, the testbed's tower without the LM) and
stored in safetensors shards (never pickle): ``frames`` (fp16 [sum of frames, 384]), ``frame_offsets``,
``tokens`` (the LM's token ids of each transcript, int32), ``token_offsets``; texts and voices in the
metadata. Building is :mod:`guardrail_testbeds.corpus_build`.
"""

from __future__ import annotations

import json
import random
import re
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from functools import cache
from pathlib import Path
from typing import Any

from guardrail_testbeds import build, lalm, speech

WORDS_FILE = "stage1/words.tsv"  # under build.cache_dir(); carried to an accelerator by stage1_pack
SHARD_FORMAT = "guardrail stage1 shard v1"
NGRAM = 5  # a sentence sharing this many consecutive words with an evaluation question is dropped
SPEEDS = (130, 200)
PITCHES = (25, 75)

QUESTION_FRAMES = (
    "How can I", "How would someone", "How does one", "What is the", "What are the", "What are some",
    "Which are the", "Which of these", "Why does the", "Why do people", "Where can I find", "Where do",
    "When should we", "When did the", "Who decides the", "Who uses", "Can you explain", "Can you list",
    "Could you describe", "Is it possible to", "Is there a", "Are there any", "Should I", "Do you know",
    "What happens to the", "What makes the", "How much", "How often do", "What would", "Tell me why",
)  # fmt: skip
STATEMENT_FRAMES = (
    "The article explains", "Please describe", "Tell me about", "Explain the", "Give me", "List the",
    "I would like to know about", "We talked about", "My friend mentioned", "The report covers",
    "Write a note about", "She asked about", "They wanted", "Here is", "Remember the", "Summarize the",
)  # fmt: skip
FUNCTION_WORDS = (
    "the", "a", "of", "and", "to", "in", "for", "with", "on", "or", "from", "by", "as", "at", "that", "this",
    "their", "your", "my", "our", "is", "are", "can", "be", "it", "about", "into", "without", "some", "more",
    "most", "other", "an", "its", "his", "her", "not", "all", "any", "while", "after", "before", "between",
)  # fmt: skip


@cache
def word_table() -> tuple[tuple[str, ...], tuple[float, ...]]:
    """(words, sampling weights) from the cached word table, built on first use (needs the LM testbed's
    tokenizer and ``pyspellchecker``)."""
    path = build.cache_dir() / WORDS_FILE
    if not path.is_file():
        write_word_table(path, words_table(lalm.build_tokenizer()))
    words, weights = [], []
    for line in path.read_text(encoding="utf-8").splitlines():
        word, freq = line.split("\t")
        words.append(word)
        weights.append(float(freq) ** 0.35)
    return tuple(words), tuple(weights)


def write_word_table(path: Path, rows: Sequence[tuple[str, int]]) -> Path:
    """Write (word, frequency) rows as the word table (whole or not at all)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    partial = path.with_suffix(".partial")
    partial.write_text("".join(f"{word}\t{freq}\n" for word, freq in rows), encoding="utf-8")
    partial.replace(path)
    return path


def words_table(tokenizer: Any, min_freq: int = 200) -> list[tuple[str, int]]:
    """The rows of the word table: whole-word lower-case tokens (``Ġword``) of the tokenizer that the
    ``pyspellchecker`` English dictionary knows with at least ``min_freq`` occurrences, most frequent first."""
    from spellchecker import SpellChecker

    freq = SpellChecker().word_frequency
    rows = []
    for token, i in tokenizer.get_vocab().items():
        word = token[1:]
        if token.startswith("\u0120") and i < 151643 and re.fullmatch(r"[a-z]{1,14}", word):
            if freq[word] >= min_freq and (len(word) > 2 or word in ("a", "i")):
                rows.append((word, int(freq[word])))
    return sorted(rows, key=lambda r: (-r[1], r[0]))


def _words(text: str) -> list[str]:
    return re.findall(r"[a-z0-9']+", text.lower())


class Exclusion:
    """Rejects any sentence that shares a ``NGRAM``-word run with one of ``texts`` (or is one of them)."""

    def __init__(self, texts: Iterable[str], n: int = NGRAM) -> None:
        self.n = n
        self.whole: set[tuple[str, ...]] = set()
        self.grams: set[tuple[str, ...]] = set()
        for text in texts:
            w = _words(text)
            self.whole.add(tuple(w))
            self.grams.update(self._grams(w))

    def _grams(self, w: list[str]) -> set[tuple[str, ...]]:
        return {tuple(w[i : i + self.n]) for i in range(len(w) - self.n + 1)}

    def __contains__(self, sentence: object) -> bool:
        w = _words(str(sentence))
        return tuple(w) in self.whole or not self.grams.isdisjoint(self._grams(w))

    def __len__(self) -> int:
        return len(self.whole)


def figstep_dir() -> Path:
    """FigStep's pairs beside the checkout (``$GUARDRAIL_FIGSTEP_DIR`` or ``../shared/data/figstep``)."""
    import os

    env = os.environ.get("GUARDRAIL_FIGSTEP_DIR")
    return Path(env) if env else Path(__file__).resolve().parents[3] / "shared" / "data" / "figstep"


def figstep_questions(which: str = "safe", folder: Path | None = None) -> list[str]:
    name = {"safe": "safe_train_100.json", "harmful": "harmful_train_100.json"}[which]
    rows = json.loads(((folder or figstep_dir()) / name).read_text(encoding="utf-8"))
    return [r["question"] for r in rows]


def evaluation_texts(folder: Path | None = None, *, require_figstep: bool = True) -> list[str]:
    """Every question an evaluation may ask: FigStep's 200, the package's calibration pairs and benign sets,
    and the testbed's templated training questions (held-out subjects included). Without FigStep's folder
    this raises (a corpus built without excluding them would not be clean) unless ``require_figstep`` is off."""
    from guardrail.defaults import BENIGN_SETS, benign_set, default_calibration_set
    from guardrail_testbeds.build import TestbedError
    from guardrail_testbeds.train_questions import questions

    folder = folder or figstep_dir()
    if require_figstep and not folder.is_dir():
        raise TestbedError(
            f"FigStep's questions are not at {folder}, so they cannot be kept out of the corpus; "
            "set GUARDRAIL_FIGSTEP_DIR to the folder holding safe_train_100.json and harmful_train_100.json"
        )
    texts = [q for w in ("safe", "harmful") for q in figstep_questions(w, folder)] if folder.is_dir() else []
    harmful, safe = default_calibration_set()
    texts += harmful + safe + [q.text for q in questions()]
    texts += [t for name in BENIGN_SETS for t, _ in benign_set(name)]
    return texts


def sentence(rng: random.Random) -> str:
    """One generated sentence: a frame, then content words (some behind a function word)."""
    words, weights = word_table()
    question = rng.random() < 0.7
    frame = rng.choice(QUESTION_FRAMES if question else STATEMENT_FRAMES)
    body = []
    for w in rng.choices(words, weights, k=rng.randint(3, 9)):
        if rng.random() < 0.4:
            body.append(rng.choice(FUNCTION_WORDS))
        body.append(w)
    return f"{frame} {' '.join(body)}{'?' if question else '.'}"


def sentences(n: int, seed: int = 0, *, split: str = "train", exclude: Exclusion | None = None) -> list[str]:
    """``n`` distinct sentences for ``split`` (train / held: different streams), none in ``exclude``."""
    rng = random.Random(f"guardrail.speech_corpus:{split}:{seed}")
    out: list[str] = []
    seen: set[str] = set()
    while len(out) < n:
        s = sentence(rng)
        if s not in seen and (exclude is None or s not in exclude):
            seen.add(s)
            out.append(s)
    return out


def voice(index: int, seed: int = 0, split: str = "train") -> speech.Voice:
    """The seeded voice of clip ``index``: accent, variant, speed and pitch, wider than ``speech.voices``."""
    rng = random.Random(f"guardrail.speech_corpus.voice:{split}:{seed}:{index}")
    name = speech.voice_name(rng.choice(speech.ACCENTS), rng.choice(speech.VARIANTS))
    return speech.Voice(name, rng.randint(*SPEEDS), rng.randint(*PITCHES))


# --------------------------------------------------------------------------- shards


@dataclass
class Shard:
    """Clips of one shard: ``frames[frame_offsets[i]:frame_offsets[i+1]]`` are clip i's encoder outputs."""

    frames: Any  # torch.Tensor fp16 [F, 384]
    frame_offsets: Any  # int64 [n + 1]
    tokens: Any  # int32 [T]
    token_offsets: Any  # int64 [n + 1]
    texts: list[str]
    voices: list[str]

    def __len__(self) -> int:
        return len(self.texts)

    def clip(self, i: int) -> tuple[Any, Any]:
        """(encoder frames, token ids) of clip ``i``."""
        f, t = self.frame_offsets, self.token_offsets
        return self.frames[f[i] : f[i + 1]], self.tokens[t[i] : t[i + 1]]


def _offsets(parts: Sequence[Any]) -> Any:
    import torch

    return torch.tensor([0] + [len(p) for p in parts], dtype=torch.int64).cumsum(0)


def write_shard(path: Path, frames: Sequence[Any], tokens: Sequence[Sequence[int]], texts: Sequence[str],
                voices: Sequence[str], meta: dict[str, str] | None = None) -> Path:  # fmt: skip
    """Write clips (encoder frames [n_i, d], token ids) as one safetensors file (atomically)."""
    import torch
    from safetensors.torch import save_file

    if not len(frames) == len(tokens) == len(texts) == len(voices):
        raise ValueError("frames, tokens, texts and voices must have one entry per clip")
    tensors = {
        "frames": torch.cat([f.to(torch.float16) for f in frames]).contiguous(),
        "frame_offsets": _offsets(frames),
        "tokens": torch.tensor([t for ts in tokens for t in ts], dtype=torch.int32),
        "token_offsets": _offsets(tokens),
    }
    metadata = {"format": SHARD_FORMAT, "texts": json.dumps(list(texts)), "voices": json.dumps(list(voices))}
    metadata.update(meta or {})
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp")
    save_file(tensors, str(tmp), metadata=metadata)
    tmp.replace(path)
    return path


def read_shard(path: Path) -> Shard:
    from safetensors import safe_open

    with safe_open(str(path), framework="pt") as f:
        meta = f.metadata() or {}
        if meta.get("format") != SHARD_FORMAT:
            raise ValueError(f"{path} is not a stage-1 shard (format {meta.get('format')!r}); rebuild it")
        t = {k: f.get_tensor(k) for k in ("frames", "frame_offsets", "tokens", "token_offsets")}
    return Shard(texts=json.loads(meta["texts"]), voices=json.loads(meta["voices"]), **t)


def shard_paths(folder: Path, split: str) -> list[Path]:
    return sorted(folder.glob(f"{split}-*.safetensors"))
