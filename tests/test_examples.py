"""The examples/ scripts and the README's code run as written, offline, on tiny models (each in a
subprocess with this interpreter), and print or write what they say they do."""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest
import soundfile as sf

from guardrail import Policy, calibrate, fit_probe
from guardrail.defaults import default_calibration_set
from guardrail.testing.tiny import save_tiny, stand_in_request

ROOT = Path(__file__).resolve().parents[1]
README = (ROOT / "README.md").read_text(encoding="utf-8")
RECORD = re.compile(r"decision: +steered=(True|False) blocked=(True|False) probe_score=(\S+) reason='([^']*)'")
COUNTS = re.compile(r"(\d+) requests under policy '(\w+)': (\d+) steered, (\d+) blocked, (\d+) answered unsteered")
RESULT_KEYS = {"id", "answer", "steered", "blocked", "decision"}
pytestmark = pytest.mark.usefixtures("one_torch_thread")  # for the calibrations run in this process


def run(args: list[str], cwd: Path) -> subprocess.CompletedProcess[str]:
    """Run with this interpreter's environment first on PATH (`python`, `guardrail`), offline."""
    path = f"{Path(sys.executable).parent}{os.pathsep}{os.environ.get('PATH', '')}"
    # one thread: tiny models gain nothing from more, and threads fighting on a busy machine slow them 2-5x
    env = {**os.environ, "PATH": path, "HF_HUB_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1", "OMP_NUM_THREADS": "1"}
    done = subprocess.run(args, cwd=cwd, env=env, capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, f"{args} exited {done.returncode}:\n{done.stdout}\n{done.stderr[-3000:]}"
    return done


def example(name: str, *args: str, cwd: Path) -> str:
    return run([sys.executable, str(ROOT / "examples" / name), *args], cwd).stdout


def readme_blocks(section: str) -> list[tuple[str, str]]:
    """(language, code) of each fenced block under the README heading `section`, up to the next heading
    of the same or a higher level."""
    level = len(section.split(" ")[0])
    lines = README.splitlines(keepends=True)
    start = lines.index(section + "\n") + 1
    blocks: list[tuple[str, str]] = []
    fence: str | None = None
    for line in lines[start:]:
        if fence is None and re.match(rf"#{{1,{level}}} ", line):
            break
        if line.startswith("```"):
            if fence is None:
                fence, code = line[3:].strip(), ""
            else:
                blocks.append((fence, code))
                fence = None
        elif fence is not None:
            code += line
    return blocks


def run_block(language: str, code: str, cwd: Path) -> str:
    if language == "python":
        return run([sys.executable, "-c", code], cwd).stdout
    assert language == "bash", language
    return run(["bash", "-euo", "pipefail", "-c", code], cwd).stdout


# -- examples/ ----------------------------------------------------------------------------------------


def test_voice_assistant_steers_the_flagged_turn_only(tmp_path):
    out = example("voice_assistant.py", "--tiny", "--max-new-tokens", "4", cwd=tmp_path)
    records = RECORD.findall(out)
    assert len(records) == 2 and out.count("user (spoken):") == 2, out
    (steered, blocked, score, reason), (steered2, blocked2, score2, reason2) = records
    assert (steered, blocked, steered2, blocked2) == ("True", "False", "False", "False"), out
    assert float(score) > float(score2) and "probe score" in reason and "not steered" in reason2


def test_voice_assistant_on_a_model_directory(tmp_path):
    """The real-model path (--model, --artifact, --audio), on a tiny Qwen2-Audio saved to disk."""
    model_dir = save_tiny("qwen2_audio", tmp_path / "model")
    from guardrail.testing.tiny import build_tiny

    model, processor = build_tiny("qwen2_audio")  # the same seeded weights as the saved model
    harmful, safe = default_calibration_set()
    calibrate(model, processor, harmful[:6], safe[:6]).save(tmp_path / "artifact")
    fit_probe(model, processor, harmful[:6], safe[:6], folds=2).save(tmp_path / "artifact" / "probe")
    clip, rate = stand_in_request("qwen2_audio", harmful=False)["audio"]
    sf.write(tmp_path / "question.wav", clip, rate)
    args = ["--model", str(model_dir), "--artifact", str(tmp_path / "artifact"), "--audio", "question.wav"]
    out = example("voice_assistant.py", *args, "--max-new-tokens", "4", cwd=tmp_path)
    assert "user (spoken): question.wav" in out and len(RECORD.findall(out)) == 1, out
    assert RECORD.findall(out)[0][2] != "none"  # the gated policy's probe scored it


def test_an_example_without_tiny_or_a_model_says_what_it_needs(tmp_path):
    done = subprocess.run(
        [sys.executable, str(ROOT / "examples" / "batch_moderation.py")],
        cwd=tmp_path,
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert done.returncode == 2 and "give --tiny, or --model, --artifact and --requests" in done.stderr


def test_batch_moderation_writes_one_record_per_request(tmp_path):
    out = example(
        "batch_moderation.py", "--tiny", "--out", "out/moderation.jsonl", "--max-new-tokens", "4", cwd=tmp_path
    )
    requests = [json.loads(line) for line in (tmp_path / "out" / "requests.jsonl").read_text().splitlines()]
    results = [json.loads(line) for line in (tmp_path / "out" / "moderation.jsonl").read_text().splitlines()]
    assert [r["id"] for r in results] == [r["id"] for r in requests] and len(results) == 8
    assert all(set(r) == RESULT_KEYS for r in results)
    assert all(r["decision"]["policy"] == "strict" and r["decision"]["probe_score"] is not None for r in results)
    (n, policy, steered, blocked, unsteered), *_ = COUNTS.findall(out)
    assert (int(n), policy) == (8, "strict") and int(steered) + int(blocked) + int(unsteered) == 8
    assert int(blocked) == sum(r["blocked"] for r in results) and int(steered) == sum(r["steered"] for r in results)
    refusal = Policy.load("strict").actions.refusal_message
    assert all(r["blocked"] and r["answer"] == refusal for r in results if r["id"].startswith("harmful"))


# -- README ---------------------------------------------------------------------------------------


def test_readme_test_command_is_the_one_ci_runs():
    ((language, code),) = readme_blocks("## Two commands")
    command = next(line for line in code.splitlines() if line.startswith("(command -v espeak-ng"))
    ci = (ROOT / ".ci" / "run").read_text(encoding="utf-8").splitlines()
    setup, rest = command.split(") && ", 1)
    assert language == "bash" and rest == ci[-1] and setup.lstrip("(") in ci[-2]


@pytest.fixture(scope="module")
def workspace(tmp_path_factory):
    """A folder where the README's command-line quick start ran (tiny-model/, artifacts/tiny/)."""
    folder = tmp_path_factory.mktemp("readme")
    ((language, code),) = readme_blocks("### Command line")
    return folder, run_block(language, code, folder)


def test_readme_command_line_quick_start(workspace):
    folder, out = workspace
    assert "wrote artifact" in out and "wrote probe" in out and (folder / "artifacts/tiny/probe").is_dir()
    decision = next(json.loads(line) for line in out.splitlines() if line.startswith("{"))["decision"]
    assert decision["policy"] == "gated" and decision["probe_score"] is not None
    assert "name: gated" in out


def test_readme_policy_section(workspace):
    folder, _ = workspace
    (yaml_lang, policy), (bash_lang, commands), (py_lang, code) = readme_blocks("## Policies")
    name = policy.splitlines()[0].lstrip("# ").strip()
    assert (yaml_lang, bash_lang, py_lang, name) == ("yaml", "bash", "python", "my-app.yaml")
    (folder / name).write_text(policy, encoding="utf-8")
    out = run_block(bash_lang, commands, folder)
    assert "ok  my-app.yaml: policy 'my-app'" in out
    assert json.loads(out.splitlines()[-1])["decision"]["policy"] == "my-app"
    assert "probe score" in run_block(py_lang, code, folder)


@pytest.mark.parametrize(
    "section", ["### Python", "### LangChain", "### Conversations, tools and agents", "### Over HTTP"]
)
def test_readme_python_snippets_run_as_written(section, tmp_path):
    ((language, code),) = readme_blocks(section)
    out = run_block(language, code, tmp_path)
    assert "probe score" in out, out  # each prints a decision's reason
