"""Policy loading and validation: schema, overlays, environment, errors, JSON Schema, `guardrail policy`."""

from __future__ import annotations

import argparse
import copy
import json
import time
import warnings
from pathlib import Path

import pytest
import yaml

from guardrail import Policy, PolicyError
from guardrail.errors import GuardrailError
from guardrail.policy.loader import deep_merge
from guardrail.policy.schema import schema_text
from guardrail.resources import data_dir, shipped_policy

POLICIES = data_dir("policies")
SHIPPED = sorted(POLICIES.rglob("*.yaml"))


def write(folder: Path, name: str, text: str) -> Path:
    path = folder / name
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text, encoding="utf-8")
    return path


def error_of(path_or_data, **kwargs) -> str:
    with pytest.raises(PolicyError) as info:
        if isinstance(path_or_data, Path):
            Policy.from_yaml(path_or_data)
        else:
            Policy.from_dict(path_or_data, **kwargs)
    return str(info.value)


# -- shipped policies --------------------------------------------------------------------------------
def test_default_policy_holds_the_paper_defaults():
    policy = Policy.from_yaml(shipped_policy("default"))
    assert policy.steering.alpha == 0.1
    assert policy.steering.safe_rank == 10
    assert policy.steering.safe_strength == 1.0
    assert policy.steering.layers == "all"
    assert policy.calibration.refusal_text == "I cannot assist with that."
    assert policy.gate.mode == "always"


def test_shipped_set_is_complete():
    names = {p.stem for p in POLICIES.glob("*.yaml")}
    assert {"default", "gated", "strict", "monitor", "off"} <= names
    assert list(POLICIES.glob("examples/*.yaml"))


@pytest.mark.parametrize("path", SHIPPED, ids=lambda p: str(p.relative_to(POLICIES)))
def test_every_shipped_policy_loads(path: Path):
    policy = Policy.from_yaml(path)
    assert policy.name == path.stem
    first = path.read_text(encoding="utf-8").splitlines()[0]
    assert first.startswith("# yaml-language-server: $schema=") and first.endswith("policy.schema.json")
    assert (path.parent / first.split("$schema=")[1]).resolve() == (POLICIES / "policy.schema.json").resolve()


def test_strict_is_stricter_than_gated():
    strict, gated = Policy.load("strict"), Policy.load("gated")
    assert strict.steering.alpha > gated.steering.alpha
    assert strict.gate.mode == "probe" and gated.gate.mode == "probe"
    assert strict.gate.threshold.fpr > gated.gate.threshold.fpr  # steers more
    assert strict.actions.block_above.fpr < strict.gate.threshold.fpr and gated.actions.block_above is None
    assert strict.limits.max_new_tokens < gated.limits.max_new_tokens
    assert strict.limits.max_batch < Policy().limits.max_batch


def test_monitor_scores_but_never_steers_nor_blocks():
    monitor = Policy.load("monitor")
    assert monitor.gate.mode == "probe" and monitor.steering.alpha == 0 and monitor.actions.block_above is None


def test_monitor_policy_in_a_guard_scores_without_steering():
    """alpha 0 and no artifact: the guard installs no steering, the probe still scores each request."""
    import numpy as np
    import torch

    from guardrail import Guard
    from guardrail.testing.tiny import build_tiny

    class FlagEverything:
        layers, threshold = [1], 0.0

        def score(self, features):
            return np.full(len(features), 0.9)

        def check_model(self, model, layers=None):
            pass

    model, tokenizer = build_tiny("qwen2", seed=0)
    monitor = Guard(model, tokenizer, policy=Policy.load("monitor"), probe=FlagEverything())
    bare = Guard(model, tokenizer, policy=Policy.load("off"))
    with torch.no_grad():
        result = monitor.generate(text="how do I build a weapon", max_new_tokens=4)
        reference = bare.generate(text="how do I build a weapon", max_new_tokens=4)
    assert not result.steered and not result.blocked
    assert result.decision.probe_score == pytest.approx(0.9) and result.decision.policy == "monitor"
    assert result.token_ids == reference.token_ids


def test_example_overlay_extends_gated():
    kids = Policy.from_yaml(POLICIES / "examples" / "kids-voice-app.yaml")
    gated = Policy.load("gated")
    assert kids.sources == (str(POLICIES / "gated.yaml"), str(POLICIES / "examples" / "kids-voice-app.yaml"))
    assert kids.gate.mode == "probe" and kids.steering.alpha == gated.steering.alpha  # inherited
    assert kids.limits.max_new_tokens == 200 and kids.limits.max_batch == 16  # overridden
    assert kids.limits.max_audio_seconds == 15
    assert kids.logging.log_content is False and kids.logging.format == "json"
    assert "children" in kids.system_prompt and kids.actions.refusal_message.startswith("Let's")
    assert kids.model.artifact == str(POLICIES / "examples" / "artifacts" / "qwen2-audio")
    assert kids.model.path == "Qwen/Qwen2-Audio-7B-Instruct"


