"""The gate probe: training on synthetic activations, ONNX export/load, identity checks, metrics."""

from __future__ import annotations

import json
import shutil

import numpy as np
import pytest
import torch
from conftest import calibration_items

from guardrail.errors import ProbeError, ProbeMismatchError, RequestError
from guardrail.gate.fit import stratified_folds
from guardrail.gate.metrics import recall_at_fpr, roc_auc, threshold_at_fpr
from guardrail.gate.onnx_probe import OnnxProbe, evaluate_probe, features_from_activations, select_providers
from guardrail.gate.stacked import default_layers
from guardrail.gate.train import TrainedProbe, train_probe
from guardrail.gate.train_on_model import fit_probe
from guardrail.testing.tiny import HIDDEN, NUM_LAYERS, build_tiny

INFORMATIVE = 2


def synthetic(
    n: int = 40, *, layers: int = NUM_LAYERS, hidden: int = HIDDEN, shift: float = 6.0, seed: int = 0
) -> tuple[torch.Tensor, torch.Tensor]:
    """n harmful + n safe samples; only layer INFORMATIVE separates them (along one direction)."""
    gen = torch.Generator().manual_seed(seed)
    acts = torch.randn(layers, 2 * n, hidden, generator=gen) * 0.5 + torch.randn(layers, 1, hidden, generator=gen)
    direction = torch.nn.functional.normalize(torch.ones(hidden), dim=0)
    labels = torch.tensor([1] * n + [0] * n)
    acts[INFORMATIVE] += shift * labels[:, None] * direction
    return acts, labels


@pytest.fixture(scope="module")
def tiny():
    return build_tiny("qwen2", seed=0)


@pytest.fixture(scope="module")
def trained(tiny) -> TrainedProbe:
    acts, labels = synthetic()
    return train_probe(acts, labels).bind(tiny[0])


@pytest.fixture(scope="module")
def saved(trained, tmp_path_factory):
    return trained.save(tmp_path_factory.mktemp("probe") / "probe")


# -- training ------------------------------------------------------------------------------
def test_separable_data_picks_the_informative_layer(trained):
    assert trained.layers == [INFORMATIVE]
    assert trained.layer_auc[INFORMATIVE] > 0.99
    assert all(auc < 0.8 for layer, auc in trained.layer_auc.items() if layer != INFORMATIVE)
    held_out, labels = synthetic(seed=1)
    metrics = evaluate_probe(trained, held_out, labels)
    assert metrics["roc_auc"] > 0.99 and metrics["recall_at_1pct_fpr"] > 0.9


@pytest.mark.parametrize("target", [0.01, 0.05, 0.2])
def test_threshold_respects_the_target_fpr_on_cross_validated_negatives(target):
    acts, labels = synthetic(60, shift=1.5)  # overlapping classes: the threshold matters
    probe = train_probe(acts, labels, target_fpr=target)
    assert probe.cv.fpr_at_threshold <= target
    assert 0.0 < probe.threshold < 1.0 and probe.target_fpr == target


def test_training_is_deterministic():
    acts, labels = synthetic(shift=2.0)
    a, b = train_probe(acts, labels), train_probe(acts, labels)
    assert torch.equal(a.module.linear.weight, b.module.linear.weight)
    assert a.threshold == b.threshold and a.layer_auc == b.layer_auc


def test_fixed_layers_concatenate_features():
    acts, labels = synthetic()
    probe = train_probe(acts, labels, layers=[1, INFORMATIVE], scan_layers=False)
    assert probe.layers == [1, INFORMATIVE] and probe.n_features == 2 * HIDDEN
    assert set(probe.layer_auc) == {1, INFORMATIVE}
    feats = features_from_activations(acts, probe.layers)
    assert torch.equal(feats[:, HIDDEN:], acts[INFORMATIVE])
    assert roc_auc(probe.score(feats), labels) > 0.99


def test_bad_training_inputs_are_refused():
    acts, labels = synthetic(4)
    with pytest.raises(RequestError, match="at least 2 of each"):
        train_probe(acts, torch.ones_like(labels))
    with pytest.raises(RequestError, match="num_layers, n, hidden"):
        train_probe(acts[0], labels)


def test_stratified_folds_balance_the_classes():
    labels = np.array([1] * 10 + [0] * 15)
    ids = stratified_folds(labels, 5, seed=3)
    for fold in range(5):
        assert (labels[ids == fold] == 1).sum() == 2 and (labels[ids == fold] == 0).sum() == 3


# -- export, load, inference ---------------------------------------------------------------
@pytest.mark.parametrize("batch", [1, 32])
def test_onnx_scores_equal_the_torch_probe(trained, saved, batch):
    features = torch.randn(batch, trained.n_features) + synthetic()[0][INFORMATIVE, :1]
    onnx_scores = OnnxProbe.load(saved).score(features)
    assert onnx_scores.shape == (batch,) and onnx_scores.dtype == np.float32
    np.testing.assert_allclose(onnx_scores, trained.score(features), rtol=1e-5, atol=1e-6)


