"""Whisper from a CTranslate2 ``model.bin``, converted to transformers without ctranslate2.

The ``whisper-tiny.en-ct2`` testbed (see :mod:`guardrail_testbeds.build`) is a CTranslate2
model directory: ``model.bin`` (float16), ``config.json`` (suppress ids, alignment heads),
``tokenizer.json`` and ``vocabulary.txt``. This module reads the binary itself, maps its
variables onto :class:`transformers.WhisperForConditionalGeneration`, and saves the result once
as safetensors in ``cache_dir()/whisper-tiny.en/hf`` with a ``WhisperProcessor`` built offline
from the shipped tokenizer. ``load_whisper()`` then returns ``(model, processor)``.

The CTranslate2 binary (version 6, ``ModelSpec.save`` / ``models.cc``), little-endian::

    u32 binary_version            (6)
    str spec_name                 ("WhisperSpec")
    u32 spec_revision
    u32 n_variables
    n_variables x:
        str  name                 ("encoder/layer_0/self_attention/linear_0/weight", ...)
        u8   rank, rank x u32 dims
        u8   dtype id             (0 f32, 1 i8, 2 i16, 3 i32, 4 f16, 5 bf16)
        u32  n_bytes, n_bytes raw data (C order)
    u32 n_aliases, n_aliases x (str alias, str target)

where ``str`` is ``u16 length`` (including a trailing NUL) followed by the UTF-8 bytes and the
NUL. Scalars (``num_heads``, ``pre_norm``, ...) are rank-0 variables.

Layout differences handled here: CTranslate2 fuses self-attention Q/K/V into one ``linear_0``
(K's bias is zero: Whisper's ``k_proj`` has none) and the cross-attention K/V into one
``linear_1``; layer norms are ``gamma``/``beta``; the output projection is an alias of the
token embedding (tied, as in transformers).

Command line::

    python -m guardrail_testbeds.whisper_ct2 convert [--force]
    python -m guardrail_testbeds.whisper_ct2 transcribe FILE.wav [...]
"""

from __future__ import annotations

import argparse
import logging
import os
import re
import shutil
import struct
import sys
import time
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO, TYPE_CHECKING, Any

import numpy as np

from guardrail_testbeds.build import (
    BUILD_MARKER,
    MARKER_VERSION,
    TestbedError,
    _lock,
    _read_json,
    _write_json_atomic,
    cache_dir,
    fetch,
    get_spec,
    is_fetched,
    testbed_dir,
)

if TYPE_CHECKING:  # pragma: no cover
    import torch
    from transformers import WhisperConfig, WhisperForConditionalGeneration, WhisperProcessor

log = logging.getLogger(__name__)

SOURCE = "whisper-tiny.en-ct2"  # the testbeds registry entry holding model.bin + companions
NAME = "whisper-tiny.en"  # cache folder of the converted model
SUPPORTED_BINARY_VERSIONS = (6,)
CONVERTER_VERSION = 1

# CTranslate2's DataType enum (include/ctranslate2/types.h)
CT2_DTYPES: dict[int, np.dtype] = {
    0: np.dtype("<f4"),
    1: np.dtype("i1"),
    2: np.dtype("<i2"),
    3: np.dtype("<i4"),
    4: np.dtype("<f2"),
    # 5 (bfloat16) has no numpy dtype: handled as raw uint16 and widened on conversion
    5: np.dtype("<u2"),
}
BFLOAT16 = 5
# CTranslate2's ActivationType enum (include/ctranslate2/ops/activation.h)
CT2_ACTIVATIONS = {0: "relu", 1: "gelu_new", 2: "silu", 3: "gelu", 4: "gelu_sigmoid", 5: "tanh"}

# tiny.en special ids (English-only Whisper vocabulary, 51864 entries incl. 1501 timestamps)
EOT, SOT, PREV, NO_TIMESTAMPS = 50256, 50257, 50360, 50362


class CT2FormatError(TestbedError):
    """The file is not a CTranslate2 model binary this parser understands."""