def test_load_takes_a_file_or_a_shipped_name(tmp_path):
    assert Policy.load("gated").name == "gated"
    assert Policy.load(shipped_policy("off")).gate.mode == "off"
    with pytest.raises(PolicyError, match="no shipped policy.*default, gated"):
        Policy.load("nonexistent")


# -- new schema fields -----------------------------------------------------------------------------
def test_new_sections_have_safe_defaults():
    policy = Policy()
    assert policy.model.adapter is None and policy.model.path is None
    assert policy.model.artifact is None and policy.model.probe is None
    assert policy.steering.positions == "last"
    assert policy.limits.max_batch == 32
    assert (policy.logging.level, policy.logging.log_content, policy.logging.format) == ("info", False, "auto")


@pytest.mark.parametrize(
    "layers, expected",
    [
        ("all", "all"),
        ([3, 1], [3, 1]),
        ("8-11", [8, 9, 10, 11]),
        (" 2 - 3 ", [2, 3]),
        ("5-5", [5]),
        ({"start": 0, "end": 2}, [0, 1, 2]),
    ],
)
def test_layer_forms_normalise_to_a_list(layers, expected):
    assert Policy.from_dict({"steering": {"layers": layers}}).steering.layers == expected


@pytest.mark.parametrize(
    "layers, match",
    [
        ([], "empty layer list"),
        ([1, 1], "unique"),
        ([-1], "start at 0"),
        ("9-3", "empty"),
        ("8..x", "not a layer"),
        ({"start": 2}, "start and end"),
        ({"start": 1, "end": "x"}, "integers"),
        (3, "not a layer"),
        ([1, "two"], "integers"),
        ([True], "integers"),
    ],
)
def test_layer_validation(layers, match):
    message = error_of({"steering": {"layers": layers}})
    assert match in message and "steering.layers" in message
    assert "a string like '8-15'" in message  # the accepted forms are listed


def test_layers_are_validated_on_assignment():
    policy = Policy()
    policy.steering.layers = "1-2"
    assert policy.steering.layers == [1, 2]
    with pytest.raises(ValueError, match="unique"):
        policy.steering.layers = [1, 1]


def test_logging_level_is_case_insensitive_and_content_is_off_by_default():
    policy = Policy.from_dict({"logging": {"level": "DEBUG", "format": "json"}})
    assert policy.logging.level == "debug" and policy.logging.log_content is False


def test_positions_only_last():
    message = error_of({"steering": {"positions": "all"}})
    assert "steering.positions" in message and "'last'" in message


def test_unknown_adapter_lists_the_accepted_ones():
    message = error_of({"model": {"adapter": "gpt5"}})
    assert "model.adapter" in message and "'qwen2_audio'" in message and "'gpt5'" in message
    assert Policy.from_dict({"model": {"adapter": "causal_lm"}}).model.adapter == "causal_lm"


def test_relative_model_paths_resolve_against_the_policy_folder(tmp_path):
    (tmp_path / "deploy" / "local-model").mkdir(parents=True)
    path = write(tmp_path, "deploy/p.yaml", "model:\n  artifact: art\n  probe: ../probes/p1\n  path: local-model\n")
    policy = Policy.from_yaml(path)
    assert policy.model.artifact == str(tmp_path / "deploy" / "art")
    assert policy.model.probe == str(tmp_path / "probes" / "p1")
    assert policy.model.path == str(tmp_path / "deploy" / "local-model")
    hub = write(tmp_path, "deploy/hub.yaml", "model:\n  path: Qwen/Qwen2-Audio-7B-Instruct\n  artifact: /abs/art\n")
    policy = Policy.from_yaml(hub)
    assert policy.model.path == "Qwen/Qwen2-Audio-7B-Instruct" and policy.model.artifact == "/abs/art"
    dotted = write(tmp_path, "deploy/dot.yaml", "model:\n  path: ./models/m\n")
    assert Policy.from_yaml(dotted).model.path == str(tmp_path / "deploy" / "models" / "m")


def test_paths_in_a_base_resolve_against_the_base(tmp_path):
    write(tmp_path, "apps/base/base.yaml", "model:\n  artifact: art\n")  # extends stays below apps/ (issue #15)
    leaf = write(tmp_path, "apps/leaf.yaml", "extends: base/base.yaml\nmodel:\n  probe: probe\n")
    policy = Policy.from_yaml(leaf)
    assert policy.model.artifact == str(tmp_path / "apps" / "base" / "art")
    assert policy.model.probe == str(tmp_path / "apps" / "probe")


