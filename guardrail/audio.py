"""Audio input: turn a path, encoded bytes or an (array, sampling_rate) pair into
a float32 mono waveform at the rate a model expects.

Array layout rule: a 1-D array is mono. A 2-D array is (n, channels) or
(channels, n); the smaller dimension is the channel axis and must be <= 8
(a square array is read as (n, channels), soundfile's layout). Channels are
averaged to mono. Integer PCM is scaled to [-1, 1]; float samples are kept as
they are (not clipped).

Sizes are checked before work: an array's length comes from its shape and rate
and a file's from its header, before any sample is converted, copied or
decoded, so a too-long input fails in milliseconds; files are decoded in
blocks, so memory follows the samples really there, not what a header claims.
"""

from __future__ import annotations

import io
import math
import numbers
import os
from pathlib import Path
from typing import Any

import numpy as np
import soundfile as sf
import soxr

from guardrail.errors import AudioInputError, AudioTypeError

__all__ = [
    "MAX_CHANNELS",
    "MAX_SAMPLING_RATE",
    "MIN_AUDIO_SECONDS",
    "AudioSource",
    "AudioTypeError",
    "describe_source",
    "load_audio",
    "require_min_duration",
]

AudioSource = str | os.PathLike | bytes | tuple[np.ndarray, int]
"""A file path, an encoded file in memory, or (samples, sampling_rate).
The samples may be a numpy array or a torch tensor."""

MAX_CHANNELS = 8
MAX_SAMPLING_RATE = 768_000  # the highest rate audio hardware records at; beyond it is a mistake or an attack
MIN_AUDIO_SECONDS = 0.1  # shortest clip a model takes: every family's encoder needs less (Qwen2-Audio: 0.06 s)
_BLOCK_SAMPLES = 1 << 20  # samples (frames x channels) decoded at a time from a file

_ACCEPTED = "Pass a WAV/FLAC/OGG file path, encoded file bytes, or (np.ndarray, sampling_rate)."


def describe_source(source: Any) -> str:
    """Short human description of an audio source for error messages."""
    if isinstance(source, (str, os.PathLike)):
        return repr(os.fspath(source))
    if isinstance(source, (bytes, bytearray, memoryview)):
        return f"<{len(source)} bytes>"
    if isinstance(source, tuple) and len(source) == 2 and _is_array(source[0]):
        return f"<{_describe_array(source[0])} @ {source[1]} Hz>"
    if _is_array(source):
        return f"<{_describe_array(source)}>"
    return f"<object of type {type(source).__name__}>"


def _is_array(x: Any) -> bool:
    return isinstance(x, np.ndarray) or _is_tensor(x)


def _describe_array(x: Any) -> str:
    kind = "tensor" if _is_tensor(x) else "array"
    return f"{kind} {tuple(x.shape)} {str(x.dtype).removeprefix('torch.')}"


def load_audio(source: AudioSource, *, target_sr: int, max_seconds: float | None = None) -> np.ndarray:
    """Load `source` as a float32 mono 1-D waveform resampled to `target_sr` Hz.

    Raises AudioInputError (a ValueError) for missing, undecodable, empty,
    non-finite or too-long audio and bad sampling rates, and AudioTypeError
    (also a TypeError) for unsupported input types.

    >>> import numpy as np
    >>> stereo = np.zeros((8000, 2), dtype=np.int16)
    >>> wave = load_audio((stereo, 8000), target_sr=16000)
    >>> wave.dtype, wave.shape
    (dtype('float32'), (16000,))
    """
    target_sr = _check_rate(target_sr, "target_sr", f"audio {describe_source(source)}")
    if max_seconds is not None and not (max_seconds > 0 and math.isfinite(max_seconds)):
        raise AudioInputError(
            f"max_seconds must be a positive finite number of seconds, got {max_seconds!r}. "
            "Pass a positive limit, or None for no limit."
        )
    mono, sr = _decode(source, max_seconds)
    _check_content(mono, sr, source, max_seconds)
    if sr != target_sr:
        original, mono = mono, soxr.resample(mono, sr, target_sr, quality="HQ")
        if mono.size == 0:
            raise AudioInputError(
                f"audio {describe_source(source)} resamples to 0 samples at {target_sr} Hz. "
                f"Pass a longer clip (at least {MIN_AUDIO_SECONDS:g} s)."
            )
        if not np.isfinite(mono).all():  # finite but huge samples (1e36) overflow the resampling filter
            raise AudioInputError(
                f"audio {describe_source(source)} has samples too large to resample (|x| up to "
                f"{float(np.abs(original).max()):.3g}). Scale float samples to [-1, 1]."
            )
    return np.ascontiguousarray(mono, dtype=np.float32)


def require_min_duration(n_samples: int, sampling_rate: int, what: str) -> None:
    """AudioInputError naming `what` for a clip shorter than MIN_AUDIO_SECONDS: shorter clips are too short
    for the models' audio encoders (they fail inside transformers with a bare TypeError or RuntimeError)."""
    if n_samples < math.ceil(MIN_AUDIO_SECONDS * sampling_rate):
        raise AudioInputError(
            f"{what} is {n_samples / sampling_rate:.3f} s long, shorter than the {MIN_AUDIO_SECONDS:g} s "
            "minimum the model's audio encoder needs. Pass a longer clip (pad it with silence if need be)."
        )


