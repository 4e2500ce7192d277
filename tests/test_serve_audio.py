"""`guardrail serve` with spoken input: `input_audio` and `audio_url` data: URLs on the tiny audio model, and
the clips the server refuses (bad base64, undecodable, too long, file URLs outside input.audio_dirs)."""

from __future__ import annotations

import base64
import io

import httpx
import numpy as np
import openai
import pytest
import soundfile as sf

from guardrail.serve import BackgroundServer, Deployment, Deployments, create_app
from guardrail.testing.tiny import SAMPLING_RATE, tiny_audio, tiny_guard, tiny_noise

pytestmark = pytest.mark.usefixtures("one_torch_thread")


def wav(clip: np.ndarray) -> bytes:
    out = io.BytesIO()
    sf.write(out, clip, SAMPLING_RATE, format="WAV", subtype="PCM_16")
    return out.getvalue()


@pytest.fixture(scope="module")
def guard():
    return tiny_guard("qwen2_audio", "gated")


@pytest.fixture(scope="module")
def server(guard):
    with BackgroundServer(create_app(Deployments([Deployment.of("voice", guard)]))) as running:
        yield running


@pytest.fixture(scope="module")
def client(server):
    return openai.OpenAI(base_url=server.base_url, api_key="unused", max_retries=0)


def spoken(part: dict, text: str = "Please answer the question in the audio.") -> list[dict]:
    return [{"role": "user", "content": [part, {"type": "text", "text": text}]}]


def input_audio(data: bytes, fmt: str = "wav") -> dict:
    return {"type": "input_audio", "input_audio": {"data": base64.b64encode(data).decode(), "format": fmt}}


@pytest.mark.parametrize("noise", [True, False])
def test_input_audio_answers_equal_guard_generate(client, guard, noise):
    clip = wav(tiny_noise(1.0, seed=77) if noise else tiny_audio(1.0, seed=78))
    reply = client.chat.completions.create(model="voice", messages=spoken(input_audio(clip)), max_tokens=8)
    expected = guard.generate(
        messages=spoken({"type": "audio", "audio": clip}), max_new_tokens=8
    )  # the same bytes, decoded by the guard
    assert reply.choices[0].message.content == expected.text
    assert reply.model_extra["guardrail"]["steered"] == expected.steered
    streamed = client.chat.completions.create(
        model="voice", messages=spoken(input_audio(clip)), max_tokens=8, stream=True
    )
    assert "".join(c.choices[0].delta.content or "" for c in streamed if c.choices) == expected.text


def test_an_audio_url_data_url_is_the_same_clip(client):
    clip = wav(tiny_audio(0.8, seed=5))
    url = "data:audio/wav;base64," + base64.b64encode(clip).decode()
    by_url = client.chat.completions.create(
        model="voice", messages=spoken({"type": "audio_url", "audio_url": {"url": url}}), max_tokens=6
    )
    inline = client.chat.completions.create(model="voice", messages=spoken(input_audio(clip)), max_tokens=6)
    assert by_url.choices[0].message.content == inline.choices[0].message.content


def test_bad_audio_is_400_and_the_server_keeps_answering(server, client, tmp_path):
    (tmp_path / "a.wav").write_bytes(wav(tiny_audio(0.5)))
    cases = [
        {"type": "input_audio", "input_audio": {"data": "not base64 !!", "format": "wav"}},
        input_audio(b"RIFF but not really a wav file at all" * 10),
        input_audio(wav(tiny_audio(31.0))),  # over the gated policy's max_audio_seconds (30)
        input_audio(wav(tiny_audio(0.5)), fmt="aiff"),
        {"type": "audio_url", "audio_url": {"url": f"file://{tmp_path}/a.wav"}},  # input.audio_dirs is empty
        {"type": "audio_url", "audio_url": {"url": "https://example.com/a.wav"}},
    ]
    for part in cases:
        reply = httpx.post(
            f"{server.base_url}/chat/completions",
            json={"model": "voice", "messages": spoken(part), "max_tokens": 2},
            timeout=60,
        )
        assert reply.status_code == 400, (part, reply.text)
        assert reply.json()["error"]["type"] == "invalid_request_error"
    ok = client.chat.completions.create(model="voice", messages=spoken(input_audio(wav(tiny_audio(0.5)))), max_tokens=2)
    assert ok.choices[0].message.content is not None
