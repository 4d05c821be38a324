"""The images, built and run on a real Docker engine (tests/deploy/engine.py).

One serving container over the tiny default models (and a slow one), the model folder
mounted read-only, two Gunicorn workers, restart policy ``unless-stopped``, its port
published on 127.0.0.1 only. Everything is checked through the public HTTP API against
the same app run in this process on a copy of the same versions. The tests run in file
order: the kill / restart and the ``docker stop`` tests come last."""

from __future__ import annotations

import json
import math
import os
import shutil
import signal
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np
import pytest
import requests

from tests.deploy import engine as eng
from tests.deploy import tiny

OLD_SIZE = 2.82e9  # the single-stage image of before, full TensorFlow and training stack
GRACEFUL = 30  # LAYERSCOPE_GRACEFUL_TIMEOUT, the image's default
SLOW_BATCH = 96  # images per slow request: ~2 s when 8 share the 2 cores
HEADER_TIMEOUT = 5.0  # LAYERSCOPE_HEADER_TIMEOUT of the container (slow-client attack)
PROJECT_DATA = ("creditcard*", "mnist*.npz", "*-ubyte*", "*.keras", "reference.npz")


# -- the images ----------------------------------------------------------------------------
def test_serving_image_is_at_most_half_the_old_one(images):
    serving, training = images.size(images.serving), images.size(images.training)
    eng.progress(f"sizes: serving {serving / 1e9:.2f} GB, training {training / 1e9:.2f} GB "
                 f"(before: one image of {OLD_SIZE / 1e9:.2f} GB)")
    assert serving <= OLD_SIZE / 2, f"serving image {serving / 1e9:.2f} GB"
    assert training > serving


def installed(image: str) -> dict[str, str]:
    """Distribution name (normalised) -> version, in the image's environment."""
    out = eng.image_python(image, (
        "import importlib.metadata as md, json, re\n"
        "print(json.dumps({re.sub(r'[-_.]+', '-', d.metadata['Name']).lower(): d.version\n"
        "                  for d in md.distributions()}))\n"
    ))
    return json.loads(out.strip().splitlines()[-1])


def pins(*args: str) -> dict[str, str]:
    import re
    import subprocess
    import sys

    out = subprocess.run([sys.executable, "scripts/requirements.py", *args], cwd=eng.ROOT,
                         capture_output=True, text=True, check=True).stdout.split()
    return {re.sub(r"[-_.]+", "-", p.split("==")[0]).lower(): p.split("==")[1] for p in out}


def test_images_install_exactly_their_pinned_sets(images):
    """The serving image: pyproject's serving set (tensorflow-cpu, no training stack);
    the trainer: that and the train extra."""
    serving, training = installed(images.serving), installed(images.training)
    want_serving, want_training = pins("--serving"), pins("--serving", "--extra", "train")
    assert {k: serving.get(k) for k in want_serving} == want_serving
    assert {k: training.get(k) for k in want_training} == want_training
    train_only = set(want_training) - set(want_serving)
    assert train_only and not train_only & set(serving), train_only & set(serving)
    assert "tensorflow" not in serving and "tensorflow" not in training


def test_every_service_module_imports_in_the_serving_image(images):
    code = (
        "import importlib, json, os, pkgutil, service\n"
        "os.makedirs(os.environ['PROMETHEUS_MULTIPROC_DIR'])  # as the entrypoint does\n"
        "mods = [m.name for m in pkgutil.walk_packages(service.__path__, 'service.')\n"
        "        if m.name != 'service.wsgi']\n"
        "for m in mods: importlib.import_module(m)\n"
        "import tensorflow as tf\n"
        "print(json.dumps({'modules': len(mods), 'sum': float(tf.reduce_sum(tf.ones((3, 3))))}))\n"
    )
    found = json.loads(eng.image_python(images.serving, code).strip().splitlines()[-1])
    assert found["modules"] > 10 and found["sum"] == 9.0
    assert json.loads(eng.image_python(
        images.training,
        "import json, sklearn, pandas, matplotlib, yaml, training.train, training.sweep\n"
        "print(json.dumps(sklearn.__version__))",
    ).strip().splitlines()[-1])


