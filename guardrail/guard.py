"""`Guard`: the object users call. It wraps a model, builds prompts through the model's
adapter, and generates with SARSteer steering on, per the policy.
"""

from __future__ import annotations

import time
from contextlib import nullcontext
import uuid
from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass, field
from typing import Any

import torch
from torch import nn
from transformers.generation.streamers import BaseStreamer

from .activations import forward_last, model_inputs
from .adapter import Adapter, Request, get_adapter, resolve_adapter
from .artifact import SteeringArtifact
from .audio import AudioSource, load_audio
from .errors import PolicyError, RequestError
from .hooks import HookState, hooks_for
from .policy import Policy


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
    prompt_tokens: int = 0
    completion_tokens: int = 0
    finish_reason: str = "length"
    timings: Timings = field(default_factory=Timings)

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


@dataclass
class GuardResult:
    text: str
    token_ids: list[int]        # generated tokens only, up to (not including) the first EOS
    steered: bool
    decision: Decision


class Guard:
    """Generate with SARSteer steering from `artifact`, configured by `policy`.

    >>> guard = Guard(model, processor, policy=Policy(), artifact=art)  # doctest: +SKIP
    >>> guard.generate(audio="question.wav", text="Please answer.").text  # doctest: +SKIP
    """

    def __init__(self, model: nn.Module, processor: Any, policy: Policy | None = None,
                 artifact: SteeringArtifact | None = None, *, adapter: Adapter | str | None = None):
        self.model = model
        self.processor = processor
        self.policy = policy or Policy()
        self.adapter = get_adapter(adapter) if isinstance(adapter, str) else adapter or resolve_adapter(model)
        self.layers = self.adapter.decoder_layers(model)
        self.artifact = artifact
        self._hooks = hooks_for(self.layers)
        self._steer_layers = self._select_layers()
        self._deltas = self._prepare_deltas()

    # -- set-up ----------------------------------------------------------------------
    def _select_layers(self) -> list[int]:
        chosen = self.policy.steering.layers
        if chosen == "all":
            return list(range(len(self.layers)))
        out_of_range = [i for i in chosen if i >= len(self.layers)]
        if out_of_range:
            raise PolicyError(f"policy {self.policy.name!r} steers layers {out_of_range}, but the model has "
                              f"{len(self.layers)} decoder layers (0..{len(self.layers) - 1})")
        return sorted(chosen)

    def _prepare_deltas(self) -> dict[int, torch.Tensor]:
        """alpha * v'_l for each steered layer, on that layer's device and dtype, made once."""
        if self.policy.gate.mode == "off" or self.policy.steering.alpha == 0 and self.artifact is None:
            return {}
        if self.artifact is None:
            raise PolicyError(f"policy {self.policy.name!r} steers (gate.mode: {self.policy.gate.mode}) but no "
                              "artifact was given: calibrate one with guardrail.calibrate, or set gate.mode: off")
        self.artifact.check_model(self.model, self.layers)
        steering = self.policy.steering
        vectors = self.artifact.steering_vectors(steering.safe_rank, steering.safe_strength)
        deltas = {}
        for index in self._steer_layers:
            param = next(self.layers[index].parameters())
            deltas[index] = (steering.alpha * vectors[index]).to(device=param.device, dtype=param.dtype)
        return deltas

    # -- public API ------------------------------------------------------------------
    def generate(self, audio: AudioSource | None = None, text: str = "", *, max_new_tokens: int | None = None,
                 **generate_kwargs: Any) -> GuardResult:
        """Answer one request (audio and/or text) under the policy."""
        return self.generate_batch([{"audio": audio, "text": text}], max_new_tokens=max_new_tokens,
                                   **generate_kwargs)[0]

    def generate_batch(self, requests: Sequence[Mapping[str, Any]], *, max_new_tokens: int | None = None,
                       **generate_kwargs: Any) -> list[GuardResult]:
        """Answer several requests in one batched generate; each gets its own result."""
        started = time.perf_counter()
        batch = [self._request(r, i) for i, r in enumerate(requests)]
        max_new_tokens = self._max_new_tokens(max_new_tokens)
        inputs = model_inputs(self.model, self.adapter.build_inputs(self.processor, batch, self.policy.system_prompt))
        gates = [bool(self._deltas)] * len(batch)
        clock = _Clock()
        kwargs = {"do_sample": False, "max_new_tokens": max_new_tokens, "streamer": clock,
                  "pad_token_id": self.adapter.pad_token_id(self.model, self.processor), **generate_kwargs}
        state = self._state(gates)
        with torch.inference_mode():
            if state is None:
                output = self.model.generate(**inputs, **kwargs)
            else:
                with self._hooks.activate(state):
                    output = self.model.generate(**inputs, **kwargs)
        sequences = output if isinstance(output, torch.Tensor) else output.sequences
        prompt_tokens = _prompt_tokens(inputs)
        generated = sequences[:, inputs["input_ids"].shape[1]:].tolist()
        return self._results(generated, prompt_tokens, gates, clock, started)

    def first_token_logprobs(self, requests: Sequence[Mapping[str, Any]]) -> torch.Tensor:
        """Log-probabilities (batch, vocab) of the first answer token, steered as `generate`
        steers prefill: for measuring how much a policy shifts the model (utility drift).

        >>> guard.first_token_logprobs([{"text": "How do I bake bread?"}]).shape  # doctest: +SKIP
        torch.Size([1, 151936])
        """
        batch = [self._request(r, i) for i, r in enumerate(requests)]
        inputs = model_inputs(self.model, self.adapter.build_inputs(self.processor, batch, self.policy.system_prompt))
        state = self._state([bool(self._deltas)] * len(batch))
        with torch.inference_mode(), self._hooks.activate(state) if state else nullcontext():
            logits = forward_last(self.model, inputs).logits[:, -1]
        return logits.float().log_softmax(dim=-1).cpu()

    # -- internals -------------------------------------------------------------------
    def _request(self, raw: Mapping[str, Any], index: int) -> Request:
        if not isinstance(raw, Mapping):
            raise RequestError(f"request {index} is a {type(raw).__name__}; pass a dict with 'audio' and/or 'text'")
        unknown = set(raw) - {"audio", "text"}
        if unknown:
            raise RequestError(f"request {index} has unknown keys {sorted(unknown)}; accepted: 'audio', 'text'")
        text, audio = raw.get("text") or "", raw.get("audio")
        if not isinstance(text, str):
            raise RequestError(f"request {index}: text must be a str, got {type(text).__name__}")
        if audio is None and not text.strip():
            raise RequestError(f"request {index} has neither audio nor text; pass at least one")
        if audio is not None and not self.adapter.takes_audio:
            raise RequestError(f"request {index} carries audio but {self.adapter.name!r} is a text-only model")
        if audio is not None:
            audio = load_audio(audio, target_sr=self.adapter.sampling_rate(self.processor),
                               max_seconds=self.policy.limits.max_audio_seconds)
        return Request(text=text, audio=audio)

    def _max_new_tokens(self, requested: int | None) -> int:
        limit = self.policy.limits.max_new_tokens
        if requested is None:
            return limit
        if requested < 1 or requested > limit:
            raise RequestError(f"max_new_tokens={requested} is outside 1..{limit} (policy "
                               f"{self.policy.name!r} limits.max_new_tokens); ask for less or raise the limit")
        return requested

    def _state(self, gates: list[bool]) -> HookState | None:
        """Hook state for a batch: None when no sample is steered (the model runs untouched)."""
        if not any(gates):
            return None
        if all(gates):
            return HookState(deltas=self._deltas)
        mask = torch.tensor(gates, dtype=torch.float32)[:, None]
        return HookState(deltas={i: mask.to(d.device, d.dtype) * d for i, d in self._deltas.items()})

    def _results(self, generated: list[list[int]], prompt_tokens: list[int], gates: list[bool], clock: "_Clock",
                 started: float) -> list[GuardResult]:
        eos = self.adapter.eos_token_ids(self.model, self.processor)
        end = time.perf_counter()
        timings = clock.timings(end)
        results = []
        for ids, steered, n_prompt in zip(generated, gates, prompt_tokens):
            cut = next((i for i, t in enumerate(ids) if t in eos), None)
            token_ids = ids if cut is None else ids[:cut]
            decision = Decision(
                request_id=uuid.uuid4().hex, policy=self.policy.name, adapter=self.adapter.name,
                gate_mode=self.policy.gate.mode, steered=steered, reason=self._reason(steered),
                layers=sorted(self._deltas) if steered else [], alpha=self.policy.steering.alpha if steered else 0.0,
                artifact_id=self.artifact.id if self.artifact else None, prompt_tokens=n_prompt,
                completion_tokens=len(token_ids), finish_reason="length" if cut is None else "stop",
                timings=Timings(timings.prefill_ms, timings.decode_ms, (end - started) * 1e3))
            results.append(GuardResult(self.adapter.decode(self.processor, token_ids), token_ids, steered, decision))
        return results

    def _reason(self, steered: bool) -> str:
        if steered:
            return f"gate.mode={self.policy.gate.mode}: steering every request"
        return "gate.mode=off: steering disabled by policy"


def _prompt_tokens(inputs: dict[str, Any]) -> list[int]:
    mask = inputs.get("attention_mask")
    if mask is None:
        return [inputs["input_ids"].shape[1]] * inputs["input_ids"].shape[0]
    return mask.sum(dim=1).tolist()


class _Clock(BaseStreamer):
    """Receives the prompt, then each new token: the first new token ends prefill."""

    def __init__(self) -> None:
        self.start = time.perf_counter()
        self.first_token: float | None = None
        self._calls = 0

    def put(self, value: torch.Tensor) -> None:
        self._calls += 1
        if self._calls == 2:
            self.first_token = time.perf_counter()

    def end(self) -> None:
        pass

    def timings(self, now: float) -> Timings:
        first = self.first_token or now
        return Timings(prefill_ms=(first - self.start) * 1e3, decode_ms=(now - first) * 1e3)
