"""Property-based tests of the input boundaries (issue 15): whatever a client sends, audio decoding and
request parsing end in a result or a typed GuardrailError, within a time and memory budget.

Each property runs a bounded number of examples so the suite takes seconds; a longer run by hand (raise
`EXAMPLES`, e.g. to 10_000) is how the closing note's counts were made.
"""

from __future__ import annotations

import io
import math
import resource
import struct
import time
import tracemalloc
from collections.abc import Callable
from typing import Any

import numpy as np
import pytest
import soundfile as sf
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from hypothesis.extra import numpy as hnp

from guardrail.audio import MAX_SAMPLING_RATE, load_audio
from guardrail.errors import GuardrailError

EXAMPLES = 150
SR = 16_000
SECONDS_PER_CALL = 5.0  # generous for a loaded CI machine; the defects took 16 s to minutes
PEAK_BYTES_PER_CALL = 64 * 2**20  # numpy and Python allocations of one call (tracemalloc), beyond `extra_bytes`
RSS_GROWTH_PER_CALL = 256 * 2**20  # and the process' peak RSS, which also sees torch and libsndfile
FUZZ = settings(
    max_examples=EXAMPLES,
    database=None,  # nothing written into the working tree
    deadline=None,  # the budget is checked per call below, after warm-up, not by hypothesis' timer
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large, HealthCheck.function_scoped_fixture],
)


def clip_bytes(max_seconds: float) -> int:
    """What decoding a clip of the longest allowed length may hold: two float32 copies of it at the highest
    accepted rate (decoded blocks and their concatenation) and four of it resampled to SR."""
    return int(max_seconds * (8 * MAX_SAMPLING_RATE + 16 * SR))


def bounded(call: Callable[[], Any], extra_bytes: int = 0) -> Any:
    """`call()`'s result, or None when it raised a GuardrailError; any other exception fails the test, as
    does a call over the time or memory budget (PEAK_BYTES_PER_CALL + `extra_bytes` traced)."""
    rss_before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024  # KiB on Linux
    tracemalloc.start()
    started = time.perf_counter()
    try:
        return call()
    except GuardrailError as exc:
        assert str(exc), "a GuardrailError must say what happened"
        return None
    finally:
        elapsed = time.perf_counter() - started
        peak = tracemalloc.get_traced_memory()[1]
        tracemalloc.stop()
        rss_growth = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024 - rss_before
        assert elapsed < SECONDS_PER_CALL, f"{elapsed:.2f} s"
        assert peak < PEAK_BYTES_PER_CALL + extra_bytes, f"{peak / 2**20:.0f} MiB traced"
        assert rss_growth < RSS_GROWTH_PER_CALL + extra_bytes, f"peak RSS grew {rss_growth / 2**20:.0f} MiB"


def assert_wave(wave: Any, max_seconds: float) -> None:
    assert isinstance(wave, np.ndarray) and wave.dtype == np.float32 and wave.ndim == 1 and wave.size > 0
    assert np.isfinite(wave).all()
    assert wave.size <= math.ceil(max_seconds * SR) + 1


@pytest.fixture(scope="module", autouse=True)
def warm_up() -> None:
    """Import and initialise the decoders once, outside the per-call budget."""
    buffer = io.BytesIO()
    sf.write(buffer, np.zeros(800, np.float32), 8000, format="WAV")
    load_audio(buffer.getvalue(), target_sr=SR)


# --- audio bytes ------------------------------------------------------------------------------------------


def _encoded(fmt: str, subtype: str, frames: int, channels: int, rate: int) -> bytes:
    buffer = io.BytesIO()
    wave = np.random.default_rng(frames).uniform(-1, 1, (frames, channels)).astype(np.float32)
    sf.write(buffer, wave, rate, format=fmt, subtype=subtype)
    return buffer.getvalue()


FORMATS = [("WAV", "PCM_16"), ("WAV", "FLOAT"), ("WAV", "PCM_U8"), ("FLAC", "PCM_16"), ("OGG", "VORBIS")]
valid_files = st.builds(
    lambda kind, frames, channels, rate: _encoded(*kind, frames, channels, rate),
    st.sampled_from(FORMATS),
    st.integers(1, 2000),
    st.integers(1, 3),
    st.sampled_from([8000, 16000, 44100]),
)


@st.composite
def mutated(draw: st.DrawFn, files: st.SearchStrategy[bytes]) -> bytes:
    """A real file with some bytes overwritten, truncated, or extended."""
    data = bytearray(draw(files))
    for _ in range(draw(st.integers(0, 8))):
        at = draw(st.integers(0, len(data) - 1))
        data[at] = draw(st.integers(0, 255))
    cut = draw(st.integers(0, len(data)))
    return bytes(data[:cut]) + draw(st.binary(max_size=64))


