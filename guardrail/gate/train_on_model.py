"""Training a gate probe from a model and calibration items: collect the prompt activations, train
probe v2 (`stacked`, the default) or v1 (`logistic`), bind the probe to the model."""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from dataclasses import replace
from typing import Any, Literal

import torch
from torch import nn

from guardrail.conversation import parse_tools
from guardrail.defaults import default_instruction
from guardrail.gate.stacked import train_stacked_probe
from guardrail.gate.train import TrainedProbe, train_probe
from guardrail.models.adapter import resolve_adapter
from guardrail.steering.activations import prompt_activations
from guardrail.steering.calibrate import calibration_query, requests_hash


def fit_probe(
    model: nn.Module,
    processor: Any,
    harmful: Sequence[Any],
    safe: Sequence[Any],
    instruction: str | None = None,
    *,
    kind: Literal["stacked", "logistic"] = "stacked",
    layers: list[int] | None = None,
    target_fpr: float = 0.01,
    folds: int = 5,
    seed: int = 0,
    batch_size: int = 8,
    adapter: str | None = None,
    max_audio_seconds: float | None = None,
    on_batch: Callable[[int], None] | None = None,
    system_prompt: str | None = None,
    tools: Sequence[Mapping[str, Any]] = (),
) -> TrainedProbe:
    """Collect prompt activations of calibration items and train a probe bound to `model`.

    Items are as for `calibrate`: audio (path, bytes, (array, rate)) for an audio model, or text
    questions; the instruction follows each item in the user turn. `kind="stacked"` (probe v2)
    reads the last position and the prompt mean of the first three quarters of the layers
    (`layers` to choose); `kind="logistic"` (v1) one layer chosen by cross-validation.

    The probe reads prompts as the deployment will send them: with `system_prompt` and `tools` (OpenAI
    function schemas) the items are embedded in that context, as an agent's requests are (a probe fit on bare
    turns scores an agent's prompts lower: docs/usage.md, "Conversations and tools").

    >>> probe = fit_probe(model, tokenizer, harmful_questions, safe_questions)  # doctest: +SKIP
    >>> probe.save("artifacts/my-model/probe")  # doctest: +SKIP
    """
    resolved = resolve_adapter(model, adapter)
    instruction = instruction or default_instruction(resolved.takes_audio)
    sr = resolved.sampling_rate(processor)
    shown = parse_tools(list(tools), 0)
    query = lambda item: replace(calibration_query(item, instruction, resolved, sr, max_audio_seconds), tools=shown)
    harmful_q, safe_q = [query(item) for item in harmful], [query(item) for item in safe]
    last, mean = prompt_activations(
        model,
        processor,
        resolved,
        harmful_q + safe_q,
        batch_size=batch_size,
        system_prompt=system_prompt,
        on_batch=on_batch,
        pooled=kind == "stacked",
    )
    labels = torch.tensor([1] * len(harmful_q) + [0] * len(safe_q))
    if kind == "stacked":
        probe = train_stacked_probe(
            last, labels, mean=mean, layers=layers, target_fpr=target_fpr, folds=folds, seed=seed
        )
    else:
        probe = train_probe(last, labels, layers=layers, target_fpr=target_fpr, folds=folds, seed=seed)
    probe.training = probe.training.model_copy(
        update={"queries_sha256": requests_hash(harmful_q, safe_q, system_prompt=system_prompt)}
    )
    return probe.bind(model, resolved.name)
