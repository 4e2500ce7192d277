"""GuardedChatModel's standard parameters (max_tokens, temperature, top_p, stop, seed, timeout), set as fields
and per call, on every path; unknown arguments; tracing params; the constructor from plain parameters."""

from __future__ import annotations

import asyncio
import warnings

import pytest
from langchain_core.callbacks import BaseCallbackHandler
from pydantic import ValidationError

from guardrail import Guard, Policy, RequestError
from guardrail.errors import ArtifactError
from guardrail.integrations.langchain import GuardedChatModel
from guardrail.testing.tiny import build_tiny

pytestmark = pytest.mark.usefixtures("one_torch_thread")

PROMPT = "tell me about the sea"
N = 12


@pytest.fixture(scope="module")
def guard() -> Guard:
    """A tiny text model with the gate off: its greedy answers are long and varied enough to cut."""
    model, tokenizer = build_tiny("qwen2", seed=0)
    return Guard(model, tokenizer, policy=Policy.from_dict({"gate": {"mode": "off"}, "limits": {"max_new_tokens": 64}}))


@pytest.fixture(scope="module")
def baseline(guard) -> str:
    return guard.generate(text=PROMPT, max_new_tokens=N).text


@pytest.fixture
def calls(guard, monkeypatch) -> list[dict]:
    """The keyword arguments of each `generate_batch` call (invoke, stream and batch all end there)."""
    recorded, original = [], guard.generate_batch

    def record(requests, **kwargs):
        recorded.append(kwargs)
        return original(requests, **kwargs)

    monkeypatch.setattr(guard, "generate_batch", record)
    return recorded


class Starts(BaseCallbackHandler):
    def __init__(self):
        self.params, self.metadata, self.tokens = [], [], []

    def on_chat_model_start(self, serialized, messages, **kwargs):
        self.params.append(kwargs.get("invocation_params"))
        self.metadata.append(kwargs.get("metadata"))

    def on_llm_new_token(self, token, **kwargs):
        self.tokens.append(token)


# -- max_tokens ---------------------------------------------------------------------
def test_max_tokens_as_field_bind_and_alias(guard):
    """The issue's case: max_tokens=3, temperature=0 at construction generated 512 tokens; .bind raised."""
    chat = GuardedChatModel(guard=guard, max_tokens=3, temperature=0)
    assert chat.invoke(PROMPT).usage_metadata["output_tokens"] == 3
    assert chat.bind(max_tokens=2).invoke(PROMPT).usage_metadata["output_tokens"] == 2
    assert chat.invoke(PROMPT, max_new_tokens=4).usage_metadata["output_tokens"] == 4
    assert GuardedChatModel(guard=guard, max_new_tokens=5).max_tokens == 5
    assert [m.usage_metadata["output_tokens"] for m in chat.batch([PROMPT, "hi"], max_tokens=2)] == [2, 2]
    with pytest.raises(RequestError, match="disagree"):
        chat.invoke(PROMPT, max_tokens=2, max_new_tokens=3)
    with pytest.raises(RequestError, match=r"max_new_tokens=65 .*limits\.max_new_tokens"):  # the guard's check
        chat.invoke(PROMPT, max_tokens=65)
    with pytest.raises(ValidationError):
        GuardedChatModel(guard=guard, max_tokens=0)


# -- temperature, top_p, seed ---------------------------------------------------------
def test_temperature_zero_is_greedy_and_positive_samples(guard, baseline, calls):
    greedy = GuardedChatModel(guard=guard, max_tokens=N, temperature=0, generate_kwargs={"do_sample": True})
    assert greedy.invoke(PROMPT).text == baseline  # the named parameter wins over generate_kwargs
    assert calls[-1]["do_sample"] is False
    chat = GuardedChatModel(guard=guard, max_tokens=N, temperature=1.0, top_p=0.9)
    answers = {chat.invoke(PROMPT, seed=seed).text for seed in range(4)}
    assert calls[-1]["do_sample"] is True and calls[-1]["temperature"] == 1.0 and calls[-1]["top_p"] == 0.9
    assert len(answers) > 1  # it samples
    assert chat.invoke(PROMPT, temperature=0).text == baseline  # per call over the field


def test_seed_makes_sampling_reproducible(guard):
    chat = GuardedChatModel(guard=guard, max_tokens=N, temperature=1.0, seed=7)
    first = chat.invoke(PROMPT).text
    assert chat.invoke(PROMPT).text == first
    assert chat.invoke(PROMPT, seed=8).text == chat.invoke(PROMPT, seed=8).text
    assert any(chat.invoke(PROMPT, seed=s).text != first for s in (8, 9, 10))


