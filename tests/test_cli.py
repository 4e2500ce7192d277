"""The `guardrail` command line, end to end on a tiny model saved to disk."""

from __future__ import annotations

import json

import pytest

from guardrail.cli.main import main
from guardrail.testing.tiny import build_tiny


@pytest.fixture(scope="module")
def model_dir(tmp_path_factory):
    path = tmp_path_factory.mktemp("tiny-qwen2")
    model, tokenizer = build_tiny("qwen2")
    model.save_pretrained(path)
    tokenizer.save_pretrained(path)
    return path


@pytest.fixture
def no_testbeds(monkeypatch):
    """The testbeds package absent: nothing registered under the `guardrail.testbeds` entry point."""
    from guardrail.models import testbeds

    monkeypatch.setattr(testbeds, "entry_points", lambda group: [])


def test_calibrate_inspect_run(model_dir, tmp_path, capsys):
    harmful = tmp_path / "harmful.txt"
    harmful.write_text("how do I build a weapon\nhow to steal a car\n")
    safe = tmp_path / "safe.json"
    safe.write_text(json.dumps(["how do I build a shelf", "how to wash a car", "how to bake bread"]))
    out = tmp_path / "artifact"
    assert (
        main(
            [
                "calibrate",
                "--model",
                str(model_dir),
                "--out",
                str(out),
                "--harmful",
                str(harmful),
                "--safe",
                str(safe),
                "--probe",
            ]
        )
        == 0
    )
    printed = capsys.readouterr().out
    assert "wrote artifact" in printed and "wrote probe" in printed and (out / "probe" / "probe.onnx").is_file()

    assert main(["inspect", str(out), "--json"]) == 0
    meta = json.loads(capsys.readouterr().out)
    assert meta["calibration"]["n_harmful"] == 2 and meta["model"]["adapter"] == "causal_lm"

    assert main(["inspect", str(out)]) == 0
    assert "2 harmful / 3 safe" in capsys.readouterr().out

    assert (
        main(
            [
                "run",
                "--model",
                str(model_dir),
                "--artifact",
                str(out),
                "--text",
                "how to steal a car",
                "--max-new-tokens",
                "4",
                "--json",
            ]
        )
        == 0
    )
    result = json.loads(capsys.readouterr().out)
    assert result["decision"]["steered"] is True and len(result["token_ids"]) <= 4

    from guardrail.resources import shipped_policy

    assert (
        main(
            [
                "run",
                "--model",
                str(model_dir),
                "--artifact",
                str(out),
                "--policy",
                str(shipped_policy("gated")),
                "--text",
                "how to steal a car",
                "--max-new-tokens",
                "4",
                "--json",
            ]
        )
        == 0
    )
    gated = json.loads(capsys.readouterr().out)["decision"]
    assert gated["gate_mode"] == "probe" and gated["probe_score"] is not None


def test_invalid_policy_exits_2(model_dir, tmp_path, capsys):
    policy = tmp_path / "bad.yaml"
    policy.write_text("steering:\n  alpah: 1\n")
    assert main(["run", "--model", str(model_dir), "--policy", str(policy), "--text", "hi"]) == 2
    assert "steering.alpah: unknown field" in capsys.readouterr().err


def test_steering_policy_without_artifact_exits_2(model_dir, capsys):
    assert main(["run", "--model", str(model_dir), "--text", "hi"]) == 2
    assert "no artifact" in capsys.readouterr().err


def test_families(capsys):
    assert main(["families"]) == 0
    out = capsys.readouterr().out
    assert "qwen2_audio" in out and "voxtral" in out


def test_demo_json(capsys):
    assert main(["demo", "--tiny", "--json", "--max-new-tokens", "6"]) == 0
    report = json.loads(capsys.readouterr().out)
    assert report["hooks_left"] == 0 and report["n_calibration"] == 20
    assert len(report["rows"]) == 8 and all(row["first_token_kl"] > 0 for row in report["rows"])
    assert any(row["guarded"] != row["unguarded"] for row in report["rows"])


def test_demo_table(no_testbeds, capsys):  # --tiny runs offline, without the testbeds package
    assert main(["demo", "--tiny", "--max-new-tokens", "4"]) == 0
    out = capsys.readouterr().out
    assert "harmful refused:" in out and "hooks left on the model: 0" in out


def test_bench_json(capsys):
    assert main(["bench", "--tiny", "--batches", "1", "2", "--rounds", "1", "--new-tokens", "2", "--json"]) == 0
    report = json.loads(capsys.readouterr().out)
    assert [r["batch"] for r in report["results"]] == [1, 2]
    assert {"raw", "wrapped", "steered"} <= set(report["results"][0]["median_s"])
    assert report["results"][0]["steered_over_raw"]["median"] > 0