def test_images_hold_no_tests_data_sets_or_model_versions(images):
    code = (
        "import fnmatch, json, os\n"
        f"patterns = {PROJECT_DATA!r}\n"
        "hits = []\n"
        "for top in ('/app', '/home', '/var/cache/layerscope', '/tmp', '/opt/venv'):\n"
        "    for d, dirs, files in os.walk(top):\n"
        "        for f in files:\n"
        "            if any(fnmatch.fnmatch(f, p) for p in patterns): hits.append(d + '/' + f)\n"
        "models = sorted(os.path.relpath(os.path.join(d, f), '/app/models')\n"
        "                for d, _, fs in os.walk('/app/models') for f in fs)\n"
        "print(json.dumps({'app': sorted(os.listdir('/app')), 'models': models, 'hits': hits}))\n"
    )
    for image in (images.serving, images.training):
        found = json.loads(eng.image_python(image, code).strip().splitlines()[-1])
        assert set(found["app"]) <= {"pyproject.toml", "service", "training", "deploy", "models"}, \
            (image, found["app"])
        assert found["models"] and all(
            len(Path(m).parts) == 2 and Path(m).name == "model.yaml" for m in found["models"]
        ), (image, found["models"])
        assert found["hits"] == [], (image, found["hits"])


def test_healthcheck_only_in_the_serving_image_and_cache_dirs_are_writable(images):
    def config(image):
        return json.loads(eng.docker("image", "inspect", image).stdout)[0]["Config"]

    serving, training = config(images.serving), config(images.training)
    assert serving["Healthcheck"]["Test"][0] == "CMD"
    assert "/readyz" in " ".join(serving["Healthcheck"]["Test"])
    assert training["Healthcheck"]["Test"] == ["NONE"]
    for cfg in (serving, training):
        assert cfg["User"].split(":")[0] == "layerscope"
    # keras, matplotlib and the XDG cache write where the environment points, as uid 10001
    out = eng.image_python(
        images.training,
        "import os, json, warnings\n"
        "warnings.simplefilter('error')\n"
        "import matplotlib; matplotlib.use('Agg'); import matplotlib.pyplot as plt\n"
        "plt.figure(); plt.close()\n"
        "import keras\n"
        "paths = [os.environ[k] for k in ('MPLCONFIGDIR', 'KERAS_HOME', 'XDG_CACHE_HOME',\n"
        "                                 'HOME', 'LAYERSCOPE_CACHE_DIR')]\n"
        "print(json.dumps({'uid': os.getuid(), 'mpl': matplotlib.get_cachedir(),\n"
        "                  'writable': [os.access(p, os.W_OK) for p in paths]}))\n",
    )
    found = json.loads(out.strip().splitlines()[-1])
    assert found["uid"] == 10001
    assert found["mpl"] == "/home/layerscope/.config/matplotlib"
    assert all(found["writable"]), found


# -- a serving container -----------------------------------------------------------------------
@pytest.fixture(scope="module")
def served(images, tiny_models, world_readable_tmp):
    repo = world_readable_tmp / "repo"
    tiny.publish_slow(repo)
    for path in [repo, *repo.rglob("*")]:
        path.chmod(0o755 if path.is_dir() else 0o644)
    port = eng.free_port()
    eng.progress(f"starting the serving container on 127.0.0.1:{port}")
    container = eng.Container.run(
        images.serving,
        name="layerscope-serving",
        env={
            "LAYERSCOPE_WORKERS": "2",
            "LAYERSCOPE_POLL_INTERVAL": "1",
            "LAYERSCOPE_MAX_BATCH_SIZE": str(SLOW_BATCH),
            "LAYERSCOPE_HEADER_TIMEOUT": str(HEADER_TIMEOUT),
            "LAYERSCOPE_BODY_TIMEOUT": "3",
            "LAYERSCOPE_BODY_MIN_RATE": "1000000",
        },
        ports={8000: port},
        volumes=[f"{repo}:/app/models:ro"],
        options=["--restart", "unless-stopped"],
    )
    container.url = f"http://127.0.0.1:{port}"
    container.repo = repo
    try:
        wait_ready(container, 420)
        eng.progress("serving container ready")
        yield container
    finally:
        container.remove()


