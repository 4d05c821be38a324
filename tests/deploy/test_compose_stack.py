"""docker-compose.yml brought up for real: trainer -> service -> Prometheus.

The compose project gets its own name, free host ports (127.0.0.1 only) and, through an
override file, tiny slices of the data sets for the trainer. Its models volume starts
with a fraud version trained by the session fixture, so the trainer has to train only
fashion and mnist. Prometheus is Debian's package in an image built on the local base
(``LAYERSCOPE_PROMETHEUS_IMAGE``), since prom/prometheus cannot be pulled here; Grafana's
image cannot be had at all, so it is not started (tests/deploy/test_grafana_schema.py
checks its files)."""

from __future__ import annotations

import os
import subprocess
import time

import pytest
import requests
import yaml

from tests.deploy import engine as eng
from tests.deploy import tiny
from tests.deploy.project import ROOT

PROJECT = f"layerscopetest{os.getpid()}"
UP_TIMEOUT = 900  # the trainer trains two tiny CNNs before the service may start


class Stack:
    def __init__(self, command: list[str], files: list[str], env: dict[str, str]):
        self.command = command
        self.files = files
        self.env = env
        self.ports = {k: int(v) for k, v in env.items() if k.endswith("_PUBLISH_PORT")}
        self.url = f"http://127.0.0.1:{self.ports['LAYERSCOPE_PUBLISH_PORT']}"
        self.prometheus = f"http://127.0.0.1:{self.ports['PROMETHEUS_PUBLISH_PORT']}"

    def compose(self, *args: str, timeout: float = 300, check: bool = True
                ) -> subprocess.CompletedProcess:
        cmd = [*self.command, "--project-name", PROJECT, "--project-directory", str(ROOT)]
        for f in self.files:
            cmd += ["-f", f]
        result = subprocess.run([*cmd, *args], cwd=ROOT, capture_output=True, text=True,
                                timeout=timeout, env={**os.environ, **self.env})
        if check and result.returncode != 0:
            raise AssertionError(f"{' '.join(args)} exited {result.returncode}:\n"
                                 f"{result.stdout[-3000:]}\n{result.stderr[-3000:]}")
        return result

    def container(self, service: str) -> eng.Container:
        ids = self.compose("ps", "-a", "-q", service).stdout.split()
        assert len(ids) == 1, (service, ids)
        return eng.Container(ids[0], service)

    def volume(self, name: str) -> str:
        return f"{PROJECT}_{name}"


def list_volume(image: str, volume: str) -> list[str]:
    """Every file in a volume, relative, read by a throwaway container."""
    out = eng.docker("run", "--rm", "--network", "none", "-v", f"{volume}:/v:ro",
                     "--entrypoint", "find", image, "/v", "-type", "f").stdout
    return sorted(line.removeprefix("/v/") for line in out.split())


@pytest.fixture(scope="module")
def stack(docker_engine, images, tiny_models, world_readable_tmp):
    if not docker_engine.compose:
        pytest.skip("no compose: neither the docker compose plugin nor docker-compose")
    data = tiny.write_tiny_datasets(world_readable_tmp / "compose-data")
    override = world_readable_tmp / "docker-compose.tiny.yml"
    override.write_text(yaml.safe_dump({
        "services": {
            "trainer": {
                "environment": {"LAYERSCOPE_OFFLINE": "1"},
                "volumes": [f"{data}:/data:ro"],
            },
        },
    }))
    override.chmod(0o644)
    env = {
        "LAYERSCOPE_PUBLISH_PORT": str(eng.free_port()),
        "PROMETHEUS_PUBLISH_PORT": str(eng.free_port()),
        "GRAFANA_PUBLISH_PORT": str(eng.free_port()),
        "LAYERSCOPE_GRPC_PUBLISH_PORT": str(eng.free_port()),
        "LAYERSCOPE_PROMETHEUS_IMAGE": images.prometheus,
        "LAYERSCOPE_BASE_IMAGE": images.base,
        "LAYERSCOPE_WORKERS": "2",
    }
    stack = Stack(docker_engine.compose, [str(ROOT / "docker-compose.yml"), str(override)], env)
    stack.compose("down", "-v", "--remove-orphans", check=False)
    # the models volume, as compose would create it, holding one fraud version already
    models = stack.volume("models")
    eng.docker("volume", "create", "--label", f"com.docker.compose.project={PROJECT}",
               "--label", "com.docker.compose.volume=models", models)
    eng.docker("run", "--rm", "--network", "none", "-v", f"{models}:/app/models",
               "-v", f"{tiny_models['fraud']}:/seed:ro", "--entrypoint", "cp",
               images.training, "-r", "/seed", "/app/models/fraud/1", timeout=120)
    eng.progress(f"compose up ({' '.join(docker_engine.compose)}, project {PROJECT})")
    start = time.monotonic()
    try:
        stack.up = stack.compose("up", "-d", "--no-build", "prometheus", timeout=UP_TIMEOUT)
        eng.progress(f"compose up returned after {time.monotonic() - start:.0f} s")
        yield stack
    finally:
        stack.compose("down", "-v", "--remove-orphans", timeout=300, check=False)
        eng.docker("volume", "rm", "-f", models, check=False)