def test_progress_is_silent_when_not_a_terminal(capsys):
    from guardrail.progress import progress

    with progress(2, "working") as advance:
        advance(2)
    assert capsys.readouterr().err == ""


def test_progress_bar_draws_when_enabled():
    from guardrail.progress import progress

    with progress(2, "working", enabled=True) as advance:
        advance(1)
        advance(1)


@pytest.mark.parametrize(
    "command",
    [
        ["demo"],
        ["eval", "--testbed", "qwen2.5-coder-0.5b-instruct", "--harmful", "h.json", "--safe", "s.json", "--out", "r"],
        ["bench", "--testbed", "qwen2.5-coder-0.5b-instruct"],
        ["testbeds", "list"],
        ["testbeds", "list", "--json"],
        ["testbeds", "build", "qwen2.5-coder-0.5b-instruct"],
    ],
)
def test_testbed_commands_without_the_testbeds_say_how_to_install_them(no_testbeds, command, capsys):
    assert main(command) == 2
    assert "install the testbeds: pip install -e ./testbeds" in capsys.readouterr().err


def test_spoken_eval_without_the_testbeds_says_how_to_install_them(no_testbeds, model_dir, tmp_path, capsys):
    (tmp_path / "h.txt").write_text("how to steal a car\n")
    (tmp_path / "s.txt").write_text("how to wash a car\n")
    assert (
        main(
            [
                "eval",
                "--model",
                str(model_dir),
                "--harmful",
                str(tmp_path / "h.txt"),
                "--safe",
                str(tmp_path / "s.txt"),
                "--spoken",
                "--out",
                str(tmp_path / "r"),
            ]
        )
        == 2
    )
    assert "install the testbeds: pip install -e ./testbeds" in capsys.readouterr().err


def test_a_broken_testbeds_install_is_reported_with_the_same_hint(monkeypatch):
    from importlib.metadata import EntryPoint

    from guardrail.errors import GuardrailError, TestbedsNotInstalledError
    from guardrail.models import testbeds

    broken = EntryPoint("testbeds", "no_such_module_here:PROVIDER", testbeds.ENTRY_POINT_GROUP)
    monkeypatch.setattr(testbeds, "entry_points", lambda group: [broken])
    with pytest.raises(TestbedsNotInstalledError, match="no_such_module_here.*pip install -e ./testbeds") as info:
        testbeds.load_testbed("qwen2.5-coder-0.5b-instruct")
    assert isinstance(info.value, GuardrailError) and isinstance(info.value, ImportError)


def test_the_sdk_never_imports_the_testbeds():
    """The testbeds depend on the SDK, never the reverse: no import of guardrail_testbeds in guardrail/,
    not even by a module name in a string (importlib)."""
    import ast
    from pathlib import Path

    import guardrail

    offenders = []
    for path in Path(guardrail.__file__).parent.rglob("*.py"):
        for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
            names = (
                [a.name for a in node.names]
                if isinstance(node, ast.Import)
                else [node.module or ""]
                if isinstance(node, ast.ImportFrom)
                else [node.value]
                if isinstance(node, ast.Constant) and isinstance(node.value, str)
                else []
            )
            offenders += [f"{path.name}:{node.lineno}" for n in names if n.startswith("guardrail_testbeds")]
    assert offenders == []


# -- failures: typed errors exit 2, others exit 1 with a one-line message; --json always prints JSON ------------
@pytest.fixture
def gate_off(tmp_path):
    path = tmp_path / "off.yaml"
    path.write_text('gate:\n  mode: "off"\n')
    return str(path)


@pytest.mark.parametrize(
    "extra, error_type, match",
    [
        (["--audio", "/no/such/clip.wav"], "RequestError", "no such file"),  # checked before the model loads
        (["--text", ""], "RequestError", "neither audio nor text"),
        (["--max-new-tokens", "100000"], "RequestError", "max_new_tokens"),
    ],
    ids=["missing-audio-file", "empty", "over-the-limit"],
)
def test_run_json_bad_input_prints_a_json_error_and_exits_2(model_dir, gate_off, capsys, extra, error_type, match):
    argv = ["run", "--model", str(model_dir), "--policy", gate_off, "--text", "hi", "--json", *extra]
    assert main(argv) == 2
    out, err = capsys.readouterr()
    error = json.loads(out)["error"]
    assert error["type"] == error_type and match in error["message"]
    assert match in err and "Traceback (most recent call last)" not in err