class Crashed(Exception):
    pass


def wait_ready(container: eng.Container, timeout: float, restarts: int = 0) -> None:
    """/readyz 200; a container that exits or restarts more than ``restarts`` times in
    all fails at once, with its logs."""

    def ready():
        info = container.inspect()
        if info["RestartCount"] > restarts or not (
            info["State"]["Running"] or info["State"]["Restarting"]
        ):
            raise Crashed(f"the container exited or restarted\n{container.describe()}")
        return requests.get(f"{container.url}/readyz", timeout=5).status_code == 200

    deadline = time.monotonic() + timeout
    while True:
        try:
            if ready():
                return
        except Crashed as exc:
            raise AssertionError(str(exc)) from None
        except (requests.RequestException, RuntimeError):
            pass
        if time.monotonic() > deadline:
            raise AssertionError(f"no /readyz 200 in {timeout:.0f} s\n{container.describe()}")
        time.sleep(1)


@pytest.fixture(scope="module")
def in_process(tiny_models, world_readable_tmp):
    """The same app in this process, on a copy of the same versions (and fraud v2)."""
    from service import create_app

    repo = world_readable_tmp / "in-process"
    for name in tiny.DEFAULT_MODELS:
        (repo / name).mkdir(parents=True)
        shutil.copytree(tiny_models[name], repo / name / "1")
    tiny.copy_version(tiny_models["fraud@2"], repo / "fraud", 2)
    app = create_app(
        {"model_repository": str(repo), "load_in_background": False, "poll_interval": 0}
    )
    return app.test_client()


def assert_close(got, want, path="$"):
    """Equal JSON, numbers within float32 round-off."""
    if isinstance(want, dict):
        assert isinstance(got, dict) and set(got) == set(want), (path, got, want)
        for key in want:
            assert_close(got[key], want[key], f"{path}.{key}")
    elif isinstance(want, list):
        assert isinstance(got, list) and len(got) == len(want), (path, got, want)
        for i, (g, w) in enumerate(zip(got, want, strict=True)):
            assert_close(g, w, f"{path}[{i}]")
    elif isinstance(want, float) and not isinstance(want, bool):
        assert isinstance(got, (int, float)) and math.isclose(got, want, rel_tol=1e-5,
                                                              abs_tol=1e-6), (path, got, want)
    else:
        assert got == want, (path, got, want)


def requests_for(name: str, rows: list, version: int | None = None) -> list[tuple[str, dict]]:
    at = f"/versions/{version}" if version else ""
    shape = [len(rows), *np.asarray(rows).shape[1:]]
    flat = np.asarray(rows, np.float32).ravel().tolist()
    return [
        (f"/models/{name}{at}/predict", {"instances": rows}),
        (f"/v1/models/{name}{at}:predict", {"instances": rows}),
        (f"/v2/models/{name}{at}/infer",
         {"inputs": [{"name": "input", "shape": shape, "datatype": "FP32", "data": flat}]}),
    ]


def compare(container, in_process, name: str, rows: list, version: int | None = None) -> None:
    for path, body in requests_for(name, rows, version):
        want = in_process.post(path, json=body)
        assert want.status_code == 200, (path, want.get_data(as_text=True)[:500])
        got = requests.post(f"{container.url}{path}", json=body, timeout=60)
        assert got.status_code == 200, (path, got.text[:500])
        assert_close(got.json(), want.get_json(), path)