def test_compose_config_is_accepted_by_compose_itself(docker_engine):
    if not docker_engine.compose:
        pytest.skip("no compose: neither the docker compose plugin nor docker-compose")
    result = subprocess.run([*docker_engine.compose, "-f", "docker-compose.yml", "config"],
                            cwd=ROOT, capture_output=True, text=True, timeout=60)
    assert result.returncode == 0, result.stderr
    config = yaml.safe_load(result.stdout)
    assert set(config["services"]) == {"trainer", "service", "prometheus", "grafana"}


def test_trainer_trains_only_the_missing_models_and_exits_0(stack, images):
    trainer = stack.container("trainer")
    state = trainer.state()
    assert not state["Running"] and state["ExitCode"] == 0, trainer.describe()
    logs = trainer.logs(2000)
    assert "fraud already has a version" in logs, logs[-3000:]
    assert "training fashion" in logs and "training mnist" in logs, logs[-3000:]
    files = list_volume(images.training, stack.volume("models"))
    for name in tiny.DEFAULT_MODELS:
        assert f"{name}/1/metadata.json" in files, files
        assert f"{name}/2/metadata.json" not in files, files


def test_service_turns_healthy_and_serves_the_trained_models(stack, tiny_models):
    service = stack.container("service")
    eng.wait_for(lambda: service.health() == "healthy", 300, interval=2,
                 what="the service's healthcheck")
    assert requests.get(f"{stack.url}/readyz", timeout=10).status_code == 200
    mounts = [m for m in service.inspect()["Mounts"] if m["Destination"] == "/app/models"]
    assert mounts and mounts[0]["RW"] is False
    for name in tiny.DEFAULT_MODELS:
        rows = tiny.reference_rows(tiny_models[name], 2)
        answer = requests.post(f"{stack.url}/models/{name}/predict", json={"instances": rows},
                               timeout=30)
        assert answer.status_code == 200, answer.text[:300]
        assert answer.json()["version"] == 1 and len(answer.json()["predictions"]) == 2


def prom(stack: Stack, query: str) -> list:
    answer = requests.get(f"{stack.prometheus}/api/v1/query", params={"query": query},
                          timeout=10).json()
    assert answer["status"] == "success", answer
    return answer["data"]["result"]


def test_prometheus_scrapes_the_service_and_loads_the_alert_rules(stack):
    def up():
        result = prom(stack, 'up{job="layerscope"}')
        return result and result[0]["value"][1] == "1" and result

    result = eng.wait_for(up, 120, interval=2, what='up{job="layerscope"} == 1')
    assert result[0]["metric"]["instance"] == "service:8000"
    targets = requests.get(f"{stack.prometheus}/api/v1/targets", timeout=10).json()
    scraped = [t for t in targets["data"]["activeTargets"] if t["labels"]["job"] == "layerscope"]
    assert scraped and scraped[0]["health"] == "up"
    assert scraped[0]["scrapeUrl"] == "http://service:8000/metrics"
    # the service's own series arrived, the model-readiness gauge among them
    assert eng.wait_for(lambda: prom(stack, '{job="layerscope", __name__=~"layerscope_.+"}'),
                        60, interval=2, what="layerscope_* series")
    rules = requests.get(f"{stack.prometheus}/api/v1/rules", timeout=10).json()["data"]
    loaded = {r["name"] for g in rules["groups"] for r in g["rules"] if r["type"] == "alerting"}
    shipped = yaml.safe_load((ROOT / "deploy/prometheus/alerts.yml").read_text())
    expected = {r["alert"] for g in shipped["groups"] for r in g["rules"] if "alert" in r}
    assert loaded == expected
    assert all(r["health"] == "ok" for g in rules["groups"] for r in g["rules"]
               if r.get("lastEvaluation", "0001").startswith("20")), rules


def test_every_published_port_is_bound_to_loopback(stack):
    for service in ("service", "prometheus"):
        bindings = stack.container(service).inspect()["HostConfig"]["PortBindings"]
        assert bindings, service
        for binding in bindings.values():
            assert all(b["HostIp"] == "127.0.0.1" for b in binding), (service, bindings)
    config = yaml.safe_load((ROOT / "docker-compose.yml").read_text())
    for name, service in config["services"].items():
        for port in service.get("ports", []):
            assert str(port).startswith("127.0.0.1:"), (name, port)


def test_compose_down_keeps_the_volumes(stack, images):
    stack.compose("down", timeout=300)
    assert stack.compose("ps", "-a", "-q").stdout.split() == []
    volumes = eng.docker("volume", "ls", "-q", "--filter", f"name={PROJECT}_").stdout.split()
    assert {stack.volume("models"), stack.volume("prometheus-data")} <= set(volumes), volumes
    files = list_volume(images.training, stack.volume("models"))
    assert {f"{n}/1/metadata.json" for n in tiny.DEFAULT_MODELS} <= set(files)
    tsdb = list_volume(images.prometheus, stack.volume("prometheus-data"))
    assert tsdb, "Prometheus wrote nothing into its volume"
