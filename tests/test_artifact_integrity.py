"""Artifact integrity (issue #15, defects 10 and 12): the weight-identity check covers every parameter with a
dtype-aware tolerance, the content hash covers the metadata, the tensors are validated, and damaged files
(any JSON value in any field, any bytes, any tensors) end in a typed error."""

from __future__ import annotations

import copy
import json
import math
import shutil
import warnings
from pathlib import Path

import numpy as np
import pytest
import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from safetensors.torch import save_file

from guardrail import ArtifactError, ArtifactMismatchError, GuardrailError, OnnxProbe, SteeringArtifact, calibrate
from guardrail.errors import ProbeError
from guardrail.models import resolve_adapter
from guardrail.models.identity import check_identity, identify
from guardrail.steering.artifact import METADATA_FILE, VECTORS_FILE, content_id
from guardrail.testing.tiny import HIDDEN, NUM_LAYERS, build_tiny

LEGACY = Path(__file__).parent / "data" / "legacy_v1"  # written by the format-1 code (before issue #15)
LEGACY_ID = "7359ed7700848b57"
FUZZ = settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])


def decoder_layers(model: torch.nn.Module) -> torch.nn.ModuleList:
    return resolve_adapter(model).decoder_layers(model)


@pytest.fixture(scope="module")
def tiny():
    return build_tiny("qwen2", seed=0)


@pytest.fixture(scope="module")
def artifact(tiny):
    model, tokenizer = tiny
    return calibrate(
        model,
        tokenizer,
        ["how to steal a car", "how to hurt someone"],
        ["how to wash a car", "how to help someone", "how to bake bread"],
        rank=2,
    )


def perturbed(model: torch.nn.Module, scale: float, every: str = "layer") -> torch.nn.Module:
    """A copy with every other decoder layer (or every other decoder tensor) plus Gaussian noise."""
    other = copy.deepcopy(model)
    layers = decoder_layers(other)
    if every == "layer":
        targets = [p for i, layer in enumerate(layers) if i % 2 == 0 for p in layer.parameters()]
    else:
        targets = [p for i, p in enumerate(q for layer in layers for q in layer.parameters()) if i % 2 == 0]
    gen = torch.Generator().manual_seed(1)
    with torch.no_grad():
        for p in targets:
            p.add_(torch.randn(p.shape, generator=gen) * scale)
    return other


def max_logit_change(a: torch.nn.Module, b: torch.nn.Module, tokenizer) -> float:
    ids = tokenizer("how do I bake bread", return_tensors="pt").input_ids
    with torch.no_grad():
        return float((a(ids).logits.float() - b(ids).logits.float()).abs().max())


# -- the weight-identity check ---------------------------------------------------------------
@pytest.mark.parametrize("every,scale", [("layer", 0.02), ("layer", 1e-3), ("tensor", 1e-3)])
def test_perturbed_copy_is_refused(artifact, tiny, every, scale):
    model = perturbed(tiny[0], scale, every)
    assert max_logit_change(model, tiny[0], tiny[1]) > (0.5 if scale == 0.02 else 0.0)  # the issue's: 0.78
    with pytest.raises(ArtifactMismatchError, match="different weights"):
        artifact.check_model(model, decoder_layers(model))


@pytest.mark.parametrize("every", ["layer", "tensor"])
@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16])
def test_perturbed_copy_in_another_dtype_is_refused(artifact, tiny, every, dtype):
    model = perturbed(tiny[0], 1e-3, every).to(dtype)
    with pytest.raises(ArtifactMismatchError, match="different weights"):
        artifact.check_model(model, decoder_layers(model))


@pytest.mark.parametrize("dtypes", [[torch.bfloat16], [torch.float16], [torch.bfloat16, torch.float32]])
def test_same_weights_in_another_dtype_are_accepted(artifact, tiny, dtypes):
    model = copy.deepcopy(tiny[0])
    for dtype in dtypes:
        model = model.to(dtype)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        artifact.check_model(model, decoder_layers(model))


