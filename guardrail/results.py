"""What a guarded call returns: the answer and the one decision record that explains it."""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from typing import Any


@dataclass
class Timings:
    prefill_ms: float = 0.0   # until the first new token exists (host clock)
    decode_ms: float = 0.0
    total_ms: float = 0.0     # including input building and decoding to text


@dataclass
class Decision:
    """Why a request was (or was not) steered: the record to log and audit."""

    request_id: str
    policy: str
    adapter: str
    gate_mode: str
    steered: bool
    reason: str
    layers: list[int]
    alpha: float
    artifact_id: str | None
    probe_score: float | None = None
    blocked: bool = False
    prompt_tokens: int = 0
    completion_tokens: int = 0
    finish_reason: str = "length"   # "stop" (EOS), "length" (token budget) or "blocked"
    timings: Timings = field(default_factory=Timings)

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


@dataclass
class GuardResult:
    text: str
    token_ids: list[int]        # generated tokens only, up to (not including) the first EOS
    steered: bool
    decision: Decision

    @property
    def blocked(self) -> bool:
        return self.decision.blocked