# --- dispatch -----------------------------------------------------------------


def _decode(source: Any, max_seconds: float | None) -> tuple[np.ndarray, int]:
    """Return (mono float32 samples, sampling_rate)."""
    if isinstance(source, (str, os.PathLike)):
        return _read_path(source, max_seconds)
    if isinstance(source, (bytes, bytearray, memoryview)):
        return _read_bytes(bytes(source), max_seconds)
    if isinstance(source, tuple):
        return _read_pair(source, max_seconds)
    raise AudioTypeError(_type_message(source))


def _type_message(source: Any) -> str:
    desc = describe_source(source)
    if _is_array(source):
        return f"audio {desc} has no sampling rate. Pass a tuple (array, sampling_rate), e.g. (wave, 16000)."
    if hasattr(source, "read"):
        return f"audio {desc} is a file object. Pass its contents (f.read()) as bytes, or a path."
    return f"audio {desc} is not a supported input type. {_ACCEPTED}"


# --- files and bytes ----------------------------------------------------------


def _read_path(source: str | os.PathLike, max_seconds: float | None) -> tuple[np.ndarray, int]:
    desc = describe_source(source)
    path = Path(os.fspath(source)).expanduser()
    if path.is_dir():
        raise AudioInputError(f"audio file {desc} is a directory. Pass the path of an audio file.")
    if not path.exists():
        hint = " URLs are not fetched: download the file first." if "://" in str(source) else ""
        raise AudioInputError(f"audio file {desc} does not exist.{hint} Check the path. {_ACCEPTED}")
    return _read_soundfile(str(path), f"audio file {desc}", max_seconds)


def _read_bytes(data: bytes, max_seconds: float | None) -> tuple[np.ndarray, int]:
    desc = describe_source(data)
    if not data:
        raise AudioInputError(f"audio bytes {desc} are empty. Pass the bytes of a complete audio file.")
    return _read_soundfile(io.BytesIO(data), f"audio bytes {desc}", max_seconds)


def _read_soundfile(file: str | io.BytesIO, what: str, max_seconds: float | None) -> tuple[np.ndarray, int]:
    """Decode with libsndfile to mono; check the rate and length from the header before reading."""
    try:
        with sf.SoundFile(file) as f:
            sr = _check_rate(f.samplerate, "sampling rate", what)
            if f.frames > 0:  # header length is known: fail before decoding a huge file
                _check_duration(f.frames, sr, what, max_seconds)
            mono = _read_mono(f, sr, what, max_seconds)
    except AudioInputError:
        raise
    except (sf.SoundFileError, RuntimeError, TypeError, ValueError, MemoryError) as exc:
        reason = str(getattr(exc, "error_string", None) or exc).rstrip(".")
        raise AudioInputError(f"{what} could not be decoded: {reason}. {_ACCEPTED}") from exc
    return mono, sr


