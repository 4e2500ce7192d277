"""What a guarded call returns: the answer and the one decision record that explains it."""

from __future__ import annotations

import uuid
from collections.abc import Collection, Sequence
from dataclasses import asdict, dataclass, field
from typing import Any

from guardrail.conversation import ToolCall


@dataclass
class Timings:
    prefill_ms: float = 0.0  # until the first new token exists (host clock)
    decode_ms: float = 0.0
    total_ms: float = 0.0  # including input building and decoding to text


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
    # "stop" (EOS or a stop string), "length" (token budget), "tool_calls", "blocked" or "cancelled" (stream closed)
    finish_reason: str = "length"
    timings: Timings = field(default_factory=Timings)

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


@dataclass
class GuardResult:
    text: str
    token_ids: list[int]  # generated tokens only, up to (not including) the first EOS
    steered: bool
    decision: Decision
    tool_calls: list[ToolCall] = field(default_factory=list)  # parsed from the answer when the request had tools

    @property
    def blocked(self) -> bool:
        return self.decision.blocked


@dataclass(frozen=True)
class DecisionTemplate:
    """What every decision record of one guard shares; `record` fills in one request's fields."""

    policy: str
    adapter: str
    gate_mode: str
    layers: list[int]  # the steered layers, recorded for a steered request
    alpha: float
    artifact_id: str | None

    def record(self, steered: bool, reason: str, probe_score: float | None, **fields: Any) -> Decision:
        """A new decision record (fresh request id); `fields` are the per-request counts and timings."""
        return Decision(
            request_id=uuid.uuid4().hex,
            policy=self.policy,
            adapter=self.adapter,
            gate_mode=self.gate_mode,
            steered=steered,
            reason=reason,
            layers=list(self.layers) if steered else [],
            alpha=self.alpha if steered else 0.0,
            artifact_id=self.artifact_id,
            probe_score=probe_score,
            **fields,
        )


def until_eos(ids: Sequence[int], eos: Collection[int]) -> tuple[list[int], str]:
    """The generated tokens up to (not including) the first EOS, and the finish reason: "stop" at an
    EOS, "length" when the token budget ran out first."""
    cut = next((k for k, t in enumerate(ids) if t in eos), None)
    return (list(ids), "length") if cut is None else (list(ids[:cut]), "stop")


def first_stop(text: str, stops: Sequence[str]) -> int | None:
    """Where the earliest of the `stops` strings begins in `text`, None if none occurs."""
    found = [i for i in (text.find(s) for s in stops) if i >= 0]
    return min(found) if found else None
