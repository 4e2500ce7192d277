"""Synthetic speech for data and tests: espeak-ng at 16 kHz, with seeded voice variety.

``speak(text)`` runs ``espeak-ng --stdout`` (the Debian package ``espeak-ng``), reads the WAV
it writes (22050 Hz, 16-bit) with soundfile and resamples it to ``sr`` (16 kHz by default)
with soxr. The text goes through standard input, so it is never parsed as an option.

So that a model trained on this speech does not learn one voice, :func:`voices` draws
accents (en-us, en-gb, RP, New York; Caribbean and Scottish on request), voice variants
(espeak-ng's ``+m2``..``+m7``, ``+f2``..``+f5``), speed (words per minute) and pitch
deterministically from a seed; :func:`voice_for` gives a stable voice per key (e.g. per training item), independent of
iteration order.

Clips are cached on disk (``cache_dir()/speech``, raw espeak WAV, keyed by text, voice,
speed, pitch and espeak-ng version); pass ``cache=False`` to bypass it. :func:`speak_to_file`
writes a question as a 16 kHz WAV (``cache_dir()/spoken``) for spoken evaluation.

    >>> from guardrail_testbeds.speech import speak, voices
    >>> v = voices(seed=0, n=4)[1]
    >>> wave = speak("How do I bake bread?", *v)   # float32, 16 kHz   # doctest: +SKIP
"""

from __future__ import annotations

import functools
import hashlib
import io
import os
import random
import shutil
import subprocess
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING, NamedTuple

import numpy as np

from guardrail.errors import GuardrailError

if TYPE_CHECKING:  # pragma: no cover
    from guardrail.evaluation.spoken import SpokenQuestion

ESPEAK = "espeak-ng"
ESPEAK_PACKAGE = "espeak-ng"  # Debian / Ubuntu package name
ESPEAK_RATE = 22_050  # espeak-ng's native output rate
INSTALL_HINT = f"install it with `apt-get install -y {ESPEAK_PACKAGE}` (Debian/Ubuntu package {ESPEAK_PACKAGE!r})"

# espeak-ng English voices that need no extra data (the mbrola ones do). Whisper tiny.en's word
# error rate on 10 simple sentences at 150 wpm, pitch 50 (espeak-ng 1.51), picked the defaults:
#   accents:  en-us 0.16, en-gb 0.22, en-gb-x-rp 0.24, en-us-nyc 0.27 | en-029 0.30, en-gb-scotland 0.33
#   en-us+ variants: m2 0.07, f2 0.10, m5 0.12, m6 0.12, f3 0.12, m3 0.13, m4 0.15, m7 0.16, f5 0.18,
#                    f4 0.19 | m1 0.30, f1 0.39
# The harder ones (after "|") are kept apart, for robustness checks rather than training.
ACCENTS: tuple[str, ...] = ("en-us", "en-gb", "en-gb-x-rp", "en-us-nyc")
HARD_ACCENTS: tuple[str, ...] = ("en-029", "en-gb-scotland")
# Voice variants (espeak-ng-data/voices/!v); "" is the accent's own default voice.
VARIANTS: tuple[str, ...] = ("", "m2", "m3", "m4", "m5", "m6", "m7", "f2", "f3", "f4", "f5")
HARD_VARIANTS: tuple[str, ...] = ("m1", "f1")
SPEED_RANGE = (140, 190)  # words per minute (espeak-ng's default is 175)
PITCH_RANGE = (30, 70)  # 0..99, default 50


class SpeechSynthesisError(GuardrailError, RuntimeError):
    """espeak-ng is missing or failed."""


class Voice(NamedTuple):
    """An espeak-ng voice setting: ``speak(text, *voice)`` works."""

    voice: str = "en-us"
    speed: int = 160
    pitch: int = 50

    def __str__(self) -> str:
        return f"{self.voice}@{self.speed}wpm/p{self.pitch}"


def espeak_binary() -> str | None:
    """Path of espeak-ng, or None."""
    return shutil.which(ESPEAK)


def have_espeak() -> bool:
    return espeak_binary() is not None


def _require_espeak() -> str:
    exe = espeak_binary()
    if exe is None:
        raise SpeechSynthesisError(
            f"speech synthesis needs the {ESPEAK!r} program, which is not on PATH; {INSTALL_HINT}"
        )
    return exe


@functools.cache
def espeak_version() -> str:
    exe = _require_espeak()
    out = subprocess.run([exe, "--version"], capture_output=True, text=True, timeout=30, check=False)
    return (out.stdout or out.stderr).strip().splitlines()[0] if (out.stdout or out.stderr) else "unknown"


def voice_name(accent: str, variant: str = "") -> str:
    """espeak-ng's ``-v`` argument: ``en-gb`` or ``en-gb+f3``."""
    return f"{accent}+{variant}" if variant else accent


def _draw(rng: random.Random, accents: Sequence[str], variants: Sequence[str]) -> Voice:
    accent = rng.choice(list(accents))
    variant = rng.choice(list(variants))
    return Voice(voice_name(accent, variant), rng.randint(*SPEED_RANGE), rng.randint(*PITCH_RANGE))


def voices(seed: int, n: int, *, accents: Sequence[str] = ACCENTS, variants: Sequence[str] = VARIANTS) -> list[Voice]:
    """``n`` voices drawn deterministically from ``seed`` (accent, variant, speed, pitch)."""
    if n < 0:
        raise ValueError(f"n must be >= 0, got {n}")
    rng = random.Random(f"guardrail.speech:{seed}")
    return [_draw(rng, accents, variants) for _ in range(n)]


