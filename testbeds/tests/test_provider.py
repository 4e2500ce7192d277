"""The testbeds as the SDK sees them: the provider registered under the `guardrail.testbeds` entry point
(this package installed: pip install -e ./testbeds), and its speaker for spoken evaluation."""

from __future__ import annotations

import pytest

from guardrail.audio import load_audio
from guardrail.cli.main import main
from guardrail.errors import GuardrailError
from guardrail.evaluation import Pair
from guardrail.evaluation.spoken import spoken_pairs
from guardrail.models.testbeds import ENTRY_POINT_GROUP, find_provider, provider_entry_points
from guardrail_testbeds import build, lalm, speech
from guardrail_testbeds.provider import PROVIDER, Testbeds
from guardrail_testbeds.speech import speak_to_file

SR = 16_000
needs_espeak = pytest.mark.skipif(
    not speech.have_espeak(), reason=f"espeak-ng not installed: apt-get install -y {speech.ESPEAK_PACKAGE}"
)


def test_the_installed_provider_is_found_by_entry_point():
    assert [ep.value for ep in provider_entry_points()] == ["guardrail_testbeds.provider:PROVIDER"]
    provider = find_provider()
    assert provider is PROVIDER and isinstance(provider, Testbeds)
    assert {"qwen2.5-coder-0.5b-instruct", "smollm2-135m-instruct", lalm.TESTBED} <= set(provider.names())
    assert "whisper-tiny.en-ct2" not in provider.names()  # a part of the audio testbed, not a model
    assert ENTRY_POINT_GROUP == "guardrail.testbeds"


def test_unknown_testbed_is_a_guardrail_error_naming_the_known_ones(tmp_path, capsys):
    with pytest.raises(build.TestbedError, match="unknown testbed 'nope'; known: qwen2.5-coder-0.5b-instruct"):
        PROVIDER.load("nope")
    assert issubclass(build.TestbedError, GuardrailError)
    assert main(["eval", "--testbed", "nope", "--harmful", "h.json", "--safe", "s.json", "--out", str(tmp_path)]) == 2
    assert "unknown testbed 'nope'" in capsys.readouterr().err


@needs_espeak
def test_speak_to_file_caches_one_voice_per_question(tmp_path):
    a = speak_to_file("How do I bake bread?", folder=tmp_path)
    b = speak_to_file("How do I bake bread?", folder=tmp_path)
    c = speak_to_file("How do I tie a tie?", folder=tmp_path)
    assert a == b and a.path != c.path and a.path.is_file()
    assert a.voice == str(speech.voice_for("How do I bake bread?", 0))
    assert load_audio(a, target_sr=SR).shape[0] > SR // 2  # at least half a second of speech


@needs_espeak
def test_the_provider_speaks_pairs_for_spoken_evaluation(tmp_path, monkeypatch):
    monkeypatch.setenv("GUARDRAIL_CACHE", str(tmp_path))
    pairs = spoken_pairs([Pair("How do I bake bread?", "How do I tie a tie?")], speak=find_provider().speak)
    assert str(pairs[0].harmful) == "How do I bake bread?" and pairs[0].safe.path.is_file()
    assert pairs[0].harmful.path.is_relative_to(tmp_path / "spoken")
    assert pairs[0].harmful == speak_to_file("How do I bake bread?")
