"""The FastAPI app of `guardrail serve`: `POST /v1/chat/completions`, `GET /v1/models`, `/health`, `/ready`
and `/metrics`, over one inference worker. Build it with `create_app(deployments, ...)` (guards you made) or
`app_from_config(config)` (the deployment file), and run it with uvicorn."""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import time
import uuid
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from typing import Any

from fastapi import FastAPI, Request
from fastapi.responses import JSONResponse, Response, StreamingResponse
from pydantic import ValidationError
from starlette.exceptions import HTTPException

from guardrail.serve.auth import KeyCheck
from guardrail.serve.config import ServeConfig, ServeLimits
from guardrail.serve.convert import gen_params, guard_request
from guardrail.serve.deployments import Deployments, load_deployments
from guardrail.serve.errors import ApiError, Cancelled, error_body, from_exception
from guardrail.serve.metrics import ServeMetrics
from guardrail.serve.protocol import ChatCompletionRequest, completion, model_list
from guardrail.serve.sse import StreamReply, first_event
from guardrail.serve.worker import Job, Worker

__all__ = ["ServeState", "app_from_config", "create_app"]

log = logging.getLogger("guardrail.serve")
OUTCOMES = {400: "client_error", 401: "unauthorized", 403: "forbidden", 404: "not_found", 413: "too_large"}
OUTCOMES |= {429: "rejected", 499: "cancelled", 503: "not_ready", 504: "timeout"}


@dataclass
class ServeState:
    """What the routes share: the deployments, the worker, metrics, keys and limits, and readiness."""

    deployments: Deployments
    limits: ServeLimits
    keys: KeyCheck
    metrics: ServeMetrics = field(default_factory=ServeMetrics)
    ready: bool = False
    draining: bool = False
    warmup_error: str | None = None

    def __post_init__(self) -> None:
        self.worker = Worker(self.limits, self.metrics)


def app_from_config(config: ServeConfig) -> FastAPI:
    """Load the config's model and policies (blocking, minutes for a large model) and build the app."""
    keys = KeyCheck.from_config(config.api_keys, config.base_dir)
    return create_app(load_deployments(config), config.limits, keys)


def create_app(deployments: Deployments, limits: ServeLimits | None = None, keys: KeyCheck | None = None) -> FastAPI:
    state = ServeState(deployments, limits or ServeLimits(), keys or KeyCheck())
    app = FastAPI(title="guardrail serve", lifespan=_lifespan, docs_url=None, redoc_url=None, openapi_url=None)
    app.state.serving = state
    app.add_exception_handler(ApiError, _api_error)
    app.add_exception_handler(HTTPException, _http_error)
    app.add_exception_handler(Exception, _unexpected)
    app.add_api_route("/health", _health, methods=["GET"])
    app.add_api_route("/ready", _ready, methods=["GET"])
    app.add_api_route("/metrics", _metrics, methods=["GET"])
    app.add_api_route("/v1/models", _models, methods=["GET"])
    app.add_api_route("/v1/chat/completions", _chat, methods=["POST"])
    return app


@contextlib.asynccontextmanager
async def _lifespan(app: FastAPI) -> AsyncIterator[None]:
    state: ServeState = app.state.serving
    await state.worker.start()
    warmup = asyncio.create_task(_warm_up(state))
    try:
        yield
    finally:  # uvicorn has stopped accepting and finished its open requests; drain what is still queued
        state.draining, state.ready = True, False
        await state.worker.stop()
        warmup.cancel()


async def _warm_up(state: ServeState) -> None:
    """One short generation on the worker thread before /ready says yes (first-call allocations, compiles)."""
    guard = state.deployments.first.guard
    try:
        await state.worker.run_in_thread(
            lambda: guard.generate(messages=[{"role": "user", "content": "Hello"}], max_new_tokens=1)
        )
        state.ready = True
    except Exception as exc:
        state.warmup_error = f"{type(exc).__name__}: {exc}"
        log.error("guardrail serve: warm-up generation failed (%s); /ready stays 503", state.warmup_error)


def _state(request: Request) -> ServeState:
    state: ServeState = request.app.state.serving
    return state


async def _health(request: Request) -> dict[str, str]:
    return {"status": "ok"}


async def _ready(request: Request) -> JSONResponse:
    state = _state(request)
    if state.ready:
        return JSONResponse({"status": "ready", "deployments": state.deployments.ids})
    why = "draining" if state.draining else f"warm-up failed: {state.warmup_error}" if state.warmup_error else None
    return JSONResponse(error_body(503, f"not ready ({why or 'loading and warming up'})", "not_ready"), 503)


async def _metrics(request: Request) -> Response:
    from prometheus_client import CONTENT_TYPE_LATEST

    return Response(_state(request).metrics.text(), media_type=CONTENT_TYPE_LATEST)


