"""A testbed ready to guard: its model directory, and a SARSteer artifact with a gate probe calibrated on the
package's own calibration set, built once and kept in the testbed's cache folder (``ARTIFACT/probe`` beside
it). For the slow tier and examples that need a real guarded model without a calibration run each time."""

from __future__ import annotations

import shutil
import tempfile
from pathlib import Path

from guardrail.defaults import default_calibration_set
from guardrail.gate import fit_probe
from guardrail.steering.calibrate import calibrate
from guardrail_testbeds import build

__all__ = ["guarded_testbed"]

VERSION = 1  # bump when the recipe below changes: the cached artifact is then rebuilt


def guarded_testbed(name: str) -> tuple[Path, Path]:
    """(model directory, artifact directory with its probe) for the built testbed `name`; calibrates on the
    first call (minutes on CPU), then reads the cache."""
    out = build.testbed_dir(name) / f"guarded-v{VERSION}"
    if not (out / "probe").is_dir():
        model, processor = build.load(name)
        harmful, safe = default_calibration_set()
        artifact = calibrate(model, processor, harmful, safe, batch_size=8)
        probe = fit_probe(model, processor, harmful, safe, folds=3)
        with tempfile.TemporaryDirectory(dir=out.parent) as tmp:  # a half-written artifact never counts
            artifact.save(Path(tmp) / "a")
            probe.save(Path(tmp) / "a" / "probe")
            shutil.rmtree(out, ignore_errors=True)
            (Path(tmp) / "a").rename(out)
    return build.hf_dir(name), out
