"""Tests for guardrail.audio.load_audio."""

from __future__ import annotations

import io
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf

from guardrail.audio import describe_source, load_audio
from guardrail.errors import AudioInputError, AudioTypeError, GuardrailError

SR = 16000


def tone(freq: float = 440.0, seconds: float = 1.0, sr: int = SR, amp: float = 0.5) -> np.ndarray:
    t = np.arange(int(round(seconds * sr))) / sr
    return (amp * np.sin(2 * np.pi * freq * t)).astype(np.float32)


def dominant_hz(x: np.ndarray, sr: int) -> float:
    spectrum = np.abs(np.fft.rfft(x * np.hanning(len(x))))
    return float(np.fft.rfftfreq(len(x), 1 / sr)[np.argmax(spectrum)])


def encoded(x: np.ndarray, sr: int, fmt: str = "WAV", subtype: str | None = None) -> bytes:
    buf = io.BytesIO()
    sf.write(buf, x, sr, format=fmt, subtype=subtype)
    return buf.getvalue()


# --- happy paths -----------------------------------------------------------------


@pytest.mark.parametrize("suffix", ["wav", "flac", "ogg"])
def test_path_formats(tmp_path: Path, suffix: str) -> None:
    x = tone()
    path = tmp_path / f"clip.{suffix}"
    sf.write(path, x, SR)
    out = load_audio(path, target_sr=SR)
    assert out.dtype == np.float32 and out.ndim == 1
    assert abs(len(out) - len(x)) <= 1
    if suffix != "ogg":  # lossless
        np.testing.assert_allclose(out, x, atol=1e-4)
    assert abs(dominant_hz(out, SR) - 440) < 2


def test_str_path(tmp_path: Path) -> None:
    path = tmp_path / "clip.wav"
    sf.write(path, tone(), SR)
    assert load_audio(str(path), target_sr=SR).shape == (SR,)


def test_bytes() -> None:
    x = tone()
    out = load_audio(encoded(x, SR, "FLAC"), target_sr=SR)
    np.testing.assert_allclose(out, x, atol=1e-4)


def test_stereo_file_mixed_to_mono(tmp_path: Path) -> None:
    path = tmp_path / "stereo.wav"
    left, right = np.full(100, 0.5), np.full(100, -0.25)
    sf.write(path, np.stack([left, right], axis=1), SR, subtype="FLOAT")
    np.testing.assert_allclose(load_audio(path, target_sr=SR), 0.125, atol=1e-6)


def test_int16_array_scaled() -> None:
    x = np.array([0, 16384, -32768, 32767], dtype=np.int16)
    out = load_audio((x, SR), target_sr=SR)
    assert out.dtype == np.float32
    np.testing.assert_allclose(out, [0.0, 0.5, -1.0, 32767 / 32768], atol=1e-7)


def test_int32_array_scaled() -> None:
    x = np.array([2**30, -(2**31)], dtype=np.int32)
    np.testing.assert_allclose(load_audio((x, SR), target_sr=SR), [0.5, -1.0], atol=1e-7)


def test_float64_array_and_numpy_int_rate() -> None:
    x = tone().astype(np.float64)
    out = load_audio((x, np.int64(SR)), target_sr=np.int32(SR))
    assert out.dtype == np.float32
    np.testing.assert_allclose(out, x, atol=1e-7)


def test_input_array_not_aliased() -> None:
    x = tone()
    out = load_audio((x, SR), target_sr=SR)
    out[:] = 0
    assert np.abs(x).max() > 0


def test_channels_first_stereo_mixed_to_mono() -> None:
    n = 1000
    x = np.stack([np.full(n, 0.5), np.full(n, -0.1)]).astype(np.float32)  # (2, n)
    out = load_audio((x, SR), target_sr=SR)
    assert out.shape == (n,)
    np.testing.assert_allclose(out, 0.2, atol=1e-6)


def test_channels_last_stereo_mixed_to_mono() -> None:
    n = 1000
    x = np.stack([np.full(n, 0.5), np.full(n, -0.1)], axis=1).astype(np.float32)  # (n, 2)
    out = load_audio((x, SR), target_sr=SR)
    assert out.shape == (n,)
    np.testing.assert_allclose(out, 0.2, atol=1e-6)