@pytest.mark.parametrize("made_in", [torch.bfloat16, torch.float16])
def test_identity_recorded_in_half_precision_accepts_the_other_dtypes(tiny, made_in):
    made = copy.deepcopy(tiny[0]).to(made_in)
    identity = identify(made, decoder_layers(made), "causal_lm")
    for dtype in (torch.float32, torch.bfloat16, torch.float16):
        model = copy.deepcopy(tiny[0]).to(dtype)
        check_identity(identity, model, decoder_layers(model), what="x", made="made", remedy="-", error=ArtifactError)
    model = perturbed(tiny[0], 1e-3)
    with pytest.raises(ArtifactError, match="different weights"):
        check_identity(identity, model, decoder_layers(model), what="x", made="made", remedy="-", error=ArtifactError)


def test_identity_samples_every_parameter(tiny):
    model = tiny[0]
    identity = identify(model, decoder_layers(model), "causal_lm")
    assert identity.parameter_samples is not None
    assert len(identity.parameter_samples) == len(list(model.parameters()))
    assert "decoder[3].mlp.down_proj.weight" in identity.parameter_samples


def test_a_parameter_the_record_lacks_is_refused(artifact, tiny):
    model = copy.deepcopy(tiny[0])
    decoder_layers(model)[1].mlp.register_parameter("extra", torch.nn.Parameter(torch.zeros(3)))
    with pytest.raises(ArtifactMismatchError, match="decoder\\[1\\].mlp.extra"):
        artifact.check_model(model, decoder_layers(model))


@settings(max_examples=200, deadline=None)
@given(
    values=st.lists(
        st.floats(min_value=2**-13, max_value=6e4, width=32) | st.floats(min_value=-6e4, max_value=-(2**-13), width=32),
        min_size=1,
        max_size=16,
    ),
    chain=st.lists(st.sampled_from([torch.bfloat16, torch.float16, torch.float32]), min_size=1, max_size=3),
    which=st.integers(min_value=0),
    sign=st.sampled_from([-1.0, 1.0]),
)
def test_tolerance_accepts_casts_and_refuses_changes(values, chain, which, sign):
    from guardrail.models.identity import samples_agree

    recorded = torch.tensor(values, dtype=torch.float32)
    cast = recorded
    for dtype in chain:
        cast = cast.to(dtype)
    assert samples_agree(recorded, cast.float()) and samples_agree(cast.float(), recorded)
    changed = recorded.clone()
    changed[which % len(values)] *= 1 + sign * 2**-5  # 3%: beyond bf16 rounding (0.4%) on either side
    assert not samples_agree(recorded, changed.to(chain[-1]).float())


# -- the content hash covers the metadata ------------------------------------------------------
def edit(path: Path, dotted: str, value) -> None:
    data = json.loads((path / METADATA_FILE).read_text())
    *parents, last = dotted.split(".")
    node = data
    for key in parents:
        node = node[key]
    node[last] = value
    (path / METADATA_FILE).write_text(json.dumps(data))


@pytest.mark.parametrize(
    "field,value",
    [
        ("method.safe_strength", 0.5),
        ("method.safe_rank", 1),
        ("model.config.vocab_size", 1000),
        ("model.fingerprint", "0" * 16),
        ("model.adapter", "llama"),
        ("calibration.n_harmful", 7),
    ],
)
def test_metadata_edits_break_the_content_hash(artifact, tmp_path, field, value):
    path = artifact.save(tmp_path / "a")
    edit(path, field, value)
    with pytest.raises(ArtifactError, match="do not match the id"):
        SteeringArtifact.load(path)


def test_emptied_weight_record_is_refused(artifact, tmp_path):
    path = artifact.save(tmp_path / "a")
    edit(path, "model.parameter_samples", {})
    with pytest.raises(ArtifactError, match="parameter_samples|do not match the id"):
        SteeringArtifact.load(path)


def test_provenance_fields_do_not_change_the_id(artifact, tmp_path):
    path = artifact.save(tmp_path / "a")
    edit(path, "created_at", "2000-01-01T00:00:00+00:00")
    assert SteeringArtifact.load(path).id == artifact.id


# -- tensors are validated -----------------------------------------------------------------------
def legacy_tensors() -> dict[str, torch.Tensor]:
    from safetensors.torch import load_file

    return load_file(str(LEGACY / "artifact" / VECTORS_FILE))