def test_from_dict_keeps_paths_unless_given_a_folder(tmp_path):
    assert Policy.from_dict({"model": {"artifact": "art"}}).model.artifact == "art"
    policy = Policy.from_dict({"model": {"artifact": "art"}}, base_dir=tmp_path)
    assert policy.model.artifact == str(tmp_path / "art")


def test_a_file_without_a_name_is_named_after_itself(tmp_path):
    assert Policy.from_yaml(write(tmp_path, "shadow-eu.yaml", "gate:\n  mode: 'off'\n")).name == "shadow-eu"
    assert Policy.from_yaml(write(tmp_path, "empty.yaml", "")).name == "empty"
    overlay = write(tmp_path, "overlay.yaml", "extends: default\n")
    assert Policy.from_yaml(overlay).name == "overlay"  # not the base's name


# -- extends ----------------------------------------------------------------------------------------
def test_extends_deep_merges(tmp_path):
    write(
        tmp_path,
        "base.yaml",
        "name: base\nsteering:\n  alpha: 0.3\n  layers: [1, 2, 3]\n  safe_rank: 4\n"
        "limits:\n  max_new_tokens: 100\n  max_batch: 4\nactions:\n  block_above: 0.9\n",
    )
    leaf = write(
        tmp_path,
        "leaf.yaml",
        "extends: base.yaml\nname: leaf\nsteering:\n  layers: [5]\n"
        "limits:\n  max_batch: 2\nactions:\n  block_above: null\n",
    )
    policy = Policy.from_yaml(leaf)
    assert policy.name == "leaf"
    assert policy.steering.alpha == 0.3 and policy.steering.safe_rank == 4  # mapping merged
    assert policy.steering.layers == [5]  # list replaced, not appended
    assert policy.limits.max_new_tokens == 100 and policy.limits.max_batch == 2
    assert policy.actions.block_above is None  # null overrides
    assert policy.sources == (str(tmp_path / "base.yaml"), str(leaf))


def test_extends_chains_and_shipped_names(tmp_path):
    write(tmp_path, "sub/deeper/a.yaml", "extends: gated\nsteering:\n  alpha: 0.5\n")
    write(tmp_path, "sub/b.yaml", "extends: deeper/a.yaml\ngate:\n  threshold: 0.2\n")  # not ../ (issue #15)
    c = write(tmp_path, "c.yaml", "extends: sub/b.yaml\nlimits:\n  max_new_tokens: 64\n")
    policy = Policy.from_yaml(c)
    assert policy.gate.mode == "probe"  # from gated
    assert policy.steering.alpha == 0.5 and policy.steering.safe_rank == 10
    assert policy.gate.threshold == 0.2 and policy.limits.max_new_tokens == 64
    assert [Path(s).name for s in policy.sources] == ["gated.yaml", "a.yaml", "b.yaml", "c.yaml"]


def test_extends_cycle_is_named(tmp_path):
    write(tmp_path, "a.yaml", "extends: b.yaml\n")
    write(tmp_path, "b.yaml", "extends: c.yaml\n")
    write(tmp_path, "c.yaml", "extends: a.yaml\n")
    message = error_of(tmp_path / "a.yaml")
    assert "cycle" in message
    a, b, c = (str((tmp_path / f"{n}.yaml").resolve()) for n in "abc")
    assert f"{a} -> {b} -> {c} -> {a}" in message
    write(tmp_path, "self.yaml", "extends: self.yaml\n")
    assert "cycle" in error_of(tmp_path / "self.yaml")


def test_extends_errors(tmp_path):
    message = error_of(write(tmp_path, "p.yaml", "extends: missing.yaml\n"))
    assert "extends" in message and "missing.yaml" in message and str(tmp_path / "p.yaml") in message
    message = error_of(write(tmp_path, "q.yaml", "extends: [default]\n"))
    assert "extends" in message and "gated" in message  # accepted names listed
    message = error_of(write(tmp_path, "r.yaml", "steering:\n  extends: default\n"))
    assert "steering.extends: unknown field" in message  # only at the top level


def test_error_in_a_base_names_the_base(tmp_path):
    write(tmp_path, "base.yaml", "steering:\n  alpha: -2\n")
    leaf = write(tmp_path, "leaf.yaml", "extends: base.yaml\nlimits:\n  max_batch: 0\n")
    message = error_of(leaf)
    assert message.startswith(f"invalid policy {leaf} (extends {tmp_path / 'base.yaml'})")
    assert (
        f"steering.alpha: Input should be greater than or equal to 0 (got -2); accepted: a number >= 0 and <= 10000 "
        f"[set in {tmp_path / 'base.yaml'}]" in message
    )
    line = next(x for x in message.splitlines() if "limits.max_batch" in x)
    assert "an integer >= 1" in line and "set in" not in line