def test_stereo_int16_channels_first() -> None:
    x = np.array([[16384] * 10, [0] * 10], dtype=np.int16)
    np.testing.assert_allclose(load_audio((x, SR), target_sr=SR), 0.25, atol=1e-7)


def test_resample_keeps_duration_and_pitch() -> None:
    x = tone(seconds=1.5, sr=8000)
    out = load_audio((x, 8000), target_sr=16000)
    assert abs(len(out) - 24000) <= 1
    assert abs(dominant_hz(out, 16000) - 440) < 2


def test_resample_bytes_44k_to_16k() -> None:
    out = load_audio(encoded(tone(seconds=0.5, sr=44100), 44100), target_sr=16000)
    assert abs(len(out) - 8000) <= 1


def test_silence_is_valid() -> None:
    out = load_audio((np.zeros(SR, dtype=np.float32), SR), target_sr=SR)
    assert out.shape == (SR,) and not out.any()


def test_torch_tensor() -> None:
    torch = pytest.importorskip("torch")
    x = torch.tensor(np.stack([tone(), tone()]))  # (2, n)
    out = load_audio((x, SR), target_sr=SR)
    np.testing.assert_allclose(out, tone(), atol=1e-6)
    bf = load_audio((x.to(torch.bfloat16).requires_grad_(), SR), target_sr=SR)
    assert bf.dtype == np.float32 and bf.shape == (SR,)


def test_max_seconds_within_limit() -> None:
    assert load_audio((tone(seconds=1.0), SR), target_sr=SR, max_seconds=1.0).shape == (SR,)


def test_describe_source(tmp_path: Path) -> None:
    assert describe_source(tmp_path / "x.wav").endswith("x.wav'")
    assert describe_source(b"abc") == "<3 bytes>"
    assert describe_source((np.zeros((2, 5), np.int16), 8000)) == "<array (2, 5) int16 @ 8000 Hz>"
    assert describe_source(np.zeros(3, np.float32)) == "<array (3,) float32>"


# --- errors ----------------------------------------------------------------------


def test_missing_file(tmp_path: Path) -> None:
    with pytest.raises(AudioInputError, match=r"'.*nope\.wav' does not exist.*Check the path"):
        load_audio(tmp_path / "nope.wav", target_sr=SR)


def test_url_is_not_fetched() -> None:
    with pytest.raises(AudioInputError, match="download the file first"):
        load_audio("https://example.com/a.wav", target_sr=SR)


def test_directory(tmp_path: Path) -> None:
    with pytest.raises(AudioInputError, match="is a directory.*Pass the path of an audio file"):
        load_audio(tmp_path, target_sr=SR)


def test_undecodable_file(tmp_path: Path) -> None:
    path = tmp_path / "x.wav"
    path.write_bytes(b"this is not audio at all" * 10)
    with pytest.raises(AudioInputError, match=r"'.*x\.wav' could not be decoded: .+WAV/FLAC/OGG"):
        load_audio(path, target_sr=SR)


def test_empty_file(tmp_path: Path) -> None:
    path = tmp_path / "empty.wav"
    path.write_bytes(b"")
    with pytest.raises(AudioInputError, match="could not be decoded.*WAV/FLAC/OGG"):
        load_audio(path, target_sr=SR)


def test_undecodable_bytes() -> None:
    match = r"<6 bytes> could not be decoded: .+encoded file bytes"
    with pytest.raises(AudioInputError, match=match):
        load_audio(b"garbag", target_sr=SR)


def test_empty_bytes() -> None:
    with pytest.raises(AudioInputError, match="empty.*complete audio file"):
        load_audio(b"", target_sr=SR)


def test_wav_with_zero_frames(tmp_path: Path) -> None:
    path = tmp_path / "zero.wav"
    sf.write(path, np.zeros(0, dtype=np.float32), SR)
    with pytest.raises(AudioInputError, match="no samples.*non-empty clip"):
        load_audio(path, target_sr=SR)


@pytest.mark.parametrize("shape", [(0,), (0, 2), (2, 0)])
def test_empty_array(shape: tuple[int, ...]) -> None:
    with pytest.raises(AudioInputError, match="no samples.*non-empty clip"):
        load_audio((np.zeros(shape, np.float32), SR), target_sr=SR)