def voice_for(
    key: str | int, seed: int = 0, *, accents: Sequence[str] = ACCENTS, variants: Sequence[str] = VARIANTS
) -> Voice:
    """One voice for ``key`` (e.g. an item id or the text), stable across runs and orderings."""
    digest = hashlib.sha256(f"guardrail.speech:{seed}:{key}".encode()).digest()
    return _draw(random.Random(int.from_bytes(digest[:8], "little")), accents, variants)


def default_cache_dir() -> Path:
    from guardrail_testbeds.build import cache_dir

    return cache_dir() / "speech"


def _cache_file(root: Path, text: str, voice: str, speed: int, pitch: int) -> Path:
    key = "\x1f".join((espeak_version(), voice, str(speed), str(pitch), text))
    h = hashlib.sha256(key.encode("utf-8")).hexdigest()
    return root / h[:2] / f"{h}.wav"


def synthesize_wav(text: str, voice: str = "en-us", speed: int = 160, pitch: int = 50) -> bytes:
    """The WAV bytes espeak-ng writes (22050 Hz mono 16-bit)."""
    exe = _require_espeak()
    if not text or not text.strip():
        raise SpeechSynthesisError("cannot speak empty text")
    if not 80 <= int(speed) <= 450:
        raise ValueError(f"speed must be 80..450 words per minute, got {speed}")
    if not 0 <= int(pitch) <= 99:
        raise ValueError(f"pitch must be 0..99, got {pitch}")
    cmd = [exe, "--stdout", "-v", voice, "-s", str(int(speed)), "-p", str(int(pitch))]
    try:
        proc = subprocess.run(cmd, input=text.encode("utf-8"), capture_output=True, timeout=120, check=False)
    except subprocess.TimeoutExpired:
        raise SpeechSynthesisError(f"{ESPEAK} timed out on {len(text)} characters") from None
    err = proc.stderr.decode("utf-8", "replace").strip()
    if proc.returncode != 0 or len(proc.stdout) <= 44:
        raise SpeechSynthesisError(f"{' '.join(cmd)} failed (exit {proc.returncode}): {err or 'no audio written'}")
    if err:  # e.g. an unknown voice: espeak-ng prints an error and may fall back
        raise SpeechSynthesisError(f"{' '.join(cmd)}: {err}")
    return proc.stdout


def _decode_wav(data: bytes, sr: int) -> np.ndarray:
    import soundfile as sf
    import soxr

    x, native = sf.read(io.BytesIO(data), dtype="float32", always_2d=True)
    x = x.mean(axis=1) if x.shape[1] > 1 else x[:, 0]
    if native != sr:
        x = soxr.resample(x, native, sr, quality="HQ")
    return np.ascontiguousarray(x, dtype=np.float32)


def speak(
    text: str,
    voice: str = "en-us",
    speed: int = 160,
    pitch: int = 50,
    sr: int = 16_000,
    *,
    cache: bool | str | os.PathLike[str] = True,
) -> np.ndarray:
    """Speak ``text`` with espeak-ng: float32 mono at ``sr`` Hz (peak below 1).

    ``voice`` is espeak-ng's ``-v`` (``en-us``, ``en-gb+f3``, ...), ``speed`` words per minute,
    ``pitch`` 0..99. ``cache``: True for ``cache_dir()/speech``, a folder, or False.
    Raises SpeechSynthesisError naming the Debian package when espeak-ng is missing.
    """
    _require_espeak()
    speed, pitch = int(speed), int(pitch)
    if cache is False:
        return _decode_wav(synthesize_wav(text, voice, speed, pitch), sr)
    root = default_cache_dir() if cache is True else Path(cache)
    path = _cache_file(root, text, voice, speed, pitch)
    if path.is_file():
        try:
            return _decode_wav(path.read_bytes(), sr)
        except Exception:  # a damaged cache entry: synthesise again
            path.unlink(missing_ok=True)
    data = synthesize_wav(text, voice, speed, pitch)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    tmp.write_bytes(data)
    os.replace(tmp, path)
    return _decode_wav(data, sr)


def speak_as(text: str, voice: Voice, sr: int = 16_000, *, cache: bool | str | os.PathLike[str] = True) -> np.ndarray:
    """``speak`` with a :class:`Voice`."""
    return speak(text, voice.voice, voice.speed, voice.pitch, sr, cache=cache)


def speak_to_file(text: str, seed: int = 0, folder: Path | None = None) -> SpokenQuestion:
    """Synthesise ``text`` once into a 16 kHz WAV (cached by espeak-ng version, voice and text) with the
    voice ``voice_for(text, seed)``: a speaker for ``guardrail.evaluation.spoken.spoken_pairs``."""
    import soundfile as sf

    from guardrail.defaults import SAMPLING_RATE
    from guardrail.evaluation.spoken import SpokenQuestion
    from guardrail_testbeds.build import cache_dir

    voice = voice_for(text, seed)
    folder = folder or cache_dir() / "spoken"
    key = hashlib.sha256(f"{espeak_version()}|{voice}|{text}".encode()).hexdigest()
    path = folder / key[:2] / f"{key}.wav"
    if not path.is_file():
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp.wav")
        sf.write(tmp, speak_as(text, voice, SAMPLING_RATE), SAMPLING_RATE, subtype="PCM_16")
        os.replace(tmp, path)
    return SpokenQuestion(text, path, str(voice))