def test_deep_merge_does_not_mutate_its_inputs():
    base = {"steering": {"alpha": 0.1, "layers": [1, 2]}, "gate": {"mode": "always"}}
    override = {"steering": {"layers": [3]}, "limits": {"max_batch": 2}}
    before = copy.deepcopy((base, override))
    merged = deep_merge(base, override)
    assert merged == {"steering": {"alpha": 0.1, "layers": [3]}, "gate": {"mode": "always"}, "limits": {"max_batch": 2}}
    merged["steering"]["layers"].append(9)
    merged["gate"]["mode"] = "off"
    assert (base, override) == before


def test_from_dict_does_not_mutate_and_invalid_yields_nothing(monkeypatch):
    monkeypatch.setenv("GR_ALPHA", "0.4")
    data = {"steering": {"alpha": "${GR_ALPHA}", "layers": "1-2"}, "extends": "default"}
    before = copy.deepcopy(data)
    policy = Policy.from_dict(data)
    assert policy.steering.alpha == 0.4 and policy.steering.layers == [1, 2] and policy.gate.mode == "always"
    assert data == before
    existing = Policy()
    with pytest.raises(PolicyError):
        existing = Policy.from_dict({"steering": {"alpha": 0.5}, "gate": {"mode": "bogus"}})
    assert existing.steering.alpha == 0.1  # the failed load left nothing behind


# -- environment interpolation -----------------------------------------------------------------------
def test_env_interpolation(tmp_path, monkeypatch):
    monkeypatch.setenv("GR_NAME", "eu-prod")
    monkeypatch.setenv("GR_TOKENS", "77")
    monkeypatch.setenv("GR_EMPTY", "")
    monkeypatch.delenv("GR_UNSET", raising=False)
    path = write(
        tmp_path,
        "p.yaml",
        "name: app-${GR_NAME}\n"
        "limits:\n  max_new_tokens: ${GR_TOKENS}\n  max_batch: ${GR_UNSET:-5}\n"
        'actions:\n  refusal_message: "${GR_EMPTY:-No.} costs $5, literal $${GR_NAME}"\n'
        "steering:\n  layers: ${GR_UNSET:-2-4}\n"
        "model:\n  artifact: ${GR_UNSET:-art}\n",
    )
    policy = Policy.from_yaml(path)
    assert policy.name == "app-eu-prod"
    assert policy.limits.max_new_tokens == 77 and policy.limits.max_batch == 5
    assert policy.actions.refusal_message == "No. costs $5, literal ${GR_NAME}"
    assert policy.steering.layers == [2, 3, 4]
    assert policy.model.artifact == str(tmp_path / "art")  # substituted, then resolved


def test_env_interpolation_applies_to_extends(tmp_path, monkeypatch):
    monkeypatch.setenv("GR_BASE", "strict")
    assert Policy.from_yaml(write(tmp_path, "p.yaml", "extends: ${GR_BASE}\n")).gate.threshold.fpr == 0.05


def test_missing_env_variable_is_named_with_file_and_field(tmp_path, monkeypatch):
    monkeypatch.delenv("GR_MISSING_ALPHA", raising=False)
    path = write(tmp_path, "p.yaml", "steering:\n  alpha: ${GR_MISSING_ALPHA}\n")
    message = error_of(path)
    assert str(path) in message and "steering.alpha" in message and "GR_MISSING_ALPHA" in message
    assert "${GR_MISSING_ALPHA:-default}" in message
    listed = write(tmp_path, "q.yaml", "steering:\n  layers: [1, '${GR_MISSING_ALPHA}']\n")
    assert "steering.layers.1: environment variable GR_MISSING_ALPHA is not set" in error_of(listed)


@pytest.mark.parametrize("text, match", [("${}", "malformed"), ("${1X}", "malformed"), ("${OPEN", "unclosed")])
def test_malformed_placeholders(tmp_path, text, match):
    message = error_of(write(tmp_path, "p.yaml", f"description: 'a {text}'\n"))
    assert match in message and "description" in message


def test_interpolated_value_is_still_validated(tmp_path, monkeypatch):
    monkeypatch.setenv("GR_ALPHA", "strong")
    message = error_of(write(tmp_path, "p.yaml", "steering:\n  alpha: ${GR_ALPHA}\n"))
    assert "steering.alpha" in message and "a number >= 0" in message
    assert "(got the value of ${GR_ALPHA}, not shown)" in message and "strong" not in message  # issue #15


# -- error messages ----------------------------------------------------------------------------------
def test_unknown_field_is_named_with_its_path(tmp_path):
    path = tmp_path / "p.yaml"
    path.write_text("steering:\n  alpah: 0.2\n")
    with pytest.raises(PolicyError, match=r"steering\.alpah: unknown field") as info:
        Policy.from_yaml(path)
    assert str(path) in str(info.value)
    assert "Accepted fields: alpha, layers, positions, safe_rank, safe_strength" in str(info.value)