def test_round_trip_keeps_metadata_and_decisions(trained, saved):
    probe = OnnxProbe.load(saved)
    assert probe.layers == trained.layers and probe.threshold == trained.threshold
    assert probe.metadata.layer_auc == trained.layer_auc and probe.metadata.hidden_size == HIDDEN
    assert probe.metadata.training.n_harmful == 40 and len(probe.metadata.training.activations_sha256) == 64
    acts, labels = synthetic(seed=2)
    feats = features_from_activations(acts, probe.layers)
    np.testing.assert_array_equal(probe.decide(feats), trained.decide(feats))
    assert probe.decide(feats, threshold=0.0).all() and not probe.decide(feats, threshold=1.01).any()
    assert evaluate_probe(probe, acts, labels)["roc_auc"] > 0.99
    on_disk = json.loads((saved / "probe.json").read_text())
    assert on_disk["onnx"]["opset"] >= 17 and on_disk["model"]["fingerprint"]


def test_cpu_provider_and_silent_load(saved, capfd):
    capfd.readouterr()
    probe = OnnxProbe.load(saved)
    probe.score(np.zeros((1, probe.n_features), dtype=np.float32))
    out = capfd.readouterr()
    assert probe.providers == ["CPUExecutionProvider"]
    assert out.err == "" and out.out == ""


def test_provider_selection(monkeypatch):
    import onnxruntime as ort

    with_cuda = ["CUDAExecutionProvider", "CPUExecutionProvider"]
    for cuda, available, expected in [
        (False, with_cuda, ["CPUExecutionProvider"]),
        (True, ["CPUExecutionProvider"], ["CPUExecutionProvider"]),
        (True, with_cuda, with_cuda),
    ]:
        monkeypatch.setattr(torch.cuda, "is_available", lambda cuda=cuda: cuda)
        monkeypatch.setattr(ort, "get_available_providers", lambda available=available: available)
        assert select_providers() == expected


def test_score_input_checks(saved):
    probe = OnnxProbe.load(saved)
    with pytest.raises(ProbeMismatchError, match=f"reads \\(batch, {HIDDEN}\\)"):
        probe.score(np.zeros((2, HIDDEN + 1), dtype=np.float32))
    bad = np.zeros((3, HIDDEN), dtype=np.float32)
    bad[1, 0] = np.nan
    with pytest.raises(ProbeError, match=r"non-finite scores for samples \[1\]"):
        probe.score(bad)
    assert probe.score(torch.zeros(2, HIDDEN, dtype=torch.bfloat16)).shape == (2,)


def test_save_needs_a_model_identity(tmp_path):
    probe = train_probe(*synthetic())
    with pytest.raises(ProbeError, match="bind"):
        probe.save(tmp_path)


# -- model identity ------------------------------------------------------------------------
def test_check_model_accepts_its_model(saved, tiny):
    OnnxProbe.load(saved).check_model(tiny[0])


@pytest.mark.parametrize("family,seed,message", [("llama", 0, "another model"), ("qwen2", 1, "different weights")])
def test_probe_for_another_model_is_refused(saved, family, seed, message):
    model, _ = build_tiny(family, seed=seed)
    with pytest.raises(ProbeMismatchError, match=message):
        OnnxProbe.load(saved).check_model(model)


def test_layer_or_hidden_size_mismatch_is_refused(tiny):
    acts, labels = synthetic(layers=NUM_LAYERS + 2)
    acts[NUM_LAYERS + 1] = acts[INFORMATIVE] * 2
    with pytest.raises(ProbeMismatchError, match="decoder layers"):
        train_probe(acts, labels, layers=[NUM_LAYERS + 1]).bind(tiny[0])
    with pytest.raises(ProbeMismatchError, match="hidden size"):
        train_probe(*synthetic(hidden=32)).bind(tiny[0])


# -- damaged files -------------------------------------------------------------------------
def _copy(saved, tmp_path):
    return shutil.copytree(saved, tmp_path / "copy")


def test_missing_directory(tmp_path):
    with pytest.raises(ProbeError, match="probe.json.*fit_probe"):
        OnnxProbe.load(tmp_path / "nowhere")


def test_malformed_json(saved, tmp_path):
    path = _copy(saved, tmp_path)
    (path / "probe.json").write_text('{"layers": [1]}')
    with pytest.raises(ProbeError, match="probe.json is malformed"):
        OnnxProbe.load(path)


