"""`guardrail serve --config FILE | --policy FILE`: the OpenAI-compatible guarded HTTP server (docs/serving.md).
Needs the serve extra (`pip install 'lalm-guardrail[serve]'`): without it, exit 2 saying so. `--ray` runs it
on Ray Serve (replicas from the file's `ray:` section; the ray extra, checked the same way)."""

from __future__ import annotations

import argparse
import importlib.util
import sys
from typing import Any

SERVE_PACKAGES = ("fastapi", "uvicorn", "prometheus_client")
INSTALL_HINT = "pip install 'lalm-guardrail[serve]'"
RAY_PACKAGES = ("ray", "ray.serve")
RAY_INSTALL_HINT = "pip install 'lalm-guardrail[ray]'"


def add_serve_command(sub: Any) -> None:
    """Register `serve` on the `guardrail` parser's subparsers."""
    serve = sub.add_parser("serve", help="serve guarded chat completions over HTTP (OpenAI-compatible)")
    source = serve.add_mutually_exclusive_group(required=True)
    source.add_argument("--config", help="deployment file: model, policies, api_keys, limits (docs/serving.md)")
    source.add_argument("--policy", help="one policy file whose model: section names the model")
    serve.add_argument("--host", help="address to listen on (default: the file's, else 127.0.0.1)")
    serve.add_argument("--port", type=int, help="port (default: the file's, else 8000)")
    serve.add_argument("--device", help="load the model on this device (cuda, cuda:1, cpu, auto)")
    serve.add_argument("--dtype", help="load the weights in this precision (auto, float32, bfloat16, float16)")
    serve.add_argument(
        "--ray", action="store_true", help="scale out on Ray Serve: replicas from the file's ray: section (ray extra)"
    )
    serve.add_argument("--log-level", default="info", choices=["debug", "info", "warning", "error"])
    serve.set_defaults(func=serve_command)


def serve_command(args: argparse.Namespace) -> int:
    missing = _missing(SERVE_PACKAGES)
    if missing:
        print(f"error: guardrail serve needs {', '.join(missing)}: {INSTALL_HINT}", file=sys.stderr)
        return 2
    if args.ray and _missing(RAY_PACKAGES):
        print(f"error: guardrail serve --ray needs ray[serve]: {RAY_INSTALL_HINT}", file=sys.stderr)
        return 2
    import uvicorn

    from guardrail.serve import app_from_config, load_config

    config = load_config(
        args.config or args.policy, host=args.host, port=args.port, device=args.device, dtype=args.dtype
    )
    if args.ray:
        from guardrail.serve.ray_app import serve_on_ray

        serve_on_ray(config)  # until SIGTERM/SIGINT; then Serve shuts down and its replicas drain
        return 0
    app = app_from_config(config)
    # uvicorn handles SIGTERM/SIGINT: it stops accepting, finishes open requests, then the app drains its queue
    uvicorn.run(app, host=config.host, port=config.port, log_level=args.log_level, timeout_graceful_shutdown=None)
    return 0


def _missing(modules: tuple[str, ...]) -> list[str]:
    """The modules that cannot be imported (a dotted name whose parent is missing counts as missing)."""
    missing = []
    for name in modules:
        try:
            found = importlib.util.find_spec(name) is not None
        except ModuleNotFoundError:
            found = False
        if not found:
            missing.append(name)
    return missing