# --------------------------------------------------------------------------- binary parser


@dataclass
class CT2Model:
    """The parsed content of a CTranslate2 ``model.bin``."""

    spec: str
    revision: int
    binary_version: int
    variables: dict[str, np.ndarray]
    aliases: dict[str, str] = field(default_factory=dict)
    dtypes: dict[str, int] = field(default_factory=dict)  # CTranslate2 dtype id per variable

    def get(self, name: str) -> np.ndarray:
        """A variable by name, following aliases."""
        seen = set()
        while name in self.aliases and name not in self.variables:
            if name in seen:
                raise CT2FormatError(f"alias cycle at {name!r}")
            seen.add(name)
            name = self.aliases[name]
        try:
            return self.variables[name]
        except KeyError:
            raise CT2FormatError(f"variable {name!r} is missing from the {self.spec} binary") from None

    def __contains__(self, name: object) -> bool:
        return name in self.variables or name in self.aliases

    def scalar(self, name: str) -> int | float:
        v = self.get(name)
        if v.ndim != 0:
            raise CT2FormatError(f"{name!r} should be a scalar, has shape {v.shape}")
        return v.item()


class _Reader:
    def __init__(self, fh: IO[bytes], what: str) -> None:
        self.fh, self.what = fh, what

    def read(self, n: int) -> bytes:
        b = self.fh.read(n)
        if len(b) != n:
            raise CT2FormatError(f"{self.what}: truncated (wanted {n} bytes at offset {self.fh.tell() - len(b)})")
        return b

    def u8(self) -> int:
        return self.read(1)[0]

    def u16(self) -> int:
        return struct.unpack("<H", self.read(2))[0]

    def u32(self) -> int:
        return struct.unpack("<I", self.read(4))[0]

    def string(self) -> str:
        n = self.u16()
        if n == 0:
            raise CT2FormatError(f"{self.what}: zero-length string record at offset {self.fh.tell() - 2}")
        raw = self.read(n)
        if raw[-1] != 0:
            raise CT2FormatError(f"{self.what}: string at offset {self.fh.tell() - n} is not NUL-terminated")
        return raw[:-1].decode("utf-8")


def read_ct2(path: str | os.PathLike[str]) -> CT2Model:
    """Parse a CTranslate2 model binary into numpy arrays (no ctranslate2 needed).

    bfloat16 variables come back as ``uint16`` arrays holding the raw bits (see ``dtypes``);
    :func:`to_torch` widens them.
    """
    path = Path(path)
    with open(path, "rb") as fh:
        r = _Reader(fh, str(path))
        version = r.u32()
        if version not in SUPPORTED_BINARY_VERSIONS:
            raise CT2FormatError(
                f"{path}: CTranslate2 binary version {version} is not supported "
                f"(supported: {', '.join(map(str, SUPPORTED_BINARY_VERSIONS))})"
            )
        spec = r.string()
        revision = r.u32()
        n_vars = r.u32()
        variables: dict[str, np.ndarray] = {}
        dtypes: dict[str, int] = {}
        for _ in range(n_vars):
            name = r.string()
            rank = r.u8()
            shape = tuple(r.u32() for _ in range(rank))
            dtype_id = r.u8()
            if dtype_id not in CT2_DTYPES:
                raise CT2FormatError(f"{path}: variable {name!r} has unknown dtype id {dtype_id}")
            dtype = CT2_DTYPES[dtype_id]
            n_bytes = r.u32()
            expected = int(np.prod(shape, dtype=np.int64)) * dtype.itemsize
            if n_bytes != expected:
                raise CT2FormatError(
                    f"{path}: variable {name!r} {shape} {dtype} should hold {expected} bytes, header says {n_bytes}"
                )
            if name in variables:
                raise CT2FormatError(f"{path}: variable {name!r} appears twice")
            variables[name] = np.frombuffer(r.read(n_bytes), dtype=dtype).reshape(shape)
            dtypes[name] = dtype_id
        aliases = {}
        for _ in range(r.u32()):
            alias = r.string()
            aliases[alias] = r.string()
        trailing = fh.read(1)
        if trailing:
            raise CT2FormatError(f"{path}: unexpected data after the alias table at offset {fh.tell() - 1}")
    for alias, target in aliases.items():
        if target not in variables and target not in aliases:
            raise CT2FormatError(f"{path}: alias {alias!r} points to unknown variable {target!r}")
    return CT2Model(spec, revision, version, variables, aliases, dtypes)