async def _models(request: Request) -> dict[str, Any]:
    state = _state(request)
    state.keys.check(request.headers.get("authorization"))
    return model_list(state.deployments.ids)


async def _chat(request: Request) -> Response:
    state = _state(request)
    policy = "-"
    try:
        state.keys.check(request.headers.get("authorization"))
        if not state.ready:
            raise ApiError(
                503, "the server is not ready (loading, warming up or draining); retry shortly", code="not_ready"
            )
        body = _parsed(await _read_body(request, state.limits.max_body_bytes))
        deployment = state.deployments.pick(body.model, body.guardrail.policy if body.guardrail else None)
        policy = deployment.policy.name
        job = Job(deployment, guard_request(body, deployment.files), gen_params(body, deployment.policy), body.stream)
        state.worker.submit(job)
        deadline = asyncio.get_running_loop().time() + state.limits.request_timeout_s
        completion_id = f"chatcmpl-{uuid.uuid4().hex}"
        if job.stream:
            await first_event(job, deadline)
            include_usage = bool(body.stream_options and body.stream_options.include_usage)
            reply = StreamReply(job, completion_id, deployment.id, include_usage, deadline)
            return StreamingResponse(_counted(reply, state), media_type="text/event-stream")
        result = await _wait(job, request, deadline)
    except Exception as exc:
        error = from_exception(exc)
        if error.status == 500:
            log.exception("guardrail serve: request failed")
        state.metrics.failed(policy, OUTCOMES.get(error.status, "server_error"))
        raise error from None
    state.metrics.answered(result)
    return JSONResponse(completion(result, completion_id, deployment.id, int(time.time())))


async def _counted(reply: StreamReply, state: ServeState) -> AsyncIterator[str]:
    """The reply's events; its outcome counted once it ends."""
    async for text in reply.body():
        yield text
    if reply.result is not None:
        state.metrics.answered(reply.result)
    else:
        status = reply.error.status if reply.error else 499
        state.metrics.failed(reply.job.deployment.policy.name, OUTCOMES.get(status, "server_error"))


async def _read_body(request: Request, limit: int) -> bytes:
    """The body, refused with 413 past `limit` bytes (by Content-Length, or while reading a chunked body)."""
    declared = request.headers.get("content-length")
    if declared is not None and declared.isdigit() and int(declared) > limit:
        raise _too_large(int(declared), limit)
    chunks, size = [], 0
    async for part in request.stream():
        size += len(part)
        if size > limit:
            raise _too_large(size, limit)
        chunks.append(part)
    return b"".join(chunks)


def _too_large(size: int, limit: int) -> ApiError:
    return ApiError(
        413,
        f"the request body is {size} bytes or more; this server takes at most {limit} (limits.max_body_bytes): "
        "send a shorter clip or a compressed format",
        code="body_too_large",
    )


def _parsed(raw: bytes) -> ChatCompletionRequest:
    try:
        data = json.loads(raw)
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise ApiError(400, f"the request body is not valid JSON ({exc})", code="invalid_json") from None
    try:
        return ChatCompletionRequest.model_validate(data)
    except ValidationError as exc:
        first = exc.errors()[0]
        param = ".".join(str(p) for p in first["loc"]) or None
        problems = "; ".join(f"{'.'.join(map(str, e['loc'])) or 'body'}: {e['msg']}" for e in exc.errors()[:5])
        raise ApiError(
            400, f"invalid chat completion request: {problems}", code="invalid_request", param=param
        ) from None


async def _wait(job: Job, request: Request, deadline: float) -> Any:
    """The job's result; a client that disconnects, or a deadline that passes, cancels the job if still queued."""
    assert job.future is not None
    loop = asyncio.get_running_loop()
    while True:
        remaining = deadline - loop.time()
        done, _ = await asyncio.wait({job.future}, timeout=max(0.0, min(0.25, remaining)))
        if done:
            return job.future.result()
        if remaining <= 0:
            job.cancelled.set()
            raise ApiError(504, "the request ran past the server's request_timeout_s", code="timeout")
        if await request.is_disconnected():
            job.cancelled.set()
            raise Cancelled()


async def _api_error(request: Request, exc: Exception) -> JSONResponse:
    error = from_exception(exc)
    return JSONResponse(error.body, status_code=error.status, headers=error.headers)


async def _http_error(request: Request, exc: Exception) -> JSONResponse:
    status = getattr(exc, "status_code", 500)
    return JSONResponse(error_body(status, str(getattr(exc, "detail", exc)), "http_error"), status_code=status)


async def _unexpected(request: Request, exc: Exception) -> JSONResponse:
    log.exception("guardrail serve: unexpected error")
    return JSONResponse(error_body(500, "internal error; the server log has the details", "internal"), 500)
