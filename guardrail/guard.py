"""`Guard`: the object users call. It wraps a model, builds prompts through the model's
adapter, and generates with SARSteer steering turned on per request by the policy's gate.
"""

from __future__ import annotations

import time
import uuid
from collections.abc import Mapping, Sequence
from contextlib import nullcontext
from pathlib import Path
from typing import Any

import torch
from torch import nn
from transformers.generation.streamers import BaseStreamer

from guardrail.steering.activations import forward_last, model_inputs
from guardrail.models.adapter import Adapter, resolve_adapter
from guardrail.requests import Request
from guardrail.steering.artifact import SteeringArtifact
from guardrail.audio import AudioSource, load_audio
from guardrail.errors import PolicyError, RequestError
from guardrail.gate.decide import Gate, GateDecision, ScoringProbe
from guardrail.results import Decision, GuardResult, Timings
from guardrail.obs.logs import Metrics, decision_event, decision_logger
from guardrail.runtime.eager import HookState, PrefillGate, StopForward, hooks_for
from guardrail.gate.linear import LinearProbe, steer_flags
from guardrail.runtime.static import SteeringSlot, slot_for
from guardrail.policy.schema import Policy, RuntimePolicy
from guardrail.obs.streaming import GuardStream, TokenQueue


class Guard:
    """Generate with SARSteer steering from `artifact`, configured by `policy`.

    >>> guard = Guard(model, processor, policy=Policy(), artifact=art)  # doctest: +SKIP
    >>> guard.generate(audio="question.wav", text="Please answer.").text  # doctest: +SKIP

    With `gate.mode: probe`, pass `probe=` (a probe directory or a trained probe): it scores each
    request at prefill and steering turns on only for the samples it flags.
    """

    def __init__(self, model: nn.Module, processor: Any, policy: Policy | None = None,
                 artifact: SteeringArtifact | None = None, *, adapter: Adapter | str | None = None,
                 probe: ScoringProbe | str | Path | None = None):
        self.model = model
        self.processor = processor
        self.policy = policy or Policy()
        self.adapter = resolve_adapter(model, adapter)
        self.layers = self.adapter.decoder_layers(model)
        self.artifact = artifact
        self._hooks = hooks_for(self.layers)
        self._steer_layers = self._select_layers()
        self._deltas = self._prepare_deltas()
        self.gate = Gate(self.policy, probe, can_steer=bool(self._deltas))
        self.metrics = Metrics()
        self._logger = decision_logger()
        if self.gate.probe is not None:
            self.gate.probe.check_model(model, self.layers)
        self._linear = self._device_probe()
        steers_or_scores = bool(self._deltas or self._linear is not None)
        if (self.policy.runtime.cache == "static" or _is_compiled(model)) and steers_or_scores:
            self._slot()  # hooks in place before the first (compiled) generation

    def _device_probe(self) -> LinearProbe | None:
        """The probe's torch form on the device of its first layer (None: the host scores)."""
        if self.gate.linear is None:
            return None
        return self.gate.linear.to(next(self.layers[self.gate.linear.layers[0]].parameters()).device)

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
        if self.policy.gate.mode == "off" or self.policy.steering.alpha == 0:
            return {}  # nothing to add: the model runs untouched (a monitor policy still scores)
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
                       _listener: BaseStreamer | None = None, **generate_kwargs: Any) -> list[GuardResult]:
        """Answer several requests in one batched generate; each gets its own gate and result."""
        started = time.perf_counter()
        if len(requests) > self.policy.limits.max_batch:
            raise RequestError(f"{len(requests)} requests in one batch; policy {self.policy.name!r} allows "
                               f"{self.policy.limits.max_batch} (limits.max_batch): split the batch or raise the limit")
        batch = [self._request(r, i) for i, r in enumerate(requests)]
        max_new_tokens = self._max_new_tokens(max_new_tokens)
        inputs = self._inputs(batch)
        known = self._prepass(inputs) if self.gate.needs_prepass else None
        keep = [i for i in range(len(batch)) if known is None or not known.block[i]]
        results: list[GuardResult | None] = [None] * len(batch)
        if keep:
            sub_inputs = inputs if len(keep) == len(batch) else self._inputs([batch[i] for i in keep])
            sub_known = None if known is None else _subset(known, keep)
            generated, decision, clock = self._generate(sub_inputs, sub_known, max_new_tokens, generate_kwargs,
                                                        _listener)
            prompt_tokens = _prompt_tokens(sub_inputs)
            for j, i in enumerate(keep):
                results[i] = self._result(generated[j], decision, j, prompt_tokens[j], clock, started)
        for i in range(len(batch)):
            if results[i] is None:
                results[i] = self._blocked(known, i, started)
        self._log(results, requests)  # type: ignore[arg-type]
        return results  # type: ignore[return-value]

    def _log(self, results: list[GuardResult], requests: Sequence[Mapping[str, Any]]) -> None:
        """One structured event per request, and the counters."""
        log_content = self.policy.logging.log_content
        for result, request in zip(results, requests):
            self.metrics.observe(result)
            self._logger.info("guardrail.decision", **decision_event(result, dict(request), log_content))

    def stream(self, audio: AudioSource | None = None, text: str = "", *, max_new_tokens: int | None = None,
               **generate_kwargs: Any) -> GuardStream:
        """Answer one request, yielding text chunks as tokens are generated.

        >>> chunks = guard.stream(text="How do I bake bread?")  # doctest: +SKIP
        >>> "".join(chunks) == chunks.result.text  # doctest: +SKIP
        True
        """
        request = {"audio": audio, "text": text}
        self._request(request, 0)  # validate in the caller's thread: bad input raises here, not mid-stream
        streamer = TokenQueue(lambda ids: self.adapter.decode(self.processor, ids),
                              self.adapter.eos_token_ids(self.model, self.processor))
        run = lambda listener: self.generate_batch([request], max_new_tokens=max_new_tokens, _listener=listener,
                                                   **generate_kwargs)[0]
        return GuardStream(run, streamer)

    def first_token_logprobs(self, requests: Sequence[Mapping[str, Any]]) -> torch.Tensor:
        """Log-probabilities (batch, vocab) of the first answer token, steered as `generate`
        steers prefill: for measuring how much a policy shifts the model (utility drift).

        >>> guard.first_token_logprobs([{"text": "How do I bake bread?"}]).shape  # doctest: +SKIP
        torch.Size([1, 151936])
        """
        inputs = self._inputs([self._request(r, i) for i, r in enumerate(requests)])
        known = self._prepass(inputs) if self.gate.needs_prepass else None
        state, _ = self._hook_state(known, inputs["input_ids"].shape[0])
        with torch.inference_mode(), self._hooks.activate(state) if state else nullcontext():
            logits = forward_last(self.model, inputs).logits[:, -1]
        return logits.float().log_softmax(dim=-1).cpu()

    # -- gating ----------------------------------------------------------------------
    def _hook_state(self, known: GateDecision | None, batch: int) -> tuple[HookState | None, list[GateDecision]]:
        """Hook state for a call, and where the gate's decision will be recorded.

        A decision known beforehand (mode always/off, or a pre-pass) fixes the deltas now;
        otherwise the probe decides inside prefill (PrefillGate)."""
        if known is None and self.gate.mode == "probe":
            return self._probe_state(stop=False)
        decision = known or self.gate.fixed(batch)
        deltas = self._gated(decision.steer)
        return (HookState(deltas=deltas) if deltas else None), [decision]

    def _probe_state(self, stop: bool) -> tuple[HookState, list[GateDecision]]:
        """Hook state whose gate lets the probe decide inside prefill (and, with `stop`, ends the
        pass there), and the list the decision is recorded in."""
        record: list[GateDecision | torch.Tensor] = []

        def decide(captured: dict[int, torch.Tensor]) -> dict[int, torch.Tensor]:
            if self._linear is not None and not stop:  # on the device: nothing waits for the host
                record.append(self._linear.score(captured))
                return self._gated_on_device(record[-1])
            record.append(self.gate.decide(captured))
            return {} if stop else self._gated(record[-1].steer)

        return HookState(gate=PrefillGate(tuple(self.gate.layers), decide, stop=stop)), record

    def _recorded(self, record: list[GateDecision | torch.Tensor], batch: int) -> GateDecision:
        """The gate's decision once generation is over (device scores are read only now)."""
        if not record:
            return self.gate.failure(batch, RuntimeError("the probe's layers never ran"))
        if isinstance(record[0], torch.Tensor):
            return self.gate.decide_scores(record[0].float().cpu().numpy(), batch)
        return record[0]

    def _gated_on_device(self, scores: torch.Tensor) -> dict[int, torch.Tensor]:
        """Per-sample deltas from device scores, as `Gate.decide_scores` would decide them (a
        non-finite score anywhere is a failure of the whole batch: gate.on_error applies)."""
        if not self._deltas:
            return {}
        steer = steer_flags(scores, self.gate.threshold, float(self.policy.gate.on_error == "steer"))
        return {i: steer[:, None].to(d.device, d.dtype) * d for i, d in self._deltas.items()}

    def _gated(self, steer: list[bool]) -> dict[int, torch.Tensor]:
        """Deltas for a batch: shared (hidden,) tensors when all samples steer, masked when some do."""
        if not any(steer):
            return {}
        if all(steer):
            return self._deltas
        mask = torch.tensor(steer, dtype=torch.float32)[:, None]
        return {i: mask.to(d.device, d.dtype) * d for i, d in self._deltas.items()}

    def _prepass(self, inputs: dict[str, Any]) -> GateDecision:
        """Run prefill only up to the probe's layers and decide before generating."""
        state, record = self._probe_state(stop=True)
        with torch.inference_mode(), self._hooks.activate(state):
            try:
                forward_last(self.model, inputs)
            except StopForward:
                pass
        return self._recorded(record, inputs["input_ids"].shape[0])

    # -- generation ------------------------------------------------------------------
    def _generate(self, inputs: dict[str, Any], known: GateDecision | None, max_new_tokens: int,
                  generate_kwargs: dict[str, Any], listener: BaseStreamer | None = None,
                  ) -> tuple[list[list[int]], GateDecision, "_Clock"]:
        clock = _Clock(listener)
        kwargs = {"do_sample": False, "max_new_tokens": max_new_tokens, "streamer": clock,
                  "pad_token_id": self.adapter.pad_token_id(self.model, self.processor), **self._runtime_kwargs(),
                  **generate_kwargs}
        if self._static_path(kwargs):
            return self._generate_static(inputs, known, kwargs, clock)
        batch = inputs["input_ids"].shape[0]
        state, record = self._hook_state(known, batch)
        with torch.inference_mode(), self._hooks.activate(state) if state else nullcontext():
            output = self.model.generate(**inputs, **kwargs)
        sequences = output if isinstance(output, torch.Tensor) else output.sequences
        decision = self._recorded(record, batch)
        return sequences[:, inputs["input_ids"].shape[1]:].tolist(), decision, clock

    def _runtime_kwargs(self) -> dict[str, Any]:
        return runtime_generate_kwargs(self.policy.runtime)

    def _static_path(self, kwargs: Mapping[str, Any]) -> bool:
        """Steering through device buffers when generation may run compiled: a static cache
        (transformers compiles the decoding step) or a model whose forward is compiled. The
        eager hooks read a context variable, which compiled graphs cannot."""
        cache = kwargs.get("cache_implementation") or getattr(self.model.generation_config,
                                                              "cache_implementation", None)
        compiled = cache == "static" or "compile_config" in kwargs or _is_compiled(self.model)
        return compiled and bool(self._deltas or self._linear is not None)

    def _slot(self) -> SteeringSlot:
        hidden = next(iter(self._deltas.values())).numel() if self._deltas else self._linear.hidden
        slot = slot_for(self.layers, hidden, self.policy.limits.max_batch)
        slot.ensure(sorted(self._deltas), self._linear.layers if self._linear is not None else ())
        return slot

    def _generate_static(self, inputs: dict[str, Any], known: GateDecision | None, kwargs: dict[str, Any],
                         clock: "_Clock") -> tuple[list[list[int]], GateDecision, "_Clock"]:
        """Generate with the gate and deltas in device buffers that the compiled graph reads."""
        batch = inputs["input_ids"].shape[0]
        if known is None and self.gate.mode == "probe" and self._linear is None:
            known = self._prepass(inputs)  # a probe with no torch form decides on the host first
        decision = known or (None if self.gate.mode == "probe" else self.gate.fixed(batch))
        slot = self._slot()
        with torch.inference_mode(), slot.request(
                self._deltas, batch, steer=None if decision is None else decision.steer, probe=self._linear,
                threshold=self.gate.threshold if self.gate.threshold is not None else 0.5, on_error_steer=self.policy.gate.on_error == "steer"):
            output = self.model.generate(**inputs, **kwargs)
            scores = slot.decision(batch)[1] if decision is None else None
        if decision is None:
            decision = self.gate.decide_scores(scores, batch)
        sequences = output if isinstance(output, torch.Tensor) else output.sequences
        return sequences[:, inputs["input_ids"].shape[1]:].tolist(), decision, clock

    def _inputs(self, batch: list[Request]) -> dict[str, Any]:
        return model_inputs(self.model, self.adapter.build_inputs(self.processor, batch, self.policy.system_prompt))

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
        if audio is not None:
            self.adapter.require_audio_support(f"request {index}")
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

    # -- results ---------------------------------------------------------------------
    def _decision(self, gate: GateDecision, j: int, **fields: Any) -> Decision:
        steered = gate.steer[j]
        return Decision(request_id=uuid.uuid4().hex, policy=self.policy.name, adapter=self.adapter.name,
                        gate_mode=self.policy.gate.mode, steered=steered, reason=gate.reasons[j],
                        layers=sorted(self._deltas) if steered else [],
                        alpha=self.policy.steering.alpha if steered else 0.0,
                        artifact_id=self.artifact.id if self.artifact else None, probe_score=gate.scores[j],
                        **fields)

    def _result(self, ids: list[int], gate: GateDecision, j: int, prompt_tokens: int, clock: "_Clock",
                started: float) -> GuardResult:
        eos = self.adapter.eos_token_ids(self.model, self.processor)
        cut = next((k for k, t in enumerate(ids) if t in eos), None)
        token_ids = ids if cut is None else ids[:cut]
        now = time.perf_counter()
        timings = clock.timings(now)
        decision = self._decision(gate, j, prompt_tokens=prompt_tokens, completion_tokens=len(token_ids),
                                  finish_reason="length" if cut is None else "stop",
                                  timings=Timings(timings.prefill_ms, timings.decode_ms, (now - started) * 1e3))
        return GuardResult(self.adapter.decode(self.processor, token_ids), token_ids, decision.steered, decision)

    def _blocked(self, known: GateDecision, i: int, started: float) -> GuardResult:
        decision = self._decision(known, i, blocked=True, finish_reason="blocked",
                                  timings=Timings(total_ms=(time.perf_counter() - started) * 1e3))
        return GuardResult(self.policy.actions.refusal_message, [], False, decision)