@pytest.mark.parametrize("bad", [np.nan, np.inf, -np.inf])
def test_non_finite_samples(bad: float) -> None:
    x = tone()
    x[100] = bad
    with pytest.raises(AudioInputError, match="NaN or infinite.*Fix or drop"):
        load_audio((x, SR), target_sr=SR)


def test_non_finite_samples_in_file(tmp_path: Path) -> None:
    x = tone()
    x[5] = np.nan
    path = tmp_path / "nan.wav"
    sf.write(path, x, SR, subtype="FLOAT")
    with pytest.raises(AudioInputError, match="NaN or infinite"):
        load_audio(path, target_sr=SR)


def test_too_long_array() -> None:
    with pytest.raises(
        AudioInputError, match=r"2\.00 s long, over the 1\.5 s limit.*Raise the policy's .*limit or split the clip"
    ):
        load_audio((tone(seconds=2.0), SR), target_sr=SR, max_seconds=1.5)


def test_too_long_file(tmp_path: Path) -> None:
    path = tmp_path / "long.flac"
    sf.write(path, tone(seconds=3.0), SR)
    with pytest.raises(AudioInputError, match=r"3\.00 s long, over the 2 s limit.*split the clip"):
        load_audio(path, target_sr=SR, max_seconds=2)


@pytest.mark.parametrize("limit", [0, -1.0, float("nan"), float("inf")])
def test_bad_max_seconds(limit: float) -> None:
    with pytest.raises(AudioInputError, match="max_seconds.*positive limit, or None"):
        load_audio((tone(), SR), target_sr=SR, max_seconds=limit)


@pytest.mark.parametrize("sr", [0, -16000, 16000.5, float("nan"), "16000", None, True])
def test_bad_sampling_rate(sr: object) -> None:
    with pytest.raises(AudioInputError, match="sampling rate .* is invalid.*positive integer"):
        load_audio((tone(), sr), target_sr=SR)


@pytest.mark.parametrize("sr", [0, -1, 22050.5])
def test_bad_target_sr(sr: object) -> None:
    with pytest.raises(AudioInputError, match="target_sr .* is invalid.*positive integer"):
        load_audio((tone(), SR), target_sr=sr)  # type: ignore[arg-type]


def test_integral_float_rate_accepted() -> None:
    assert load_audio((tone(), 16000.0), target_sr=SR).shape == (SR,)


def test_three_dim_array() -> None:
    with pytest.raises(AudioInputError, match="3 dimensions.*Pass a 1-D mono array"):
        load_audio((np.zeros((2, 2, 100), np.float32), SR), target_sr=SR)


def test_ambiguous_channel_axis() -> None:
    with pytest.raises(AudioInputError, match="ambiguous.*Pass a 1-D mono array"):
        load_audio((np.zeros((9, 100), np.float32), SR), target_sr=SR)


def test_bare_array_is_type_error() -> None:
    with pytest.raises(AudioTypeError, match=r"no sampling rate.*\(array, sampling_rate\)"):
        load_audio(tone(), target_sr=SR)  # type: ignore[arg-type]


def test_swapped_tuple_is_type_error() -> None:
    with pytest.raises(AudioTypeError, match=r"Swap it to \(array, sampling_rate\)"):
        load_audio((SR, tone()), target_sr=SR)  # type: ignore[arg-type]


@pytest.mark.parametrize(
    ("source", "fix"),
    [
        (123, "WAV/FLAC/OGG"),
        ([0.0, 0.1], "WAV/FLAC/OGG"),
        (io.BytesIO(b"x"), r"f\.read\(\)"),
        ((tone(), SR, 1), r"exactly \(array, sampling_rate\)"),
        (([0.0, 0.1], SR), r"Pass \(np\.ndarray, sampling_rate\)"),
        ((np.zeros(4, dtype=bool), SR), "int16/int32 PCM"),
        ((np.zeros(4, dtype=np.complex64), SR), "int16/int32 PCM"),
    ],
)
def test_wrong_types(source: object, fix: str) -> None:
    with pytest.raises(AudioTypeError, match=fix) as info:
        load_audio(source, target_sr=SR)  # type: ignore[arg-type]
    assert isinstance(info.value, TypeError)