def test_container_runs_as_non_root(served):
    assert served.inspect()["Config"]["User"].startswith("layerscope")
    assert served.exec("id", "-u").stdout.strip() == "10001"
    # every process of the container: the Gunicorn master (pid 1) and its workers
    uids = served.exec("sh", "-c", "grep -h '^Uid:' /proc/[0-9]*/status").stdout.split("\n")
    uids = [line.split()[1:] for line in uids if line.strip()]
    assert len(uids) >= 3 and all(set(u) == {"10001"} for u in uids), uids


def test_healthcheck_turns_healthy(served):
    status = eng.wait_for(
        lambda: served.health() == "healthy" and "healthy", 180, interval=2,
        what="the HEALTHCHECK to report healthy",
    )
    assert status == "healthy"
    log = served.state()["Health"]["Log"]
    assert log and log[-1]["ExitCode"] == 0


def test_readyz_and_predictions_equal_the_in_process_runtime(served, in_process, tiny_models):
    got = requests.get(f"{served.url}/readyz", timeout=10)
    want = in_process.get("/readyz")
    assert got.status_code == want.status_code == 200
    got_body, want_body = got.json(), want.get_json()
    got_body.pop("pid"), want_body.pop("pid")
    got_body["models"].pop("slow")  # the slow model is the container's only
    assert got_body == want_body
    for name in tiny.DEFAULT_MODELS:
        rows = tiny.reference_rows(tiny_models[name], 4)
        compare(served, in_process, name, rows, version=1)
        if name != "fraud":  # the in-process copy also holds fraud v2, its default
            compare(served, in_process, name, rows)


def test_model_volume_is_read_only_and_a_copied_version_is_hot_reloaded(
    served, in_process, tiny_models
):
    mounts = [m for m in served.inspect()["Mounts"] if m["Destination"] == "/app/models"]
    assert len(mounts) == 1 and mounts[0]["RW"] is False, mounts
    denied = served.exec("sh", "-c", "touch /app/models/fraud/written-by-the-server")
    assert denied.returncode != 0 and "Read-only file system" in denied.stderr
    # a publisher on the host copies version 2 in (staged under a hidden name, renamed)
    tiny.copy_version(tiny_models["fraud@2"], served.repo / "fraud", 2)

    def serves_two():
        # several requests: each Gunicorn worker reloads on its own
        answers = [requests.post(f"{served.url}/models/fraud/predict", timeout=10,
                                 json={"instances": [[0.0] * 30]}).json() for _ in range(8)]
        return all(a.get("version") == 2 for a in answers)

    eng.wait_for(serves_two, 90, interval=1, what="version 2 served by every worker")
    rows = tiny.reference_rows(tiny_models["fraud@2"], 4)
    compare(served, in_process, "fraud", rows, version=2)
    compare(served, in_process, "fraud", rows, version=1)
    listed = requests.get(f"{served.url}/models/fraud", timeout=10).json()
    assert {v["version"] for v in listed["versions"]} == {1, 2}


