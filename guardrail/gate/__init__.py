"""The gate's probe: `OnnxProbe` (a saved probe, run with onnxruntime) and its training
(`fit_probe` in `guardrail.gate.train_on_model`; v2 in `guardrail.gate.stacked`, maths in
`guardrail.gate.stack`; v1 and `TrainedProbe` in `guardrail.gate.train`, maths in
`guardrail.gate.fit`; onnx itself is imported only on save).
The gate's decision rule is in `guardrail.gate.decide`."""

from guardrail.gate.onnx_probe import OnnxProbe
from guardrail.gate.probe_record import ProbeMetadata
from guardrail.gate.train import TrainedProbe
from guardrail.gate.train_on_model import fit_probe

__all__ = ["OnnxProbe", "ProbeMetadata", "TrainedProbe", "fit_probe"]
