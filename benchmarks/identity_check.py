"""Time of the model-identity check an artifact runs once per guard set-up (`SteeringArtifact.check_model`),
on the tiny models: median of 20 checks. Usage: python benchmarks/identity_check.py"""

import statistics
import time

from guardrail import calibrate
from guardrail.models import resolve_adapter
from guardrail.testing.tiny import build_tiny

for family in ("qwen2", "qwen2_audio"):
    model, processor = build_tiny(family)
    artifact = calibrate(model, processor, ["q1", "q2"], ["s1", "s2", "s3"], "Answer.")
    layers = resolve_adapter(model).decoder_layers(model)
    times = []
    for _ in range(20):
        started = time.perf_counter()
        artifact.check_model(model, layers)
        times.append((time.perf_counter() - started) * 1e3)
    tensors = sum(1 for _ in model.parameters())
    print(f"{family}: {tensors} parameter tensors, check {statistics.median(times):.2f} ms (median of 20)")
