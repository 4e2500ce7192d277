"""`guardrail serve` from files: the deployment file and a policy file as config, API keys from env and file,
the command (and its exit without the serve extra), backpressure, and draining on shutdown and SIGTERM."""

from __future__ import annotations

import asyncio
import json
import os
import signal
import socket
import subprocess
import sys
import threading
import time
from pathlib import Path
from types import SimpleNamespace

import httpx
import openai
import pytest
from conftest import save_served_model, wait_until_ready

from guardrail.cli import serve as serve_cli
from guardrail.cli.main import main
from guardrail.errors import PolicyError
from guardrail.serve import BackgroundServer, KeyCheck, ServeLimits, app_from_config, load_config
from guardrail.serve.config import ApiKeys
from guardrail.serve.convert import GenParams
from guardrail.serve.errors import ApiError
from guardrail.serve.metrics import ServeMetrics
from guardrail.serve.worker import Job, Worker

pytestmark = pytest.mark.usefixtures("one_torch_thread")


@pytest.fixture(scope="module")
def model_dir(tmp_path_factory) -> Path:
    return save_served_model(tmp_path_factory.mktemp("served"))


def write(path: Path, data: dict) -> Path:
    path.write_text(json.dumps(data), encoding="utf-8")  # JSON is YAML
    return path


def test_a_deployment_file_serves_each_policy_over_one_model(model_dir, monkeypatch):
    monkeypatch.setenv("SERVE_TEST_KEYS", "k1, k2")
    (model_dir / "keys").write_text("# keys\nk3\n", encoding="utf-8")
    config = load_config(
        write(
            model_dir / "deploy.yaml",
            {
                "model": {"path": "./model", "artifact": "./artifact", "dtype": "float32"},
                "policies": [{"policy": "default", "id": "steered", "locked": True}, {"policy": "off"}],
                "api_keys": {"env": "SERVE_TEST_KEYS", "file": "keys"},
                "limits": {"max_batch": 4, "max_wait_ms": 1},
            },
        )
    )
    app = app_from_config(config)
    guards = [d.guard for d in app.state.serving.deployments.by_id.values()]
    assert guards[0].model is guards[1].model
    with BackgroundServer(app) as server:
        client = openai.OpenAI(base_url=server.base_url, api_key="k3", max_retries=0)
        assert [m.id for m in client.models.list()] == ["steered", "off"]
        for model, steered in (("steered", True), ("off", False)):
            reply = client.chat.completions.create(model=model, messages=[{"role": "user", "content": "Hi"}])
            assert reply.model_extra["guardrail"]["steered"] is steered
        assert httpx.get(f"{server.base_url}/models", headers={"Authorization": "Bearer k2"}).status_code == 200


def test_deployment_file_errors_say_what_is_wrong(tmp_path, monkeypatch):
    bad = write(tmp_path / "bad.yaml", {"model": {"path": "m", "colour": "red"}, "policies": [{"policy": "off"}]})
    with pytest.raises(PolicyError, match="model.colour"):
        load_config(bad)
    with pytest.raises(PolicyError, match="policies"):
        load_config(write(tmp_path / "none.yaml", {"model": {"path": "m"}, "policies": []}))
    with pytest.raises(PolicyError, match="no model.path"):
        load_config(write(tmp_path / "policy.yaml", {"extends": "off", "name": "p"}))
    monkeypatch.delenv("SERVE_TEST_UNSET", raising=False)
    with pytest.raises(PolicyError, match="SERVE_TEST_UNSET"):
        KeyCheck.from_config(ApiKeys(env="SERVE_TEST_UNSET"))
    assert "k" not in repr(KeyCheck(["secret-k"])).replace("KeyCheck", "").replace("keys", "")


def test_a_full_queue_is_429_with_retry_after():
    async def fill() -> ApiError:
        worker = Worker(ServeLimits(queue_size=1), ServeMetrics())
        worker.queue = asyncio.Queue(maxsize=1)  # no dispatcher: nothing leaves the queue
        worker.submit(queued_job())
        with pytest.raises(ApiError) as full:
            worker.submit(queued_job())
        return full.value

    error = asyncio.run(fill())
    assert error.status == 429 and error.headers["Retry-After"] and error.body["error"]["type"] == "rate_limit_error"


def queued_job() -> Job:
    return Job(SimpleNamespace(id="x"), {"messages": []}, GenParams(1))  # never runs: no deployment needed


def test_shutdown_drains_an_accepted_request(model_dir):
    config = load_config(write(model_dir / "off.yaml", {"extends": "off", "name": "off", "model": {"path": "./model"}}))
    server = BackgroundServer(app_from_config(config)).start()
    worker = server.app.state.serving.worker
    client = openai.OpenAI(base_url=server.base_url, api_key="unused", max_retries=0)
    replies: list = []
    asking = threading.Thread(
        target=lambda: replies.append(
            client.chat.completions.create(model="off", messages=[{"role": "user", "content": "Hi"}], max_tokens=400)
        )
    )
    asking.start()
    while worker.idle and asking.is_alive():
        time.sleep(0.005)
    server.stop()  # what SIGTERM does
    asking.join(60)
    assert replies and replies[0].choices[0].message.content is not None


def test_the_command_serves_a_policy_file_and_drains_on_sigterm(model_dir, tmp_path):
    policy = write(model_dir / "cli.yaml", {"extends": "off", "name": "cli", "model": {"path": "./model"}})
    with socket.socket() as s:  # a free port
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    env = {**os.environ, "PYTHONUNBUFFERED": "1"}
    cmd = [sys.executable, "-m", "guardrail.cli.main", "serve", "--policy", str(policy), "--port", str(port)]
    process = subprocess.Popen(cmd, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    try:
        url = f"http://127.0.0.1:{port}"
        wait_until_ready(url, process, 120)
        client = openai.OpenAI(base_url=f"{url}/v1", api_key="unused", max_retries=0)
        stream = client.chat.completions.create(
            model="cli", messages=[{"role": "user", "content": "Hi"}], max_tokens=300, stream=True
        )
        chunks = [next(iter(stream))]
        process.send_signal(signal.SIGTERM)  # the stream was accepted: it must still end normally
        chunks += list(stream)
        assert any(c.choices and c.choices[0].finish_reason for c in chunks)
        # after draining, uvicorn re-raises the signal it caught: the process ends by SIGTERM, as a service should
        assert process.wait(60) in (0, -signal.SIGTERM)
    finally:
        if process.poll() is None:
            process.kill()
        output = process.stdout.read() if process.stdout else ""
    assert "Traceback" not in output


def test_serve_without_the_extra_exits_2_naming_it(monkeypatch, capsys, tmp_path):
    monkeypatch.setattr(serve_cli, "SERVE_PACKAGES", ("guardrail_no_such_package",))
    assert main(["serve", "--policy", str(tmp_path / "p.yaml")]) == 2
    assert "pip install 'lalm-guardrail[serve]'" in capsys.readouterr().err


def test_the_example_deployment_file_is_valid():
    config = load_config(Path(__file__).resolve().parents[1] / "examples" / "serve.yaml")
    assert [(e.id or e.policy, e.locked) for e in config.policies] == [
        ("gated", False),
        ("always", True),
        ("off", False),
    ]
    assert config.api_keys.env == "GUARDRAIL_API_KEYS" and config.limits.max_batch == 8
