"""Policy loading and validation."""

from pathlib import Path

import pytest

from guardrail import Policy, PolicyError
from guardrail.resources import data_dir, shipped_policy


def test_default_policy_holds_the_paper_defaults():
    policy = Policy.from_yaml(shipped_policy("default"))
    assert policy.steering.alpha == 0.1
    assert policy.steering.safe_rank == 10
    assert policy.steering.safe_strength == 1.0
    assert policy.steering.layers == "all"
    assert policy.calibration.refusal_text == "I cannot assist with that."
    assert policy.gate.mode == "always"


@pytest.mark.parametrize("path", sorted(data_dir("policies").glob("*.yaml")), ids=lambda p: p.stem)
def test_every_shipped_policy_loads(path: Path):
    assert Policy.from_yaml(path).name == path.stem


def test_unknown_field_is_named_with_its_path(tmp_path):
    path = tmp_path / "p.yaml"
    path.write_text("steering:\n  alpah: 0.2\n")
    with pytest.raises(PolicyError, match=r"steering\.alpah: unknown field") as info:
        Policy.from_yaml(path)
    assert str(path) in str(info.value)


def test_wrong_value_names_field_and_value(tmp_path):
    path = tmp_path / "p.yaml"
    path.write_text("steering:\n  alpha: -1\ngate:\n  mode: sometimes\n")
    with pytest.raises(PolicyError) as info:
        Policy.from_yaml(path)
    message = str(info.value)
    assert "steering.alpha" in message and "-1" in message
    assert "gate.mode" in message and "'always'" in message


@pytest.mark.parametrize("layers, match", [([], "empty layer list"), ([1, 1], "unique"), ([-1], "start at 0")])
def test_layer_list_validation(layers, match):
    with pytest.raises(PolicyError, match=match):
        Policy.from_dict({"steering": {"layers": layers}})


def test_policy_errors_are_value_errors(tmp_path):
    path = tmp_path / "bad.yaml"
    path.write_text("steering: [1, 2\n")
    with pytest.raises(ValueError, match="not valid YAML"):
        Policy.from_yaml(path)
    with pytest.raises(PolicyError, match="cannot read"):
        Policy.from_yaml(tmp_path / "missing.yaml")