def to_torch(model: CT2Model, name: str) -> torch.Tensor:
    """One variable as a torch tensor in its own precision (bf16 bits reinterpreted)."""
    import torch

    arr = model.get(name)
    target = name
    while target in model.aliases and target not in model.variables:
        target = model.aliases[target]
    if model.dtypes.get(target) == BFLOAT16:
        return torch.from_numpy(arr.astype(np.int16, copy=True)).view(torch.bfloat16)
    return torch.from_numpy(np.array(arr, copy=True))


# --------------------------------------------------------------------------- mapping


def _count_layers(model: CT2Model, stack: str) -> int:
    pat = re.compile(rf"^{stack}/layer_(\d+)/")
    idx = {int(m.group(1)) for n in model.variables if (m := pat.match(n))}
    if not idx or idx != set(range(max(idx) + 1)):
        raise CT2FormatError(f"{stack}: layers are missing or not numbered 0..n-1 ({sorted(idx)})")
    return len(idx)


def whisper_config(model: CT2Model, extra: Mapping[str, Any] | None = None) -> WhisperConfig:
    """A ``WhisperConfig`` read off the binary's shapes and scalars.

    ``extra`` is CTranslate2's ``config.json`` (suppress ids, alignment heads), optional.
    """
    from transformers import WhisperConfig

    if model.spec != "WhisperSpec":
        raise CT2FormatError(f"expected a WhisperSpec binary, got {model.spec!r}")
    for stack in ("encoder", "decoder"):
        if f"{stack}/num_heads" not in model:
            raise CT2FormatError(f"{stack}/num_heads is missing")
    if "encoder/layer_0/ffn/linear_0/weight_scale" in model or "decoder/embeddings/weight_scale" in model:
        raise CT2FormatError("quantized (int8/int16) CTranslate2 weights are not supported; use a float model")
    act = int(model.scalar("decoder/activation")) if "decoder/activation" in model else 3
    if CT2_ACTIVATIONS.get(act) != "gelu":
        raise CT2FormatError(f"Whisper uses exact GELU; this binary says activation {CT2_ACTIVATIONS.get(act, act)}")
    for flag, want in (("decoder/pre_norm", 1), ("decoder/scale_embeddings", 0), ("decoder/alibi", 0)):
        if flag in model and int(model.scalar(flag)) != want:
            raise CT2FormatError(f"{flag} is {model.scalar(flag)}, Whisper needs {want}")
    vocab, d_model = model.get("decoder/embeddings/weight").shape
    conv1 = model.get("encoder/conv1/weight")
    extra = dict(extra or {})
    suppress = list(extra.get("suppress_ids", []))
    begin_suppress = list(extra.get("suppress_ids_begin", [220, EOT]))
    return WhisperConfig(
        vocab_size=int(vocab),
        num_mel_bins=int(conv1.shape[1]),
        d_model=int(d_model),
        encoder_layers=_count_layers(model, "encoder"),
        decoder_layers=_count_layers(model, "decoder"),
        encoder_attention_heads=int(model.scalar("encoder/num_heads")),
        decoder_attention_heads=int(model.scalar("decoder/num_heads")),
        encoder_ffn_dim=int(model.get("encoder/layer_0/ffn/linear_0/weight").shape[0]),
        decoder_ffn_dim=int(model.get("decoder/layer_0/ffn/linear_0/weight").shape[0]),
        max_source_positions=int(model.get("encoder/position_encodings/encodings").shape[0]),
        max_target_positions=int(model.get("decoder/position_encodings/encodings").shape[0]),
        activation_function="gelu",
        scale_embedding=False,
        tie_word_embeddings=True,
        pad_token_id=EOT,
        bos_token_id=SOT,
        eos_token_id=EOT,
        decoder_start_token_id=SOT,
        suppress_tokens=suppress,
        begin_suppress_tokens=begin_suppress,
        architectures=["WhisperForConditionalGeneration"],
    )


