"""The gate's probe: `OnnxProbe` (a saved probe, run with onnxruntime) and its training
(`fit_probe`, `TrainedProbe` in `guardrail.gate.train`, its maths in `guardrail.gate.fit`; onnx
itself is imported only on save).
The gate's decision rule is in `guardrail.gate.decide`."""

from guardrail.gate.onnx_probe import OnnxProbe, ProbeMetadata
from guardrail.gate.train import TrainedProbe, fit_probe

__all__ = ["OnnxProbe", "ProbeMetadata", "TrainedProbe", "fit_probe"]