def write_legacy(path: Path, tensors: dict[str, torch.Tensor]) -> Path:
    """A format-1 artifact with these tensors and a matching (tensors-only) id: what the old code accepted."""
    shutil.copytree(LEGACY / "artifact", path)
    save_file(tensors, str(path / VECTORS_FILE))
    refusal = {int(k.split(".")[1]): v for k, v in tensors.items() if k.startswith("refusal.") and k[8:].isdigit()}
    basis = {int(k.split(".")[1]): v for k, v in tensors.items() if k.startswith("basis.") and k[6:].isdigit()}
    try:
        edit(path, "artifact_id", content_id(refusal, basis))
    except Exception:  # tensors no hash can take (int dtypes hash fine; odd names are left out)
        pass
    return path


def damaged(kind: str) -> dict[str, torch.Tensor]:
    tensors = legacy_tensors()
    if kind == "nan":
        tensors["refusal.1"] = tensors["refusal.1"].clone()
        tensors["refusal.1"][3] = math.nan
    elif kind == "shape (1,)":
        tensors["refusal.0"] = torch.ones(1)
    elif kind == "int32":
        tensors["refusal.2"] = tensors["refusal.2"].to(torch.int32)
    elif kind == "basis rank":
        tensors["basis.0"] = tensors["basis.0"][:, :1].contiguous()
    elif kind == "extra name":
        tensors["junk.0"] = torch.zeros(HIDDEN)
    elif kind == "extra layer":
        tensors["refusal.9"], tensors["basis.9"] = tensors["refusal.0"].clone(), tensors["basis.0"].clone()
    elif kind == "missing layer":
        del tensors["refusal.3"], tensors["basis.3"]
    elif kind == "bad layer":
        tensors["refusal.x"] = torch.zeros(HIDDEN)
    return tensors


@pytest.mark.parametrize(
    "kind,message",
    [
        ("nan", "not finite"),
        ("shape (1,)", "shape"),
        ("int32", "dtype"),
        ("basis rank", "shape"),
        ("extra name", "junk.0"),
        ("extra layer", "refusal.9"),
        ("missing layer", "refusal.3"),
        ("bad layer", "refusal.x"),
    ],
)
def test_invalid_tensors_are_refused(tmp_path, kind, message):
    path = write_legacy(tmp_path / "a", damaged(kind))
    with pytest.raises(ArtifactError, match=message):
        SteeringArtifact.load(path)


def test_invalid_utf8_metadata(artifact, tmp_path):
    path = artifact.save(tmp_path / "a")
    blob = (path / METADATA_FILE).read_bytes().replace(b'"created_at": "', b'"created_at": "\xff\xfe')
    (path / METADATA_FILE).write_bytes(blob)
    with pytest.raises(ArtifactError, match="UTF-8"):
        SteeringArtifact.load(path)


# -- files written by the previous version -------------------------------------------------------
def test_legacy_artifact_loads_and_is_checked_with_what_it_has(tiny):
    legacy = SteeringArtifact.load(LEGACY / "artifact")
    assert legacy.id == LEGACY_ID and legacy.metadata.format_version == 1
    with pytest.warns(UserWarning, match="weaker"):
        legacy.check_model(tiny[0], decoder_layers(tiny[0]))
    other = build_tiny("qwen2", seed=1)[0]
    with pytest.raises(ArtifactMismatchError, match="different weights"), warnings.catch_warnings():
        warnings.simplefilter("ignore")
        legacy.check_model(other, decoder_layers(other))


def test_legacy_probe_loads_and_is_checked_with_what_it_has(tiny):
    probe = OnnxProbe.load(LEGACY / "probe")
    assert probe.metadata.format_version == 1 and probe.layers == [2]
    with pytest.warns(UserWarning, match="weaker"):
        probe.check_model(tiny[0])


def test_new_files_are_format_2(artifact, tmp_path):
    data = json.loads(artifact.save(tmp_path / "a").joinpath(METADATA_FILE).read_text())
    assert data["format_version"] == 2 and data["model"]["parameter_samples"]
    assert SteeringArtifact.load(tmp_path / "a").metadata == artifact.metadata


# -- fuzzing: any value in any field, any bytes, any tensors -----------------------------------
JSON = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats() | st.text(max_size=20),
    lambda children: st.lists(children, max_size=4) | st.dictionaries(st.text(max_size=8), children, max_size=4),
    max_leaves=12,
)
ARTIFACT_FIELDS = [
    "format_version",
    "artifact_id",
    "model",
    "model.config",
    "model.config.num_layers",
    "model.config.hidden_size",
    "model.weight_sample",
    "model.dtype",
    "method",
    "method.safe_rank",
    "method.basis_rank",
    "method.safe_strength",
    "calibration",
    "calibration.n_safe",
]