def test_slow_client_attack_leaves_the_containers_predictions_unharmed(served, tmp_path):
    """Issue 22's attack (tests/reliability/slowclients.py), shortened, through the
    container's published port: slow heads, trickled bodies and idle connections are
    closed by the server's timeouts while a normal client's predictions all succeed."""
    slowclients = pytest.importorskip(
        "tests.reliability.slowclients", reason="no slow-client harness (issue 22)"
    )
    port = int(served.url.rsplit(":", 1)[1])
    plan = slowclients.AttackPlan(slow_heads=100, slow_bodies=20, idle=150, duration=14.0)
    started = time.time()
    report = slowclients.run("127.0.0.1", port, plan, baseline=5.0, out=tmp_path / "a.json")
    eng.progress(f"slow-client attack on the container: {json.dumps(report)[:600]}")
    # the HEALTHCHECK's own probes (inside the container) kept passing meanwhile
    probes = [h for h in served.state()["Health"]["Log"]
              if h["Start"][:19] >= time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(started))]
    eng.progress(f"health probes during the attack: {[h['ExitCode'] for h in probes]}")
    before, during, summary = report["normal_before"], report["normal_during"], report["attack"]
    assert during["failures"] == {} and during["success"] == 1.0, during
    assert during["rps"] > 0.25 * before["rps"], (before, during)
    head, body, idle = summary["head"], summary["body"], summary["idle"]
    assert head["errors"] == body["errors"] == idle["errors"] == 0, summary
    assert head["closed_by_server"] >= plan.slow_heads, head
    assert body["closed_by_server"] >= plan.slow_bodies, body
    assert idle["closed_by_server"] >= plan.idle, idle
    assert head["life_max_s"] < HEADER_TIMEOUT + 2.5, head  # + the docker proxy's hop
    assert idle["life_max_s"] < HEADER_TIMEOUT + 2.5, idle
    assert requests.get(f"{served.url}/readyz", timeout=10).status_code == 200
    assert all(h["ExitCode"] == 0 for h in probes), probes


def test_killed_container_is_restarted_by_its_restart_policy(served, tiny_models):
    """Its main process killed from outside (as the OOM killer would): `docker kill` would
    not do, the engine counts that as a deliberate stop and leaves the container down."""
    if os.geteuid() != 0:
        pytest.skip("killing the container's process from outside needs root")
    before = served.inspect()["RestartCount"]
    pid = served.state()["Pid"]
    os.kill(pid, signal.SIGKILL)  # the Gunicorn master, pid 1 in the container
    eng.wait_for(lambda: served.inspect()["RestartCount"] > before, 60, interval=0.5,
                 what="the restart policy to restart the container")
    state = served.state()
    assert state["Pid"] != pid
    wait_ready(served, 420, restarts=before + 1)
    row = tiny.reference_rows(tiny_models["mnist"], 1)
    answer = requests.post(f"{served.url}/models/mnist/predict", json={"instances": row},
                           timeout=30)
    assert answer.status_code == 200 and len(answer.json()["predictions"]) == 1


def test_docker_stop_drains_in_flight_requests(served):
    wait_ready(served, 420, restarts=served.inspect()["RestartCount"])
    body = json.dumps({"instances": np.random.default_rng(5).integers(
        0, 256, (SLOW_BATCH, 28, 28, 1)).tolist()}).encode()
    url = f"{served.url}/models/slow/predict"
    headers = {"Content-Type": "application/json"}
    start = time.monotonic()
    assert requests.post(url, data=body, headers=headers, timeout=120).status_code == 200
    one = time.monotonic() - start

    def slow():
        try:
            r = requests.post(url, data=body, headers=headers, timeout=120)
            return time.monotonic(), r.status_code
        except requests.RequestException as exc:
            return time.monotonic(), type(exc).__name__

    stopped: dict[str, float] = {}

    def stop():
        stopped["signalled"] = time.monotonic()
        served.stop(timeout=GRACEFUL + 30)
        stopped["exited"] = time.monotonic()

    with ThreadPoolExecutor(8) as pool:
        futures = [pool.submit(slow) for _ in range(8)]
        time.sleep(min(0.5, one / 3))
        stopper = threading.Thread(target=stop)
        stopper.start()
        results = [f.result() for f in futures]
        stopper.join(GRACEFUL + 90)
    assert [status for _, status in results] == [200] * 8, results
    assert any(end > stopped["signalled"] for end, _ in results), "nothing was in flight"
    assert stopped["exited"] - stopped["signalled"] < GRACEFUL, stopped
    state = served.state()
    assert not state["Running"] and state["ExitCode"] == 0, served.describe()
    assert "Handling signal: term" in served.logs(400)
