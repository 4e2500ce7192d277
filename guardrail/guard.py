"""`Guard`: the object users call. It wraps a model, builds prompts through the model's
adapter, and generates with SARSteer steering turned on per request by the policy's gate.

A call is: validate the requests (`guardrail.requests`) -> build the model's inputs -> let the gate
decide (a pre-pass when blocking or exact mode needs the verdict first) -> generate through a
steering backend (`guardrail.runtime`) -> one result and decision record per request, logged.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from types import MappingProxyType
from typing import Any

import torch
from torch import nn
from transformers.generation.streamers import BaseStreamer

from guardrail.audio import AudioSource
from guardrail.errors import PolicyError
from guardrail.gate.decide import GateVerdict, ScoringProbe
from guardrail.gate.linear import LinearProbe
from guardrail.models.adapter import Adapter, resolve_adapter
from guardrail.models.answer import Answer, markers_for
from guardrail.models.context import context_length, prompt_lengths
from guardrail.models.tool_calls import CALL_OPEN
from guardrail.obs.logs import decision_event, decision_logger
from guardrail.obs.metrics import Metrics
from guardrail.obs.streaming import GenerationClock, GuardStream, RowControls, TokenQueue
from guardrail.policy.schema import Policy
from guardrail.requests import (
    Request,
    check_batch_size,
    check_max_new_tokens,
    check_one_row_per_request,
    check_prompt_tokens,
    check_stop,
    parse_request,
    request_dict,
    request_fields,
)
from guardrail.results import DecisionTemplate, GuardResult, Timings, until_eos
from guardrail.runtime.backend import SteeringBackend, SteeringPlan
from guardrail.runtime.eager_backend import EagerBackend
from guardrail.runtime.sampling import answer_controls, seeded
from guardrail.runtime.static_backend import StaticBackend, is_compiled, runs_compiled, runtime_generate_kwargs
from guardrail.steering.activations import model_inputs
from guardrail.steering.artifact import SteeringArtifact

RawRequest = Mapping[str, Any] | Request  # {"audio": ..., "text": ...} or a guardrail.Request


class Guard:
    """Generate with SARSteer steering from `artifact`, configured by `policy`.

    >>> guard = Guard(model, processor, policy=Policy(), artifact=art)  # doctest: +SKIP
    >>> guard.generate(audio="question.wav", text="Please answer.").text  # doctest: +SKIP

    `policy` may be a `Policy`, a file path or shipped name ("gated"), or a mapping; `artifact` a
    `SteeringArtifact` or its directory. With `gate.mode: probe`, pass `probe=` (a probe directory or a
    trained probe): it scores each request at prefill and steering turns on only for the samples it flags.
    """

    def __init__(
        self,
        model: nn.Module,
        processor: Any,
        policy: Policy | str | Path | Mapping[str, Any] | None = None,
        artifact: SteeringArtifact | str | Path | None = None,
        *,
        adapter: Adapter | str | None = None,
        probe: ScoringProbe | str | Path | None = None,
    ):
        self.model = model
        self.processor = processor
        self.policy = Policy.of(policy)
        self.adapter = resolve_adapter(model, adapter)
        self.layers = self.adapter.decoder_layers(model)
        self.artifact = artifact = SteeringArtifact.load(artifact) if isinstance(artifact, (str, Path)) else artifact
        self._plan = SteeringPlan.for_policy(self.policy, model, self.layers, artifact, probe)
        self.gate = self._plan.gate
        self.metrics = Metrics()
        self._logger = decision_logger()
        self._eager = EagerBackend(model, self.layers, self._plan)
        self._static = StaticBackend(model, self.layers, self._plan, self.policy.limits.max_batch)
        if (self.policy.runtime.cache == "static" or is_compiled(model)) and self._plan.active:
            self._static.install()  # hooks in place before the first (compiled) generation

    @classmethod
    def from_policy(
        cls,
        policy: Policy | str | Path | Mapping[str, Any],
        *,
        dtype: str | None = None,
        device: str | None = None,
        device_map: str | Mapping[str, int | str] | None = None,
    ) -> Guard:
        """A guard built from the policy's `model:` section: the model and processor (`path`, `adapter`),
        the artifact and the probe (`probe`, or ARTIFACT/probe when the gate needs one). The model loads
        where the policy's `runtime:` section says (`device`, `dtype`, `device_map`); arguments given here
        win, and a `device` or `device_map` given here replaces the section's placement (see `load_model`).

        >>> guard = Guard.from_policy("policies/examples/kids-voice-app.yaml", device="cuda")  # doctest: +SKIP
        """
        from guardrail.defaults import default_probe
        from guardrail.models.loading import load_model

        resolved = Policy.of(policy)
        spec = resolved.model
        if spec.path is None:
            raise PolicyError(f"policy {resolved.name!r} has no model.path: name the model to serve there")
        placement = resolved.runtime.placement(dtype=dtype, device=device, device_map=device_map)
        model, processor, adapter = load_model(spec.path, adapter=spec.adapter, **placement)
        probe = spec.probe or default_probe(spec.artifact, resolved.gate.mode)
        return cls(model, processor, policy=resolved, artifact=spec.artifact, adapter=adapter, probe=probe)

    # -- what the guard steers with ----------------------------------------------------
    @property
    def steering_deltas(self) -> Mapping[int, torch.Tensor]:
        """alpha * v'_l added at each steered layer (read-only; empty when the policy never steers)."""
        return MappingProxyType(self._plan.deltas)

    @property
    def device_probe(self) -> LinearProbe | None:
        """The probe as torch arithmetic on the model's device, scored inside prefill (None: the probe,
        if any, scores on the host)."""
        return self._plan.device_probe

    def backend_for(self, **generate_kwargs: Any) -> SteeringBackend:
        """The backend a call with these `generate()` arguments steers through: device buffers when
        generation may run compiled (static cache, compile_config, a compiled model; such calls run alone
        on the model, even unsteered ones, as compiled graphs specialise on the hooks present), otherwise
        per-thread hooks."""
        kwargs = {**runtime_generate_kwargs(self.policy.runtime), **generate_kwargs}
        return self._static if runs_compiled(self.model, kwargs) else self._eager

    # -- public API ------------------------------------------------------------------
    def generate(
        self,
        audio: AudioSource | None = None,
        text: str = "",
        *,
        messages: Sequence[Mapping[str, Any]] | None = None,
        tools: Sequence[Mapping[str, Any]] | None = None,
        tool_choice: Any = None,
        response_format: Any = None,
        max_new_tokens: int | None = None,
        stop: str | Sequence[str] | None = None,
        seed: int | None = None,
        **generate_kwargs: Any,
    ) -> GuardResult:
        """Answer one request under the policy: audio and/or text, or a conversation (`messages`, OpenAI-shaped
        dicts: see `guardrail.conversation`), with the `tools` the model may call (`result.tool_calls`;
        `tool_choice` "auto", "none", "required" or a tool's name); `response_format="json_object"` opens the
        answer with "{".
        `stop`: strings that end the answer (cut before them); `seed`: reproducible sampling."""
        request = request_dict(
            audio, text, messages, tools=tools, tool_choice=tool_choice, response_format=response_format
        )
        return self.generate_batch([request], max_new_tokens=max_new_tokens, stop=stop, seed=seed, **generate_kwargs)[0]

    def generate_batch(
        self,
        requests: Sequence[RawRequest],
        *,
        max_new_tokens: int | None = None,
        stop: str | Sequence[str] | None = None,
        seed: int | None = None,
        streamers: Sequence[BaseStreamer | None] | None = None,
        cancel: Sequence[threading.Event | None] | None = None,
        **generate_kwargs: Any,
    ) -> list[GuardResult]:
        """Answer several requests (dicts with 'audio' and/or 'text', or 'messages' and 'tools'; or
        `guardrail.Request`s) in one batched generate; each gets its own gate and result. Per request,
        `streamers[i]` receives its prompt and new tokens (e.g. `self.streamer(...)`), and setting `cancel[i]`
        ends its answer at the next token (finish_reason "cancelled"). `generate_kwargs` go to `model.generate`
        (a `streamer` there receives every row, as with `model.generate`)."""
        started = time.perf_counter()
        limits = self.policy.limits
        check_batch_size(len(requests), limits.max_batch, self.policy.name)
        max_new_tokens = self._check_call(max_new_tokens, generate_kwargs)
        stops = check_stop(stop)
        rows = RowControls.of(len(requests), streamers, cancel, generate_kwargs)
        batch = self.parse_requests(requests)
        inputs = self._model_inputs(batch, max_new_tokens)
        backend = self.backend_for(**generate_kwargs)
        known = backend.prepass(inputs) if self.gate.needs_prepass else None
        keep = [i for i in range(len(batch)) if known is None or not known.block[i]]
        results: dict[int, GuardResult] = {}
        if keep:
            kept = [batch[i] for i in keep]
            sub_inputs = inputs if len(keep) == len(batch) else self._model_inputs(kept, None)
            streamer, row_stops = rows.subset(keep)
            clock = GenerationClock(streamer)
            kwargs = {
                "do_sample": False,
                "max_new_tokens": max_new_tokens,
                "pad_token_id": self.adapter.pad_token_id(self.model, self.processor),
                **runtime_generate_kwargs(self.policy.runtime),
                **generate_kwargs,
                "streamer": clock,
                **answer_controls(kept, sub_inputs, stops, self.adapter.tokenizer(self.processor), generate_kwargs),
                **row_stops.generate_kwargs(generate_kwargs),
            }
            with seeded(seed, sub_inputs["input_ids"].device):
                generated, verdict = backend.generate(sub_inputs, None if known is None else known.subset(keep), kwargs)
            for j, (i, prompt) in enumerate(zip(keep, prompt_lengths(sub_inputs))):
                answer = Answer(generated[j], prompt, stops, batch[i])
                cut = row_stops.cut(j, sub_inputs["input_ids"].shape[1])
                results[i] = self._answered(answer, verdict, j, clock, started, cut)
        if known is not None:  # the requests not kept: blocked before generating
            results.update((i, self._blocked(known, i, started)) for i in range(len(batch)) if known.block[i])
        answers = [results[i] for i in range(len(batch))]
        self._log(answers, batch)
        return answers

    def stream(
        self,
        audio: AudioSource | None = None,
        text: str = "",
        *,
        messages: Sequence[Mapping[str, Any]] | None = None,
        tools: Sequence[Mapping[str, Any]] | None = None,
        tool_choice: Any = None,
        response_format: Any = None,
        max_new_tokens: int | None = None,
        stop: str | Sequence[str] | None = None,
        seed: int | None = None,
        **generate_kwargs: Any,
    ) -> GuardStream:
        """Answer one request (as `generate` takes it), yielding text chunks as tokens are generated; text from
        a stop string on, and tool-call markup, is not streamed (`.result.tool_calls` holds the calls). Closing
        the stream (`close()`, a `with` block, breaking out of the loop, dropping it) stops generation at the
        next token.

        >>> chunks = guard.stream(text="How do I bake bread?")  # doctest: +SKIP
        >>> "".join(chunks) == chunks.result.text  # doctest: +SKIP
        True
        """
        request = request_dict(
            audio, text, messages, tools=tools, tool_choice=tool_choice, response_format=response_format
        )
        # validate in the caller's thread: bad input raises here, not mid-stream
        parsed = self.parse_requests([request])
        self._model_inputs(parsed, self._check_call(max_new_tokens, generate_kwargs))
        streamer = self.streamer(parsed[0], stop)
        run = lambda listener: self.generate_batch(  # the parsed request: its audio is not decoded again
            parsed,
            max_new_tokens=max_new_tokens,
            stop=stop,
            seed=seed,
            streamers=[listener],
            cancel=[streamer.stop],
            **generate_kwargs,
        )[0]
        return GuardStream(run, streamer)

    def streamer(
        self,
        request: Request,
        stop: str | Sequence[str] | None = None,
        *,
        sink: Callable[[str], None] | None = None,
        on_open: Callable[[], None] | None = None,
    ) -> TokenQueue:
        """The text streamer of one parsed request (`parse_requests`) for `generate_batch(streamers=...)`: it
        decodes the answer's tokens and hands each new piece of text to `sink` (default: its `queue`), holding back
        a stop string and tool-call markup; `on_open` runs when generation starts."""
        markers = markers_for(request)
        return TokenQueue(
            lambda ids: self.adapter.decode(self.processor, ids, markers),
            self.adapter.eos_token_ids(self.model, self.processor),
            stops=check_stop(stop),
            holds=(CALL_OPEN,) if markers else (),
            sink=sink,
            on_open=on_open,
        )

    def first_token_logprobs(self, requests: Sequence[RawRequest]) -> torch.Tensor:
        """Log-probabilities (batch, vocab) of the first answer token, steered as `generate`
        steers prefill: for measuring how much a policy shifts the model (utility drift).

        >>> guard.first_token_logprobs([{"text": "How do I bake bread?"}]).shape  # doctest: +SKIP
        torch.Size([1, 151936])
        """
        inputs = self._model_inputs(self.parse_requests(requests), 1)
        backend = self.backend_for()
        known = backend.prepass(inputs) if self.gate.needs_prepass else None
        return backend.first_token_logits(inputs, known).float().log_softmax(dim=-1).cpu()

    def prepare_inputs(self, requests: Sequence[RawRequest]) -> dict[str, Any]:
        """Validate requests and build the model's batched inputs (tensors on the model's device) as
        `generate_batch` does with the policy's token budget: what any serving code pays before `model.generate`."""
        return self._model_inputs(self.parse_requests(requests), self.policy.limits.max_new_tokens)

    # -- one call --------------------------------------------------------------------
    def _check_call(self, max_new_tokens: object, generate_kwargs: Mapping[str, Any]) -> int:
        """The call's checked token budget; its generate() arguments must give one answer per request."""
        check_one_row_per_request(generate_kwargs, getattr(self.model, "generation_config", None))
        return check_max_new_tokens(max_new_tokens, self.policy.limits.max_new_tokens, self.policy.name)

    def parse_requests(self, requests: Sequence[RawRequest]) -> list[Request]:
        """Validate requests against the policy's limits (audio decoded; a `RequestError` or `AudioInputError`
        names the bad one): what `generate_batch` takes without parsing again."""
        return [
            parse_request(
                r,
                i,
                adapter=self.adapter,
                processor=self.processor,
                max_audio_seconds=self.policy.limits.max_audio_seconds,
                max_text_chars=self.policy.limits.max_text_chars,
            )
            for i, r in enumerate(requests)
        ]

    def _model_inputs(self, batch: list[Request], new_tokens: int | None) -> dict[str, Any]:
        """The batch's model inputs, each prompt checked against the prompt-token limit for a call that
        generates up to `new_tokens` (None: already checked)."""
        inputs = model_inputs(
            self.model,
            self.adapter.build_inputs(
                self.processor, batch, self.policy.system_prompt, special_tokens=self.policy.input.special_tokens
            ),
        )
        if new_tokens is not None:
            self._check_prompt(prompt_lengths(inputs), new_tokens)
        return inputs

    def _check_prompt(self, lengths: list[int], new_tokens: int) -> None:
        """limits.max_prompt_tokens, or when null the model's context length less the answer's budget."""
        limit = self.policy.limits.max_prompt_tokens
        if limit is not None:
            check_prompt_tokens(lengths, limit, f"policy {self.policy.name!r} limits.max_prompt_tokens")
            return
        context = context_length(self.model)
        if context is not None:
            why = (
                f"the model's context of {context} tokens minus max_new_tokens={new_tokens}; "
                "ask for fewer new tokens, or set limits.max_prompt_tokens"
            )
            check_prompt_tokens(lengths, max(context - new_tokens, 0), why)

    # -- results ---------------------------------------------------------------------
    def _template(self) -> DecisionTemplate:
        return DecisionTemplate(
            policy=self.policy.name,
            adapter=self.adapter.name,
            gate_mode=self.policy.gate.mode,
            layers=sorted(self._plan.deltas),
            alpha=self.policy.steering.alpha,
            artifact_id=self.artifact.id if self.artifact else None,
        )

    def _answered(
        self, answer: Answer, verdict: GateVerdict, j: int, clock: GenerationClock, started: float, cut: int | None
    ) -> GuardResult:
        """Row `j`'s result; `cut`: the tokens it made before it was cancelled (None: not cancelled)."""
        ids = answer.ids if cut is None else answer.ids[:cut]  # a cancelled row's padding is not its answer
        token_ids, finish_reason = until_eos(ids, self.adapter.eos_token_ids(self.model, self.processor))
        if finish_reason == "length" and cut is not None:
            finish_reason = "cancelled"  # a closed stream, a client that left
        decoded = self.adapter.decode(self.processor, token_ids, markers_for(answer.request))
        text, finish_reason, calls = answer.read(decoded, finish_reason)
        decision = self._template().record(
            verdict.steer[j],
            verdict.reasons[j],
            verdict.scores[j],
            prompt_tokens=answer.prompt_tokens,
            completion_tokens=len(token_ids),
            finish_reason=finish_reason,
            timings=clock.timings(time.perf_counter(), started),
        )
        return GuardResult(text, token_ids, decision.steered, decision, calls)

    def _blocked(self, known: GateVerdict, i: int, started: float) -> GuardResult:
        decision = self._template().record(
            known.steer[i],
            known.reasons[i],
            known.scores[i],
            blocked=True,
            finish_reason="blocked",
            timings=Timings(total_ms=(time.perf_counter() - started) * 1e3),
        )
        return GuardResult(self.policy.actions.refusal_message, [], False, decision)

    def _log(self, results: list[GuardResult], requests: Sequence[RawRequest]) -> None:
        """One structured event per request, and the counters."""
        log_content = self.policy.logging.log_content
        for result, request in zip(results, requests):
            self.metrics.observe(result)
            self._logger.info("guardrail.decision", **decision_event(result, request_fields(request), log_content))