def ends_typed(run) -> None:
    try:
        run()
    except GuardrailError:
        pass


@FUZZ
@given(field=st.sampled_from(ARTIFACT_FIELDS), value=JSON)
def test_any_json_value_in_a_legacy_artifact_field(tmp_path_factory, tiny, field, value):
    path = shutil.copytree(LEGACY / "artifact", tmp_path_factory.mktemp("fuzz") / "a")
    edit(path, field, value)

    def run() -> None:
        loaded = SteeringArtifact.load(path)  # format 1: the id covers only the tensors, so edits get through
        loaded.steering_vectors()
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            loaded.check_model(tiny[0], decoder_layers(tiny[0]))

    ends_typed(run)


@FUZZ
@given(blob=st.binary(max_size=300) | st.text(max_size=200).map(lambda s: s.encode("utf-8", "surrogatepass")))
def test_any_bytes_as_artifact_metadata(tmp_path_factory, blob):
    path = shutil.copytree(LEGACY / "artifact", tmp_path_factory.mktemp("fuzz") / "a")
    (path / METADATA_FILE).write_bytes(blob)
    with pytest.raises(ArtifactError):
        SteeringArtifact.load(path)


TENSOR = st.builds(
    lambda dtype, shape, fill: torch.full(shape, fill).to(dtype),
    st.sampled_from([torch.float32, torch.float16, torch.bfloat16, torch.float64, torch.int32, torch.uint8]),
    st.sampled_from([(HIDDEN,), (1,), (), (HIDDEN, 10), (HIDDEN, 1), (2, HIDDEN), (0,)]),
    st.sampled_from([0.0, 1.0, -2.5, math.nan, math.inf]),
)
NAMES = st.sampled_from(
    [f"{kind}.{layer}" for kind in ("refusal", "basis") for layer in (0, 1, 3, 4, -1)] + ["x", "a.b"]
)


@FUZZ
@given(changes=st.dictionaries(NAMES, TENSOR | st.none(), max_size=4))
def test_any_tensors_in_a_legacy_artifact(tmp_path_factory, changes):
    tensors = legacy_tensors()
    for name, tensor in changes.items():
        if tensor is None:
            tensors.pop(name, None)
        else:
            tensors[name] = tensor
    path = write_legacy(tmp_path_factory.mktemp("fuzz") / "a", tensors)
    ends_typed(lambda: SteeringArtifact.load(path).steering_vectors())


PROBE_FIELDS = [
    "format_version",
    "layers",
    "hidden_size",
    "n_features",
    "threshold",
    "target_fpr",
    "layer_auc",
    "model",
    "model.weight_sample",
    "onnx",
    "onnx.file",
    "onnx.sha256",
    "onnx.input",
    "onnx.output",
]


@FUZZ
@given(field=st.sampled_from(PROBE_FIELDS), value=JSON)
def test_any_json_value_in_a_probe_field(tmp_path_factory, tiny, field, value):
    path = shutil.copytree(LEGACY / "probe", tmp_path_factory.mktemp("fuzz") / "p")
    data = json.loads((path / "probe.json").read_text())
    *parents, last = field.split(".")
    node = data
    for key in parents:
        node = node[key]
    node[last] = value
    (path / "probe.json").write_text(json.dumps(data))

    def run() -> None:
        probe = OnnxProbe.load(path)
        probe.score(np.zeros((1, probe.n_features), dtype=np.float32))
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            probe.check_model(tiny[0])

    ends_typed(run)


def test_probe_metadata_with_invalid_utf8(tmp_path):
    path = shutil.copytree(LEGACY / "probe", tmp_path / "p")
    blob = (path / "probe.json").read_bytes().replace(b'"created_at": "', b'"created_at": "\xff')
    (path / "probe.json").write_bytes(blob)
    with pytest.raises(ProbeError, match="UTF-8"):
        OnnxProbe.load(path)


def test_fixture_is_the_tiny_model_layout():
    assert NUM_LAYERS == 4 and HIDDEN == 64
