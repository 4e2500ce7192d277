"""Property: whatever content a HumanMessage carries (a string, a list of strings and arbitrary block dicts, with
real and broken audio, data:, file:// and remote URLs), `GuardedChatModel.invoke` answers with an AIMessage or
raises a typed `GuardrailError`, within a time budget: never a KeyError from a malformed block, never a hang
on a FIFO, never a read outside the policy's `input.audio_dirs`."""

from __future__ import annotations

import base64
import io
import os
from pathlib import Path

import pytest
import soundfile as sf
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from langchain_core.messages import AIMessage, HumanMessage

from guardrail import Guard, Policy
from guardrail.errors import GuardrailError
from guardrail.integrations.langchain import GuardedChatModel
from guardrail.testing.tiny import build_tiny, tiny_audio

pytestmark = pytest.mark.usefixtures("one_torch_thread")

SR = 16_000
EXAMPLES = 200  # per model; a longer run by hand: see the report of issue #15
DEADLINE_MS = 5_000  # one invoke: a tiny model's prefill and one token, or an error


def wav(seconds: float) -> bytes:
    buf = io.BytesIO()
    sf.write(buf, tiny_audio(seconds, SR, seed=3), SR, format="WAV")
    return buf.getvalue()


@pytest.fixture(scope="module")
def files(tmp_path_factory) -> dict[str, Path]:
    """An allowed directory with a clip, a FIFO, a directory, an oversized sparse file, a symlink out of it;
    and a clip outside it."""
    root = tmp_path_factory.mktemp("fuzz-audio")
    allowed, outside = root / "allowed", root / "outside"
    allowed.mkdir()
    outside.mkdir()
    (allowed / "clip.wav").write_bytes(wav(0.4))
    (allowed / "junk.wav").write_bytes(b"RIFF\x00\x00\x00\x00WAVEjunk")
    (outside / "secret.wav").write_bytes(wav(0.4))
    (allowed / "link.wav").symlink_to(outside / "secret.wav")
    (allowed / "dir.wav").mkdir()
    os.mkfifo(allowed / "fifo.wav")
    with open(allowed / "huge.wav", "wb") as f:
        f.truncate(64 * 1024 * 1024 + 1)
    return {"allowed": allowed, "outside": outside}


@pytest.fixture(scope="module", params=["qwen2_audio", "qwen2"])
def chat(request, files) -> GuardedChatModel:
    model, processor = build_tiny(request.param, seed=0)
    policy = Policy.from_dict({"gate": {"mode": "off"}, "input": {"audio_dirs": [str(files["allowed"])]}})
    return GuardedChatModel(guard=Guard(model, processor, policy=policy), max_new_tokens=1)


GOOD_B64 = base64.b64encode(wav(0.3)).decode()
TYPES = ["text", "audio", "file", "input_audio", "image", "image_url", "non_standard", "video", "reasoning", "x"]
KEYS = ["text", "url", "base64", "data", "mime_type", "source_type", "file_id", "input_audio", "value", "id", "format"]

leaf = st.none() | st.booleans() | st.integers() | st.floats() | st.text(max_size=12) | st.binary(max_size=12)
anything = st.recursive(
    leaf,
    lambda inner: st.lists(inner, max_size=3) | st.dictionaries(st.text(max_size=6), inner, max_size=3),
    max_leaves=8,
)


def file_urls(files: dict[str, Path]) -> st.SearchStrategy[str]:
    allowed, outside = files["allowed"], files["outside"]
    names = "clip.wav junk.wav link.wav dir.wav fifo.wav huge.wav missing.wav ../outside/secret.wav".split()
    paths = [f"{allowed}/{n}" for n in names] + [f"{outside}/secret.wav", "/etc/passwd", "/dev/zero", "/", ""]
    return st.sampled_from(paths).map(lambda p: "file://" + p) | st.text(max_size=20).map(lambda t: "file://" + t)


def urls(files: dict[str, Path]) -> st.SearchStrategy[str]:
    return (
        file_urls(files)
        | st.just("data:audio/wav;base64," + GOOD_B64)
        | st.binary(max_size=40).map(lambda b: "data:audio/wav;base64," + base64.b64encode(b).decode())
        | st.text(max_size=30).map(lambda t: "data:" + t)
        | st.sampled_from(["https://example.com/q.wav", "ftp://h/q.wav", "file://host/q.wav", "//x", ""])
        | st.text(max_size=30)
    )


def blocks(files: dict[str, Path]) -> st.SearchStrategy[dict]:
    special = {
        "url": urls(files) | anything,
        "base64": st.just(GOOD_B64) | st.binary(max_size=40).map(lambda b: base64.b64encode(b).decode()) | anything,
        "data": st.just(GOOD_B64) | anything,
        "mime_type": st.sampled_from(["audio/wav", "audio/flac", "application/octet-stream", "video/mp4", ""]) | leaf,
        "source_type": st.sampled_from(["base64", "url", "id", "text"]) | leaf,
        "input_audio": st.fixed_dictionaries({"data": st.just(GOOD_B64) | leaf, "format": leaf}) | anything,
        "text": st.text(max_size=40) | anything,
    }
    optional = {key: special.get(key, anything) for key in KEYS}
    return st.fixed_dictionaries({"type": st.sampled_from(TYPES) | leaf}, optional=optional) | st.dictionaries(
        st.text(max_size=6), anything, max_size=3
    )


def contents(files: dict[str, Path]) -> st.SearchStrategy[str | list]:
    return st.text(max_size=60) | st.lists(blocks(files) | st.text(max_size=20), max_size=4)


def check(chat: GuardedChatModel, content: str | list) -> None:
    """An AIMessage, or a typed GuardrailError; anything else fails the property."""
    try:
        message = HumanMessage(content)
    except ValueError:  # pydantic refused the content itself: not the guard's input
        return
    try:
        answer = chat.invoke([message])
    except GuardrailError as exc:
        assert str(exc).strip(), f"{type(exc).__name__} without a message"
        return
    assert isinstance(answer, AIMessage) and isinstance(answer.text, str)


@settings(
    max_examples=EXAMPLES,
    deadline=DEADLINE_MS,
    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
    derandomize=True,  # CI runs the same examples every time; the long run by hand was random
)
@given(data=st.data())
def test_any_content_gives_an_answer_or_a_typed_error(chat, files, data):
    check(chat, data.draw(contents(files), label="content"))
