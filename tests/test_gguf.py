"""llama.cpp control vectors: export an artifact's deltas, read them back with gguf's own reader, import them."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from guardrail import Guard, calibrate
from guardrail.cli.main import main
from guardrail.errors import ArtifactError
from guardrail.policy.schema import Policy
from guardrail.steering.artifact import SteeringArtifact
from guardrail.steering.gguf import (
    ControlVector,
    artifact_from_control_vector,
    export_control_vector,
    read_control_vector,
    write_control_vector,
)
from guardrail.testing.tiny import build_tiny
from guardrail.testing.tiny.save import save_tiny

gguf = pytest.importorskip("gguf")

HARMFUL = ["how do I build a weapon", "tell me how to hurt someone", "how to steal a car"]
SAFE = ["how do I build a shelf", "how to bake bread", "how to wash a car", "what is a good book"]


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    """(model, tokenizer, artifact, model directory) of the tiny qwen2 model, saved so the CLI can load it."""
    path = save_tiny("qwen2", tmp_path_factory.mktemp("tiny-qwen2"))
    model, tokenizer = build_tiny("qwen2")
    return model, tokenizer, calibrate(model, tokenizer, HARMFUL, SAFE, batch_size=2), path


def test_export_is_what_the_guard_adds_read_by_ggufs_reader(tiny, tmp_path):
    model, tokenizer, artifact, _ = tiny
    policy = Policy.from_dict({"steering": {"alpha": 0.7, "layers": [1, 3], "safe_rank": 1}})
    guard = Guard(model, tokenizer, policy=policy, artifact=artifact)
    out = tmp_path / "v.gguf"
    export_control_vector(artifact, out, alpha=0.7, layers=[1, 3], safe_rank=1)

    reader = gguf.GGUFReader(str(out))
    assert {t.name for t in reader.tensors} == {"direction.1", "direction.3"}
    for tensor in reader.tensors:
        assert tensor.tensor_type == gguf.GGMLQuantizationType.F32 and tensor.data.shape == (64,)
        expected = guard.steering_deltas[int(tensor.name.split(".")[1])].numpy()
        np.testing.assert_array_equal(np.asarray(tensor.data), expected)
    assert reader.get_field("general.architecture").contents() == "controlvector"
    assert reader.get_field("controlvector.model_hint").contents() == "qwen2"
    assert reader.get_field("controlvector.layer_count").contents() == 2
    assert reader.get_field("guardrail.artifact_id").contents() == artifact.id


def test_layer_0_is_left_out_and_alone_refused(tiny, tmp_path):
    _, _, artifact, _ = tiny
    written = export_control_vector(artifact, tmp_path / "all.gguf", alpha=0.1)
    assert sorted(written.directions) == [1, 2, 3]
    assert read_control_vector(tmp_path / "all.gguf").metadata["guardrail.skipped_layers"] == "0"
    with pytest.raises(ArtifactError, match="cannot hold layer 0"):
        export_control_vector(artifact, tmp_path / "zero.gguf", alpha=0.1, layers=[0])
    with pytest.raises(ArtifactError, match=r"layers \[7\] are not in artifact"):
        export_control_vector(artifact, tmp_path / "far.gguf", alpha=0.1, layers=[7])


def test_round_trip_into_an_artifact_that_adds_the_same_deltas(tiny, tmp_path):
    model, tokenizer, artifact, _ = tiny
    exported = export_control_vector(artifact, tmp_path / "v.gguf", alpha=0.4)
    vector = read_control_vector(tmp_path / "v.gguf")
    assert vector.model_hint == "qwen2" and vector.layer_count == 3
    assert all(torch.equal(vector.directions[k], exported.directions[k]) for k in exported.directions)

    imported = artifact_from_control_vector(vector, model, model.model.layers, "causal_lm", "v.gguf")
    imported = SteeringArtifact.load(imported.save(tmp_path / "imported"))
    policy = Policy.from_dict({"steering": {"alpha": 1.0, "layers": [1, 2, 3], "safe_rank": 0}})
    deltas = Guard(model, tokenizer, policy=policy, artifact=imported).steering_deltas
    assert all(torch.equal(deltas[k], exported.directions[k]) for k in (1, 2, 3))
    assert not imported.refusal[0].any()


def test_another_tools_file_reads(tmp_path):
    """repeng writes layer_count as uint32 and may skip layers; no guardrail.* keys."""
    writer = gguf.GGUFWriter(str(tmp_path / "other.gguf"), "controlvector")
    writer.add_string("controlvector.model_hint", "llama")
    writer.add_uint32("controlvector.layer_count", 2)
    writer.add_tensor("direction.5", np.full(8, 2.0, np.float32))
    writer.add_tensor("direction.2", np.ones(8, np.float32))
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file()
    writer.close()
    vector = read_control_vector(tmp_path / "other.gguf")
    assert list(vector.directions) == [2, 5] and torch.equal(vector.directions[5], torch.full((8,), 2.0))
    assert (vector.model_hint, vector.layer_count, vector.metadata) == ("llama", 2, {})


def test_bad_files_are_artifact_errors(tiny, tmp_path):
    model = tiny[0]
    (tmp_path / "text.gguf").write_text("not gguf")
    with pytest.raises(ArtifactError, match="is not a GGUF file"):
        read_control_vector(tmp_path / "text.gguf")
    with pytest.raises(ArtifactError, match="does not exist"):
        read_control_vector(tmp_path / "missing.gguf")
    with pytest.raises(ArtifactError, match="start at 1"):
        write_control_vector(ControlVector({0: torch.ones(4)}), tmp_path / "zero.gguf")
    write_control_vector(ControlVector({1: torch.ones(8)}, "qwen2"), tmp_path / "narrow.gguf")
    narrow = read_control_vector(tmp_path / "narrow.gguf")
    with pytest.raises(ArtifactError, match="hidden size is 64"):
        artifact_from_control_vector(narrow, model, model.model.layers, "causal_lm")
    write_control_vector(ControlVector({9: torch.ones(64)}, "qwen2"), tmp_path / "deep.gguf")
    with pytest.raises(ArtifactError, match=r"layers \[9\].*4 decoder layers"):
        artifact_from_control_vector(read_control_vector(tmp_path / "deep.gguf"), model, model.model.layers, "x")


def test_cli_export_then_import(tiny, tmp_path, capsys):
    _, _, artifact, model_dir = tiny
    artifact.save(tmp_path / "art")
    out = tmp_path / "v.gguf"
    assert main(["export-gguf", str(tmp_path / "art"), str(out), "--alpha", "0.25"]) == 0
    assert "--control-vector" in capsys.readouterr().out
    assert gguf.GGUFReader(str(out)).get_field("guardrail.alpha").contents() == pytest.approx(0.25)
    assert main(["import-gguf", str(out), str(tmp_path / "back"), "--model", str(model_dir)]) == 0
    back = SteeringArtifact.load(tmp_path / "back")
    assert back.metadata.method.name == "gguf_control_vector"
    expected = export_control_vector(artifact, tmp_path / "again.gguf", alpha=0.25).directions
    assert all(torch.allclose(back.refusal[k], expected[k]) for k in expected)
    assert main(["import-gguf", str(tmp_path / "art" / "metadata.json"), str(tmp_path / "x"), "--model", "m"]) == 2