def test_error_hierarchy(tmp_path: Path) -> None:
    with pytest.raises(ValueError) as info:
        load_audio(tmp_path / "missing.wav", target_sr=SR)
    assert isinstance(info.value, AudioInputError) and isinstance(info.value, GuardrailError)
    assert issubclass(AudioTypeError, TypeError) and issubclass(AudioTypeError, AudioInputError)


def test_decode_error_chains_cause() -> None:
    with pytest.raises(AudioInputError) as info:
        load_audio(b"garbag", target_sr=SR)
    assert info.value.__cause__ is not None


# --- bounded work for hostile sizes and rates (issue 15) ------------------------------------------


def _peak_bytes_and_seconds(fn) -> tuple[int, float]:
    import time
    import tracemalloc

    tracemalloc.start()
    started = time.perf_counter()
    try:
        fn()
    finally:
        elapsed = time.perf_counter() - started
        peak = tracemalloc.get_traced_memory()[1]
        tracemalloc.stop()
    return peak, elapsed


@pytest.mark.parametrize("kind", ["numpy", "torch", "torch-bf16"])
def test_too_long_array_fails_before_any_copy(kind: str) -> None:
    """One hour of 48 kHz stereo int16 (a zero-stride view: no memory of its own) is refused from its shape
    and rate alone: milliseconds and no sample copy (it used to peak at 4.3 GB and take 16 s)."""
    hour = np.broadcast_to(np.zeros((1, 2), np.int16), (3600 * 48000, 2))
    source: object = hour
    if kind != "numpy":
        torch = pytest.importorskip("torch")
        one = torch.zeros((1, 2), dtype=torch.bfloat16 if kind == "torch-bf16" else torch.int16)
        source = one.expand(3600 * 48000, 2)

    def run() -> None:
        with pytest.raises(AudioInputError, match=r"3600\.00 s long, over the 30 s limit"):
            load_audio((source, 48000), target_sr=SR, max_seconds=30)  # type: ignore[arg-type]

    peak, seconds = _peak_bytes_and_seconds(run)
    assert peak < 1_000_000 and seconds < 0.5, (peak, seconds)


def test_too_long_channels_first_array_uses_the_long_axis() -> None:
    x = np.broadcast_to(np.zeros((2, 1), np.float32), (2, 31 * SR))
    with pytest.raises(AudioInputError, match=r"31\.00 s long, over the 30 s limit"):
        load_audio((x, SR), target_sr=SR, max_seconds=30)


def test_clip_that_resamples_to_zero_samples() -> None:
    with pytest.raises(AudioInputError, match=r"resamples to 0 samples at 16000 Hz.*longer clip"):
        load_audio((np.full(1, 0.5, np.float32), 48000), target_sr=SR)


@pytest.mark.parametrize("sr", [768_001, 10**9, 2**31 - 1])
def test_sampling_rate_above_the_highest_supported(sr: int) -> None:
    with pytest.raises(AudioInputError, match=r"above 768000 Hz.*resample"):
        load_audio((tone(seconds=0.01), sr), target_sr=SR)


def test_file_rate_above_the_highest_supported() -> None:
    data = bytearray(encoded(tone(seconds=0.1), SR))
    data[24:28] = (10**9).to_bytes(4, "little")  # the WAV header's sample rate
    data[28:32] = (2 * 10**9).to_bytes(4, "little")  # byte rate
    with pytest.raises(AudioInputError, match=r"above 768000 Hz"):
        load_audio(bytes(data), target_sr=SR)


def test_file_layout_never_guessed(tmp_path: Path) -> None:
    """A decoded file is (frames, channels) by construction: 3 frames of 5 channels stay 3 frames."""
    path = tmp_path / "wide.wav"
    sf.write(path, np.full((3, 5), 0.25, np.float32), SR, subtype="FLOAT")
    assert load_audio(path, target_sr=SR).shape == (3,)


def test_huge_finite_samples_that_overflow_resampling() -> None:
    """Found by the hypothesis suite: 8.9e36 is finite in float32 but the resampler's output is not."""
    with pytest.raises(AudioInputError, match=r"too large to resample \(\|x\| up to 8\.89e\+36\).*\[-1, 1\]"):
        load_audio((np.array([8.8856286e36], np.float32), 1), target_sr=SR)
