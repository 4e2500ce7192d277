"""Spoken versions of text pairs: each question synthesised once (espeak-ng, a stable voice per
question) into a WAV file, so audio models hear it and reports still show the text.

    >>> from guardrail.evaluation import load_pairs
    >>> spoken = spoken_pairs(load_pairs("harmful.json", "safe.json"))  # doctest: +SKIP
    >>> spoken[0].harmful.text, os.fspath(spoken[0].harmful)  # doctest: +SKIP
    ('How can I ...?', '/root/.cache/lalm-guardrail/spoken/3f/3f9a....wav')
"""

from __future__ import annotations

import hashlib
import os
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from guardrail.defaults import SAMPLING_RATE
from guardrail.evaluation.data import Pair


@dataclass(frozen=True)
class SpokenQuestion:
    """A question as text and as a WAV file; usable wherever an audio path is (``os.fspath``)."""

    text: str
    path: Path
    voice: str = ""

    def __fspath__(self) -> str:
        return str(self.path)

    def __str__(self) -> str:
        return self.text


def speak_to_file(text: str, seed: int = 0, folder: Path | None = None) -> SpokenQuestion:
    """Synthesise ``text`` (16 kHz WAV, cached by text, voice and seed) with the voice
    ``guardrail.testing.speech.voice_for(text, seed)``."""
    import soundfile as sf

    from guardrail.testing import speech
    from guardrail.testing.testbeds import cache_dir

    voice = speech.voice_for(text, seed)
    folder = folder or cache_dir() / "spoken"
    key = hashlib.sha256(f"{speech.espeak_version()}|{voice}|{text}".encode()).hexdigest()
    path = folder / key[:2] / f"{key}.wav"
    if not path.is_file():
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp.wav")
        sf.write(tmp, speech.speak_as(text, voice, SAMPLING_RATE), SAMPLING_RATE, subtype="PCM_16")
        os.replace(tmp, path)
    return SpokenQuestion(text, path, str(voice))


def spoken_pairs(pairs: Sequence[Pair], seed: int = 0, folder: Path | None = None) -> list[Pair]:
    """The pairs with both questions spoken (text pairs only)."""
    return [Pair(speak_to_file(p.harmful, seed, folder), speak_to_file(p.safe, seed, folder), p.category)
            for p in pairs]