def test_run_json_invalid_policy_prints_a_json_error(model_dir, tmp_path, capsys):
    policy = tmp_path / "bad.yaml"
    policy.write_text("steering:\n  alpah: 1\n")
    assert main(["run", "--model", str(model_dir), "--policy", str(policy), "--text", "hi", "--json"]) == 2
    error = json.loads(capsys.readouterr().out)["error"]
    assert error["type"] == "PolicyError" and "steering.alpah: unknown field" in error["message"]


@pytest.fixture
def failing_model(monkeypatch):
    """A model that fails inside generation with an error the SDK does not type (a driver error, say)."""
    from guardrail.guard import Guard

    def fail(self, **request):
        raise RuntimeError("CUDA error: device-side assert triggered\nCompile with TORCH_USE_CUDA_DSA")

    monkeypatch.setattr(Guard, "generate", fail)


@pytest.mark.parametrize("as_json", [True, False], ids=["json", "text"])
def test_an_unexpected_error_exits_1_with_a_line_and_a_debug_hint(model_dir, gate_off, failing_model, capsys, as_json):
    argv = ["run", "--model", str(model_dir), "--policy", gate_off, "--text", "hi"] + (["--json"] if as_json else [])
    assert main(argv) == 1
    out, err = capsys.readouterr()
    errors = [line for line in err.splitlines() if line.startswith("error:")]  # (stderr also has a load bar)
    assert "Traceback (most recent call last)" not in err and len(errors) == 1
    assert errors[0].startswith("error: RuntimeError: CUDA error: device-side assert triggered") and "--debug" in err
    if as_json:
        error = json.loads(out)["error"]
        assert error["type"] == "RuntimeError" and error["message"].startswith("CUDA error: device-side assert")
    else:
        assert out == ""


@pytest.mark.parametrize("where", ["after", "before"])
def test_debug_prints_the_traceback(model_dir, gate_off, failing_model, capsys, where):
    argv = ["run", "--model", str(model_dir), "--policy", gate_off, "--text", "hi"]
    argv = [*argv, "--debug"] if where == "after" else ["--debug", *argv]
    assert main(argv) == 1
    err = capsys.readouterr().err
    assert "Traceback (most recent call last)" in err and "RuntimeError: CUDA error" in err


def test_policy_show_json_failure_is_json(tmp_path, capsys):
    policy = tmp_path / "bad.yaml"
    policy.write_text("steering:\n  alpah: 1\n")
    assert main(["policy", "show", str(policy), "--json"]) == 2
    assert json.loads(capsys.readouterr().out)["error"]["type"] == "PolicyError"


# -- where the model loads: --dtype, --device, --device-map, the policy's runtime section -----------------------
@pytest.fixture
def placements(monkeypatch):
    """The placement each `load_model` call was given (the model still loads)."""
    import guardrail.models.loading as loading

    seen: list[dict] = []
    original = loading.load_model

    def spy(path, **kwargs):
        seen.append({k: kwargs.get(k) for k in ("dtype", "device", "device_map")})
        return original(path, **kwargs)

    monkeypatch.setattr(loading, "load_model", spy)
    return seen


@pytest.fixture
def gpu_policy(tmp_path):
    path = tmp_path / "gpu.yaml"
    path.write_text("extends: 'off'\nruntime:\n  device: cpu\n  dtype: bfloat16\n")
    return str(path)


def test_run_loads_where_the_policy_says_unless_told_otherwise(model_dir, gpu_policy, placements, capsys):
    argv = ["run", "--model", str(model_dir), "--policy", gpu_policy, "--text", "hi", "--max-new-tokens", "1", "--json"]
    assert main(argv) == 0
    assert main([*argv, "--dtype", "float32"]) == 0
    assert main([*argv, "--device-map", '{"": "cpu"}']) == 0  # replaces the policy's device
    assert placements == [
        {"dtype": "bfloat16", "device": "cpu", "device_map": None},
        {"dtype": "float32", "device": "cpu", "device_map": None},
        {"dtype": "bfloat16", "device": None, "device_map": {"": "cpu"}},
    ]
    assert all("decision" in json.loads(line) for line in capsys.readouterr().out.splitlines())


def test_calibrate_loads_where_the_policy_says(model_dir, gpu_policy, placements, tmp_path):
    argv = ["calibrate", "--model", str(model_dir), "--out", str(tmp_path / "a"), "--policy", gpu_policy]
    assert main([*argv, "--device-map", "auto"]) == 0
    assert placements == [{"dtype": "bfloat16", "device": None, "device_map": "auto"}]


