"""What the stage-1 accelerator run carries (testbeds/GPU.md): everything in one folder under 64 MiB together
with the working tree, since the accelerator reaches no package index and no model hub.

    python -m guardrail_testbeds.stage1_pack OUT [--sentences 60000]

``OUT`` gets:
- ``cache/``: a ``GUARDRAIL_CACHE`` holding the converted Whisper tiny.en (ENCODER weights only, fp16, ~16 MB)
  and the LM's tokenizer files (``tokenizer.json`` gzipped; the device unzips it);
- ``embed-int8.safetensors``: the rows of the LM's input-embedding matrix that the corpus' transcripts use
  (``ids``; every token of the first ``--sentences`` generated sentences and of the word table), int8 with a
  scale per row (``q``, ``scale``): the full bf16 matrix is 272 MB;
- ``espeak/``: espeak-ng's program, libraries and English data from this machine (Debian 12 builds, glibc
  2.34), with a stub ``libpcaudio.so.0`` (espeak-ng links the audio-output library, which would pull in
  PulseAudio and ALSA; ``--stdout`` never opens a device), as ``espeak.tar.gz``;
- ``wheels/``: ``soundfile``, ``soxr``, ``pydantic``, ``structlog`` and their needs for CPython 3.12 (the
  accelerator's image lacks them);
- ``figstep/``: FigStep's question files (the folder beside the checkout does not travel), for the corpus
  builder's exclusion of evaluation questions; ``figstep-safe-50-100.safetensors``: the spoken FigStep benign
  questions 50-99, encoded here, when ``corpus_build figstep`` has written it.
"""

from __future__ import annotations

import argparse
import gzip
import json
import shutil
import subprocess
import tarfile
from collections.abc import Sequence
from pathlib import Path

from guardrail_testbeds import build, lalm, speech_corpus, whisper_ct2

LIB = Path("/usr/lib/x86_64-linux-gnu")
ESPEAK_FILES = ("libespeak-ng.so.1", "libsonic.so.0")
ESPEAK_DATA = ("phontab", "phonindex", "phondata", "intonations", "en_dict", "voices/!v", "lang/gmw")
# the image lacks these (the SDK's import of guardrail pulls pydantic and structlog)
WHEELS = ("soundfile==0.13.1", "soxr==0.5.0.post1", "structlog==26.1.0", "pydantic==2.14.4", "pydantic-core==2.50.5",
          "annotated-types==0.8.0", "typing-inspection==0.4.5")  # fmt: skip
PCAUDIO_STUB = r"""
#include <stddef.h>
struct audio_object;
struct audio_object *create_audio_device_object(const char *d, const char *a, const char *n) { return NULL; }
int audio_object_open(struct audio_object *o, int f, unsigned int r, unsigned char c) { return -1; }
void audio_object_close(struct audio_object *o) {}
void audio_object_destroy(struct audio_object *o) {}
int audio_object_write(struct audio_object *o, const void *d, size_t b) { return -1; }
int audio_object_drain(struct audio_object *o) { return 0; }
int audio_object_flush(struct audio_object *o) { return 0; }
const char *audio_object_strerror(struct audio_object *o, int e) { return "no audio output (stub)"; }
"""


def pack_embeddings(out: Path, n_sentences: int, seed: int = 0) -> int:
    """int8 rows (per-row absmax scale) of every token the corpus can produce; returns the row count."""
    import torch
    from safetensors.torch import save_file

    from guardrail_testbeds.stage1 import load_embeddings

    tok = lalm.build_tokenizer()
    texts = speech_corpus.sentences(
        n_sentences, seed, exclude=speech_corpus.Exclusion(speech_corpus.evaluation_texts())
    )
    texts += speech_corpus.sentences(1000, seed, split="held")
    ids = {i for t in texts for i in tok(t, add_special_tokens=False)["input_ids"]}
    ids |= {tok.convert_tokens_to_ids("\u0120" + w) for w in speech_corpus.word_table()[0]}
    index = torch.tensor(sorted(ids), dtype=torch.int64)
    rows = load_embeddings()[index].float()
    scale = rows.abs().amax(-1).clamp_min(1e-8) / 127
    q = torch.round(rows / scale[:, None]).to(torch.int8)
    save_file({"ids": index, "q": q, "scale": scale}, str(out / "embed-int8.safetensors"))
    return len(index)


