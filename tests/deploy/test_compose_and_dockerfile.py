"""docker-compose.yml and Dockerfile, checked without a Docker engine: the Compose
specification's JSON schema, and every path, port, command, URL and environment variable
they name against the project.

``compose-spec.json`` is the Compose specification schema vendored from the PyPI package
docker-compose 1.29.2 (``compose/config/compose_spec.json``, draft 2019-09)."""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
from pathlib import Path

import jsonschema
import pytest
import yaml

from tests.deploy.project import (
    ROOT,
    URL_IN_TEXT,
    copy_sources,
    dockerfile_instructions,
    dockerfile_stages,
    env_pairs,
    env_read_by_project,
    url_rules,
)

COMPOSE = ROOT / "docker-compose.yml"
DOCKERFILE = ROOT / "Dockerfile"
SCHEMA = Path(__file__).with_name("compose-spec.json")
VAR = re.compile(r"\$\{([A-Za-z_][A-Za-z0-9_]*)(?::?-([^}]*))?\}")


@pytest.fixture(scope="module")
def compose() -> dict:
    return yaml.safe_load(COMPOSE.read_text())


@pytest.fixture(scope="module")
def rules(tmp_path_factory) -> frozenset[str]:
    return url_rules(str(tmp_path_factory.mktemp("empty-repo")))


@pytest.fixture(scope="module")
def docker() -> list[tuple[str, str]]:
    return dockerfile_instructions(DOCKERFILE)


@pytest.fixture(scope="module")
def stages() -> dict[str, list[tuple[str, str]]]:
    return dockerfile_stages(DOCKERFILE)


def interpolate(value: str) -> str:
    """Compose variable defaults (``${VAR:-default}``) as an unset environment gives them."""
    return VAR.sub(lambda m: m.group(2) or "", value)


def environment(service: dict) -> dict[str, str]:
    env = service.get("environment") or {}
    if isinstance(env, list):
        env = dict(item.split("=", 1) for item in env)
    return {k: interpolate(str(v)) for k, v in env.items()}


# -- the Compose specification ---------------------------------------------------------
def test_compose_file_matches_the_compose_specification(compose):
    schema = json.loads(SCHEMA.read_text())
    errors = list(jsonschema.Draft201909Validator(schema).iter_errors(compose))
    assert not errors, [f"{list(e.path)}: {e.message}" for e in errors]


def test_the_schema_rejects_what_compose_rejects(compose):
    """Sanity check that the vendored schema is strict (unknown keys, bad conditions)."""
    validator = jsonschema.Draft201909Validator(json.loads(SCHEMA.read_text()))
    typo = json.loads(json.dumps(compose))
    typo["services"]["service"]["helthcheck"] = typo["services"]["service"]["healthcheck"]
    assert list(validator.iter_errors(typo))
    bad = json.loads(json.dumps(compose))
    bad["services"]["service"]["depends_on"]["trainer"]["condition"] = "service_done"
    assert list(validator.iter_errors(bad))


def test_stack_shape(compose):
    services = compose["services"]
    assert set(services) == {"trainer", "service", "prometheus", "grafana"}
    assert services["service"]["depends_on"]["trainer"]["condition"] == (
        "service_completed_successfully"
    )
    assert services["trainer"].get("restart") == "no"
    assert "healthcheck" in services["service"]
    assert "${LAYERSCOPE_WORKERS:-" in COMPOSE.read_text()
    graf = environment(services["grafana"])
    assert graf["GF_AUTH_ANONYMOUS_ENABLED"] == "true"
    assert graf["GF_AUTH_ANONYMOUS_ORG_ROLE"] == "Viewer"

    # trainer and service share the named models volume, mounted where the image expects
    def volume_targets(svc: dict) -> dict[str, str]:
        out = {}
        for v in svc.get("volumes", []):
            if isinstance(v, str):
                source, target = interpolate(v).split(":")[:2]
            else:
                source, target = v["source"], v["target"]
            out[source] = target
        return out

    assert volume_targets(services["trainer"])["models"] == "/app/models"
    assert volume_targets(services["service"])["models"] == "/app/models"
    assert "models" in compose["volumes"]


# -- paths -------------------------------------------------------------------------------
def test_bind_mount_sources_exist(compose):
    for name, service in compose["services"].items():
        for volume in service.get("volumes", []):
            if isinstance(volume, str):
                source = interpolate(volume).split(":")[0]
            else:
                source = interpolate(volume["source"])
            if source in compose.get("volumes", {}):
                continue  # named volume
            path = (ROOT / source).resolve()
            assert path.exists(), f"{name}: bind mount source {source} does not exist"


def test_build_context_and_dockerfile_exist(compose):
    for service in compose["services"].values():
        build = service.get("build")
        if build:
            context = ROOT / build["context"]
            assert (context / build.get("dockerfile", "Dockerfile")).is_file()


