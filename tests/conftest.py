"""Shared fixtures: tiny random models of every family, built offline from config classes."""

from __future__ import annotations

import subprocess
import time
from pathlib import Path

import numpy as np
import pytest

from guardrail import calibrate
from guardrail.gate.fit import single_thread
from guardrail.steering.artifact import SteeringArtifact
from guardrail.testing.tiny import AUDIO_FAMILIES, FAMILIES, build_tiny, tiny_audio

SR = 16_000


def calibration_items(family: str) -> tuple[list, list]:
    """A few harmful/safe items: audio clips of varied length for audio families, text otherwise."""
    if family in AUDIO_FAMILIES:
        harmful = [(tiny_audio(0.6 + 0.2 * i, SR, seed=i), SR) for i in range(3)]
        safe = [(tiny_audio(0.5 + 0.05 * i, SR, seed=10 + i), SR) for i in range(12)]
        return harmful, safe
    harmful = ["how do I build a weapon", "tell me how to hurt someone", "how to steal a car"]
    safe = [
        "how do I build a shelf",
        "tell me how to help someone",
        "how to wash a car",
        "how to bake bread",
        "how do I water plants",
        "what is a good book",
        "how to paint a fence",
        "how do I learn music",
        "tell me about the sea",
        "how to cook rice",
        "where do birds go",
        "how to fix a bike",
    ]
    return harmful, safe


def request_for(family: str, i: int) -> dict:
    """Request i of a family: lengths differ with i, so batches need padding."""
    text = "please answer " + "the question " * (i + 1)
    if family in AUDIO_FAMILIES:
        # transformers' Phi-4 audio encoder lets padded frames leak into attention, so a batch of
        # unequal clips differs from the clips run alone (docs/families.md); keep its clips equal.
        seconds = 0.8 if family == "phi4_multimodal" else 0.4 + 0.3 * i
        return {"audio": (tiny_audio(seconds, SR, seed=100 + i), SR), "text": text}
    return {"text": text + "about bread" * (i % 2)}


@pytest.fixture(scope="module")
def one_torch_thread():
    """For modules that run several tiny-model generations at once (`pytestmark = usefixtures(...)`): tiny
    models gain nothing from intra-op threads, and on a busy 2-core machine OpenMP threads spinning against
    each other made such files 5x (single calls up to 100x) slower."""
    with single_thread():
        yield


@pytest.fixture(scope="module", params=FAMILIES)
def family(request) -> str:
    return request.param


@pytest.fixture(scope="module")
def bundle(family):
    """(family, model, processor, artifact) for one family, built once per module."""
    model, processor = build_tiny(family, seed=0)
    harmful, safe = calibration_items(family)
    artifact = calibrate(model, processor, harmful=harmful, safe=safe, batch_size=2)
    return family, model, processor, artifact


def silence(seconds: float) -> tuple[np.ndarray, int]:
    return np.zeros(int(seconds * SR), dtype=np.float32), SR


def alpha_for(artifact: SteeringArtifact, shift: float) -> float:
    """The alpha that moves each steered position by about `shift`: tiny random models have small
    refusal vectors (e.g. |v| ~ 0.005 for Granite), so the paper's alpha would not change a token."""
    mean_norm = sum(float(v.norm()) for v in artifact.refusal.values()) / len(artifact.refusal)
    return shift / mean_norm


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    """A test its class lists in `expected_failures` (name -> why) is an expected failure, strictly: one that
    starts passing fails the run, so the list stays true."""
    for item in items:
        failures = getattr(getattr(item, "cls", None), "expected_failures", {})
        reason = failures.get(getattr(item, "originalname", ""))
        if reason:
            item.add_marker(pytest.mark.xfail(reason=reason, strict=True))


def is_testbed_built(name: str) -> bool:
    """Whether the real-weight testbed `name` is installed and built (the slow tier skips otherwise)."""
    try:
        from guardrail_testbeds import build
    except ImportError:
        return False
    return build.is_built(name)


def wait_until_ready(url: str, process: subprocess.Popen, seconds: float) -> None:
    """Poll `url`/ready until it answers 200, the server process exits, or `seconds` pass."""
    import httpx

    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline and process.poll() is None:
        try:
            if httpx.get(f"{url}/ready", timeout=2).status_code == 200:
                return
        except httpx.HTTPError:
            pass
        time.sleep(0.3)


def save_served_model(root: Path) -> Path:
    """A tiny qwen2 under ROOT/model and its artifact under ROOT/artifact, as a deployment file names them."""
    from guardrail.models.loading import load_model
    from guardrail.testing.tiny import save_tiny, stand_in_set

    save_tiny("qwen2", root / "model")
    model, processor, _ = load_model(str(root / "model"))
    calibrate(model, processor, *stand_in_set("qwen2"), batch_size=8).save(root / "artifact")
    return root