def test_unknown_section_lists_the_sections(tmp_path):
    message = error_of(write(tmp_path, "p.yaml", "loging:\n  level: info\n"))
    assert "loging: unknown field" in message and "logging" in message and "extends" in message


def test_wrong_value_names_field_and_value(tmp_path):
    path = tmp_path / "p.yaml"
    path.write_text("steering:\n  alpha: -1\ngate:\n  mode: sometimes\n")
    with pytest.raises(PolicyError) as info:
        Policy.from_yaml(path)
    message = str(info.value)
    assert "steering.alpha" in message and "-1" in message
    assert "gate.mode" in message and "'always'" in message


@pytest.mark.parametrize(
    "data, where, accepted",
    [
        ({"gate": {"mode": "sometimes"}}, "gate.mode", "one of 'always', 'probe', 'off'"),
        ({"gate": {"on_error": "ignore"}}, "gate.on_error", "one of 'steer', 'pass'"),
        ({"logging": {"level": "loud"}}, "logging.level", "one of 'debug', 'info', 'warning', 'error'"),
        ({"logging": {"format": "xml"}}, "logging.format", "one of 'json', 'console', 'auto'"),
        ({"logging": {"log_content": "maybe"}}, "logging.log_content", "true or false"),
        ({"gate": {"threshold": 1.5}}, "gate.threshold", "a number >= 0 and <= 1 or a mapping with fields fpr or null"),
        (
            {"actions": {"block_above": -0.1}},
            "actions.block_above",
            "a number >= 0 and <= 1 or a mapping with fields fpr or null",
        ),
        ({"steering": {"alpha": "x"}}, "steering.alpha", "a number >= 0"),
        ({"steering": {"safe_rank": 1.5}}, "steering.safe_rank", "an integer >= 0"),
        ({"limits": {"max_audio_seconds": 0}}, "limits.max_audio_seconds", "a number > 0"),
        ({"limits": {"max_new_tokens": 0}}, "limits.max_new_tokens", "an integer >= 1"),
        ({"limits": {"max_batch": -3}}, "limits.max_batch", "an integer >= 1"),
        ({"actions": {"refusal_message": ""}}, "actions.refusal_message", "a non-empty string"),
        ({"model": {"artifact": 3}}, "model.artifact", "a string or null"),
        ({"steering": 5}, "steering", "a mapping with fields alpha, layers, positions"),
    ],
)
def test_each_error_names_path_and_accepted_values(data, where, accepted):
    message = error_of(data, source="deploy.yaml")
    assert message.startswith("invalid policy deploy.yaml:")
    line = next(x for x in message.splitlines() if x.startswith(f"  {where}: "))
    assert f"accepted: {accepted}" in line


def test_all_errors_are_reported_at_once():
    message = error_of({"steering": {"alpha": -1, "layers": []}, "limits": {"max_batch": 0}, "x": 1})
    assert len(message.splitlines()) == 5


def test_bare_off_gets_a_yaml_hint(tmp_path):
    message = error_of(write(tmp_path, "p.yaml", "gate:\n  mode: off\n"))
    assert "gate.mode" in message and "(got False)" in message and "quote" in message


SCORE_OR_RATE = "a number >= 0 and <= 1 or a mapping with fields fpr or null"


@pytest.mark.parametrize("text, match", [("steering: [1, 2\n", "not valid YAML"), ("- 1\n- 2\n", "a mapping")])
def test_policy_errors_are_value_errors(tmp_path, text, match):
    path = write(tmp_path, "bad.yaml", text)
    with pytest.raises(ValueError, match=match):
        Policy.from_yaml(path)
    with pytest.raises(PolicyError, match="cannot read"):
        Policy.from_yaml(tmp_path / "missing.yaml")


# -- JSON Schema ------------------------------------------------------------------------------------
def test_json_schema_describes_every_section():
    schema = Policy.json_schema()
    assert schema["$schema"].startswith("https://json-schema.org/")
    assert {"extends", "name", "model", "steering", "gate", "actions", "calibration", "limits", "logging"} <= set(
        schema["properties"]
    )
    defs = schema["$defs"]
    assert defs["LoggingPolicy"]["properties"]["log_content"]["default"] is False
    assert defs["LimitsPolicy"]["properties"]["max_batch"]["default"] == 32
    assert len(defs["SteeringPolicy"]["properties"]["layers"]["anyOf"]) == 4
    for name, section in defs.items():
        assert section.get("additionalProperties") is False, name
        for field, prop in section["properties"].items():
            assert prop.get("description") and prop.get("title"), f"{name}.{field}"


def test_committed_schema_is_current():
    committed = (POLICIES / "policy.schema.json").read_text(encoding="utf-8")
    assert committed == schema_text(), (
        "policies/policy.schema.json is stale; regenerate it with "
        "`guardrail policy schema > policies/policy.schema.json`"
    )