def _split(t: torch.Tensor, n: int, name: str) -> tuple[torch.Tensor, ...]:
    if t.shape[0] % n:
        raise CT2FormatError(f"{name}: first dimension {t.shape[0]} does not split into {n}")
    return tuple(x.contiguous() for x in t.chunk(n, dim=0))


def whisper_state_dict(model: CT2Model, *, prefix: str = "model.") -> dict[str, torch.Tensor]:
    """Map the binary's variables onto ``WhisperForConditionalGeneration`` parameter names.

    Tensors keep the binary's precision. ``prefix="model."`` gives the full model's keys;
    the encoder's own keys (for e.g. a Qwen2-Audio audio tower) are those under
    ``model.encoder.``. Every variable of the binary is used or deliberately skipped
    (scalars, the tied output projection); anything else raises.
    """
    t = lambda n: to_torch(model, n)  # noqa: E731
    sd: dict[str, torch.Tensor] = {}
    used: set[str] = set()

    def take(n: str) -> torch.Tensor:
        used.add(n)
        return t(n)

    def lin(dst: str, src: str, bias: bool = True) -> None:
        sd[f"{dst}.weight"] = take(f"{src}/weight")
        if bias:
            sd[f"{dst}.bias"] = take(f"{src}/bias")

    def norm(dst: str, src: str) -> None:
        sd[f"{dst}.weight"] = take(f"{src}/gamma")
        sd[f"{dst}.bias"] = take(f"{src}/beta")

    def fused_qkv(dst: str, src: str) -> None:
        w, b = take(f"{src}/weight"), take(f"{src}/bias")
        (qw, kw, vw), (qb, kb, vb) = _split(w, 3, src), _split(b, 3, src)
        if kb.abs().max().item() != 0.0:
            raise CT2FormatError(f"{src}: the key bias is not zero, but Whisper's k_proj has no bias")
        sd[f"{dst}.q_proj.weight"], sd[f"{dst}.q_proj.bias"] = qw, qb
        sd[f"{dst}.k_proj.weight"] = kw
        sd[f"{dst}.v_proj.weight"], sd[f"{dst}.v_proj.bias"] = vw, vb

    def fused_kv(dst: str, src: str) -> None:
        w, b = take(f"{src}/weight"), take(f"{src}/bias")
        (kw, vw), (kb, vb) = _split(w, 2, src), _split(b, 2, src)
        if kb.abs().max().item() != 0.0:
            raise CT2FormatError(f"{src}: the key bias is not zero, but Whisper's k_proj has no bias")
        sd[f"{dst}.k_proj.weight"] = kw
        sd[f"{dst}.v_proj.weight"], sd[f"{dst}.v_proj.bias"] = vw, vb

    enc, dec = f"{prefix}encoder", f"{prefix}decoder"
    lin(f"{enc}.conv1", "encoder/conv1")
    lin(f"{enc}.conv2", "encoder/conv2")
    sd[f"{enc}.embed_positions.weight"] = take("encoder/position_encodings/encodings")
    for i in range(_count_layers(model, "encoder")):
        s, d = f"encoder/layer_{i}", f"{enc}.layers.{i}"
        fused_qkv(f"{d}.self_attn", f"{s}/self_attention/linear_0")
        lin(f"{d}.self_attn.out_proj", f"{s}/self_attention/linear_1")
        norm(f"{d}.self_attn_layer_norm", f"{s}/self_attention/layer_norm")
        lin(f"{d}.fc1", f"{s}/ffn/linear_0")
        lin(f"{d}.fc2", f"{s}/ffn/linear_1")
        norm(f"{d}.final_layer_norm", f"{s}/ffn/layer_norm")
    norm(f"{enc}.layer_norm", "encoder/layer_norm")

    sd[f"{dec}.embed_tokens.weight"] = take("decoder/embeddings/weight")
    sd[f"{dec}.embed_positions.weight"] = take("decoder/position_encodings/encodings")
    for i in range(_count_layers(model, "decoder")):
        s, d = f"decoder/layer_{i}", f"{dec}.layers.{i}"
        fused_qkv(f"{d}.self_attn", f"{s}/self_attention/linear_0")
        lin(f"{d}.self_attn.out_proj", f"{s}/self_attention/linear_1")
        norm(f"{d}.self_attn_layer_norm", f"{s}/self_attention/layer_norm")
        lin(f"{d}.encoder_attn.q_proj", f"{s}/attention/linear_0")
        fused_kv(f"{d}.encoder_attn", f"{s}/attention/linear_1")
        lin(f"{d}.encoder_attn.out_proj", f"{s}/attention/linear_2")
        norm(f"{d}.encoder_attn_layer_norm", f"{s}/attention/layer_norm")
        lin(f"{d}.fc1", f"{s}/ffn/linear_0")
        lin(f"{d}.fc2", f"{s}/ffn/linear_1")
        norm(f"{d}.final_layer_norm", f"{s}/ffn/layer_norm")
    norm(f"{dec}.layer_norm", "decoder/layer_norm")

    # The output projection must be the (tied) token embedding.
    if "decoder/projection/weight" in model.variables:
        proj = take("decoder/projection/weight")
        if not np.array_equal(model.get("decoder/projection/weight"), model.get("decoder/embeddings/weight")):
            raise CT2FormatError("decoder/projection/weight differs from the embeddings; untied heads unsupported")
        del proj
    elif model.aliases.get("decoder/projection/weight", "decoder/embeddings/weight") != "decoder/embeddings/weight":
        raise CT2FormatError("decoder/projection/weight aliases something other than the embeddings")
    leftover = {
        n for n, v in model.variables.items() if n not in used and v.ndim > 0 and n != "decoder/projection/weight"
    }
    if leftover:
        raise CT2FormatError(f"unmapped variables in the binary: {sorted(leftover)[:8]}")
    return sd


