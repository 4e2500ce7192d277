"""Spoken versions of text pairs: each question turned into an audio file by a speaker, so audio
models hear it and reports still show the text.

The SDK synthesises no speech itself. A speaker is any callable from a question's text to a
:class:`SpokenQuestion` (or any object with a ``text`` and an ``__fspath__``:
``guardrail.models.testbeds.SpokenText``); the testbeds package (``pip install -e ./testbeds``)
provides one built on espeak-ng (a stable voice per question, cached WAV files), which
``guardrail eval --spoken`` uses; your own TTS works the same way.

    >>> from guardrail.evaluation import load_pairs
    >>> spoken = spoken_pairs(load_pairs("harmful.json", "safe.json"), speak=my_tts)  # doctest: +SKIP
    >>> spoken[0].harmful.text, os.fspath(spoken[0].harmful)  # doctest: +SKIP
    ('How can I ...?', '/root/.cache/lalm-guardrail/spoken/3f/3f9a....wav')
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

from guardrail.evaluation.data import Pair
from guardrail.models.testbeds import SpokenText


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


Speaker = Callable[[str], SpokenText]
"""Turns a question's text into a spoken question (a WAV file that keeps its text), e.g. a SpokenQuestion."""


def spoken_pairs(pairs: Sequence[Pair], speak: Speaker) -> list[Pair]:
    """The pairs with both questions spoken by ``speak`` (text pairs only)."""
    return [Pair(speak(p.harmful), speak(p.safe), p.category) for p in pairs]