def test_trainer_command_names_real_models(compose):
    trainer = compose["services"]["trainer"]
    script = trainer["entrypoint"][0]
    assert (ROOT / script).is_file() and os.access(ROOT / script, os.X_OK)
    for name in trainer["command"]:
        assert (ROOT / "models" / name / "model.yaml").is_file(), name
    assert environment(trainer)["LAYERSCOPE_MODEL_REPOSITORY"] == "/app/models"


def test_grafana_and_prometheus_mounts_match_their_configs(compose):
    services = compose["services"]
    mounts = {
        v.split(":")[1]: v.split(":")[0]
        for v in services["grafana"]["volumes"]
        if v.startswith("./")
    }
    provider = yaml.safe_load(
        (ROOT / "deploy/grafana/provisioning/dashboards/layerscope.yml").read_text()
    )
    dash_dir = provider["providers"][0]["options"]["path"]
    assert dash_dir in mounts
    home = environment(services["grafana"])["GF_DASHBOARDS_DEFAULT_HOME_DASHBOARD_PATH"]
    assert home.startswith(dash_dir + "/")
    assert (ROOT / mounts[dash_dir] / Path(home).name).is_file()
    datasource = yaml.safe_load(
        (ROOT / "deploy/grafana/provisioning/datasources/prometheus.yml").read_text()
    )["datasources"][0]
    assert datasource["url"] == "http://prometheus:9090"
    listen = [c for c in services["prometheus"]["command"] if c.startswith("--web.listen")]
    assert listen == ["--web.listen-address=0.0.0.0:9090"]
    prom_mounts = {
        v.split(":")[1]: v.split(":")[0]
        for v in services["prometheus"]["volumes"]
        if v.startswith("./")
    }
    config_arg = [c for c in services["prometheus"]["command"] if c.startswith("--config")]
    config_path = config_arg[0].split("=", 1)[1]
    assert config_path in prom_mounts
    config = yaml.safe_load((ROOT / prom_mounts[config_path]).read_text())
    for rule_file in config["rule_files"]:
        in_container = str(Path(config_path).parent / rule_file)
        assert in_container in prom_mounts, f"rule file {rule_file} is not mounted"


# -- ports, URLs and environment -----------------------------------------------------------
def test_ports_agree_everywhere(compose, rules):
    service = compose["services"]["service"]
    env = environment(service)
    port = env["LAYERSCOPE_PORT"]
    assert env["LAYERSCOPE_HOST"] == "0.0.0.0"
    published = [interpolate(p).split(":") for p in service["ports"]]
    assert [p[-1] for p in published][0] == port
    for name, svc in compose["services"].items():  # never on all interfaces
        for p in svc.get("ports", []):
            host_ip, _host_port, _inner = interpolate(p).split(":")
            assert host_ip == "127.0.0.1", (name, p)
    check = " ".join(service["healthcheck"]["test"])
    match = re.search(r"http://127\.0\.0\.1:(\d+)(/[a-z/]*)", check)
    assert match and match.group(1) == port
    assert match.group(2) == "/readyz" and "/readyz" in rules
    prom = yaml.safe_load((ROOT / "deploy/prometheus/prometheus.yml").read_text())
    job = next(j for j in prom["scrape_configs"] if j["job_name"] == "layerscope")
    assert job["static_configs"][0]["targets"] == [f"service:{port}"]
    assert job.get("metrics_path", "/metrics") in rules


def test_every_environment_variable_is_read(compose):
    for name, service in compose["services"].items():
        if name in ("prometheus", "grafana"):
            continue  # third-party images, GF_* documented by Grafana
        for var in environment(service):
            assert env_read_by_project(var), f"{name}: nothing reads {var}"


def test_compose_environment_values_are_valid_settings(compose):
    from service.settings import Settings

    env = {
        k.removeprefix("LAYERSCOPE_").lower(): v
        for k, v in environment(compose["services"]["service"]).items()
        if k.startswith("LAYERSCOPE_")
    }
    settings = Settings(**env)
    assert settings.workers == 2 and settings.port == 8000


# -- Dockerfile ----------------------------------------------------------------------------
def test_dockerfile_stages_on_a_base_image_argument(stages):
    """ARG BASE_IMAGE (default python:3.11-slim) is the first stage's base; every other
    stage builds on an earlier one; serving is the last (default) target, training a
    separate one."""
    args = dict(a.split("=", 1) for kw, a in stages["ARG"] if kw == "ARG")
    assert args == {"BASE_IMAGE": "python:3.11-slim"}
    names = [name for name in stages if name != "ARG"]
    froms = [stages[name][0][1].split()[0] for name in names]
    assert froms[0] == "${BASE_IMAGE}"
    for i, parent in enumerate(froms[1:], 1):
        assert parent in names[:i], f"stage {names[i]} builds on {parent}"
    assert names[-1] == "serving" and "training" in names


def test_dockerfile_copy_sources_exist(docker, stages):
    copies = [args for kw, args in docker if kw in ("COPY", "ADD")]
    assert copies
    for args in copies:
        if "--from=" in args:
            assert args.split("--from=")[1].split()[0] in stages
            continue
        for source in copy_sources(args):
            assert (ROOT / source).exists(), f"COPY source {source} does not exist"