def generation_config(config: WhisperConfig, extra: Mapping[str, Any] | None = None) -> Any:
    """Generation settings of an English-only Whisper (tiny.en): greedy, no timestamps."""
    from transformers import GenerationConfig

    extra = dict(extra or {})
    return GenerationConfig(
        bos_token_id=SOT,
        decoder_start_token_id=SOT,
        eos_token_id=EOT,
        pad_token_id=EOT,
        max_length=config.max_target_positions,
        is_multilingual=False,
        no_timestamps_token_id=NO_TIMESTAMPS,
        prev_sot_token_id=PREV,
        max_initial_timestamp_index=50,
        return_timestamps=False,
        forced_decoder_ids=[[1, NO_TIMESTAMPS]],
        suppress_tokens=list(config.suppress_tokens or []),
        begin_suppress_tokens=list(config.begin_suppress_tokens or []),
        alignment_heads=[list(x) for x in extra.get("alignment_heads", [])],
    )


# --------------------------------------------------------------------------- processor


def build_processor(source_dir: Path, *, feature_size: int = 80) -> WhisperProcessor:
    """``WhisperProcessor`` from the shipped ``tokenizer.json`` (offline)."""
    from transformers import WhisperFeatureExtractor, WhisperProcessor, WhisperTokenizer

    tok_file = source_dir / "tokenizer.json"
    if not tok_file.is_file():
        raise TestbedError(f"{tok_file} is missing; run `python -m guardrail_testbeds.build fetch {SOURCE}`")
    tokenizer = WhisperTokenizer(
        tokenizer_file=str(tok_file),
        unk_token="<|endoftext|>",
        bos_token="<|endoftext|>",
        eos_token="<|endoftext|>",
        pad_token="<|endoftext|>",
        model_max_length=448,
    )
    for tok, want in (("<|startoftranscript|>", SOT), ("<|notimestamps|>", NO_TIMESTAMPS), ("<|endoftext|>", EOT)):
        got = tokenizer.convert_tokens_to_ids(tok)
        if got != want:
            raise TestbedError(f"{tok_file}: {tok} has id {got}, expected {want} (not an English-only Whisper?)")
    fe = WhisperFeatureExtractor(feature_size=feature_size, sampling_rate=16_000)
    return WhisperProcessor(feature_extractor=fe, tokenizer=tokenizer)


