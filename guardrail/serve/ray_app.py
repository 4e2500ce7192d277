"""Scale-out on Ray Serve: the `guardrail serve` app as a Ray Serve deployment. Each replica is a whole server
(the model and policies loaded from the deployment file in the replica's process, its own worker, coalescing
and metrics); Ray's HTTP proxy spreads requests over the replicas and replaces one that dies or fails its
health check. The deployment file's `ray:` section sets replicas, autoscaling and per-replica resources.

    guardrail serve --config deploy.yaml --ray                       # starts Ray, or joins ray.address
    serve run guardrail.serve.ray_app:build_app config=deploy.yaml  # Ray Serve's own CLI (builder pattern)

Needs `pip install 'lalm-guardrail[ray]'` (Ray >= 2.60: `serve.ingress()` with the app built on the replica, by
`__serve_build_asgi_app__`). This module imports ray; no other guardrail module imports it.
"""

from __future__ import annotations

import asyncio
import contextlib
import signal
import threading
from collections.abc import AsyncIterator, Callable, Mapping
from typing import Any

from fastapi import FastAPI
from ray import serve
from ray.serve import Application
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from guardrail.errors import GuardrailError, PolicyError
from guardrail.serve.app import ServeState, create_app
from guardrail.serve.auth import KeyCheck
from guardrail.serve.config import ServeConfig, load_config
from guardrail.serve.deployments import load_deployments

__all__ = [
    "APP_NAME",
    "REPLICA_HEADER",
    "GuardrailReplica",
    "application",
    "build_app",
    "deployment_options",
    "replica_problem",
    "serve_on_ray",
]

APP_NAME = "guardrail"  # the Ray Serve application (and deployment) name
REPLICA_HEADER = "x-guardrail-replica"  # every response names the replica actor that answered
BUILDER_ARGS = ("config", "device", "dtype")
PASSED_THROUGH = ("health_check_period_s", "health_check_timeout_s", "graceful_shutdown_timeout_s")

Lifespan = Callable[[Any], contextlib.AbstractAsyncContextManager[Any]]


class GuardrailReplica:
    """One Ray Serve replica. Ray's late-bound ingress calls `__serve_build_asgi_app__` once the replica
    process is up, so the model loads there (not in the driver), and then runs the app's lifespan (worker
    start, warm-up): the replica counts as started only once it has warmed up."""

    def __init__(self, config: ServeConfig, keys: KeyCheck):
        self.config, self.keys = config, keys
        self.state: ServeState | None = None

    async def __serve_build_asgi_app__(self) -> FastAPI:
        deployments = await asyncio.to_thread(load_deployments, self.config)  # minutes for a large model
        app = create_app(deployments, self.config.limits, self.keys)
        self.state = app.state.serving
        app.router.lifespan_context = until_warm(app.router.lifespan_context)
        app.add_middleware(ReplicaHeader, replica=serve.get_replica_context().replica_id.to_full_id_str())
        return app

    async def check_health(self) -> None:
        """Ray's periodic replica health check: raising makes Serve replace this replica."""
        problem = replica_problem(self.state)
        if problem is not None:
            raise GuardrailError(f"guardrail replica unhealthy: {problem}")


GuardrailDeployment = serve.deployment(name=APP_NAME)(serve.ingress()(GuardrailReplica))


def replica_problem(state: ServeState | None) -> str | None:
    """Why a replica cannot serve (its warm-up failed, its worker stopped), or None."""
    if state is None:
        return "the app was not built"
    if state.warmup_error is not None:
        return f"the warm-up generation failed ({state.warmup_error})"
    if not state.draining and not state.worker.running:
        return "the inference worker is not running"
    return None


def until_warm(lifespan: Lifespan) -> Lifespan:
    """The app's lifespan, whose startup also waits for the warm-up generation. Under plain uvicorn /ready says
    503 until then; Ray routes requests to a replica as soon as its startup returns, so it must wait. A failed
    warm-up fails the replica's start, and Ray starts another."""

    @contextlib.asynccontextmanager
    async def wrapped(app: FastAPI) -> AsyncIterator[Any]:
        async with lifespan(app) as value:
            state: ServeState = app.state.serving
            while not state.ready:
                if state.warmup_error is not None:
                    raise GuardrailError(f"the replica's warm-up generation failed: {state.warmup_error}")
                await asyncio.sleep(0.02)
            yield value

    return wrapped