@st.composite
def wav_headers(draw: st.DrawFn) -> bytes:
    """A RIFF/WAVE header with arbitrary fields (format, channels, rate, bits, claimed sizes) and a short body."""
    fmt_tag = draw(st.sampled_from([1, 3, 6, 7, 0xFFFE, draw(st.integers(0, 0xFFFF))]))
    channels = draw(st.one_of(st.integers(0, 9), st.integers(0, 0xFFFF)))
    rate = draw(st.one_of(st.sampled_from([1, 8000, 16000, 48000, MAX_SAMPLING_RATE + 1]), st.integers(0, 2**32 - 1)))
    bits = draw(st.sampled_from([0, 8, 16, 24, 32, 64, 7]))
    body = draw(st.binary(max_size=4096))
    data_size = draw(st.one_of(st.just(len(body)), st.integers(0, 2**32 - 1)))
    block = max(1, channels * bits // 8)
    fmt = struct.pack("<HHIIHH", fmt_tag, channels, rate, (rate * block) % 2**32, block % 2**16, bits)
    riff_size = draw(st.one_of(st.just(4 + 8 + len(fmt) + 8 + len(body)), st.integers(0, 2**32 - 1)))
    return (
        b"RIFF"
        + struct.pack("<I", riff_size)
        + b"WAVEfmt "
        + struct.pack("<I", len(fmt))
        + fmt
        + b"data"
        + struct.pack("<I", data_size)
        + body
    )


any_bytes = st.one_of(st.binary(max_size=4096), mutated(valid_files), wav_headers(), valid_files)


@FUZZ
@given(data=any_bytes, max_seconds=st.sampled_from([30.0, 0.05, 300.0]))
def test_audio_bytes_decode_or_fail_typed(data: bytes, max_seconds: float) -> None:
    """Any bytes, under a length limit (the guard always has one: without it a 4 kB header claiming 1 Hz
    would legitimately decode to hours at 16 kHz)."""
    wave = bounded(lambda: load_audio(data, target_sr=SR, max_seconds=max_seconds), clip_bytes(max_seconds))
    if wave is not None:
        assert_wave(wave, max_seconds)


# --- arrays and tensors -------------------------------------------------------------------------------------

dtypes = st.one_of(
    hnp.integer_dtypes(),
    hnp.unsigned_integer_dtypes(),
    hnp.floating_dtypes(),
    hnp.complex_number_dtypes(),
    hnp.boolean_dtypes(),
    hnp.datetime64_dtypes(),
    st.just(np.dtype(object)),
    hnp.unicode_string_dtypes(max_len=2),
)
arrays = hnp.arrays(dtypes, hnp.array_shapes(min_dims=0, max_dims=3, min_side=0, max_side=40))
long_arrays = hnp.arrays(
    st.sampled_from([np.float32, np.float64, np.int16, np.int32, np.uint8]),
    st.one_of(st.tuples(st.integers(0, 5000)), st.tuples(st.integers(0, 2500), st.integers(1, 3))),
)
rates = st.one_of(
    st.integers(-10, 2**40),
    st.sampled_from([1, 8000, 16000, 44100, 48000, MAX_SAMPLING_RATE, MAX_SAMPLING_RATE + 1]),
    st.floats(allow_nan=True, allow_infinity=True),
    st.none(),
    st.booleans(),
    st.text(max_size=5),
    st.builds(np.int64, st.integers(-(2**63), 2**63 - 1)),
)


def as_tensor(array: np.ndarray) -> Any:
    """The array as a torch tensor where torch has the dtype, else the array itself."""
    torch = pytest.importorskip("torch")
    try:
        return torch.from_numpy(np.ascontiguousarray(array))
    except (TypeError, RuntimeError, ValueError):
        return array


@FUZZ
@given(
    samples=st.one_of(arrays, long_arrays),
    rate=rates,
    tensor=st.booleans(),
    max_seconds=st.sampled_from([30.0, 0.01, 300.0]),
)
def test_audio_arrays_decode_or_fail_typed(samples: np.ndarray, rate: Any, tensor: bool, max_seconds: float) -> None:
    source = (as_tensor(samples) if tensor else samples, rate)
    extra = clip_bytes(max_seconds) + 16 * samples.size  # and a copy of the (small) input
    wave = bounded(lambda: load_audio(source, target_sr=SR, max_seconds=max_seconds), extra)
    if wave is not None:
        assert_wave(wave, max_seconds)


@FUZZ
@given(
    rows=st.integers(0, 10**12),
    cols=st.integers(0, 10**6),
    dtype=st.sampled_from([np.int16, np.float64, np.uint8]),
    rate=st.integers(1, MAX_SAMPLING_RATE),
)
def test_huge_virtual_arrays_fail_from_their_shape(rows: int, cols: int, dtype: Any, rate: int) -> None:
    """Zero-stride views of any size: refused from their shape with (next to) no memory, or within the limit
    and converted with memory in proportion to the samples (a real caller holds them already)."""
    try:
        samples = np.lib.stride_tricks.as_strided(np.zeros(1, dtype), shape=(rows, cols), strides=(0, 0))
    except ValueError:  # a shape numpy itself cannot describe
        return
    too_long = max(rows, cols) / rate > 30.0 or min(rows, cols) > 8
    extra = -PEAK_BYTES_PER_CALL + 2**20 if too_long else 8 * rows * cols + clip_bytes(30.0)
    wave = bounded(lambda: load_audio((samples, rate), target_sr=SR, max_seconds=30.0), extra)
    if wave is not None:
        assert_wave(wave, 30.0)


# --- request fields through a guard --------------------------------------------------------------------------

json_scalars = st.one_of(
    st.none(), st.booleans(), st.integers(), st.floats(allow_nan=True, allow_infinity=True), st.text(max_size=20)
)
json_values = st.recursive(
    json_scalars,
    lambda inner: st.one_of(st.lists(inner, max_size=4), st.dictionaries(st.text(max_size=5), inner, max_size=4)),
    max_leaves=12,
)
MARKERS = ["<|im_start|>", "<|im_end|>", "<|start_header_id|>", "<|eot_id|>", "[INST]", "<|user|>", "<|AUDIO|>", "<s>"]
hostile_text = st.lists(
    st.one_of(
        st.text(max_size=12),
        st.sampled_from(MARKERS),
        st.sampled_from(["\ud800", "\udfff", "\x00", "\u200d", "\ufeff", "\r\n", "\u202e"]),
        st.characters(),
    ),
    max_size=8,
).map("".join)
audio_values = st.one_of(
    json_values,
    st.tuples(long_arrays, rates),
    st.binary(max_size=256),
    valid_files,
    st.sampled_from(["/", ".", "", "~", "missing.wav", "https://example.com/a.wav", "a\x00b", "\ud800.wav"]),
)
raw_requests = st.one_of(
    json_values,
    st.fixed_dictionaries(
        {}, optional={"text": st.one_of(hostile_text, json_values), "audio": audio_values, "extra": json_values}
    ),
    # JSON object keys are strings (a non-str key still breaks requests.parse_request's message: reported)
    st.dictionaries(st.one_of(st.sampled_from(["text", "audio"]), st.text(max_size=8)), json_values, max_size=3),
)


@pytest.fixture(
    scope="module", params=[(f, m) for f in ("qwen2_audio", "llama") for m in ("refuse", "escape")], ids=str
)
def guard(request: pytest.FixtureRequest) -> Any:
    """A guard on a tiny model (audio or text) whose policy refuses or escapes control tokens."""
    from guardrail import Guard
    from guardrail.policy.schema import Policy
    from guardrail.testing.tiny import build_tiny

    family, special_tokens = request.param
    model, processor = build_tiny(family)
    policy = Policy.from_dict({"gate": {"mode": "off"}, "input": {"special_tokens": special_tokens}})
    guard = Guard(model, processor, policy=policy)
    guard.prepare_inputs([{"text": "warm up"}])  # outside the per-call budget
    return guard


@FUZZ
@given(raw=raw_requests)
def test_request_fields_parse_or_fail_typed(guard: Any, raw: Any) -> None:
    """Any JSON-like request, with hostile text and audio, builds model inputs or raises a GuardrailError."""
    requests = [raw]
    inputs = bounded(lambda: guard.prepare_inputs(requests))
    if inputs is not None:
        assert inputs["input_ids"].shape[0] == 1


@FUZZ
@given(text=hostile_text, special_tokens=st.sampled_from(["refuse", "escape"]), audio=st.booleans())
def test_user_text_never_forges_control_tokens(text: str, special_tokens: str, audio: bool) -> None:
    """Hostile text through the adapter: refused, or its prompt's control tokens are exactly those of an
    empty user turn (escaping never lets a marker through)."""
    from collections import Counter

    from guardrail.requests import Request

    model, processor, adapter = _qwen2_audio()
    wave = np.zeros(SR, np.float32) if audio else None
    tokenizer = adapter.tokenizer(processor)
    controls = set(tokenizer.added_tokens_decoder)
    inputs = bounded(lambda: adapter.build_inputs(processor, [Request(text, wave)], special_tokens=special_tokens))
    if inputs is None:
        return
    baseline = adapter.build_inputs(processor, [Request("", wave)])
    count = lambda ids: Counter(i for i in ids.tolist() if i in controls)  # noqa: E731
    assert count(inputs["input_ids"][0]) == count(baseline["input_ids"][0])


_CACHE: dict[str, Any] = {}


def _qwen2_audio() -> tuple[Any, Any, Any]:
    if "qwen2_audio" not in _CACHE:
        from guardrail.models import resolve_adapter
        from guardrail.requests import Request
        from guardrail.testing.tiny import build_tiny

        model, processor = build_tiny("qwen2_audio")
        adapter = resolve_adapter(model)
        adapter.build_inputs(processor, [Request("warm up", np.zeros(SR, np.float32))])  # outside the budget
        _CACHE["qwen2_audio"] = (model, processor, adapter)
    return _CACHE["qwen2_audio"]
