"""``save_tiny``: write a tiny random model and its processor to a directory that `load_model`, the
`guardrail` command line and `Guard.from_policy` read like any model directory (offline quick starts).

    python -m guardrail.testing.tiny qwen2 tiny-model
"""

from __future__ import annotations

from pathlib import Path

from guardrail.errors import UnsupportedModelError
from guardrail.testing.tiny.build import build_tiny

# The families whose tiny processors transformers can save and load back (the others are hand-built).
SAVABLE: tuple[str, ...] = ("qwen2_audio", "audioflamingo3", "qwen2", "llama")


def save_tiny(family: str, path: str | Path, seed: int = 0) -> Path:
    """Build `build_tiny(family, seed)` and save model and processor to `path`; returns the directory."""
    if family not in SAVABLE:
        raise UnsupportedModelError(
            f"the tiny {family!r} model cannot be saved (its processor is built by hand, not by transformers): "
            f"choose one of {', '.join(SAVABLE)}, or use build_tiny({family!r}) in Python"
        )
    out = Path(path)
    model, processor = build_tiny(family, seed=seed)
    model.save_pretrained(out)
    processor.save_pretrained(out)
    return out