class ReplicaHeader:
    """ASGI middleware: adds `x-guardrail-replica: <replica actor name>` to every HTTP response."""

    def __init__(self, app: ASGIApp, replica: str):
        self.app, self.header = app, (REPLICA_HEADER.encode(), replica.encode())

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return

        async def send_named(message: Message) -> None:
            if message["type"] == "http.response.start":
                message = {**message, "headers": [*message.get("headers", []), self.header]}
            await send(message)

        await self.app(scope, receive, send_named)


def deployment_options(config: ServeConfig) -> dict[str, Any]:
    """Ray Serve deployment options from the file's `ray:` section."""
    section = config.ray
    limits = config.limits
    options: dict[str, Any] = {
        "ray_actor_options": section.ray_actor_options.model_dump(exclude_none=True),
        # a batch generating and the next one gathering, within what the replica's queue takes
        "max_ongoing_requests": section.max_ongoing_requests or min(2 * limits.max_batch, limits.queue_size),
    }
    options.update({key: getattr(section, key) for key in PASSED_THROUGH if getattr(section, key) is not None})
    if section.autoscaling_config is not None:
        options["autoscaling_config"] = dict(section.autoscaling_config)
    if section.num_replicas is not None:
        options["num_replicas"] = section.num_replicas
    elif section.autoscaling_config is None:
        options["num_replicas"] = 1
    return options


def application(config: ServeConfig, keys: KeyCheck | None = None) -> Application:
    """The Ray Serve application of a deployment file. API keys are read here (where the command runs) and
    handed to each replica, so other nodes need neither the key file nor the variable."""
    if keys is None:
        keys = KeyCheck.from_config(config.api_keys, config.base_dir)
    return GuardrailDeployment.options(**deployment_options(config)).bind(config, keys)


def build_app(args: Mapping[str, str]) -> Application:
    """Ray Serve's application builder: `serve run guardrail.serve.ray_app:build_app config=deploy.yaml`
    (optionally `device=cuda dtype=bfloat16`). Serve's own flags set the address and route prefix."""
    unknown = sorted(set(args) - set(BUILDER_ARGS))
    if "config" not in args or unknown:
        raise PolicyError(
            f"build_app takes config=FILE (and optionally device=, dtype=); got {sorted(args)}: "
            "run `serve run guardrail.serve.ray_app:build_app config=deploy.yaml`"
        )
    return application(load_config(args["config"], device=args.get("device"), dtype=args.get("dtype")))


def serve_on_ray(config: ServeConfig, stop: threading.Event | None = None) -> None:
    """`guardrail serve --ray`: start Ray (or join `ray.address`), run the app with the file's host and port,
    block until SIGTERM/SIGINT (or `stop` is set), then delete the app (its replicas drain their requests) and
    shut Serve down unless the cluster runs other Serve apps."""
    import ray

    app = application(config)  # reads the API keys first: a missing key fails before Ray starts
    ray.init(address=config.ray.address)
    stop = stop or _signalled()  # after ray.init, which sets its own handlers
    try:
        serve.start(http_options={"host": config.host, "port": config.port})  # ignored if Serve already runs
        serve.run(app, name=APP_NAME, route_prefix=config.ray.route_prefix)
        print(f"guardrail serve: Ray Serve app {APP_NAME!r} on http://{config.host}:{config.port}", flush=True)
        while not stop.wait(0.5):
            pass
        serve.delete(APP_NAME)
        if not serve.status().applications:
            serve.shutdown()
    finally:
        ray.shutdown()


def _signalled() -> threading.Event:
    """An event set by SIGTERM or SIGINT (the main thread's handlers)."""
    stop = threading.Event()
    for sig in (signal.SIGTERM, signal.SIGINT):
        signal.signal(sig, lambda *_: stop.set())
    return stop
