"""The server's Prometheus metrics (`GET /metrics`), in a registry of its own per app."""

from __future__ import annotations

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, generate_latest

from guardrail.results import GuardResult

__all__ = ["ServeMetrics"]

LATENCY_BUCKETS = (0.001, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60)
SCORE_BUCKETS = tuple(i / 10 for i in range(1, 11))
BATCH_BUCKETS = (1, 2, 4, 8, 16, 32, 64, 128)


class ServeMetrics:
    """Counters by policy (requests by outcome, steered, blocked, probe failures, generations cut short by a client
    that left), histograms (probe score, queue
    wait, prefill, decode, batch size) and the queue depth gauge."""

    def __init__(self) -> None:
        self.registry = r = CollectorRegistry()
        self.requests = Counter(
            "guardrail_requests", "requests by policy and outcome", ["policy", "outcome"], registry=r
        )
        self.steered = Counter("guardrail_steered", "requests steered", ["policy"], registry=r)
        self.blocked = Counter("guardrail_blocked", "requests blocked by the gate", ["policy"], registry=r)
        self.cut_short = Counter(
            "guardrail_cancelled_generations",
            "generations stopped before their end because the client left or the request timed out",
            ["policy"],
            registry=r,
        )
        self.probe_failures = Counter("guardrail_probe_failures", "gate probe failures", ["policy"], registry=r)
        self.probe_score = Histogram(
            "guardrail_probe_score", "gate probe scores", ["policy"], buckets=SCORE_BUCKETS, registry=r
        )
        self.queue_wait = Histogram(
            "guardrail_queue_wait_seconds", "time from acceptance to the worker", buckets=LATENCY_BUCKETS, registry=r
        )
        self.prefill = Histogram("guardrail_prefill_seconds", "prefill time", buckets=LATENCY_BUCKETS, registry=r)
        self.decode = Histogram("guardrail_decode_seconds", "decoding time", buckets=LATENCY_BUCKETS, registry=r)
        self.batch_size = Histogram(
            "guardrail_batch_size", "requests per generate_batch call", buckets=BATCH_BUCKETS, registry=r
        )
        self.queue_depth = Gauge("guardrail_queue_depth", "requests waiting for the worker", registry=r)

    def answered(self, result: GuardResult) -> None:
        """One answered request: its decision's counters and timings."""
        d = result.decision
        self.requests.labels(d.policy, "blocked" if d.blocked else "ok").inc()
        if d.steered:
            self.steered.labels(d.policy).inc()
        if d.blocked:
            self.blocked.labels(d.policy).inc()
        if "probe failed" in d.reason:
            self.probe_failures.labels(d.policy).inc()
        if d.probe_score is not None:
            self.probe_score.labels(d.policy).observe(d.probe_score)
        self.prefill.observe(d.timings.prefill_ms / 1e3)
        self.decode.observe(d.timings.decode_ms / 1e3)

    def generated(self, result: GuardResult) -> None:
        """A generation the worker finished: counted when a cancelled client cut it short."""
        if result.decision.finish_reason == "cancelled":
            self.cut_short.labels(result.decision.policy).inc()

    def failed(self, policy: str, outcome: str) -> None:
        """A request that got no answer: client_error, rejected, timeout, cancelled, server_error..."""
        self.requests.labels(policy, outcome).inc()

    def text(self) -> bytes:
        return generate_latest(self.registry)