def test_truncated_onnx(saved, tmp_path):
    path = _copy(saved, tmp_path)
    blob = (path / "probe.onnx").read_bytes()
    (path / "probe.onnx").write_bytes(blob[: len(blob) // 2])
    with pytest.raises(ProbeError, match="probe.onnx does not match the sha256"):
        OnnxProbe.load(path)


def test_garbage_onnx_with_matching_hash(saved, tmp_path):
    import hashlib

    path = _copy(saved, tmp_path)
    (path / "probe.onnx").write_bytes(b"not an onnx model")
    meta = json.loads((path / "probe.json").read_text())
    meta["onnx"]["sha256"] = hashlib.sha256(b"not an onnx model").hexdigest()
    (path / "probe.json").write_text(json.dumps(meta))
    with pytest.raises(ProbeError, match="onnxruntime cannot load .*probe.onnx"):
        OnnxProbe.load(path)


def test_metadata_disagreeing_with_the_graph(saved, tmp_path):
    path = _copy(saved, tmp_path)
    meta = json.loads((path / "probe.json").read_text())
    meta["n_features"], meta["layers"] = 2 * HIDDEN, [1, INFORMATIVE]  # consistent metadata, another graph
    (path / "probe.json").write_text(json.dumps(meta))
    with pytest.raises(ProbeError, match="as probe.json says"):
        OnnxProbe.load(path)


def _edit(saved, tmp_path, **changes):
    path = _copy(saved, tmp_path)
    meta = json.loads((path / "probe.json").read_text())
    for key, value in changes.items():
        if key.startswith("onnx_"):
            meta["onnx"][key[5:]] = value
        else:
            meta[key] = value
    (path / "probe.json").write_text(json.dumps(meta))
    return path


@pytest.mark.parametrize("name", ["/dev/zero", "../probe.onnx", "sub/probe.onnx", "..", ".", "", "a\\b.onnx", "ABS"])
def test_onnx_file_must_be_a_plain_name_in_the_probe_directory(saved, tmp_path, name):
    if name == "ABS":  # an absolute path to a valid graph elsewhere (the old code loaded it)
        name = str(shutil.copy(saved / "probe.onnx", tmp_path / "elsewhere.onnx"))
    path = _edit(saved, tmp_path, onnx_file=name)
    with pytest.raises(ProbeError, match="plain file name"):
        OnnxProbe.load(path)


def test_onnx_file_must_be_a_regular_file_under_the_size_cap(saved, tmp_path):
    import os

    from guardrail.gate.probe_record import MAX_ONNX_BYTES

    path = _edit(saved, tmp_path, onnx_file="big.onnx")
    with open(path / "big.onnx", "wb") as handle:  # sparse: no disk used, never read
        handle.truncate(MAX_ONNX_BYTES + 1)
    with pytest.raises(ProbeError, match="larger than"):
        OnnxProbe.load(path)
    (path / "big.onnx").unlink()
    (path / "big.onnx").mkdir()
    with pytest.raises(ProbeError, match="not a regular file"):
        OnnxProbe.load(path)
    if hasattr(os, "mkfifo"):  # a FIFO would block a plain open()
        (path / "big.onnx").rmdir()
        os.mkfifo(path / "big.onnx")
        with pytest.raises(ProbeError, match="not a regular file"):
            OnnxProbe.load(path)


@pytest.mark.parametrize("threshold", [float("nan"), float("inf"), 2.0, -0.1])
def test_threshold_must_be_a_probability(saved, tmp_path, threshold):
    path = _edit(saved, tmp_path, threshold=threshold)
    with pytest.raises(ProbeError, match="threshold"):
        OnnxProbe.load(path)


@pytest.mark.parametrize(
    "changes",
    [
        {"layers": []},
        {"layers": [-1]},
        {"layers": [INFORMATIVE, INFORMATIVE], "n_features": 2 * HIDDEN},
        {"hidden_size": 0, "n_features": 0},
        {"n_features": HIDDEN + 1},
    ],
)
def test_layers_and_sizes_must_be_consistent(saved, tmp_path, changes):
    path = _edit(saved, tmp_path, **changes)
    with pytest.raises(ProbeError, match="layers|hidden_size|n_features"):
        OnnxProbe.load(path)


def test_invalid_utf8_in_probe_json(saved, tmp_path):
    path = _copy(saved, tmp_path)
    blob = (path / "probe.json").read_bytes().replace(b'"created_at": "', b'"created_at": "\xff')
    (path / "probe.json").write_bytes(blob)
    with pytest.raises(ProbeError, match="UTF-8"):
        OnnxProbe.load(path)


def test_emptied_weight_record_is_refused(saved, tmp_path):
    path = _copy(saved, tmp_path)
    meta = json.loads((path / "probe.json").read_text())
    meta["model"]["parameter_samples"] = {}
    (path / "probe.json").write_text(json.dumps(meta))
    with pytest.raises(ProbeError, match="parameter_samples is missing or empty"):
        OnnxProbe.load(path)


def test_probe_refuses_a_copy_with_every_other_layer_perturbed(saved, tiny):
    import copy

    model = copy.deepcopy(tiny[0])
    with torch.no_grad():
        for layer in model.model.layers[::2]:
            for p in layer.parameters():
                p.add_(torch.randn_like(p) * 1e-3)
    with pytest.raises(ProbeMismatchError, match="different weights"):
        OnnxProbe.load(saved).check_model(model)


def test_training_refuses_empty_or_unknown_layers():
    acts, labels = synthetic(4)
    for layers in ([], [NUM_LAYERS], [-1], [1, 1]):
        with pytest.raises(RequestError, match="layers"):
            train_probe(acts, labels, layers=layers, scan_layers=False)


# -- end to end on tiny models -------------------------------------------------------------
@pytest.mark.parametrize("family", ["qwen2", "qwen2_audio"])
@pytest.mark.parametrize("kind", ["stacked", "logistic"])
def test_fit_probe_on_a_tiny_model(family, kind, tmp_path):
    model, processor = build_tiny(family, seed=0)
    harmful, safe = calibration_items(family)
    probe = fit_probe(model, processor, harmful, safe[:6], batch_size=4, folds=3, kind=kind)
    assert probe.identity is not None and probe.identity.config["num_layers"] == NUM_LAYERS
    assert probe.training.queries_sha256 and (probe.training.n_harmful, probe.training.n_safe) == (3, 6)
    if kind == "stacked":  # v2: both pools of the first three quarters of the layers
        assert (probe.kind, probe.pools, probe.layers) == ("stacked-lda", ["last", "mean"], default_layers(NUM_LAYERS))
        assert probe.stack is not None and probe.stack.blocks[-1] == f"mean:{probe.layers[-1]}"
    else:
        assert (probe.kind, probe.pools, len(probe.layer_auc)) == ("logistic", ["last"], NUM_LAYERS)
    loaded = OnnxProbe.load(probe.save(tmp_path / "p"))
    loaded.check_model(model)
    assert (loaded.metadata.kind, loaded.pools) == (probe.kind, probe.pools)
    acts, means = torch.randn(NUM_LAYERS, 5, HIDDEN), torch.randn(NUM_LAYERS, 5, HIDDEN)
    np.testing.assert_allclose(
        loaded.score(features_from_activations(acts, loaded.layers, means, loaded.pools)),
        probe.score(features_from_activations(acts, probe.layers, means, probe.pools)),
        rtol=1e-5,
        atol=1e-6,
    )


def test_features_from_a_layer_mapping():
    parts = {1: np.ones((2, 3)), 3: np.zeros((2, 3))}
    assert features_from_activations(parts, [3, 1]).tolist() == [[0, 0, 0, 1, 1, 1]] * 2
    with pytest.raises(ProbeMismatchError, match=r"no activations were given for \[2\]"):
        features_from_activations(parts, [2])
    with pytest.raises(ProbeMismatchError, match="lack the probe's layers"):
        features_from_activations(torch.zeros(2, 1, 3), [2])


# -- metrics against hand-computed values --------------------------------------------------
def test_roc_auc_hand_computed():
    assert roc_auc([0.1, 0.4, 0.35, 0.8], [0, 0, 1, 1]) == 0.75  # pairs (pos > neg): 3 of 4
    assert roc_auc([0.5, 0.5, 0.5], [0, 1, 1]) == 0.5  # all tied
    assert roc_auc([0.2, 0.3, 0.3, 0.9], [0, 0, 1, 1]) == 0.875  # one tie counts 1/2: 3.5 of 4
    assert roc_auc(torch.tensor([0.9, 0.1]), torch.tensor([0, 1])) == 0.0
    with pytest.raises(ValueError):
        roc_auc([0.1, 0.2], [1, 1])


def test_threshold_and_recall_at_fpr_hand_computed():
    negatives = np.arange(10) / 10  # 0.0 .. 0.9
    assert 0.9 < threshold_at_fpr(negatives, 0.0) < 0.90001  # nothing flagged
    assert 0.8 < threshold_at_fpr(negatives, 0.1) < 0.80001  # only 0.9 flagged (1 of 10)
    assert 0.8 < threshold_at_fpr(negatives, 0.15) < 0.80001  # 1.5 negatives -> still 1
    assert threshold_at_fpr(negatives, 1.0) == 0.0
    scores = np.concatenate([negatives, [0.95, 0.85, 0.5, 0.05]])
    labels = np.array([0] * 10 + [1] * 4)
    assert recall_at_fpr(scores, labels, 0.0) == 0.25  # only 0.95 > 0.9
    assert recall_at_fpr(scores, labels, 0.1) == 0.5  # 0.95, 0.85 > 0.8
    assert recall_at_fpr(scores, labels, 0.5) == 0.75  # threshold just above 0.4
