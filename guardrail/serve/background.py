"""A server in a background thread of this process (tests, notebooks, examples): uvicorn on a free port of
127.0.0.1, started when the `with` block opens and ready (warmed up) before it runs; leaving the block stops
it the way SIGTERM does (open requests finish, queued ones drain).

    with BackgroundServer(create_app(deployments)) as server:
        client = openai.OpenAI(base_url=server.base_url, api_key="unused")
"""

from __future__ import annotations

import json
import socket
import threading
import time
import urllib.error
import urllib.request
from types import TracebackType

import uvicorn
from fastapi import FastAPI

from guardrail.errors import GuardrailError

__all__ = ["BackgroundServer"]


class BackgroundServer:
    def __init__(self, app: FastAPI, ready_timeout: float = 120.0):
        self.app, self.ready_timeout = app, ready_timeout
        self._socket = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        self._socket.bind(("127.0.0.1", 0))
        self.port: int = self._socket.getsockname()[1]
        config = uvicorn.Config(app, log_level="warning", timeout_graceful_shutdown=None)
        self.server = uvicorn.Server(config)
        self._thread = threading.Thread(
            target=self.server.run, kwargs={"sockets": [self._socket]}, daemon=True, name="guardrail-serve"
        )

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    @property
    def base_url(self) -> str:
        """What `openai.OpenAI(base_url=...)` takes."""
        return f"{self.url}/v1"

    def start(self) -> BackgroundServer:
        self._thread.start()
        deadline = time.monotonic() + self.ready_timeout
        while time.monotonic() < deadline:
            if not self._thread.is_alive():
                raise GuardrailError("the server thread ended while starting; see the log above")
            if self._ready():
                return self
            time.sleep(0.05)
        self.stop()
        raise GuardrailError(f"the server was not ready within {self.ready_timeout:g} s (GET /ready)")

    def _ready(self) -> bool:
        try:
            with urllib.request.urlopen(f"{self.url}/ready", timeout=5) as reply:
                return bool(json.load(reply).get("status") == "ready")
        except (urllib.error.URLError, OSError, ValueError):
            return False

    def stop(self, timeout: float = 60.0) -> None:
        """What SIGTERM does: stop accepting, let open requests finish, drain the queue, exit."""
        self.server.should_exit = True
        self._thread.join(timeout)
        self._socket.close()

    def __enter__(self) -> BackgroundServer:
        return self.start()

    def __exit__(
        self, kind: type[BaseException] | None, error: BaseException | None, traceback: TracebackType | None
    ) -> None:
        self.stop()
