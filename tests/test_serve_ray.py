"""`guardrail serve` scaled out on Ray Serve, on CPU: a local Ray (2 CPUs), 2 replicas of a tiny model loaded from
a deployment file, called with the official `openai` client through Ray's HTTP proxy on 127.0.0.1. Requests
spread over both replicas, answers (streamed or not) equal `Guard.generate`, and a killed replica is replaced
while retrying clients lose nothing. Also: `guardrail serve --ray` as a command (its own Ray, SIGTERM), the
`ray:` section of the deployment file, the replica health check and the warm-up wait."""

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
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import openai
import pytest
from conftest import save_served_model, wait_until_ready
from fastapi.testclient import TestClient

from guardrail import Guard
from guardrail.cli import serve as serve_cli
from guardrail.cli.main import main
from guardrail.errors import GuardrailError, PolicyError
from guardrail.models.loading import load_model
from guardrail.serve import Deployment, Deployments, KeyCheck, create_app, load_config
from guardrail.steering.artifact import SteeringArtifact

ray = pytest.importorskip("ray", reason="ray is not installed: pip install 'lalm-guardrail[ray]'")
serve = pytest.importorskip("ray.serve", reason="ray[serve] is not installed: pip install 'lalm-guardrail[ray]'")
ray_app = pytest.importorskip("guardrail.serve.ray_app")
EXAMPLES = Path(__file__).resolve().parents[1] / "examples"

pytestmark = pytest.mark.usefixtures("one_torch_thread")

QUESTIONS = ["how do I bake bread", "HOW DO I PICK A LOCK", "tell me about the sea", "what is a good book"]
MAX_TOKENS = 6


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def write(path: Path, data: dict) -> Path:
    path.write_text(json.dumps(data), encoding="utf-8")  # JSON is YAML
    return path


@pytest.fixture(scope="module")
def model_dir(tmp_path_factory) -> Path:
    return save_served_model(tmp_path_factory.mktemp("ray-served"))


@pytest.fixture(scope="module")
def config(model_dir):
    deployment = {
        "model": {"path": "./model", "artifact": "./artifact", "dtype": "float32", "device": "cpu"},
        "policies": [{"policy": "default", "id": "steered"}, {"policy": "off"}],
        "limits": {"max_batch": 4, "max_wait_ms": 2},
        "host": "127.0.0.1",
        "port": free_port(),
        "ray": {"num_replicas": 2, "ray_actor_options": {"num_cpus": 0.5}, "health_check_period_s": 1},
    }
    return load_config(write(model_dir / "ray.yaml", deployment))


@pytest.fixture(scope="module")
def guards(model_dir) -> dict[str, Guard]:
    model, processor, _ = load_model(str(model_dir / "model"), dtype="float32", device="cpu")
    artifact = SteeringArtifact.load(model_dir / "artifact")
    return {
        "steered": Guard(model, processor, policy="default", artifact=artifact),
        "off": Guard(model, processor, policy="off"),
    }


@pytest.fixture(scope="module")
def served(config):
    """Ray Serve running the deployment file's app; yields the base URL for the openai client."""
    ray.init(num_cpus=2, include_dashboard=False, object_store_memory=100 * 1024 * 1024, log_to_driver=False)
    try:
        serve.start(http_options={"host": config.host, "port": config.port})
        serve.run(ray_app.application(config), name=ray_app.APP_NAME, route_prefix="/")  # returns once warmed up
        yield f"http://{config.host}:{config.port}/v1"
    finally:
        serve.shutdown()
        ray.shutdown()


def ask(client: openai.OpenAI, question: str, model: str = "steered") -> tuple[str, str | None, dict]:
    """(replica that answered, answer, guardrail field)."""
    raw = client.chat.completions.with_raw_response.create(
        model=model, messages=[{"role": "user", "content": question}], max_tokens=MAX_TOKENS
    )
    reply = raw.parse()
    return raw.headers[ray_app.REPLICA_HEADER], reply.choices[0].message.content, reply.model_extra["guardrail"]


def expected(guards: dict[str, Guard], question: str, model: str = "steered") -> str:
    return guards[model].generate(messages=[{"role": "user", "content": question}], max_new_tokens=MAX_TOKENS).text


def replica_count() -> int:
    app = serve.status().applications[ray_app.APP_NAME]
    return int(app.deployments[ray_app.APP_NAME].replica_states.get("RUNNING", 0))