def inherited(stages, name: str, keyword: str) -> list[str]:
    """``keyword``'s arguments in stage ``name`` and the stages it builds on, oldest first."""
    chain = []
    while name in stages:
        chain.insert(0, name)
        name = stages[name][0][1].split()[0]
    return [args for stage in chain for kw, args in stages[stage] if kw == keyword]


def test_dockerfile_serving_stage_user_entrypoint_and_healthcheck(stages, rules):
    users = inherited(stages, "serving", "USER")
    assert users and users[-1].split(":")[0] not in ("root", "0")
    entry = json.loads(inherited(stages, "serving", "ENTRYPOINT")[-1])
    assert entry == ["service/entrypoint.sh"]
    assert os.access(ROOT / entry[0], os.X_OK)
    health = inherited(stages, "serving", "HEALTHCHECK")[-1]
    command = json.loads(health[health.index("CMD") + 3 :])  # exec form, valid JSON
    assert command[:2] == ["python", "-c"]
    compile(command[2], "<healthcheck>", "exec")
    paths = {m.group(1) for m in URL_IN_TEXT.finditer(health)}
    assert paths == {"/readyz"} and "/readyz" in rules
    volumes = [json.loads(args) for args in inherited(stages, "serving", "VOLUME")]
    assert ["/app/models"] in volumes


def test_dockerfile_training_stage_runs_train_missing_without_a_healthcheck(stages, compose):
    users = inherited(stages, "training", "USER")
    assert users and users[-1].split(":")[0] not in ("root", "0")
    assert inherited(stages, "training", "HEALTHCHECK")[-1] == "NONE"
    entry = json.loads(inherited(stages, "training", "ENTRYPOINT")[-1])
    assert entry == compose["services"]["trainer"]["entrypoint"] == ["deploy/train-missing.sh"]
    assert json.loads(inherited(stages, "training", "CMD")[-1]) == ["fraud", "fashion", "mnist"]


def test_dockerfile_environment_is_read(docker):
    env: dict[str, str] = {}
    for kw, args in docker:
        if kw == "ENV":
            env.update(env_pairs(args))
    assert env["LAYERSCOPE_MODEL_REPOSITORY"] == "/app/models"
    for var in env:
        assert env_read_by_project(var), f"Dockerfile ENV {var} is read by nothing"
    for cache in ("HOME", "XDG_CACHE_HOME", "MPLCONFIGDIR", "KERAS_HOME"):
        assert env[cache].startswith("/home/layerscope"), cache


def requirements(*args: str) -> list[str]:
    return subprocess.run(
        [sys.executable, "scripts/requirements.py", *args],
        cwd=ROOT, capture_output=True, text=True, check=True,
    ).stdout.split()


def test_dockerfile_installs_the_pinned_project_dependencies(docker):
    runs = " ".join(args for kw, args in docker if kw == "RUN")
    assert "scripts/requirements.py --serving > serving.txt" in runs
    assert "scripts/requirements.py --serving --extra train | grep -vxFf serving.txt" in runs
    assert "pip install -r /opt/requirements/serving.txt" in runs
    assert "pip install -r /opt/requirements/training.txt -c /opt/requirements/serving.txt" in runs
    pin = re.compile(r"[A-Za-z0-9_.\[\]-]+==([0-9]+!)?[0-9][0-9A-Za-z.+-]*")
    local, serving = requirements("--extra", "test"), requirements("--serving")
    training = requirements("--serving", "--extra", "train")
    for pins in (local, serving, training):
        assert pins and all(pin.fullmatch(p) for p in pins), pins
    names = {p.split("==")[0] for p in serving}
    assert "tensorflow-cpu" in names and "tensorflow" not in names
    assert not names & {"pandas", "matplotlib"}  # the training stack stays out
    assert set(serving) <= set(training) and {"pandas", "matplotlib"} <= {
        p.split("==")[0] for p in training
    }
    # make install: everything, the full TensorFlow wheel, one pin per package
    assert "tensorflow" in {p.split("==")[0] for p in local}
    assert {p.split("==")[1] for p in local if p.startswith("tensorflow==")} == {
        p.split("==")[1] for p in serving if p.startswith("tensorflow-cpu==")
    }
    assert len({p.split("==")[0] for p in local}) == len(local)


def test_compose_builds_the_dockerfiles_targets_on_the_same_base_argument(compose, stages):
    for name, target in (("trainer", "training"), ("service", "serving")):
        build = compose["services"][name]["build"]
        assert build["target"] == target and target in stages
        assert interpolate(build["args"]["BASE_IMAGE"]) == "python:3.11-slim"
    assert compose["services"]["trainer"]["image"] != compose["services"]["service"]["image"]


def test_dockerignore_keeps_published_versions_out():
    ignored = (ROOT / ".dockerignore").read_text().split()
    assert "models/*/[0-9]*" in ignored and ".venv" in ignored and ".git" in ignored
    for needed in ("service", "training", "scripts", "pyproject.toml", "deploy"):
        assert needed not in ignored