def _read_mono(f: sf.SoundFile, sr: int, what: str, max_seconds: float | None) -> np.ndarray:
    """Decode block by block, each mixed to mono as it comes: memory follows the samples really decoded (a
    header may claim far more frames than the file holds), and a stream longer than allowed stops early."""
    frames_per_block = max(1, _BLOCK_SAMPLES // max(1, int(f.channels)))
    parts, total = [], 0
    while True:
        block = f.read(frames_per_block, dtype="float32", always_2d=True)
        if len(block) == 0:
            break
        parts.append(block.mean(axis=1, dtype=np.float32))
        total += len(block)
        _check_duration(total, sr, what, max_seconds)
    return np.concatenate(parts) if parts else np.zeros(0, np.float32)


# --- (array, sampling_rate) -----------------------------------------------------


def _read_pair(source: tuple, max_seconds: float | None) -> tuple[np.ndarray, int]:
    if len(source) != 2:
        raise AudioTypeError(f"audio tuple has {len(source)} items. Pass exactly (array, sampling_rate).")
    samples, sr = source
    if _is_rate_like(samples) and _is_array(sr):
        raise AudioTypeError(
            "audio tuple looks like (sampling_rate, array), the order scipy.io.wavfile.read "
            "returns. Swap it to (array, sampling_rate)."
        )
    if not _is_array(samples):
        raise AudioTypeError(
            f"audio samples of type {type(samples).__name__} are not supported. "
            "Pass (np.ndarray, sampling_rate) or (torch.Tensor, sampling_rate)."
        )
    sr = _check_rate(sr, "sampling rate", f"audio {describe_source(source)}")
    # the length from shape and rate, before a copy: an hour-long int16 array fails in milliseconds
    _check_duration(_frames(tuple(samples.shape), source), sr, f"audio {describe_source(source)}", max_seconds)
    if _is_tensor(samples):
        samples = _tensor_to_numpy(samples)
    return _to_mono(_to_float(samples, source)), sr


def _is_tensor(x: Any) -> bool:
    """True for a torch.Tensor, without importing torch."""
    return type(x).__module__.startswith("torch") and hasattr(x, "detach") and hasattr(x, "numpy")


def _tensor_to_numpy(t: Any) -> np.ndarray:
    t = t.detach().cpu()
    if str(t.dtype) == "torch.bfloat16":  # numpy has no bfloat16
        t = t.float()
    return t.numpy()


def _is_rate_like(x: Any) -> bool:
    return isinstance(x, numbers.Real) and not isinstance(x, bool)


def _check_rate(sr: Any, name: str, desc: str) -> int:
    """Accept a positive integer (Python or numpy, or an integral float) up to MAX_SAMPLING_RATE and return it
    as int; `desc` names the audio in the error."""
    ok = _is_rate_like(sr) and math.isfinite(sr) and sr > 0 and float(sr).is_integer()
    if not ok:
        raise AudioInputError(f"{name} {sr!r} for {desc} is invalid. Pass a positive integer number of Hz, e.g. 16000.")
    if sr > MAX_SAMPLING_RATE:
        raise AudioInputError(
            f"{name} {int(sr)} Hz for {desc} is above {MAX_SAMPLING_RATE} Hz, the highest supported. "
            "Check the rate, or resample the clip (to 16000 Hz, say) before passing it."
        )
    return int(sr)


def _to_float(samples: np.ndarray, source: Any) -> np.ndarray:
    """Convert PCM samples to float32; integers are scaled to [-1, 1]. Always copies."""
    kind = samples.dtype.kind
    if kind == "f":
        with np.errstate(over="ignore"):  # beyond float32's range becomes inf, refused as non-finite
            return np.array(samples, dtype=np.float32)
    # Through float32 where that rounds exactly as through float64 (the scale is a power of two), so the
    # working copy is half the size; 64-bit integers and uint32 keep the float64 route.
    if kind == "i":
        scale = float(np.iinfo(samples.dtype).max) + 1.0
        wide = np.float32 if samples.dtype.itemsize <= 4 else np.float64
        return (samples.astype(wide) / wide(scale)).astype(np.float32, copy=False)
    if kind == "u":
        mid = (float(np.iinfo(samples.dtype).max) + 1.0) / 2.0
        wide = np.float32 if samples.dtype.itemsize <= 2 else np.float64
        return ((samples.astype(wide) - wide(mid)) / wide(mid)).astype(np.float32, copy=False)
    raise AudioTypeError(
        f"audio {describe_source(source)} has dtype {samples.dtype}, which is not PCM audio. "
        "Pass float samples in [-1, 1] or int16/int32 PCM."
    )


# --- shape and content ----------------------------------------------------------


def _frames(shape: tuple[int, ...], source: Any) -> int:
    """The number of frames of an array of `shape` (see the module docstring for the layout rule)."""
    desc = describe_source(source)
    if len(shape) == 1:
        return shape[0]
    if len(shape) != 2:
        raise AudioInputError(
            f"audio {desc} has {len(shape)} dimensions. "
            "Pass a 1-D mono array or a 2-D (n, channels) or (channels, n) array."
        )
    if 0 in shape:
        return 0
    if min(shape) > MAX_CHANNELS:
        raise AudioInputError(
            f"audio {desc} has no axis of at most {MAX_CHANNELS} channels, so the channel axis "
            "is ambiguous. Pass a 1-D mono array or a 2-D (n, channels) / (channels, n) array."
        )
    return max(shape)


def _to_mono(samples: np.ndarray) -> np.ndarray:
    """Average the channels of a 1-D or 2-D array whose shape `_frames` accepted."""
    if samples.ndim == 1:
        return samples
    if samples.size == 0:
        return samples.reshape(-1)
    n_rows, n_cols = samples.shape
    axis = 0 if n_rows < n_cols else 1
    with np.errstate(over="ignore", invalid="ignore"):  # an overflowing sum is refused as non-finite
        return samples.mean(axis=axis, dtype=np.float32)


def _check_content(mono: np.ndarray, sr: int, source: Any, max_seconds: float | None) -> None:
    desc = describe_source(source)
    if mono.size == 0:
        raise AudioInputError(f"audio {desc} contains no samples. Pass a non-empty clip.")
    if not np.isfinite(mono).all():
        raise AudioInputError(
            f"audio {desc} contains NaN or infinite samples. "
            "Fix or drop the corrupted samples (e.g. np.nan_to_num) before passing it."
        )
    _check_duration(mono.size, sr, f"audio {desc}", max_seconds)


def _check_duration(n_samples: int, sr: int, what: str, max_seconds: float | None) -> None:
    if max_seconds is None:
        return
    seconds = n_samples / sr
    if seconds > max_seconds:
        raise AudioInputError(
            f"{what} is {seconds:.2f} s long, over the {max_seconds:g} s limit. "
            "Raise the policy's audio length limit or split the clip into shorter pieces."
        )