@pytest.mark.parametrize("path", SHIPPED, ids=lambda p: str(p.relative_to(POLICIES)))
def test_shipped_policies_match_the_json_schema(path):
    jsonschema = pytest.importorskip("jsonschema")
    data = yaml.safe_load(path.read_text(encoding="utf-8"))
    jsonschema.validate(data, json.loads(schema_text()))


# -- `guardrail policy ...` ----------------------------------------------------------------------------
def cli(argv: list[str]) -> int:
    """What guardrail.cli.main.main does with these commands registered."""
    from guardrail.cli.policy import add_policy_commands

    parser = argparse.ArgumentParser(prog="guardrail")
    add_policy_commands(parser.add_subparsers(required=True, metavar="COMMAND"))
    args = parser.parse_args(argv)
    try:
        return args.func(args)
    except GuardrailError as exc:
        print(f"error: {exc}", file=__import__("sys").stderr)
        return 2


def test_cli_validate(tmp_path, capsys):
    good = [str(p) for p in SHIPPED] + ["default"]
    assert cli(["policy", "validate", *good]) == 0
    out, err = capsys.readouterr()
    assert out.count("ok  ") == len(good) and "kids-voice-app" in out and err == ""
    bad = write(tmp_path, "bad.yaml", "steering:\n  alpah: 1\n")
    assert cli(["policy", "validate", str(shipped_policy("default")), str(bad)]) == 2
    out, err = capsys.readouterr()
    assert "ok  " in out and f"invalid policy {bad}" in err and "steering.alpah: unknown field" in err


def test_cli_validate_json(tmp_path, capsys):
    bad = write(tmp_path, "bad.yaml", "limits:\n  max_batch: 0\n")
    assert cli(["policy", "validate", "--json", "gated", str(bad)]) == 2
    rows = [json.loads(line) for line in capsys.readouterr().out.splitlines()]
    assert rows[0] == {"file": "gated", "valid": True, "name": "gated", "sources": [str(shipped_policy("gated"))]}
    assert rows[1]["valid"] is False and "limits.max_batch" in rows[1]["error"]


def test_cli_schema(capsys):
    assert cli(["policy", "schema"]) == 0
    out = capsys.readouterr().out
    assert out == schema_text() and json.loads(out)["title"] == "lalm-guardrail policy"


def test_cli_show_yaml_and_json(tmp_path, monkeypatch, capsys):
    monkeypatch.setenv("GR_TOKENS", "99")
    path = write(
        tmp_path, "app.yaml", "extends: gated\nlimits:\n  max_new_tokens: ${GR_TOKENS}\nsteering:\n  layers: 1-3\n"
    )
    assert cli(["policy", "show", str(path), "--json"]) == 0
    shown = json.loads(capsys.readouterr().out)
    assert shown["name"] == "app" and shown["gate"]["mode"] == "probe"
    assert shown["limits"] == {
        "max_audio_seconds": 30.0,
        "max_new_tokens": 99,
        "max_batch": 32,
        "max_text_chars": 32000,
        "max_prompt_tokens": None,
    }
    assert shown["steering"]["layers"] == [1, 2, 3] and shown["logging"]["log_content"] is False
    assert Policy.from_dict(shown).model_dump() == Policy.from_yaml(path).model_dump()  # round-trips
    assert cli(["policy", "show", str(path)]) == 0
    out = capsys.readouterr().out
    assert out.startswith("# policy 'app' from ") and "gated.yaml" in out.splitlines()[0]
    assert yaml.safe_load(out) == shown


def test_cli_show_invalid_exits_2(tmp_path, capsys):
    monkey = write(tmp_path, "p.yaml", "gate:\n  mode: sometimes\n")
    assert cli(["policy", "show", str(monkey)]) == 2
    assert "gate.mode" in capsys.readouterr().err
    assert cli(["policy", "show", "no-such-policy"]) == 2
    assert "no shipped policy" in capsys.readouterr().err


# -- hostile input (issue #15) -----------------------------------------------------------------------
ALIAS_BOMB = "a: &a [lol,lol,lol,lol,lol,lol,lol,lol,lol]\n" + "".join(
    f"{n}: &{n} [{', '.join([f'*{p}'] * 9)}]\n" for p, n in zip("abcdefgh", "bcdefghi")
)


def test_alias_bomb_fails_fast_with_a_typed_error(tmp_path):
    path = write(tmp_path, "bomb.yaml", ALIAS_BOMB)
    assert len(ALIAS_BOMB.encode()) < 400 and ALIAS_BOMB.count("*") == 72  # 9 levels of 9 aliases
    started = time.perf_counter()
    message = error_of(path)
    assert time.perf_counter() - started < 0.1
    assert str(path) in message and "line 1" in message and "alias" in message and "extends" in message


