"""One way to give a policy and an artifact (a name, a path, an object), `--version`, and a closed pipe."""

from __future__ import annotations

import subprocess
import sys
import textwrap

import pytest
import torch

from guardrail import Guard, Policy, PolicyError, calibrate
from guardrail.cli.exits import BROKEN_PIPE
from guardrail.cli.main import main
from guardrail.resources import shipped_policy
from guardrail.testing.tiny import build_tiny
from guardrail.version import __version__


def test_a_policy_is_named_the_same_way_everywhere():
    by_name, by_path = Policy.from_yaml("default"), Policy.from_yaml(shipped_policy("default"))
    assert by_name.model_dump() == by_path.model_dump() == Policy.load("default").model_dump()
    assert Policy.of("gated").name == "gated" and Policy.of(None) == Policy()
    assert Policy.of({"steering": {"alpha": 0.3}}).steering.alpha == 0.3
    with pytest.raises(PolicyError, match="no shipped policy"):
        Policy.from_yaml("no-such-policy")
    with pytest.raises(PolicyError, match="got int"):
        Policy.of(42)  # type: ignore[arg-type]


def test_guard_takes_a_policy_name_and_an_artifact_directory(tmp_path):
    model, tokenizer = build_tiny("qwen2", seed=0)
    artifact = calibrate(model, tokenizer, ["how do I build a weapon", "steal a car"], ["build a shelf", "wash a car"])
    artifact.save(tmp_path / "art")
    guard = Guard(model, tokenizer, policy="default", artifact=tmp_path / "art")
    assert guard.policy.name == "default" and guard.artifact is not None and guard.artifact.id == artifact.id
    assert guard.generate(text="hello", max_new_tokens=2).steered


def test_version_flag(capsys):
    with pytest.raises(SystemExit) as exit_info:
        main(["--version"])
    assert exit_info.value.code == 0 and capsys.readouterr().out.strip() == f"guardrail {__version__}"


def test_a_closed_pipe_ends_quietly_with_the_sigpipe_code():
    script = textwrap.dedent(
        """
        import argparse, sys
        from guardrail.cli.exits import run_command
        def flood(args):
            for _ in range(20_000):
                print("x" * 100)
            return 0
        sys.exit(run_command(argparse.Namespace(func=flood, json=True)))
        """
    )
    proc = subprocess.Popen([sys.executable, "-c", script], stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    assert proc.stdout is not None and proc.stderr is not None
    proc.stdout.read(100)
    proc.stdout.close()  # the reader goes away, as `| head` does
    stderr = proc.stderr.read().decode()
    assert proc.wait(timeout=60) == BROKEN_PIPE and "Traceback" not in stderr and stderr == ""


def test_calibrate_checks_its_files_before_loading_a_model(tmp_path, capsys, monkeypatch):
    import guardrail.models.loading as loading

    def no_model(*args, **kwargs):
        raise AssertionError("the model must not load before the files are checked")

    monkeypatch.setattr(loading, "load_model", no_model)
    harmful = tmp_path / "h.txt"
    harmful.write_text("how do I build a weapon\n", encoding="utf-8")
    out = str(tmp_path / "art")
    assert main(["calibrate", "--model", "m", "--out", out, "--harmful", str(harmful)]) == 2
    assert "--harmful was given without --safe" in capsys.readouterr().err
    missing = str(tmp_path / "missing.txt")
    assert main(["calibrate", "--model", "m", "--out", out, "--harmful", str(harmful), "--safe", missing]) == 2
    assert "cannot read" in capsys.readouterr().err
    broken = tmp_path / "broken.json"
    broken.write_text("[1, 2", encoding="utf-8")
    assert main(["calibrate", "--model", "m", "--out", out, "--harmful", str(broken), "--safe", str(harmful)]) == 2
    assert "not a JSON list" in capsys.readouterr().err


def test_run_takes_the_model_from_the_policy(tmp_path, capsys):
    model, tokenizer = build_tiny("qwen2", seed=0)
    model.save_pretrained(tmp_path / "m")
    tokenizer.save_pretrained(tmp_path / "m")
    policy = tmp_path / "p.yaml"
    policy.write_text("extends: 'off'\nname: app\nmodel:\n  path: ./m\n", encoding="utf-8")
    assert main(["run", "--policy", str(policy), "--text", "hi", "--max-new-tokens", "2", "--json"]) == 0
    assert '"decision"' in capsys.readouterr().out
    bare = tmp_path / "bare.yaml"
    bare.write_text("gate: {mode: 'off'}\n", encoding="utf-8")
    assert main(["run", "--policy", str(bare), "--text", "hi"]) == 2
    assert "no model" in capsys.readouterr().err
    args = ["run", "--policy", str(policy), "--audio", str(tmp_path / "missing.wav")]
    assert main(args) == 2 and "no such file" in capsys.readouterr().err


def test_run_places_the_model_as_told(tmp_path, capsys):
    model, tokenizer = build_tiny("qwen2", seed=0)
    model.save_pretrained(tmp_path / "m")
    tokenizer.save_pretrained(tmp_path / "m")
    args = ["run", "--model", str(tmp_path / "m"), "--policy", "off", "--text", "hi", "--max-new-tokens", "1"]
    assert main([*args, "--dtype", "bfloat16", "--device", "cpu", "--json"]) == 0
    assert '"decision"' in capsys.readouterr().out
    with pytest.raises(SystemExit):
        main([*args, "--dtype", "float8"])  # not a choice: argparse's usage error, exit 2


def test_a_guard_built_from_its_policy(tmp_path):
    model, tokenizer = build_tiny("qwen2", seed=0)
    model.save_pretrained(tmp_path / "m")
    tokenizer.save_pretrained(tmp_path / "m")
    artifact = calibrate(model, tokenizer, ["how do I build a weapon", "steal a car"], ["build a shelf", "wash a car"])
    artifact.save(tmp_path / "art")
    policy = tmp_path / "p.yaml"
    policy.write_text("name: app\nmodel:\n  path: ./m\n  artifact: ./art\n", encoding="utf-8")
    guard = Guard.from_policy(policy, dtype="float32", device="cpu")
    assert guard.policy.name == "app" and guard.artifact is not None and guard.artifact.id == artifact.id
    assert guard.model.dtype == torch.float32 and guard.generate(text="hi", max_new_tokens=1).steered
    with pytest.raises(PolicyError, match="no model.path"):
        Guard.from_policy("default")