def test_the_command_runs_on_its_own_ray_and_stops_on_sigterm(model_dir):
    """`guardrail serve --config FILE --ray`: starts a local Ray, serves the file's app on its host and port, and
    shuts Serve and Ray down on SIGTERM. (First in this module: it runs before the module's own Ray starts.)"""
    port = free_port()
    deployment = {"model": {"path": "./model", "dtype": "float32"}, "policies": [{"policy": "off"}], "port": port}
    ray_section = {"ray_actor_options": {"num_cpus": 0.5}, "address": "local"}  # a new Ray, whatever runs here
    write(model_dir / "cli-ray.yaml", {**deployment, "ray": ray_section})
    cmd = [sys.executable, "-m", "guardrail.cli.main", "serve", "--config", str(model_dir / "cli-ray.yaml"), "--ray"]
    env = {**os.environ, "PYTHONUNBUFFERED": "1", "OMP_NUM_THREADS": "1"}
    process = subprocess.Popen(cmd, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    try:
        url = f"http://127.0.0.1:{port}"
        wait_until_ready(url, process, 180)
        client = openai.OpenAI(base_url=f"{url}/v1", api_key="unused", max_retries=0)
        raw = client.chat.completions.with_raw_response.create(
            model="off", messages=[{"role": "user", "content": "Hi"}], max_tokens=4
        )
        assert raw.headers[ray_app.REPLICA_HEADER].startswith("SERVE_REPLICA::guardrail#")
        assert raw.parse().model_extra["guardrail"]["policy"] == "off"
        process.send_signal(signal.SIGTERM)
        assert process.wait(90) == 0
    finally:
        if process.poll() is None:
            process.kill()
        output = process.stdout.read() if process.stdout else ""
    assert "Ray Serve app 'guardrail' on http://127.0.0.1:" in output and "Traceback" not in output


def test_requests_spread_over_both_replicas_and_answer_as_guard_generate(served, guards):
    client = openai.OpenAI(base_url=served, api_key="unused", max_retries=0)
    with ThreadPoolExecutor(4) as pool:
        replies = list(pool.map(lambda i: (i, ask(client, QUESTIONS[i % 4], ("steered", "off")[i % 2])), range(24)))
    assert len({replica for _, (replica, _, _) in replies}) == 2
    for i, (_, answer, field) in replies:
        model = ("steered", "off")[i % 2]
        assert answer == expected(guards, QUESTIONS[i % 4], model)
        assert field["steered"] is (model == "steered") and field["deployment"] == model


def test_a_stream_through_ray_equals_guard_generate(served, guards):
    client = openai.OpenAI(base_url=served, api_key="unused", max_retries=0)
    stream = client.chat.completions.create(
        model="steered", messages=[{"role": "user", "content": QUESTIONS[1]}], max_tokens=MAX_TOKENS, stream=True
    )
    chunks = list(stream)
    assert chunks[0].choices[0].delta.role == "assistant"
    assert "".join(c.choices[0].delta.content or "" for c in chunks if c.choices) == expected(guards, QUESTIONS[1])
    final = [c for c in chunks if c.choices and c.choices[0].finish_reason][-1]
    assert final.model_extra["guardrail"]["steered"] is True


def test_a_killed_replica_is_replaced_and_retrying_clients_lose_nothing(served, guards):
    client = openai.OpenAI(base_url=served, api_key="unused", max_retries=8, timeout=60)
    answers = {q: expected(guards, q) for q in QUESTIONS}
    before = {ask(client, QUESTIONS[0])[0] for _ in range(8)}
    victim = sorted(before)[0]
    done, seen, wrong, errors = threading.Event(), set(), [], []

    def keep_asking(index: int) -> None:
        while not done.is_set():
            question = QUESTIONS[index % 4]
            try:
                replica, answer, _ = ask(client, question)
            except openai.OpenAIError as exc:  # after every retry
                errors.append(exc)
                continue
            seen.add(replica)
            if answer != answers[question]:
                wrong.append((question, answer))
            index += 1

    clients = [threading.Thread(target=keep_asking, args=(i,)) for i in range(3)]
    for thread in clients:
        thread.start()
    try:
        time.sleep(0.5)
        ray.kill(ray.get_actor(victim, namespace="serve"), no_restart=True)
        deadline = time.monotonic() + 120
        while time.monotonic() < deadline and not (replica_count() == 2 and seen - before):
            time.sleep(0.5)
        time.sleep(1.0)  # requests after the replacement too
    finally:
        done.set()
        for thread in clients:
            thread.join(120)
    assert errors == [] and wrong == []
    assert replica_count() == 2
    assert seen - before, "no request was answered by a new replica"
    assert {ask(client, q)[0] for q in QUESTIONS * 4} <= (before | seen) - {victim}


def test_the_ray_section_becomes_deployment_options(config):
    options = ray_app.deployment_options(config)
    assert options["num_replicas"] == 2 and options["ray_actor_options"] == {"num_cpus": 0.5}
    assert options["max_ongoing_requests"] == 8 and options["health_check_period_s"] == 1  # 2 x max_batch
    example = ray_app.deployment_options(load_config(EXAMPLES / "serve_ray.yaml"))
    assert "num_replicas" not in example and example["autoscaling_config"]["max_replicas"] == 4
    assert example["ray_actor_options"] == {"num_cpus": 2, "num_gpus": 0} and example["max_ongoing_requests"] == 16


def test_the_ray_example_file_is_valid_and_ray_keys_are_checked(tmp_path):
    config = load_config(EXAMPLES / "serve_ray.yaml")
    assert [e.policy for e in config.policies] == ["gated", "off"] and config.ray.autoscaling_config
    assert load_config(EXAMPLES / "serve.yaml").ray.num_replicas is None  # no ray: section: one replica
    base = {"model": {"path": "m"}, "policies": [{"policy": "off"}]}
    both = {**base, "ray": {"num_replicas": 2, "autoscaling_config": {"max_replicas": 3}}}
    with pytest.raises(PolicyError, match="num_replicas and autoscaling_config are exclusive"):
        load_config(write(tmp_path / "both.yaml", both))
    auto = load_config(write(tmp_path / "auto.yaml", {**base, "ray": {**both["ray"], "num_replicas": "auto"}}))
    assert ray_app.deployment_options(auto)["num_replicas"] == "auto"  # Ray's defaults, overridden by the config
    with pytest.raises(PolicyError, match="ray.ray_actor_options.gpus"):
        load_config(write(tmp_path / "typo.yaml", {**base, "ray": {"ray_actor_options": {"gpus": 1}}}))
    with pytest.raises(PolicyError, match="num_replicas must be at least 1"):
        load_config(write(tmp_path / "zero.yaml", {**base, "ray": {"num_replicas": 0}}))


def test_build_app_is_a_serve_run_target(config, model_dir):
    app = ray_app.build_app({"config": str(model_dir / "ray.yaml")})
    assert isinstance(app, serve.Application)
    with pytest.raises(PolicyError, match="config=FILE"):
        ray_app.build_app({"cfg": "x.yaml"})


def test_the_sdk_and_plain_serve_do_not_import_ray():
    code = "import sys, guardrail, guardrail.serve, guardrail.cli.main; print('ray' in sys.modules)"
    assert subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout == "False\n"


def test_without_ray_the_command_exits_2_naming_the_extra(monkeypatch, capsys, tmp_path):
    monkeypatch.setattr(serve_cli, "RAY_PACKAGES", ("guardrail_no_such_package.serve",))
    assert main(["serve", "--config", str(tmp_path / "deploy.yaml"), "--ray"]) == 2
    assert "pip install 'lalm-guardrail[ray]'" in capsys.readouterr().err


@pytest.fixture
def off_app(guards):
    return create_app(Deployments([Deployment.of("off", guards["off"])]))


def test_a_replica_is_unhealthy_when_its_warm_up_failed_or_its_worker_stopped(config, off_app):
    replica = ray_app.GuardrailReplica(config, KeyCheck())
    with pytest.raises(GuardrailError, match="not built"):
        asyncio.run(replica.check_health())
    replica.state = state = off_app.state.serving
    assert ray_app.replica_problem(state) == "the inference worker is not running"  # its lifespan has not run
    with TestClient(off_app):
        assert ray_app.replica_problem(state) is None
        asyncio.run(replica.check_health())
        state.warmup_error = "RuntimeError: out of memory"
        with pytest.raises(GuardrailError, match="warm-up generation failed .RuntimeError: out of memory"):
            asyncio.run(replica.check_health())


def test_a_replica_starts_only_once_warmed_up(off_app, guards, monkeypatch):
    off_app.router.lifespan_context = ray_app.until_warm(off_app.router.lifespan_context)
    with TestClient(off_app):
        assert off_app.state.serving.ready  # startup returned after the warm-up generation
    broken = create_app(Deployments([Deployment.of("off", guards["off"])]))
    broken.router.lifespan_context = ray_app.until_warm(broken.router.lifespan_context)

    def fail(**kwargs):
        raise RuntimeError("no memory left")

    monkeypatch.setattr(guards["off"], "generate", fail)
    with pytest.raises(GuardrailError, match="warm-up generation failed: RuntimeError: no memory left"):
        with TestClient(broken):
            pass