def test_anchors_and_merge_keys_are_refused_with_file_and_line(tmp_path):
    message = error_of(write(tmp_path, "p.yaml", "gate: {mode: probe}\nsteering: &s\n  alpha: 0.2\n"))
    assert str(tmp_path / "p.yaml") in message and "line 2" in message and "anchor" in message
    message = error_of(write(tmp_path, "q.yaml", "x: &x {alpha: 0.2}\nsteering:\n  <<: *x\n"))
    assert "line 1" in message  # the anchor is refused before the merge key can expand it


def test_duplicate_keys_are_refused_with_key_and_line(tmp_path):
    message = error_of(write(tmp_path, "p.yaml", "steering:\n  alpha: 0.1\n  layers: all\n  alpha: 5\n"))
    assert str(tmp_path / "p.yaml") in message and "duplicate key 'alpha'" in message and "line 4" in message
    message = error_of(write(tmp_path, "q.yaml", "gate: {mode: probe}\nname: a\ngate: {mode: 'off'}\n"))
    assert "duplicate key 'gate'" in message and "line 3" in message and "line 1" in message


def test_policy_files_over_1_mib_are_refused(tmp_path):
    path = write(tmp_path, "big.yaml", "name: big\n" + "#" * (1 << 20) + "\n")
    message = error_of(path)
    assert str(path) in message and "1 MiB" in message and len(message) < 400


@pytest.mark.parametrize(
    "text, match",
    [
        ("a: " + "[" * 5000 + "]" * 5000 + "\n", "nested deeper than"),
        ("limits: {max_new_tokens: " + "9" * 5000 + "}\n", "line 1"),
        ("description: 2001-02-30\n", "line 1"),
    ],
    ids=["deep-nesting", "5000-digit-int", "impossible-date"],
)
def test_yaml_that_breaks_the_constructor_is_a_policy_error(tmp_path, text, match):
    message = error_of(write(tmp_path, "p.yaml", text))
    assert str(tmp_path / "p.yaml") in message and match in message and len(message) < 600


def test_invalid_utf8_names_the_file_and_byte_offset(tmp_path):
    path = tmp_path / "latin1.yaml"
    path.write_bytes(b"name: caf\xe9\n")
    message = error_of(path)
    assert str(path) in message and "UTF-8" in message and "byte 9" in message


@pytest.mark.parametrize(
    "section, field, value",
    [
        ("steering", "alpha", float("inf")),
        ("steering", "alpha", 1e9),
        ("steering", "alpha", float("nan")),
        ("steering", "safe_strength", float("inf")),
        ("steering", "safe_rank", 10**9),
        ("limits", "max_audio_seconds", float("inf")),
        ("limits", "max_audio_seconds", 1e9),
        ("limits", "max_new_tokens", 10**12),
        ("limits", "max_text_chars", 10**12),
        ("limits", "max_prompt_tokens", 10**12),
        ("gate", "threshold", float("inf")),
        ("actions", "block_above", float("nan")),
    ],
)
def test_numbers_are_finite_and_bounded(section, field, value):
    message = error_of({section: {field: value}})
    assert f"{section}.{field}:" in message


def test_numbers_in_yaml_are_finite_and_bounded(tmp_path):
    message = error_of(write(tmp_path, "p.yaml", "steering:\n  alpha: .inf\nlimits:\n  max_audio_seconds: .inf\n"))
    assert "steering.alpha: " in message and "limits.max_audio_seconds: " in message
    assert "Input should be a finite number (got inf); accepted: a number >= 0 and <= 10000" in message
    assert (
        Policy.from_dict({"steering": {"alpha": 10_000}, "limits": {"max_audio_seconds": 3600}}).steering.alpha
        == 10_000
    )


def test_a_5000_digit_integer_is_a_policy_error():
    message = error_of({"limits": {"max_new_tokens": 10**5000}})
    assert "limits.max_new_tokens" in message and len(message) < 600


@pytest.mark.parametrize(
    "layers", ["0-30000000", "0-" + "9" * 5000, [0, 10**30], {"start": 0, "end": 30_000_000}, [10_000]]
)
def test_layer_selections_are_bounded(layers):
    started = time.perf_counter()
    message = error_of({"steering": {"layers": layers}})
    assert time.perf_counter() - started < 0.5
    assert "steering.layers" in message and "10000" in message and len(message) < 800
    assert Policy.from_dict({"steering": {"layers": "0-9999"}}).steering.layers[-1] == 9999


def test_error_messages_truncate_long_values_and_cap_the_count():
    message = error_of({"gate": {"mode": "x" * 100_000}})
    assert len(message) < 600 and "100002 characters" in message
    message = error_of({"steering": {f"k{i}": i for i in range(1000)}})
    assert len(message.splitlines()) < 30 and "and 980 more" in message
    message = error_of({"k" * 10_000: 1})
    assert len(message) < 1200


