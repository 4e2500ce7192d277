"""The policy's `runtime:` placement fields (device, dtype, device_map): parsing, the errors, the JSON
Schema, `policy show`, and the rule that decides between a caller's arguments and the policy's."""

from __future__ import annotations

import json

import pytest

from guardrail import Policy, PolicyError
from guardrail.cli.main import main
from guardrail.policy.schema import RuntimePolicy


def error_of(data: dict) -> str:
    with pytest.raises(PolicyError) as info:
        Policy.from_dict(data, source="deploy.yaml")
    return str(info.value)


def runtime_line(message: str, where: str) -> str:
    return next(line for line in message.splitlines() if line.startswith(f"  {where}: "))


def test_defaults_leave_the_placement_to_transformers():
    runtime = Policy().runtime
    assert (runtime.device, runtime.dtype, runtime.device_map) == (None, "auto", None)
    assert runtime.placement() == {"dtype": "auto", "device": None, "device_map": None}


@pytest.mark.parametrize(
    "section, expected",
    [
        ({"device": "cuda"}, ("cuda", "auto", None)),
        ({"device": "cuda:1", "dtype": "bfloat16"}, ("cuda:1", "bfloat16", None)),
        ({"device": "auto", "dtype": "float16"}, ("auto", "float16", None)),
        ({"device": "cpu", "dtype": "float32"}, ("cpu", "float32", None)),
        ({"device_map": "auto"}, (None, "auto", "auto")),
        ({"device_map": "balanced_low_0"}, (None, "auto", "balanced_low_0")),
        (
            {"device_map": {"model.layers.0": 0, "lm_head": "cpu"}},
            (None, "auto", {"model.layers.0": 0, "lm_head": "cpu"}),
        ),
    ],
)
def test_placement_fields_parse(section, expected):
    runtime = Policy.from_dict({"runtime": section}).runtime
    assert (runtime.device, runtime.dtype, runtime.device_map) == expected


def test_a_file_sets_them_like_any_field(tmp_path):
    path = tmp_path / "gpu.yaml"
    path.write_text("extends: gated\nruntime:\n  device: cuda:0\n  dtype: bfloat16\n", encoding="utf-8")
    runtime = Policy.from_yaml(path).runtime
    assert (runtime.device, runtime.dtype) == ("cuda:0", "bfloat16")  # validating needs no GPU


def test_device_and_device_map_are_exclusive():
    message = error_of({"runtime": {"device": "cuda", "device_map": "auto"}})
    line = runtime_line(message, "runtime")
    assert "runtime.device and runtime.device_map are exclusive" in line and "set one of them" in line


def test_an_overlay_cannot_add_a_device_map_to_a_base_device(tmp_path):
    (tmp_path / "base.yaml").write_text("runtime:\n  device: cuda\n", encoding="utf-8")
    (tmp_path / "app.yaml").write_text("extends: base.yaml\nruntime:\n  device_map: auto\n", encoding="utf-8")
    with pytest.raises(PolicyError, match="exclusive"):
        Policy.from_yaml(tmp_path / "app.yaml")
    (tmp_path / "fixed.yaml").write_text(
        "extends: base.yaml\nruntime:\n  device: null\n  device_map: auto\n", encoding="utf-8"
    )
    assert Policy.from_yaml(tmp_path / "fixed.yaml").runtime.device_map == "auto"


@pytest.mark.parametrize(
    "section, where, problem, accepted",
    [
        ({"device": "gpu"}, "runtime.device", "not a device torch knows", "a string or null"),
        ({"device": 3}, "runtime.device", "valid string", "a string or null"),
        (
            {"dtype": "fp16"},
            "runtime.dtype",
            "not an accepted value",
            "one of 'auto', 'float32', 'bfloat16', 'float16'",
        ),
        (
            {"device_map": "cuda"},
            "runtime.device_map",
            "not a placement strategy",
            "one of 'auto', 'balanced', 'balanced_low_0', 'sequential' or a mapping of names to integers or strings "
            "or null",
        ),
        ({"device_map": {}}, "runtime.device_map", "non-empty mapping", None),
        ({"device_map": {"lm_head": 1.5}}, "runtime.device_map", "not a placement strategy", None),
        ({"device_map": {"lm_head": True}}, "runtime.device_map", "not a placement strategy", None),
        ({"device_map": {"lm_head": -1}}, "runtime.device_map", "not a placement strategy", None),
    ],
)
def test_each_wrong_value_is_named_with_what_it_accepts(section, where, problem, accepted):
    line = runtime_line(error_of({"runtime": section}), where)
    assert problem in line
    if accepted is not None:
        assert line.endswith(f"accepted: {accepted}")


def test_a_callers_arguments_win_over_the_section():
    runtime = RuntimePolicy(device="cuda", dtype="bfloat16")
    assert runtime.placement() == {"dtype": "bfloat16", "device": "cuda", "device_map": None}
    assert runtime.placement(dtype="float32") == {"dtype": "float32", "device": "cuda", "device_map": None}
    assert runtime.placement(device="cpu") == {"dtype": "bfloat16", "device": "cpu", "device_map": None}
    # a caller's device_map replaces the section's device (both together would be an error)
    assert runtime.placement(device_map="auto") == {"dtype": "bfloat16", "device": None, "device_map": "auto"}
    mapped = RuntimePolicy(device_map={"": 0})
    assert mapped.placement(device="cpu") == {"dtype": "auto", "device": "cpu", "device_map": None}
    assert mapped.placement() == {"dtype": "auto", "device": None, "device_map": {"": 0}}


def test_json_schema_and_policy_show_list_the_fields(tmp_path, capsys):
    props = Policy.json_schema()["$defs"]["RuntimePolicy"]["properties"]
    assert {"device", "dtype", "device_map", "cache", "compile"} <= set(props)
    assert props["dtype"]["enum"] == ["auto", "float32", "bfloat16", "float16"] and props["dtype"]["default"] == "auto"
    assert props["device_map"]["anyOf"][0]["enum"] == ["auto", "balanced", "balanced_low_0", "sequential"]
    path = tmp_path / "p.yaml"
    path.write_text("runtime:\n  device_map: {model: 0, lm_head: cpu}\n  dtype: bfloat16\n", encoding="utf-8")
    assert main(["policy", "show", str(path), "--json"]) == 0
    runtime = json.loads(capsys.readouterr().out)["runtime"]
    assert runtime == {
        "device": None,
        "dtype": "bfloat16",
        "device_map": {"model": 0, "lm_head": "cpu"},
        "cache": "dynamic",
        "compile": False,
    }
    assert Policy.from_dict({"runtime": runtime}).runtime.device_map == {"model": 0, "lm_head": "cpu"}  # round-trips
