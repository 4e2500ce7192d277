"""What one request to a guarded model is: the types at the bottom of the package."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np


@dataclass(frozen=True)
class Request:
    """One user turn: optional audio (mono float32 at the model's rate) then text."""

    text: str
    audio: np.ndarray | None = None