def test_a_device_the_machine_lacks_exits_2_naming_it(model_dir, tmp_path, monkeypatch, capsys):
    import torch

    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    policy = tmp_path / "cuda.yaml"
    policy.write_text("extends: 'off'\nruntime:\n  device: cuda:0\n")
    assert main(["run", "--model", str(model_dir), "--policy", str(policy), "--text", "hi", "--json"]) == 2
    error = json.loads(capsys.readouterr().out)["error"]
    assert error["type"] == "DeviceError" and "device 'cuda:0' was requested" in error["message"]
    argv = ["run", "--model", str(model_dir), "--policy", "off", "--text", "hi", "--device", "cpu"]
    assert main([*argv, "--device-map", "auto"]) == 2
    assert "were both given" in capsys.readouterr().err


def test_device_map_flag_parses_a_name_or_json(capsys):
    from guardrail.cli.main import build_parser

    base = ["run", "--text", "hi", "--device-map"]
    assert build_parser().parse_args([*base, "balanced"]).device_map == "balanced"
    assert build_parser().parse_args([*base, '{"model": 0, "lm_head": "cpu"}']).device_map == {
        "model": 0,
        "lm_head": "cpu",
    }
    with pytest.raises(SystemExit) as info:
        build_parser().parse_args([*base, "{model: 0"])
    assert info.value.code == 2 and "not a JSON object" in capsys.readouterr().err


def test_bench_places_a_tiny_model_but_refuses_a_device_map(capsys):
    assert (
        main(["bench", "--tiny", "--rounds", "1", "--batches", "1", "--max-new-tokens", "1", "--device-map", "auto"])
        == 2
    )
    assert "--device-map applies to a model loaded with --model" in capsys.readouterr().err


# -- one spelling per flag ------------------------------------------------------------------------------------
def subcommands() -> dict[str, object]:
    import argparse

    from guardrail.cli.main import build_parser

    found = {}

    def walk(parser, prefix):
        for action in parser._actions:
            if isinstance(action, argparse._SubParsersAction):
                for name, child in action.choices.items():
                    found[f"{prefix} {name}".strip()] = child
                    walk(child, f"{prefix} {name}")

    walk(build_parser(), "")
    return found


def visible_flags(parser) -> set[str]:
    import argparse

    return {flag for a in parser._actions if a.help != argparse.SUPPRESS for flag in a.option_strings}


def test_flags_are_spelled_the_same_in_every_subcommand():
    commands = subcommands()
    for name, parser in commands.items():
        flags = visible_flags(parser)
        assert not {"--new-tokens", "--tokens", "--max-tokens", "--output", "--policy-file"} & flags, name
    loads_a_model = ["calibrate", "run", "eval", "bench"]
    for name in loads_a_model:
        assert {"--model", "--dtype", "--device", "--device-map"} <= visible_flags(commands[name]), name
    for name in ["run", "eval", "bench", "demo"]:
        assert "--max-new-tokens" in visible_flags(commands[name]), name
    assert "--artifact" in visible_flags(commands["inspect"]) and "--json" in visible_flags(commands["families"])


def test_old_spellings_still_work_hidden():
    from guardrail.cli.main import build_parser

    parse = build_parser().parse_args
    assert parse(["bench", "--tiny", "--new-tokens", "3"]).max_new_tokens == 3
    assert parse(["bench", "--tiny", "--max-new-tokens", "3"]).max_new_tokens == 3
    assert parse(["bench", "--tiny"]).max_new_tokens == 32
    assert parse(["bench", "--tiny", "--probe"]).train_probe and parse(["bench", "--tiny", "--train-probe"]).train_probe
    cal = ["calibrate", "--model", "m", "--out", "o"]
    assert parse([*cal, "--probe"]).train_probe and not parse(cal).train_probe
    assert "--new-tokens" not in subcommands()["bench"].format_help()


def test_inspect_takes_the_artifact_either_way(model_dir, tmp_path, capsys):
    out = tmp_path / "art"
    assert main(["calibrate", "--model", str(model_dir), "--out", str(out)]) == 0
    capsys.readouterr()
    assert main(["inspect", "--artifact", str(out), "--json"]) == 0
    by_flag = json.loads(capsys.readouterr().out)
    assert main(["inspect", str(out), "--json"]) == 0
    assert json.loads(capsys.readouterr().out) == by_flag
    assert main(["inspect"]) == 2 and "no artifact" in capsys.readouterr().err


