"""LangChain's own standard test suites (`langchain-tests`) on `GuardedChatModel`, for a tiny random text model
and a tiny random audio model, built offline and saved to a directory so the model is made from plain
parameters (`model=`, `policy=`, `artifact=`), as a config or LangChain's harness would make it.

Tool calling, structured output, JSON mode and (for the audio model) audio inputs are declared, as issue #16
asks; the tests that need real tool-using or instruction-following behaviour cannot pass on random weights."""

from __future__ import annotations

import base64
import io
from pathlib import Path
from typing import Any

import pytest
import soundfile as sf
from conftest import alpha_for, calibration_items, is_testbed_built
from langchain_core.language_models import BaseChatModel
from langchain_tests.integration_tests import ChatModelIntegrationTests
from langchain_tests.integration_tests import chat_models as suite
from langchain_tests.unit_tests import ChatModelUnitTests

from guardrail import calibrate
from guardrail.integrations.langchain import GuardedChatModel
from guardrail.testing.tiny import build_tiny, tiny_audio

pytestmark = [
    pytest.mark.usefixtures("one_torch_thread"),
    # the suites' async tests carry no mark and this project runs pytest-asyncio in strict mode; the mark
    # on their sync tests is harmless (the suites forbid overriding a test, so it cannot go on the async ones only)
    pytest.mark.asyncio,
    pytest.mark.filterwarnings("ignore:The test <Function .* is marked with '@pytest.mark.asyncio'"),
    # the unit suite passes api_key= and max_retries=, which a local model has no use for
    pytest.mark.filterwarnings("ignore:GuardedChatModel ignores the constructor argument"),
]

SR = 16_000
TOKENS = 4  # new tokens per answer in the integration suite: enough for text, quick on a tiny model
SAVED: dict[str, dict[str, Any]] = {}  # family -> plain constructor parameters


@pytest.fixture(scope="module", autouse=True)
def saved_models(tmp_path_factory) -> None:
    """Each tiny model, its processor and its steering artifact saved to a directory; the constructor
    parameters that load them (plain data: paths and a policy dict) go in SAVED."""
    for family in ("qwen2", "qwen2_audio"):
        root = tmp_path_factory.mktemp(family)
        model, processor = build_tiny(family, seed=0)
        harmful, safe = calibration_items(family)
        artifact = calibrate(model, processor, harmful=harmful, safe=safe, batch_size=2)
        model.save_pretrained(root / "model")
        processor.save_pretrained(root / "model")
        artifact.save(root / "artifact")
        policy = {"steering": {"alpha": alpha_for(artifact, 2.0), "safe_rank": 2}}
        SAVED[family] = {"model": str(root / "model"), "policy": policy, "artifact": str(root / "artifact")}


def wav_b64(seconds: float) -> str:
    buf = io.BytesIO()
    sf.write(buf, tiny_audio(seconds, SR, seed=5), SR, format="WAV")
    return base64.b64encode(buf.getvalue()).decode()


class Declared:
    """What the suites should expect of GuardedChatModel, whatever the family."""

    family = "qwen2"

    @property
    def chat_model_class(self) -> type[BaseChatModel]:
        return GuardedChatModel

    @property
    def chat_model_params(self) -> dict[str, Any]:
        return dict(SAVED[self.family])

    @property
    def has_tool_calling(self) -> bool:
        return self.family != "qwen2_audio"  # Qwen2-Audio's chat template takes no tools: refused, typed

    @property
    def has_structured_output(self) -> bool:
        return self.family != "qwen2_audio"  # by tool calling (JSON mode is declared on its own)

    @property
    def supports_json_mode(self) -> bool:
        return True

    @property
    def supports_model_override(self) -> bool:
        return False  # one loaded model: a per-call model= must name it

    @property
    def supports_audio_inputs(self) -> bool:
        return self.family == "qwen2_audio"


class Integration(Declared, ChatModelIntegrationTests):
    @property
    def chat_model_params(self) -> dict[str, Any]:
        return {**SAVED[self.family], "max_tokens": TOKENS}

    @pytest.fixture(autouse=True)
    def local_audio(self, monkeypatch) -> None:
        """`test_audio_inputs` downloads a clip from wikimedia.org: it gets a local one (tests run offline)."""
        monkeypatch.setattr(suite, "_get_base64_from_url", lambda url: wav_b64(0.6))


# What random weights cannot do: call a tool with the right arguments, write JSON that parses into a schema,
# answer after a tool result. On the tiny models these are expected to fail (strict: one that starts passing
# fails, so the list stays true); the slow tier runs the whole suite on the 0.5B testbed (TestTestbedIntegration).
NEEDS_A_CAPABLE_MODEL = dict.fromkeys(
    [
        "test_tool_calling",
        "test_tool_calling_async",
        "test_bind_runnables_as_tools",
        "test_tool_choice",
        "test_tool_calling_with_no_arguments",
        "test_structured_output",
        "test_structured_output_async",
        "test_structured_output_pydantic_2_v1",
        "test_structured_output_optional_param",
        "test_json_mode",
        "test_agent_loop",
        "test_unicode_tool_call_integration",
    ],
    "random weights: needs a model that uses tools or writes JSON",
)


class TestTextUnit(Declared, ChatModelUnitTests):
    family = "qwen2"


class TestAudioUnit(Declared, ChatModelUnitTests):
    family = "qwen2_audio"


class TestTextIntegration(Integration):
    family = "qwen2"
    expected_failures = NEEDS_A_CAPABLE_MODEL  # strict xfails (tests/conftest.py)


class TestAudioIntegration(Integration):
    family = "qwen2_audio"
    expected_failures = NEEDS_A_CAPABLE_MODEL


def test_plain_parameters_are_plain_data():
    """The unit suite's init tests need constructor parameters that are plain data, not objects."""
    for params in SAVED.values():
        assert all(isinstance(v, (str, dict)) for v in params.values())
        assert Path(params["model"], "config.json").is_file() and Path(params["artifact"]).is_dir()


TESTBED = "qwen2.5-coder-0.5b-instruct"


@pytest.mark.slow
@pytest.mark.skipif(not is_testbed_built(TESTBED), reason=f"testbed not built: guardrail testbeds build {TESTBED}")
class TestTestbedIntegration(Declared, ChatModelIntegrationTests):
    """The whole integration suite on Qwen2.5-Coder-0.5B-Instruct under the `gated` policy, with the artifact and
    probe `guarded_testbed` calibrates once (minutes on CPU) and caches."""

    family = TESTBED
    # what the 0.5B model gets wrong under greedy decoding (measured: 36 passed, these 3 fail, 11 skipped)
    expected_failures = {
        "test_tool_calling_with_no_arguments": "0.5B: writes the empty schema as the arguments of a no-argument tool",
        "test_json_mode": "0.5B: repeats the joke's setup until max_tokens and never writes the punchline",
        "test_unicode_tool_call_integration": "0.5B: leaves double quotes unescaped inside a JSON string",
    }

    @property
    def chat_model_params(self) -> dict[str, Any]:
        from guardrail_testbeds.guarded import guarded_testbed

        model_dir, artifact = guarded_testbed(TESTBED)
        return {"model": str(model_dir), "policy": "gated", "artifact": str(artifact), "max_tokens": 96}
