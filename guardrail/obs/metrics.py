"""Process-local counters of guarded requests, for a metrics system to scrape."""

from __future__ import annotations

import threading
from collections import Counter

from guardrail.results import GuardResult


class Metrics:
    """Process-local counters a metrics system can scrape (`prometheus()` text format)."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self.counts: Counter[str] = Counter()
        self.latency_ms_sum = 0.0

    def observe(self, result: GuardResult) -> None:
        d = result.decision
        with self._lock:
            self.counts["requests_total"] += 1
            self.counts["steered_total"] += d.steered
            self.counts["blocked_total"] += d.blocked
            self.counts["probe_failures_total"] += "probe failed" in d.reason
            self.counts["completion_tokens_total"] += d.completion_tokens
            self.latency_ms_sum += d.timings.total_ms

    def snapshot(self) -> dict[str, float]:
        with self._lock:
            return {**self.counts, "latency_ms_sum": self.latency_ms_sum}

    def prometheus(self, prefix: str = "guardrail") -> str:
        return "".join(f"{prefix}_{name} {value:g}\n" for name, value in sorted(self.snapshot().items()))