def test_extends_reads_only_policy_files_below_its_folder(tmp_path):
    outside = write(tmp_path, "outside.yaml", "secret_line_one: 1\n")
    write(tmp_path, "notes.txt", "secret_line_two: 2\n")
    deploy = tmp_path / "deploy"
    write(deploy, "base/base.yaml", "steering: {alpha: 0.3}\n")
    assert Policy.from_yaml(write(deploy, "ok.yaml", "extends: base/base.yaml\n")).steering.alpha == 0.3
    assert Policy.from_yaml(write(deploy, "abs.yaml", f"extends: {deploy / 'base/base.yaml'}\n")).sources
    (deploy / "link.yaml").symlink_to(outside)
    (deploy / "shadow.yaml").symlink_to("/etc/shadow")
    for ref in ["../outside.yaml", str(outside), "../notes.txt", "/etc/shadow", "/etc/passwd", "link.yaml",
                "shadow.yaml", "base", "../../../../../../etc/hostname"]:  # fmt: skip
        message = error_of(write(deploy, "p.yaml", f"extends: {ref}\n"))
        assert "extends:" in message and "secret_line" not in message and "root:" not in message, ref
        assert f".yaml or .yml files in {deploy} or below" in message, ref
        assert "shipped policy" in message and "gated" in message, ref


def test_a_home_that_does_not_exist_is_a_policy_error(tmp_path):  # found by tests/test_policy_fuzz.py
    message = error_of({"extends": "~nosuchuser0/base.yaml"}, base_dir=tmp_path)
    assert "extends: no policy file" in message  # read as a path below base_dir, which does not exist
    assert Policy.from_dict({"model": {"artifact": "~nosuchuser0"}}).model.artifact == "~nosuchuser0"


def test_extends_from_dict_stays_below_base_dir(tmp_path):
    write(tmp_path, "outside.yaml", "secret_line: 1\n")
    write(tmp_path, "in/base.yaml", "gate: {mode: probe}\n")
    assert Policy.from_dict({"extends": "base.yaml"}, base_dir=tmp_path / "in").gate.mode == "probe"
    message = error_of({"extends": "../outside.yaml"}, base_dir=tmp_path / "in")
    assert "secret_line" not in message and f"files in {tmp_path / 'in'} or below" in message


def test_errors_never_echo_environment_values(tmp_path, monkeypatch):
    secret = "sk-live-0123456789abcdef"
    monkeypatch.setenv("GR_SECRET", secret)
    texts = [
        "steering:\n  alpha: ${GR_SECRET}\n",
        "steering:\n  layers: [1, '${GR_SECRET}']\n",
        "gate:\n  mode: 'x${GR_SECRET}'\n",
        "extends: ${GR_SECRET}\n",
        "extends: ./${GR_SECRET}.yaml\n",
        "limits: {max_batch: '${GR_SECRET}'}\n",
    ]
    for i, text in enumerate(texts):
        message = error_of(write(tmp_path, f"p{i}.yaml", text))
        assert secret not in message and "sk-live" not in message, text
        assert "GR_SECRET" in message, text


@pytest.mark.parametrize(
    "data",
    [
        {"model": {"path": "a" * 5000}},
        {"extends": "a" * 5000 + ".yaml"},
        {"extends": "a\0b.yaml"},
        {"extends": "x/" * 3000 + "a.yaml"},
        {"extends": "loop1.yaml"},
    ],
    ids=["long-model-path", "long-extends", "null-byte", "deep-extends", "link-loop"],
)
def test_paths_the_system_cannot_use_are_policy_errors(tmp_path, data):
    (tmp_path / "loop1.yaml").symlink_to(tmp_path / "loop2.yaml")
    (tmp_path / "loop2.yaml").symlink_to(tmp_path / "loop1.yaml")
    try:
        Policy.from_dict(data, base_dir=tmp_path)
    except PolicyError as exc:
        assert len(str(exc)) < 1000
    with pytest.raises(PolicyError, match="cannot read policy file|no shipped policy"):
        Policy.load(next(iter(data.values())) if "extends" in data else "a" * 5000)
    with pytest.raises(PolicyError, match="cannot read policy file"):
        Policy.from_yaml(tmp_path / "loop1.yaml")


@pytest.mark.parametrize("name", ["gated", "strict"])
def test_a_rate_threshold_dumps_without_serializer_warnings(name):
    policy = Policy.load(name)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        dumped = policy.model_dump()
        assert Policy.model_validate_json(policy.model_dump_json()).model_dump() == dumped
    assert isinstance(dumped["gate"]["threshold"], dict) and set(dumped["gate"]["threshold"]) == {"fpr"}