# --------------------------------------------------------------------------- convert / load


def hf_path() -> Path:
    """Where the converted safetensors model lives: ``cache_dir()/whisper-tiny.en/hf``."""
    return cache_dir() / NAME / "hf"


def is_converted() -> bool:
    d = hf_path()
    marker = _read_json(d / BUILD_MARKER)
    return (
        bool(marker)
        and marker.get("source_sha256") == get_spec(SOURCE).sha256
        and marker.get("converter_version") == CONVERTER_VERSION
        and (d / "config.json").is_file()
        and (d / "model.safetensors").is_file()
    )


def convert(*, force: bool = False, fetch_if_missing: bool = True, progress: bool | None = None) -> Path:
    """Convert the cached CTranslate2 Whisper to ``hf_path()``; idempotent (marker checked).

    Weights keep their float16 values (lossless). A round-trip check reloads the saved model
    and compares its encoder output with the in-memory one.
    """
    import torch
    import transformers
    from transformers import WhisperForConditionalGeneration

    out = hf_path()
    with _lock(out.parent / ".convert.lock"):
        if is_converted() and not force:
            log.info("%s: already converted at %s", NAME, out)
            return out
        if not is_fetched(SOURCE):
            if not fetch_if_missing:
                raise TestbedError(
                    f"{SOURCE} is not fetched in {cache_dir()}; run `python -m guardrail_testbeds.build fetch {SOURCE}`"
                )
            fetch(SOURCE, progress=progress)
        src = testbed_dir(SOURCE)
        t0 = time.perf_counter()
        ct2 = read_ct2(src / "model.bin")
        extra = _read_json(src / "config.json") or {}
        config = whisper_config(ct2, extra)
        sd = whisper_state_dict(ct2)
        dtype = next(iter(sd.values())).dtype
        config.dtype = str(dtype).removeprefix("torch.")
        with torch.device("meta"):
            model = WhisperForConditionalGeneration(config)
        missing, unexpected = model.load_state_dict(sd, strict=False, assign=True)
        missing = [k for k in missing if k != "proj_out.weight"]
        if missing or unexpected:
            raise TestbedError(f"{NAME}: conversion left missing {missing[:5]} / unexpected {unexpected[:5]} keys")
        model.tie_weights()
        model.generation_config = generation_config(config, extra)
        model.eval()
        processor = build_processor(src, feature_size=config.num_mel_bins)

        staging = out.with_name(f".hf-staging-{os.getpid()}")
        shutil.rmtree(staging, ignore_errors=True)
        staging.mkdir(parents=True)
        try:
            model.save_pretrained(staging)
            processor.save_pretrained(staging)
            probe = torch.randn(1, config.num_mel_bins, 3000, generator=torch.Generator().manual_seed(0))
            with torch.inference_mode():
                ref = model.model.encoder(probe.to(dtype)).last_hidden_state.float()
                back = WhisperForConditionalGeneration.from_pretrained(staging, dtype=dtype).eval()
                diff = (back.model.encoder(probe.to(dtype)).last_hidden_state.float() - ref).abs().max().item()
            if diff != 0.0:
                raise TestbedError(f"{NAME}: the saved model does not reproduce the converted encoder ({diff})")
            _write_json_atomic(
                staging / BUILD_MARKER,
                {
                    "marker_version": MARKER_VERSION,
                    "converter_version": CONVERTER_VERSION,
                    "name": NAME,
                    "source": SOURCE,
                    "source_file": "model.bin",
                    "source_sha256": get_spec(SOURCE).sha256,
                    "ct2_binary_version": ct2.binary_version,
                    "ct2_spec": f"{ct2.spec} r{ct2.revision}",
                    "dtype": config.dtype,
                    "parameters": sum(p.numel() for p in back.parameters()),
                    "transformers": transformers.__version__,
                    "torch": torch.__version__,
                    "built_at": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
                    "build_seconds": round(time.perf_counter() - t0, 2),
                },
            )
            if out.exists():
                shutil.rmtree(out)
            os.replace(staging, out)
        finally:
            shutil.rmtree(staging, ignore_errors=True)
    log.info("%s: converted to %s in %.1f s", NAME, out, time.perf_counter() - t0)
    return out


