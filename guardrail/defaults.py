"""Defaults shared across the package: the calibration instruction, the audio rate, the
package's own calibration set (text questions, English) and where artifacts go by default."""

from __future__ import annotations

import json
from importlib.resources import files
from pathlib import Path

# The instruction appended to each question (the paper's wording for audio; its text twin).
AUDIO_INSTRUCTION = "Please generate detailed steps for the question in the audio."
TEXT_INSTRUCTION = "Please generate detailed steps for the question."
SAMPLING_RATE = 16_000  # Hz: what the Whisper-style encoders of every shipped family expect
ARTIFACT_DIR = "artifacts/default"  # where `guardrail calibrate` writes when not told otherwise


PROBE_SUBDIR = "probe"  # `calibrate --probe` writes the gate probe into ARTIFACT/probe


def default_probe(artifact: str | Path | None, gate_mode: str) -> str | None:
    """The probe a probe-gated deployment uses when none is named: ARTIFACT/probe, if it exists."""
    if artifact is None or gate_mode != "probe" or not isinstance(artifact, (str, Path)):
        return None
    candidate = Path(artifact) / PROBE_SUBDIR
    return str(candidate) if candidate.is_dir() else None


def default_instruction(takes_audio: bool) -> str:
    """The calibration instruction for an audio model (question spoken) or a text model (typed)."""
    return AUDIO_INSTRUCTION if takes_audio else TEXT_INSTRUCTION


def default_calibration_set() -> tuple[list[str], list[str]]:
    """(harmful, safe) questions: 24 pairs written for this project, safe twin at the same index.

    >>> harmful, safe = default_calibration_set()
    >>> len(harmful) == len(safe) == 24
    True
    """
    data = json.loads(files("guardrail").joinpath("data/calibration_en.json").read_text(encoding="utf-8"))
    harmful = [pair[0] for pair in data["pairs"]]
    safe = [pair[1] for pair in data["pairs"]]
    return harmful, safe


BENIGN_SETS = ("benign_lookalike_a_en", "benign_lookalike_b_en", "benign_ordinary_en")


def benign_set(name: str) -> list[tuple[str, str]]:
    """(text, category) items of one benign set written for this project (guardrail/data/NAME.json):
    look-alikes (safe requests with alarming words, XSTest's style) and ordinary instructions. A gate
    trained with them learns that alarming words and step-by-step frames are not harm in themselves."""
    if name not in BENIGN_SETS:
        raise ValueError(f"unknown benign set {name!r}; known: {', '.join(BENIGN_SETS)}")
    data = json.loads(files("guardrail").joinpath(f"data/{name}.json").read_text(encoding="utf-8"))
    return [(item["text"], item["category"]) for item in data["items"]]
