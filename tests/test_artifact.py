"""Artifact files: metadata contents, tampering, and malformed directories."""

import json

import pytest

from guardrail import ArtifactError, SteeringArtifact, calibrate
from guardrail.steering.artifact import METADATA_FILE, VECTORS_FILE
from guardrail.testing.tiny import build_tiny


@pytest.fixture(scope="module")
def artifact():
    model, tokenizer = build_tiny("qwen2")
    return calibrate(
        model,
        tokenizer,
        ["how to steal a car", "how to hurt someone"],
        ["how to wash a car", "how to help someone", "how to bake bread"],
        rank=2,
    )


def test_metadata_records_model_method_and_data(artifact):
    meta = artifact.metadata
    assert meta.model.config["num_layers"] == 4 and meta.model.config["hidden_size"] == 64
    assert meta.model.dtype == "float32" and meta.model.adapter == "causal_lm"
    assert meta.method.refusal_text == "I cannot assist with that." and meta.method.safe_rank == 2
    assert meta.calibration.n_harmful == 2 and meta.calibration.n_safe == 3
    assert len(meta.calibration.sha256) == 64 and meta.package_version


def test_calibration_hash_depends_on_data():
    model, tokenizer = build_tiny("qwen2")
    a = calibrate(model, tokenizer, ["how to steal a car"], ["how to wash a car", "how to bake bread"])
    b = calibrate(model, tokenizer, ["how to steal a bike"], ["how to wash a car", "how to bake bread"])
    assert a.metadata.calibration.sha256 != b.metadata.calibration.sha256
    assert a.id != b.id


def test_missing_directory(tmp_path):
    with pytest.raises(ArtifactError, match="not a steering artifact"):
        SteeringArtifact.load(tmp_path / "nothing")


def test_tampered_vectors_detected(artifact, tmp_path):
    path = artifact.save(tmp_path / "a")
    other = SteeringArtifact(
        refusal={k: v * 2 for k, v in artifact.refusal.items()}, basis=artifact.basis, metadata=artifact.metadata
    )
    other.save(tmp_path / "b")
    (tmp_path / "b" / METADATA_FILE).replace(path / "unused.json")
    (tmp_path / "b" / VECTORS_FILE).replace(path / VECTORS_FILE)
    with pytest.raises(ArtifactError, match="do not match the id"):
        SteeringArtifact.load(path)


def test_malformed_metadata(artifact, tmp_path):
    path = artifact.save(tmp_path / "a")
    data = json.loads((path / METADATA_FILE).read_text())
    del data["method"]
    (path / METADATA_FILE).write_text(json.dumps(data))
    with pytest.raises(ArtifactError, match="malformed.*method"):
        SteeringArtifact.load(path)


def test_future_format_version(artifact, tmp_path):
    path = artifact.save(tmp_path / "a")
    data = json.loads((path / METADATA_FILE).read_text())
    data["format_version"] = 99
    (path / METADATA_FILE).write_text(json.dumps(data))
    with pytest.raises(ArtifactError, match="format version 99"):
        SteeringArtifact.load(path)


def test_corrupt_vectors_file(artifact, tmp_path):
    path = artifact.save(tmp_path / "a")
    (path / VECTORS_FILE).write_bytes(b"garbage")
    with pytest.raises(ArtifactError, match="cannot be read"):
        SteeringArtifact.load(path)


def test_weight_sample_positions_stay_in_bounds_for_large_tensors():
    from guardrail.models.identity import sample_positions

    numel = 136_134_656  # Qwen2.5-0.5B's embedding matrix
    positions = sample_positions(numel)
    assert positions[0] == 0 and positions[-1] == numel - 1 and positions.unique().numel() == len(positions)