def runtime_generate_kwargs(runtime: RuntimePolicy) -> dict[str, Any]:
    """`generate()` arguments for a policy's runtime section (static cache, compiled decoding step)."""
    if runtime.cache != "static":
        return {}
    if not runtime.compile:
        return {"cache_implementation": "static", "disable_compile": True}
    from transformers import CompileConfig
    config = CompileConfig()
    config._compile_all_devices = True  # the policy asked for it: compile on CPU too
    return {"cache_implementation": "static", "compile_config": config}


def _is_compiled(model: nn.Module) -> bool:
    """True for a `torch.compile`d module or one whose forward was replaced by a compiled function."""
    forward = getattr(model, "forward", None)
    return (type(model).__name__ == "OptimizedModule" or hasattr(forward, "_torchdynamo_orig_callable")
            or hasattr(getattr(forward, "__func__", None), "_torchdynamo_orig_callable"))


def _subset(decision: GateDecision, keep: list[int]) -> GateDecision:
    return GateDecision(*[[values[i] for i in keep] for values in
                          (decision.steer, decision.block, decision.scores, decision.reasons)])


def _prompt_tokens(inputs: dict[str, Any]) -> list[int]:
    mask = inputs.get("attention_mask")
    if mask is None:
        return [inputs["input_ids"].shape[1]] * inputs["input_ids"].shape[0]
    return mask.sum(dim=1).tolist()


class _Clock(BaseStreamer):
    """Receives the prompt, then each new token: the first new token ends prefill."""

    def __init__(self, listener: BaseStreamer | None = None) -> None:
        self.start = time.perf_counter()
        self.first_token: float | None = None
        self._calls = 0
        self._listener = listener

    def put(self, value: torch.Tensor) -> None:
        self._calls += 1
        if self._calls == 2:
            self.first_token = time.perf_counter()
        if self._listener is not None:
            self._listener.put(value)

    def end(self) -> None:
        if self._listener is not None:
            self._listener.end()

    def timings(self, now: float) -> Timings:
        first = self.first_token or now
        return Timings(prefill_ms=(first - self.start) * 1e3, decode_ms=(now - first) * 1e3)
