"""`guardrail serve`: an OpenAI-compatible HTTP server over guarded models (FastAPI + uvicorn; install with
`pip install 'lalm-guardrail[serve]'`). See docs/serving.md.

Modules: `config` (the deployment file), `deployments` (one guard per policy over one model), `protocol`
(OpenAI's wire format), `convert` (a chat request -> a guard request), `errors` (OpenAI error objects),
`worker` (the generation thread and coalescing queue), `sse` (streamed answers), `auth` (API keys),
`metrics` (Prometheus), `app` (the routes), `background` (a server in a thread: tests, notebooks), `ray_app`
(replicas on Ray Serve: `guardrail serve --ray`; not imported here, since it imports ray).
"""

from guardrail.serve.app import ServeState, app_from_config, create_app
from guardrail.serve.auth import KeyCheck
from guardrail.serve.background import BackgroundServer
from guardrail.serve.config import ServeConfig, ServeLimits, load_config
from guardrail.serve.deployments import Deployment, Deployments, load_deployments

__all__ = [
    "BackgroundServer",
    "Deployment",
    "Deployments",
    "KeyCheck",
    "ServeConfig",
    "ServeLimits",
    "ServeState",
    "app_from_config",
    "create_app",
    "load_config",
    "load_deployments",
]
