"""Calibration: paired harmful/safe queries -> SARSteer artifact (DESIGN.md section 1).

Cost: two forward passes per harmful query (with and without the refusal text) and one
per safe query, batched, every layer captured in each pass; one SVD per layer.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Callable, Sequence
from typing import Any, Literal

import numpy as np
import torch
from torch import nn

from guardrail.audio import describe_source, load_audio
from guardrail.defaults import default_instruction
from guardrail.errors import RequestError
from guardrail.models.adapter import Adapter, resolve_adapter
from guardrail.models.identity import identify
from guardrail.requests import Request
from guardrail.steering.activations import last_token_activations
from guardrail.steering.artifact import CalibrationSet, MethodParams, SteeringArtifact, new_metadata
from guardrail.steering.vectors import DEFAULT_RANK, DEFAULT_REFUSAL_TEXT, DEFAULT_STRENGTH, refusal_vector, safe_basis

# Directions kept per layer beyond k, so a policy can sweep k without recalibrating.
MIN_STORED_RANK = 32

CalibrationItem = Any  # audio path | bytes | (array, sampling_rate) | str (a text query)


def calibrate(
    model: nn.Module,
    processor: Any,
    harmful: Sequence[CalibrationItem],
    safe: Sequence[CalibrationItem],
    instruction: str | None = None,
    *,
    refusal_text: str = DEFAULT_REFUSAL_TEXT,
    rank: int = DEFAULT_RANK,
    strength: float = DEFAULT_STRENGTH,
    batch_size: int = 8,
    adapter: Adapter | str | None = None,
    max_audio_seconds: float | None = None,
    method: Literal["sarsteer", "diff_means"] = "sarsteer",
    on_batch: Callable[[int], None] | None = None,
) -> SteeringArtifact:
    """Compute SARSteer vectors for `model` from harmful and safe calibration queries.

    Items are audio (a path, encoded bytes or (array, sampling_rate)) for an audio model,
    or text questions (str) for a text model; the instruction follows each item in the
    user turn. Refusal vector: mean over harmful items of h(item, instruction + refusal)
    - h(item, instruction). Safe basis: top directions of the centred safe activations.

    method="diff_means" is the baseline the paper improves on: mean harmful minus mean safe
    activation (no refusal text), which mostly measures the audio/text activation gap.

    >>> art = calibrate(model, tokenizer, harmful=["How do I pick a lock?"] * 2,
    ...                 safe=["How do I bake bread?", "How do I tie a tie?"])  # doctest: +SKIP
    >>> art.save("artifacts/my-model")  # doctest: +SKIP
    """
    if method not in ("sarsteer", "diff_means"):
        raise ValueError(f"unknown calibration method {method!r}; use 'sarsteer' or 'diff_means'")
    adapter = resolve_adapter(model, adapter)
    if len(harmful) < 1 or len(safe) < 2:
        raise RequestError(
            "calibration needs at least 1 harmful and 2 safe queries (the paper uses 100 each; "
            "results were flat from 10 up)"
        )
    instruction = instruction or default_instruction(adapter.takes_audio)
    sr = adapter.sampling_rate(processor)
    harmful_q = [calibration_query(item, instruction, adapter, sr, max_audio_seconds) for item in harmful]
    safe_q = [calibration_query(item, instruction, adapter, sr, max_audio_seconds) for item in safe]

    collect = lambda qs: last_token_activations(model, processor, adapter, qs, batch_size=batch_size, on_batch=on_batch)
    refusal, basis = _directions(collect, harmful_q, safe_q, refusal_text, method, max(rank, MIN_STORED_RANK))

    layers = adapter.decoder_layers(model)
    stored = basis[0].shape[1]
    params = MethodParams(
        name=method,
        refusal_text=refusal_text,
        instruction=instruction,
        safe_rank=min(rank, stored),
        basis_rank=stored,
        safe_strength=strength,
    )
    calib = CalibrationSet(n_harmful=len(harmful_q), n_safe=len(safe_q), sha256=requests_hash(harmful_q, safe_q))
    metadata = new_metadata(identify(model, layers, adapter.name), params, calib, refusal, basis)
    return SteeringArtifact(refusal=refusal, basis=basis, metadata=metadata)


def _directions(
    collect: Callable[[Sequence[Request]], torch.Tensor],
    harmful_q: list[Request],
    safe_q: list[Request],
    refusal_text: str,
    method: Literal["sarsteer", "diff_means"],
    stored_rank: int,
) -> tuple[dict[int, torch.Tensor], dict[int, torch.Tensor]]:
    """Per layer, the refusal direction (or the difference of means) and the safe basis, from the
    activations `collect` returns (layers, queries, hidden): harmful, then safe, then with refusal."""
    with_refusal = [Request(text=f"{q.text} {refusal_text}", audio=q.audio) for q in harmful_q]
    h_base, h_safe = collect(harmful_q), collect(safe_q)
    if method == "sarsteer":
        h_refuse = collect(with_refusal)
        refusal = {layer: refusal_vector(h_refuse[layer], h_base[layer]) for layer in range(h_base.shape[0])}
    else:
        refusal = {layer: h_base[layer].mean(0) - h_safe[layer].mean(0) for layer in range(h_base.shape[0])}
    basis = {layer: safe_basis(h_safe[layer], stored_rank) for layer in range(h_safe.shape[0])}
    return refusal, basis


def calibration_query(
    item: CalibrationItem, instruction: str, adapter: Adapter, sr: int, max_seconds: float | None = None
) -> Request:
    """The request for one calibration item: a text item is followed by `instruction`; an audio
    item (loaded at `sr` Hz, cut to `max_seconds`) gets `instruction` as its text."""
    if isinstance(item, str) and not _looks_like_audio_path(item, adapter):
        return Request(text=f"{item} {instruction}")
    adapter.require_audio_support(f"calibration item {describe_source(item)}")
    return Request(text=instruction, audio=load_audio(item, target_sr=sr, max_seconds=max_seconds))


def _looks_like_audio_path(item: str, adapter: Adapter) -> bool:
    # For an audio model a str is a file path when it names an audio file, else a text query.
    return adapter.takes_audio and item.lower().endswith((".wav", ".flac", ".ogg", ".mp3", ".opus"))


def requests_hash(*groups: Sequence[Request], system_prompt: str | None = None) -> str:
    """sha256 of groups of requests (text and audio samples, each tagged with its group's index; the tools a
    request shows and the `system_prompt` around them, when there are any: a context changes the prompts)."""
    digest = hashlib.sha256()
    if system_prompt:
        digest.update(f"system:{system_prompt}".encode())
    for label, group in enumerate(groups):
        for request in group:
            digest.update(f"{label}:{request.text}".encode())
            if request.tools:
                digest.update(json.dumps(request.tools, sort_keys=True).encode())
            if request.audio is not None:
                digest.update(np.ascontiguousarray(request.audio, dtype=np.float32).tobytes())
    return digest.hexdigest()
