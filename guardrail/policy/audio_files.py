"""Audio a request names instead of carrying: base64 data, `data:` URLs, and local `file://` URLs, read only
under the policy's `input.audio_dirs` and only a regular file of bounded size, so a prompt cannot make the guard
read `/etc/passwd`, block on a FIFO or stream `/dev/zero`. The LangChain integration and `guardrail serve` share
these rules.

The path is resolved with `realpath` before the check (symlinks and `..` cannot leave the directories), the
file is opened without following a last-moment symlink and without blocking, checked with `fstat` on the open
descriptor (what is read is what was checked), and read into memory: the guard gets bytes, never a path.
"""

from __future__ import annotations

import base64
import binascii
import math
import os
import stat
from dataclasses import dataclass
from typing import Any
from urllib.parse import urlparse
from urllib.request import url2pathname

from guardrail.errors import UnsupportedContentError
from guardrail.policy.schema import Policy

__all__ = ["MIN_FILE_BYTES", "AudioFiles", "audio_from_url", "decode_base64", "read_audio_file"]

MIB = 1024 * 1024
MIN_FILE_BYTES = 64 * MIB
MAX_FILE_BYTES = 1024 * MIB
# 48 kHz stereo float32 WAV: a generous bytes-per-second bound for a clip within limits.max_audio_seconds
BYTES_PER_SECOND = 48_000 * 2 * 4


@dataclass(frozen=True)
class AudioFiles:
    """Where file URLs may read (`dirs`, empty = nowhere) and the largest file they may name."""

    dirs: tuple[str, ...] = ()
    max_bytes: int = MIN_FILE_BYTES

    @classmethod
    def from_policy(cls, policy: Policy) -> AudioFiles:
        """The policy's `input.audio_dirs`; a cap of 64 MiB, or more (up to 1 GiB) for a policy whose
        `limits.max_audio_seconds` needs it."""
        seconds = policy.limits.max_audio_seconds
        needed = int(seconds * BYTES_PER_SECOND) if math.isfinite(seconds) else MAX_FILE_BYTES
        return cls(tuple(policy.input.audio_dirs), max(MIN_FILE_BYTES, min(needed, MAX_FILE_BYTES)))


def read_audio_file(path: str, files: AudioFiles, where: str) -> bytes:
    """The bytes of the local file `path` named by a file URL, under the rules above; `where` names the
    content block in error messages. Raises `UnsupportedContentError` naming the rule and the policy field."""
    if not files.dirs:
        raise UnsupportedContentError(
            f"{where} is a file:// URL, and the policy's input.audio_dirs is empty, so file URLs are refused: "
            "list the directories they may read in the policy (input: {audio_dirs: [/srv/audio]}), or send "
            "the audio itself as base64 data"
        )
    try:
        real = os.path.realpath(path)
        allowed = [os.path.realpath(d) for d in files.dirs]
        inside = any(os.path.commonpath([real, d]) == d for d in allowed)
    except (OSError, ValueError) as exc:  # an embedded NUL, a name too long, ...
        raise UnsupportedContentError(f"{where}: the file cannot be read ({exc}); check the file URL") from None
    if not inside:
        raise UnsupportedContentError(
            f"{where} names a file outside the directories the policy lets file:// URLs read "
            f"(input.audio_dirs: {list(files.dirs)}; symlinks and '..' resolved): move the file there, add "
            "its directory to input.audio_dirs, or send the audio as base64 data"
        )
    return _read_regular(real, files.max_bytes, where)


def _read_regular(real: str, max_bytes: int, where: str) -> bytes:
    # O_NONBLOCK: opening a FIFO without a writer returns at once instead of waiting; O_NOFOLLOW: a symlink
    # swapped in after realpath is refused
    flags = os.O_RDONLY | getattr(os, "O_NONBLOCK", 0) | getattr(os, "O_NOFOLLOW", 0) | getattr(os, "O_BINARY", 0)
    try:
        fd = os.open(real, flags)
    except (OSError, ValueError) as exc:
        reason = getattr(exc, "strerror", None) or exc
        raise UnsupportedContentError(f"{where}: the file cannot be read ({reason}); check the file URL") from None
    try:
        info = os.fstat(fd)  # of what was opened: no race with a file swapped after the checks above
        if not stat.S_ISREG(info.st_mode):
            raise UnsupportedContentError(
                f"{where} is not a regular file (a directory, FIFO, socket or device); file:// audio URLs "
                "must name an audio file under input.audio_dirs"
            )
        if info.st_size > max_bytes:
            raise UnsupportedContentError(_too_big(where, info.st_size, max_bytes))
        with os.fdopen(fd, "rb", closefd=False) as file:
            data = file.read(max_bytes + 1)  # the file may grow after fstat
    except OSError as exc:
        raise UnsupportedContentError(f"{where}: the file cannot be read ({exc.strerror or exc})") from None
    finally:
        os.close(fd)
    if len(data) > max_bytes:
        raise UnsupportedContentError(_too_big(where, len(data), max_bytes))
    return data


def _too_big(where: str, size: int, max_bytes: int) -> str:
    return (
        f"{where} is {size / MIB:.1f} MiB, over the {max_bytes // MIB} MiB a file:// audio URL may read (set by "
        "limits.max_audio_seconds, at least 64 MiB): trim the clip or send a compressed format (FLAC, OGG)"
    )


def audio_from_url(url: str, files: AudioFiles, where: str) -> bytes:
    """A `data:` URL's bytes or a `file://` URL's file (under `files`' rules); nothing remote is fetched.
    `where` names the content block in error messages."""
    parsed = urlparse(url)
    if parsed.scheme == "data":
        header, sep, data = url[5:].partition(",")
        if not sep or not header.endswith(";base64"):
            raise UnsupportedContentError(f"{where}: a data: URL must be base64 ('data:audio/wav;base64,...')")
        return decode_base64(data, where)
    if parsed.scheme == "file" and parsed.netloc in ("", "localhost"):
        return read_audio_file(url2pathname(parsed.path), files, where)  # url2pathname decodes %-escapes (once)
    raise UnsupportedContentError(
        f"{where} points at a remote URL; the guard does not fetch audio: download it and send base64 data, "
        "or a local file as 'file:///abs/path.wav'"
    )


def decode_base64(data: Any, where: str) -> bytes:
    """Standard base64 (whitespace ignored) as bytes; anything else is an `UnsupportedContentError`."""
    if isinstance(data, (bytes, bytearray)):
        data = bytes(data).decode("ascii", errors="replace")
    try:
        return base64.b64decode("".join(str(data).split()), validate=True)
    except (binascii.Error, ValueError) as exc:
        raise UnsupportedContentError(
            f"{where}: the audio's base64 data does not decode ({exc}); "
            "send standard base64 (base64.b64encode(wav_bytes).decode())"
        ) from None