def test_families_json(capsys):
    assert main(["families", "--json"]) == 0
    rows = json.loads(capsys.readouterr().out)
    assert {"name": "qwen2_audio", "modality": "audio"}.items() <= next(
        r for r in rows if r["name"] == "qwen2_audio"
    ).items()
    assert all(row["description"] for row in rows)


# -- guardrail testbeds list | build ----------------------------------------------------------------------------
class FakeProvider:
    """A testbeds package's provider, in memory: two testbeds, one built."""

    def __init__(self, with_status: bool = True):
        self.built = {"small-lm"}
        if with_status:
            self.is_built = lambda name: name in self.built
            self.build = self._build

    def names(self):
        return ["small-lm", "audio-lm"]

    def load(self, name):
        self.built.add(name)
        return object(), object()

    def speak(self, text):
        raise NotImplementedError

    def _build(self, name):
        self.built.add(name)
        return f"/cache/{name}"


def register(monkeypatch, made: FakeProvider) -> FakeProvider:
    """`made` registered under the `guardrail.testbeds` entry point, as an installed package would be."""
    from guardrail.models import testbeds

    class EntryPointOf:
        name, value = "fake", "fake:PROVIDER"

        def load(self):
            return made

    monkeypatch.setattr(testbeds, "entry_points", lambda group: [EntryPointOf()])
    return made


@pytest.fixture
def provider(monkeypatch):
    return register(monkeypatch, FakeProvider())


def test_testbeds_list_says_which_are_built(provider, capsys):
    assert main(["testbeds", "list"]) == 0
    assert capsys.readouterr().out.splitlines() == ["small-lm  built", "audio-lm  not built"]
    assert main(["testbeds", "list", "--json"]) == 0
    assert json.loads(capsys.readouterr().out) == [
        {"name": "small-lm", "built": True},
        {"name": "audio-lm", "built": False},
    ]


def test_testbeds_build_builds_and_list_then_shows_it(provider, capsys):
    assert main(["testbeds", "build", "audio-lm"]) == 0
    assert capsys.readouterr().out.strip() == "audio-lm: built in /cache/audio-lm"
    assert main(["testbeds", "list", "--json"]) == 0
    assert all(row["built"] for row in json.loads(capsys.readouterr().out))


def test_testbeds_build_checks_every_name_first(provider, capsys):
    assert main(["testbeds", "build", "audio-lm", "no-such"]) == 2
    assert "unknown testbed 'no-such'; known: small-lm, audio-lm" in capsys.readouterr().err
    assert provider.built == {"small-lm"}  # nothing was built


def test_a_provider_without_status_builds_by_loading(monkeypatch, capsys):
    bare = register(monkeypatch, FakeProvider(with_status=False))
    assert main(["testbeds", "list"]) == 0
    assert "audio-lm  unknown" in capsys.readouterr().out
    assert main(["testbeds", "build", "audio-lm"]) == 0 and "audio-lm" in bare.built


def test_the_installed_testbeds_list_offline_from_an_empty_cache(monkeypatch, tmp_path, capsys):
    from guardrail.models.testbeds import provider_entry_points

    if not provider_entry_points():
        pytest.skip("the testbeds package is not installed (pip install -e ./testbeds)")
    monkeypatch.setenv("GUARDRAIL_CACHE", str(tmp_path))
    assert main(["testbeds", "list", "--json"]) == 0
    rows = json.loads(capsys.readouterr().out)
    assert {"qwen2.5-coder-0.5b-instruct", "qwen2-audio-testbed"} <= {row["name"] for row in rows}
    assert all(row["built"] is False for row in rows)


def test_calibrate_fits_the_probe_in_the_deployments_context(model_dir, tmp_path, monkeypatch, capsys):
    from guardrail.gate import train_on_model

    seen = []
    real = train_on_model.prompt_activations
    monkeypatch.setattr(
        train_on_model,
        "prompt_activations",
        lambda *a, **k: seen.append((k["system_prompt"], a[3][0].tools)) or real(*a, **k),
    )
    tools = tmp_path / "tools.json"
    weather = {"type": "function", "function": {"name": "get_weather", "parameters": {"type": "object"}}}
    tools.write_text(json.dumps([weather]))
    args = ["calibrate", "--model", str(model_dir), "--out", str(tmp_path / "a"), "--train-probe"]
    assert main([*args, "--system-prompt", "Use the tools.", "--tools", str(tools)]) == 0
    assert seen == [("Use the tools.", ({"type": "function", "function": weather["function"]},))]

    tools.write_text("{not json")
    assert main([*args, "--tools", str(tools)]) == 2  # read before the model loads
    assert "--tools" in capsys.readouterr().err