def pack_cache(out: Path) -> None:
    """Whisper's encoder and the LM's tokenizer, laid out as ``build.cache_dir()`` lays them out."""
    import torch
    from safetensors.torch import load_file, save_file

    src = whisper_ct2.hf_path()
    dst = out / "cache" / src.relative_to(build.cache_dir())
    dst.mkdir(parents=True, exist_ok=True)
    sd = load_file(str(src / "model.safetensors"))
    save_file({k: v.to(torch.float16) for k, v in sd.items() if k.startswith("model.encoder.")},
              str(dst / "model.safetensors"))  # fmt: skip
    for name in ("config.json", "testbed.json", "processor_config.json"):
        shutil.copy(src / name, dst / name)
    lm = build.hf_dir(lalm.LM_NAME)
    lm_dst = out / "cache" / lm.relative_to(build.cache_dir())
    lm_dst.mkdir(parents=True, exist_ok=True)
    for name in ("config.json", "tokenizer_config.json"):
        shutil.copy(lm / name, lm_dst / name)
    with (lm / "tokenizer.json").open("rb") as f, gzip.open(lm_dst / "tokenizer.json.gz", "wb") as g:
        shutil.copyfileobj(f, g)
    words = build.cache_dir() / speech_corpus.WORDS_FILE  # the accelerator has no pyspellchecker to build it
    speech_corpus.word_table()
    (out / "cache" / speech_corpus.WORDS_FILE).parent.mkdir(parents=True, exist_ok=True)
    shutil.copy(words, out / "cache" / speech_corpus.WORDS_FILE)


def pack_espeak(out: Path) -> None:
    """espeak-ng + its libraries + English data, with a stub audio-output library, as espeak.tar.gz."""
    exe = shutil.which("espeak-ng")
    if exe is None:
        raise FileNotFoundError("espeak-ng is not installed here: apt-get install -y espeak-ng")
    root = out / "espeak"
    (root / "lib").mkdir(parents=True, exist_ok=True)
    shutil.copy(exe, root / "espeak-ng")
    for name in ESPEAK_FILES:
        shutil.copy(LIB / name, root / "lib" / name)
    (root / "pcaudio.c").write_text(PCAUDIO_STUB)
    subprocess.run(["gcc", "-shared", "-fPIC", "-O2", "-o", str(root / "lib" / "libpcaudio.so.0"),
                    "-Wl,-soname,libpcaudio.so.0", str(root / "pcaudio.c")], check=True)  # fmt: skip
    data = LIB / "espeak-ng-data"
    for name in ESPEAK_DATA:
        target = root / "espeak-ng-data" / name
        target.parent.mkdir(parents=True, exist_ok=True)
        (shutil.copytree if (data / name).is_dir() else shutil.copy)(data / name, target)
    with tarfile.open(out / "espeak.tar.gz", "w:gz") as tar:
        tar.add(root, arcname="espeak")
    shutil.rmtree(root)


def pack_wheels(out: Path) -> None:
    cmd = ["python3", "-m", "pip", "download", "--no-deps", "--only-binary=:all:", "--python-version", "3.12",
           "--implementation", "cp", "--platform", "manylinux_2_28_x86_64", "--platform", "manylinux_2_17_x86_64",
           "--platform", "manylinux2014_x86_64", "-d", str(out / "wheels"), *WHEELS]  # fmt: skip
    subprocess.run(cmd, check=True)


def main(argv: Sequence[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m guardrail_testbeds.stage1_pack")
    p.add_argument("out", type=Path)
    p.add_argument("--sentences", type=int, default=60_000, help="the corpus size the device run will build")
    p.add_argument("--no-wheels", action="store_true")
    p.add_argument("--corpus", type=Path, default=None, help="where corpus_build wrote the FigStep shard")
    a = p.parse_args(argv)
    a.out.mkdir(parents=True, exist_ok=True)
    rows = pack_embeddings(a.out, a.sentences)
    pack_cache(a.out)
    pack_espeak(a.out)
    if not a.no_wheels:
        pack_wheels(a.out)
    questions = a.out / "figstep"  # so that the corpus built there keeps FigStep's questions out too
    questions.mkdir(exist_ok=True)
    for name in ("safe_train_100.json", "harmful_train_100.json"):
        shutil.copy(speech_corpus.figstep_dir() / name, questions / name)
    figstep = (a.corpus or build.cache_dir() / "stage1" / "corpus") / "figstep-safe-50-100.safetensors"
    if figstep.is_file():
        shutil.copy(figstep, a.out / figstep.name)
    sizes = {str(f.relative_to(a.out)): f.stat().st_size for f in sorted(a.out.rglob("*")) if f.is_file()}
    print(json.dumps({"embedding_rows": rows, "bytes": sum(sizes.values()), "files": sizes}, indent=1))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
