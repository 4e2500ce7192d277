"""Where a model loads: `load_model`'s dtype, device and device_map, the typed errors for a placement this
machine cannot honour, and `Guard.from_policy` / `load_guard` reading the policy's `runtime:` section."""

from __future__ import annotations

import sys

import pytest
import torch

from guardrail import DeviceError, Guard, load_model
from guardrail.integrations.langchain.pretrained import load_guard
from guardrail.models.loading import place_model
from guardrail.models.placement import resolve_device
from guardrail.testing.tiny import build_tiny


@pytest.fixture(scope="module")
def bf16_dir(tmp_path_factory):
    """A tiny model saved in bfloat16, so that "auto" (the checkpoint's dtype) and float32 differ."""
    path = tmp_path_factory.mktemp("tiny-bf16")
    model, tokenizer = build_tiny("qwen2", seed=0)
    model.to(torch.bfloat16).save_pretrained(path)
    tokenizer.save_pretrained(path)
    return path


@pytest.fixture
def no_gpu(monkeypatch):
    """A machine where torch sees no GPU (whatever this one has)."""
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    monkeypatch.setattr(torch.backends.mps, "is_available", lambda: False)


def dtypes(model: torch.nn.Module) -> set[torch.dtype]:
    return {p.dtype for p in model.parameters()}


@pytest.mark.parametrize(
    "dtype, expected", [("auto", torch.bfloat16), ("float32", torch.float32), ("float16", torch.float16)]
)
def test_load_model_loads_in_the_dtype_asked(bf16_dir, dtype, expected):
    model, _, adapter = load_model(str(bf16_dir), dtype=dtype)
    assert dtypes(model) == {expected} and adapter.name == "causal_lm" and not model.training


def test_an_unknown_dtype_is_a_typed_error(bf16_dir):
    with pytest.raises(DeviceError, match="unknown dtype 'fp8'; use one of auto, float32, bfloat16, float16"):
        load_model(str(bf16_dir), dtype="fp8")


@pytest.mark.parametrize("device", ["cuda", "cuda:1"])
def test_a_gpu_this_machine_lacks_is_a_typed_error_naming_it(no_gpu, tmp_path, device):
    # checked before any file is read: the directory does not even exist
    with pytest.raises(DeviceError, match=f"device '{device}' was requested, but torch .* sees no CUDA device") as info:
        load_model(str(tmp_path / "no-model-here"), device=device)
    assert "use device 'cpu'" in str(info.value) and isinstance(info.value, ValueError)


def test_a_gpu_index_beyond_the_machines_is_a_typed_error(monkeypatch, tmp_path):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 2)
    with pytest.raises(DeviceError, match=r"device 'cuda:2' was requested, but torch sees 2 cuda device\(s\)"):
        load_model(str(tmp_path / "m"), device="cuda:2")
    with pytest.raises(DeviceError, match="'cuda:5'"):
        load_model(str(tmp_path / "m"), device_map={"model": 0, "lm_head": 5})


def test_a_device_map_naming_a_missing_gpu_is_a_typed_error(no_gpu, tmp_path):
    with pytest.raises(DeviceError, match="device 'cuda:0' was requested"):
        load_model(str(tmp_path / "m"), device_map={"": 0})


def test_a_misspelt_device_is_a_typed_error(tmp_path):
    with pytest.raises(DeviceError, match="device 'gpu': not a device torch knows"):
        load_model(str(tmp_path / "m"), device="gpu")


def test_device_and_device_map_together_is_a_typed_error(tmp_path):
    with pytest.raises(DeviceError, match="device 'cpu' and device_map 'auto' were both given.*give one of them"):
        load_model(str(tmp_path / "m"), device="cpu", device_map="auto")


def test_device_map_without_accelerate_says_how_to_install_it(bf16_dir, monkeypatch):
    monkeypatch.setitem(sys.modules, "accelerate", None)  # `import accelerate` now fails
    with pytest.raises(DeviceError, match="device_map 'auto' needs the accelerate package: pip install accelerate"):
        load_model(str(bf16_dir), device_map="auto")


