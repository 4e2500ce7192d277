"""`guardrail eval --recorded` (issue #19, item 4) on the real audio testbed (slow tier): spoken questions written
in SARSteer's dataset format (JSON items with `question` and `audio_file`, the WAVs in a `question/` folder) give
the same report as `guardrail eval --spoken` on the same clips."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest

from guardrail.cli.main import main
from guardrail.evaluation.data import default_pairs
from guardrail_testbeds import lalm, speech

pytestmark = [
    pytest.mark.slow,
    pytest.mark.skipif(not speech.have_espeak(), reason="espeak-ng not installed"),
    pytest.mark.skipif(
        bool(lalm.missing_parts()) or not lalm.PROJECTOR_FILE.is_file(),
        reason="the audio testbed is not built: guardrail testbeds build qwen2-audio-testbed",
    ),
]
PAIRS = default_pairs()[:6]


def write_sarsteer(folder: Path, questions: list[str], scenario: str) -> Path:
    """SARSteer's FigStep layout: FOLDER/train.json naming FOLDER/question/<scenario>_<k>.wav."""
    (folder / "question").mkdir(parents=True)
    items = []
    for k, question in enumerate(questions):
        name = f"{scenario}_{k}.wav"
        shutil.copy(speech.speak_to_file(question).path, folder / "question" / name)  # the voice --spoken uses
        items.append({"scenario": scenario, "audio_file": name, "question": question})
    (folder / "train.json").write_text(json.dumps(items, indent=1), encoding="utf-8")
    return folder / "train.json"


def report(args: list[str], out: Path, capsys) -> dict:
    common = ["eval", "--testbed", "qwen2-audio-testbed", "--calib", "0:4", "--eval", "4:6", "--methods"]
    common += ["none,sarsteer", "--alphas", "0.1", "--max-new-tokens", "6", "--out", str(out), "--json"]
    assert main([*common, *args]) == 0, capsys.readouterr().err
    capsys.readouterr()
    return json.loads((out / "report.json").read_text())


def test_recorded_dataset_reports_as_the_spoken_run_does(tmp_path, capsys):
    harmful = write_sarsteer(tmp_path / "figstep_audio", [p.harmful for p in PAIRS], "Harm")
    safe = write_sarsteer(tmp_path / "figstep_audio_safe", [p.safe for p in PAIRS], "Safe")
    recorded = report(["--recorded", "--harmful", str(harmful), "--safe", str(safe)], tmp_path / "rec", capsys)
    (tmp_path / "h.txt").write_text("\n".join(p.harmful for p in PAIRS))
    (tmp_path / "s.txt").write_text("\n".join(p.safe for p in PAIRS))
    spoken = report(["--spoken", "--harmful", str(tmp_path / "h.txt"), "--safe", str(tmp_path / "s.txt")],
                    tmp_path / "spk", capsys)  # fmt: skip
    assert [r["label"] for r in recorded["results"]] == ["none", "sarsteer alpha=0.1 k=10"]
    for rec, spk in zip(recorded["results"], spoken["results"]):
        assert {a.pop("category") for a in rec["answers"]} == {"Harm"}  # the items' scenario
        for a in spk["answers"]:
            a.pop("category")
        assert rec["answers"] == spk["answers"]  # the same clips heard, the same questions shown