def load_whisper(
    dtype: torch.dtype | None = None, *, convert_if_missing: bool = True
) -> tuple[WhisperForConditionalGeneration, WhisperProcessor]:
    """``(WhisperForConditionalGeneration, WhisperProcessor)`` for tiny.en, eval mode, float32
    by default (the stored float16 values, widened exactly)."""
    import torch
    from transformers import WhisperForConditionalGeneration, WhisperProcessor

    if not is_converted():
        if not convert_if_missing:
            raise TestbedError(
                f"{NAME} is not converted in {cache_dir()}; run `python -m guardrail_testbeds.whisper_ct2 convert`"
            )
        convert()
    path = hf_path()
    model = WhisperForConditionalGeneration.from_pretrained(path, dtype=dtype or torch.float32).eval()
    processor = WhisperProcessor.from_pretrained(path)
    return model, processor


def transcribe(
    model: WhisperForConditionalGeneration,
    processor: WhisperProcessor,
    audio: np.ndarray | list[np.ndarray],
    sampling_rate: int = 16_000,
    *,
    max_new_tokens: int = 128,
) -> list[str]:
    """Greedy transcripts of 16 kHz mono clips (each at most 30 s)."""
    import torch

    clips = [audio] if isinstance(audio, np.ndarray) else list(audio)
    feats = processor.feature_extractor(clips, sampling_rate=sampling_rate, return_tensors="pt")
    with torch.inference_mode():
        ids = model.generate(
            feats.input_features.to(model.dtype), do_sample=False, num_beams=1, max_new_tokens=max_new_tokens
        )
    return [s.strip() for s in processor.tokenizer.batch_decode(ids, skip_special_tokens=True)]


def normalise_words(text: str) -> list[str]:
    """Lower-case words without punctuation, for word error rates."""
    return re.sub(r"[^a-z0-9' ]+", " ", text.lower().replace("-", " ")).split()


def word_error_rate(reference: str, hypothesis: str) -> float:
    """Levenshtein distance over normalised words, divided by the reference's word count."""
    ref, hyp = normalise_words(reference), normalise_words(hypothesis)
    prev = list(range(len(hyp) + 1))
    for i, r in enumerate(ref, 1):
        cur = [i] + [0] * len(hyp)
        for j, h in enumerate(hyp, 1):
            cur[j] = min(prev[j] + 1, cur[j - 1] + 1, prev[j - 1] + (r != h))
        prev = cur
    return prev[-1] / max(len(ref), 1)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m guardrail_testbeds.whisper_ct2")
    sub = parser.add_subparsers(dest="cmd", required=True)
    c = sub.add_parser("convert", help="convert the cached CTranslate2 Whisper to safetensors")
    c.add_argument("--force", action="store_true")
    t = sub.add_parser("transcribe", help="transcribe audio files with the converted model")
    t.add_argument("files", nargs="+")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(message)s")
    try:
        if args.cmd == "convert":
            print(convert(force=args.force))
        else:
            from guardrail.audio import load_audio

            model, processor = load_whisper()
            for f in args.files:
                print(f"{f}: {transcribe(model, processor, load_audio(f, target_sr=16_000))[0]}")
    except TestbedError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