@pytest.fixture
def placements(monkeypatch):
    """The device_map each `from_pretrained` of a causal LM was given (the call still loads the model);
    transformers records a map on the model only when it spans several devices, which a CPU cannot show."""
    import transformers

    seen: list[object] = []
    original = transformers.AutoModelForCausalLM.from_pretrained.__func__

    def spy(cls, *args, **kwargs):
        seen.append(kwargs.get("device_map"))
        return original(cls, *args, **kwargs)

    monkeypatch.setattr(transformers.AutoModelForCausalLM, "from_pretrained", classmethod(spy))
    return seen


@pytest.mark.parametrize("device_map", ["auto", {"": "cpu"}])
def test_device_map_reaches_from_pretrained(no_gpu, bf16_dir, placements, device_map):
    pytest.importorskip("accelerate")
    model, tokenizer, _ = load_model(str(bf16_dir), device_map=device_map)
    assert placements == [device_map] and {p.device.type for p in model.parameters()} == {"cpu"}
    ids = tokenizer("hello", return_tensors="pt").input_ids
    assert model.generate(ids, max_new_tokens=2, do_sample=False).shape[1] == ids.shape[1] + 2


def test_device_auto_is_a_gpu_when_there_is_one(no_gpu, monkeypatch):
    assert resolve_device("auto") == "cpu" and resolve_device(None) is None
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    assert resolve_device("auto") == "cuda"


def test_device_auto_loads_on_the_cpu_without_a_gpu(no_gpu, bf16_dir):
    model, _, _ = load_model(str(bf16_dir), device="auto", dtype="float32")
    assert {p.device.type for p in model.parameters()} == {"cpu"} and dtypes(model) == {torch.float32}


def test_place_model_casts_and_checks_a_loaded_model(no_gpu):
    model, _ = build_tiny("qwen2", seed=0)
    assert dtypes(place_model(model, dtype="bfloat16", device="cpu")) == {torch.bfloat16}
    with pytest.raises(DeviceError, match="'cuda'"):
        place_model(model, device="cuda")


# -- the policy's runtime section ---------------------------------------------------------------------
def write_policy(tmp_path, runtime: str):
    path = tmp_path / "p.yaml"
    path.write_text(f"extends: 'off'\nname: app\nmodel:\n  path: {tmp_path.as_posix()}/m\nruntime:\n{runtime}")
    return path


@pytest.fixture
def app(bf16_dir, tmp_path):
    (tmp_path / "m").symlink_to(bf16_dir, target_is_directory=True)
    return tmp_path


def test_from_policy_loads_where_the_runtime_section_says(app):
    guard = Guard.from_policy(write_policy(app, "  dtype: float32\n  device: cpu\n"))
    assert dtypes(guard.model) == {torch.float32} and guard.generate(text="hi", max_new_tokens=1).text is not None
    guard = Guard.from_policy(write_policy(app, "  dtype: float32\n"), dtype="float16")  # the argument wins
    assert dtypes(guard.model) == {torch.float16}


def test_from_policy_reports_the_policys_missing_gpu(no_gpu, app):
    with pytest.raises(DeviceError, match="device 'cuda:0' was requested"):
        Guard.from_policy(write_policy(app, "  device: cuda:0\n"))
    # a device given by the caller replaces the policy's placement
    guard = Guard.from_policy(write_policy(app, "  device: cuda:0\n"), device="cpu")
    assert {p.device.type for p in guard.model.parameters()} == {"cpu"}


def test_from_policy_passes_the_policys_device_map(no_gpu, app, placements):
    pytest.importorskip("accelerate")
    Guard.from_policy(write_policy(app, "  device_map: {'': cpu}\n"))
    Guard.from_policy(write_policy(app, "  device_map: auto\n"), device="cpu")  # the caller's device wins
    Guard.from_policy(write_policy(app, "  device: cpu\n"), device_map="auto")  # and the caller's device_map
    assert placements == [{"": "cpu"}, None, "auto"]


def test_load_guard_reads_the_runtime_section_too(no_gpu, bf16_dir):
    policy = {"gate": {"mode": "off"}, "runtime": {"dtype": "float32"}}
    guard, loaded = load_guard(str(bf16_dir), policy)
    assert loaded == str(bf16_dir) and dtypes(guard.model) == {torch.float32}
    guard, _ = load_guard(str(bf16_dir), policy, dtype="float16")
    assert dtypes(guard.model) == {torch.float16}
    with pytest.raises(DeviceError, match="'cuda'"):
        load_guard(str(bf16_dir), {**policy, "runtime": {"device": "cuda"}})