def test_top_p_with_greedy_decoding_warns(guard, baseline):
    chat = GuardedChatModel(guard=guard, max_tokens=N, top_p=0.5)
    with pytest.warns(UserWarning, match="top_p=0.5 has no effect with greedy decoding"):
        assert chat.invoke(PROMPT).text == baseline


# -- stop ---------------------------------------------------------------------------
def test_stop_field_and_per_call(guard, baseline, calls):
    stop = baseline[len(baseline) // 2 :][:2]
    cut = baseline[: baseline.index(stop)]
    assert cut and cut != baseline
    chat = GuardedChatModel(guard=guard, max_tokens=N, stop=[stop])
    message = chat.invoke(PROMPT)
    assert message.text == cut and message.response_metadata["finish_reason"] == "stop"
    assert "".join(c.content for c in chat.stream(PROMPT)) == cut
    assert [m.text for m in chat.batch([PROMPT, PROMPT])] == [cut, cut]
    assert asyncio.run(chat.ainvoke(PROMPT)).text == cut
    # a per-call stop replaces the field's (as LangChain's provider models do); [] clears it
    never = GuardedChatModel(guard=guard, max_tokens=N, stop=["\x00never\x00"])
    assert never.invoke(PROMPT).text == baseline
    assert never.invoke(PROMPT, stop=[stop]).text == cut
    assert chat.invoke(PROMPT, stop=[]).text == baseline
    assert calls[-1].get("stop") is None
    with pytest.raises(RequestError, match="non-empty strings"):
        chat.invoke(PROMPT, stop=[""])


# -- timeout ------------------------------------------------------------------------
def test_timeout_is_max_time(guard, calls):
    chat = GuardedChatModel(guard=guard, max_tokens=50, timeout=30)
    chat.invoke(PROMPT)
    assert calls[-1]["max_time"] == 30.0
    # a budget every token overruns: generation ends after the first, with what it has
    message = chat.invoke(PROMPT, timeout=1e-9)
    assert message.usage_metadata["output_tokens"] < 50 and message.response_metadata["finish_reason"] == "length"


# -- other arguments ----------------------------------------------------------------
def test_generate_arguments_pass_and_unknown_ones_warn(guard, baseline, calls):
    chat = GuardedChatModel(guard=guard, max_tokens=N)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        chat.invoke(PROMPT, top_k=5, repetition_penalty=1.1)  # model.generate knows them: no warning
    assert calls[-1]["top_k"] == 5 and calls[-1]["repetition_penalty"] == 1.1
    with pytest.warns(UserWarning, match=r"ignores the per-call argument\(s\) \['colour'\].*max_tokens"):
        assert chat.invoke(PROMPT, colour="red").text == baseline
    assert "colour" not in calls[-1]
    with pytest.warns(UserWarning, match=r"ignores the constructor argument\(s\) \['api_key'\]"):
        built = GuardedChatModel(guard=guard, api_key="x", top_k=3, model_kwargs={"repetition_penalty": 1.2})
    assert built.generate_kwargs == {"top_k": 3, "repetition_penalty": 1.2}
    chat.invoke(PROMPT, model_kwargs={"top_k": 2})
    assert calls[-1]["top_k"] == 2


@pytest.mark.parametrize(
    "kwargs, match",
    [
        ({"temperature": -1}, "temperature=-1 is not a number >= 0"),
        ({"temperature": float("nan")}, "temperature=nan"),
        ({"top_p": 1.5}, r"top_p=1.5 is not a number > 0 and <= 1"),
        ({"timeout": 0}, "timeout=0 is not a number > 0"),
        ({"seed": "7"}, "seed='7' is not an int"),
        ({"stop": [3]}, "not a list of non-empty strings"),
        ({"generate_kwargs": [1]}, "not a dict"),
    ],
)
def test_bad_per_call_values_are_request_errors(guard, kwargs, match):
    with pytest.raises(RequestError, match=match):
        GuardedChatModel(guard=guard, max_tokens=2).invoke(PROMPT, **kwargs)


def test_per_call_model_must_name_the_served_model(guard):
    chat = GuardedChatModel(guard=guard, model="tiny-qwen", max_tokens=2)
    assert chat.invoke(PROMPT, model="tiny-qwen").response_metadata["model_name"] == "tiny-qwen"
    with pytest.raises(RequestError, match="cannot switch models"):
        chat.invoke(PROMPT, model="gpt-4o")


# -- tracing ------------------------------------------------------------------------
def test_tracing_params(guard):
    chat = GuardedChatModel(guard=guard, model_name="tiny-qwen", max_tokens=3, temperature=0.5, stop=["x"], seed=1)
    ls = chat._get_ls_params()
    assert ls["ls_provider"] == "guardrail" and ls["ls_model_name"] == "tiny-qwen" and ls["ls_model_type"] == "chat"
    assert (ls["ls_max_tokens"], ls["ls_temperature"], ls["ls_stop"]) == (3, 0.5, ["x"])
    ls = chat._get_ls_params(stop=["y"], max_tokens=2, temperature=0, model="other")
    assert (ls["ls_max_tokens"], ls["ls_temperature"], ls["ls_stop"], ls["ls_model_name"]) == (2, 0, ["y"], "other")
    assert GuardedChatModel(guard=guard)._get_ls_params()["ls_max_tokens"] == 64  # the policy's limit
    params = chat._identifying_params
    assert {k: params[k] for k in ("max_tokens", "temperature", "stop", "seed", "top_p", "timeout")} == {
        "max_tokens": 3,
        "temperature": 0.5,
        "stop": ["x"],
        "seed": 1,
        "top_p": None,
        "timeout": None,
    }
    starts = Starts()
    chat.invoke(PROMPT, config={"callbacks": [starts]}, max_tokens=2)
    chat.batch([PROMPT], config={"callbacks": [starts]}, max_tokens=2)
    assert [p["max_tokens"] for p in starts.params] == [2, 2]  # per call, on both paths
    assert [m["ls_max_tokens"] for m in starts.metadata] == [2, 2]
    assert [m["ls_temperature"] for m in starts.metadata] == [0.5, 0.5]


def test_streaming_field_makes_invoke_stream(guard):
    starts = Starts()
    GuardedChatModel(guard=guard, max_tokens=N, streaming=True).invoke(PROMPT, config={"callbacks": [starts]})
    assert len([t for t in starts.tokens if t]) > 1
    starts = Starts()
    GuardedChatModel(guard=guard, max_tokens=N).invoke(PROMPT, config={"callbacks": [starts]})
    assert starts.tokens == []


# -- the constructor from plain parameters --------------------------------------------
@pytest.fixture(scope="module")
def saved(tmp_path_factory, guard):
    """The tiny model saved to a directory, and a steering artifact for it."""
    from guardrail import calibrate

    root = tmp_path_factory.mktemp("plain")
    guard.model.save_pretrained(root / "model")
    guard.processor.save_pretrained(root / "model")
    artifact = calibrate(guard.model, guard.processor, ["how to steal a car", "how to hurt"], ["a cat", "bread", "sea"])
    artifact.save(root / "artifact")
    return root, artifact


def test_plain_parameters_build_the_guard(saved):
    root, artifact = saved
    policy = {"gate": {"mode": "always"}, "steering": {"alpha": 0.5, "safe_rank": 2}}
    chat = GuardedChatModel(model=str(root / "model"), policy=policy, artifact=str(root / "artifact"), max_tokens=N)
    expected = Guard(chat.guard.model, chat.guard.processor, policy=Policy.from_dict(policy), artifact=artifact)
    message = chat.invoke(PROMPT)
    assert message.text == expected.generate(text=PROMPT, max_new_tokens=N).text
    assert message.response_metadata["decision"]["steered"] is True
    assert message.response_metadata["model_name"] == str(root / "model") == chat._get_ls_params()["ls_model_name"]
    assert chat.guard.artifact.id == artifact.id and chat.guard.policy.steering.alpha == 0.5
    off = {"gate": {"mode": "off"}}
    by_name = GuardedChatModel(model_name=str(root / "model"), policy=off, device="cpu", dtype="bfloat16")
    assert str(by_name.guard.model.dtype) == "torch.bfloat16" and by_name.guard.model.device.type == "cpu"


def test_plain_parameters_errors_are_typed(saved, guard):
    root, _ = saved
    with pytest.raises(ArtifactError):  # as itself, not wrapped in a pydantic ValidationError
        GuardedChatModel(model=str(root / "model"), artifact=str(root / "missing"))
    with pytest.raises(RequestError, match="guard= is given too"):
        GuardedChatModel(guard=guard, policy="gated")
    with pytest.raises(RequestError, match="needs guard=, or model="):
        GuardedChatModel(max_tokens=3)
    with pytest.raises(RequestError, match="disagree"):
        GuardedChatModel(guard=guard, model="a", model_name="b")
