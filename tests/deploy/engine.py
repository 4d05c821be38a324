"""A real Docker engine for the container and compose tests.

* :func:`engine` finds a running engine, or starts ``dockerd`` (as root, where Debian's
  ``docker.io`` is installed: ``make system-deps``) and stops it again at the end of the
  session; where neither works it raises :class:`Unavailable` with the reason, which the
  fixtures turn into a skip.
* :func:`build_images` builds the local base image (``deploy/docker/base-image.sh``:
  Debian bookworm from this machine's mirror, kept between runs), the serving and the
  training image from the project's ``Dockerfile`` and a Prometheus image from Debian's
  package, with the classic builder (no BuildKit frontend to pull) and the host's network
  for the package registries. Docker's layer cache is reused between runs on one machine.
* :class:`Container` wraps ``docker run`` / ``inspect`` / ``exec`` / ``stop`` / ``kill``.

Every step writes a line to ``$LAYERSCOPE_DOCKER_STATE/progress.log`` (default
``/tmp/layerscope-docker``) and to the terminal, captured output or not; build output goes
to ``build-<image>.log`` beside it. Every published port is bound to 127.0.0.1."""

from __future__ import annotations

import contextlib
import fcntl
import json
import os
import shutil
import socket
import subprocess
import sys
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[2]
STATE = Path(os.environ.get("LAYERSCOPE_DOCKER_STATE", "/tmp/layerscope-docker"))
PROGRESS = STATE / "progress.log"
LOCAL_BASE = "layerscope-base:bookworm"
SERVING_IMAGE = "layerscope:latest"
TRAINING_IMAGE = "layerscope-trainer:latest"
PROMETHEUS_IMAGE = "layerscope-prometheus:local"
LABEL = "layerscope.test.pid"  # containers a test session started: cleaned up by pid
BUILD_TIMEOUT = 1800  # a fresh machine downloads ~400 MB of wheels

_reporter: Callable[[str], None] | None = None


class Unavailable(Exception):
    """No Docker engine can be had here; the message says why (the skip reason)."""


def set_reporter(write: Callable[[str], None] | None) -> None:
    global _reporter
    _reporter = write


def progress(message: str) -> None:
    """One line to progress.log and to the terminal."""
    line = f"{time.strftime('%H:%M:%S')} docker-tests: {message}"
    try:
        STATE.mkdir(parents=True, exist_ok=True)
        with PROGRESS.open("a") as f:
            f.write(line + "\n")
    except OSError:  # another user's state folder: the terminal line still goes out
        pass
    if _reporter is not None:
        _reporter(line)


def docker(
    *args: str, timeout: float = 120, check: bool = True, input: str | None = None
) -> subprocess.CompletedProcess:
    result = subprocess.run(
        ["docker", *args], capture_output=True, text=True, timeout=timeout, input=input
    )
    if check and result.returncode != 0:
        raise RuntimeError(
            f"docker {' '.join(args)[:300]} exited {result.returncode}: "
            f"{result.stderr.strip()[-2000:]}"
        )
    return result


def wait_for(predicate: Callable[[], Any], timeout: float, interval: float = 0.5,
             what: str = "condition") -> Any:
    """Poll ``predicate`` until it returns something true; exceptions count as 'not yet'."""
    deadline = time.monotonic() + timeout
    last: Any = None
    while time.monotonic() < deadline:
        try:
            last = predicate()
            if last:
                return last
        except Exception as exc:  # noqa: BLE001 - polled: the last one is reported
            last = exc
        time.sleep(interval)
    raise TimeoutError(f"timed out after {timeout:.0f}s waiting for {what}; last: {last!r}")


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


# -- the engine ------------------------------------------------------------------------------
def _engine_answers() -> bool:
    try:
        return docker("info", "--format", "{{.ServerVersion}}", timeout=20, check=False)\
            .returncode == 0
    except (subprocess.TimeoutExpired, OSError):
        return False


@contextlib.contextmanager
def _lock(name: str) -> Iterator[None]:
    STATE.mkdir(parents=True, exist_ok=True)
    with open(STATE / f"{name}.lock", "a") as f:
        fcntl.flock(f, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(f, fcntl.LOCK_UN)


@dataclass
class Engine:
    """A Docker engine that answers; ``process`` is the dockerd this session started."""

    process: subprocess.Popen | None = None
    version: str = ""
    compose: list[str] = field(default_factory=list)

    def close(self) -> None:
        remove_session_containers()
        if self.process is None or self.process.poll() is not None:
            return
        progress(f"stopping the dockerd this session started (pid {self.process.pid})")
        self.process.terminate()
        try:
            self.process.wait(60)
        except subprocess.TimeoutExpired:
            self.process.kill()
            self.process.wait(10)


def engine() -> Engine:
    """A running Docker engine, started here when none runs (root and dockerd needed)."""
    if shutil.which("docker") is None:
        raise Unavailable("no docker command (make system-deps installs Debian's docker.io)")
    process = None
    with _lock("dockerd"):
        if not _engine_answers():
            dockerd = shutil.which("dockerd")
            if dockerd is None:
                raise Unavailable(
                    "no Docker engine runs and there is no dockerd to start "
                    "(make system-deps installs Debian's docker.io)"
                )
            if os.geteuid() != 0:
                raise Unavailable("no Docker engine runs, and starting dockerd needs root")
            log = STATE / "dockerd.log"
            progress(f"starting {dockerd} (log {log})")
            with log.open("ab") as out:
                process = subprocess.Popen(
                    [dockerd], stdout=out, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
                    start_new_session=True,
                )
            deadline = time.monotonic() + 60
            while not _engine_answers():
                if process.poll() is not None or time.monotonic() > deadline:
                    if process.poll() is None:
                        process.kill()
                    tail = log.read_text(errors="replace").strip().splitlines()[-5:]
                    raise Unavailable(
                        f"dockerd did not start (exit {process.poll()}): " + " | ".join(tail)
                    )
                time.sleep(0.5)
    version = docker("info", "--format", "{{.ServerVersion}} {{.Driver}}").stdout.strip()
    found = Engine(process, version, compose_command())
    remove_session_containers(stale_only=True)
    progress(f"engine {version}; compose: {' '.join(found.compose) or 'none'}")
    return found


def compose_command() -> list[str]:
    """``docker compose`` (v2 plugin) where present, else Debian's ``docker-compose``."""
    plugin = subprocess.run(["docker", "compose", "version"], capture_output=True, text=True)
    if plugin.returncode == 0:
        return ["docker", "compose"]
    if shutil.which("docker-compose"):
        return ["docker-compose"]
    return []


def remove_session_containers(stale_only: bool = False) -> None:
    """Containers labelled by this session (or, ``stale_only``, by sessions that are gone)."""
    out = docker("ps", "-a", "--filter", f"label={LABEL}",
                 "--format", f'{{{{.ID}}}} {{{{.Label "{LABEL}"}}}}', check=False).stdout
    for line in out.splitlines():
        cid, _, pid = line.partition(" ")
        alive = pid.isdigit() and Path(f"/proc/{pid}").exists()
        mine = pid == str(os.getpid())
        if (stale_only and not alive) or (not stale_only and mine):
            docker("rm", "-f", "-v", cid, check=False, timeout=60)


# -- images --------------------------------------------------------------------------------------
@dataclass
class Images:
    base: str
    serving: str
    training: str
    prometheus: str
    seconds: dict[str, float]

    def size(self, image: str) -> int:
        return int(docker("image", "inspect", "-f", "{{.Size}}", image).stdout.strip())


def _stream(cmd: Sequence[str], log: Path, timeout: float, env: dict | None = None) -> None:
    """Run ``cmd`` with its output in ``log``, each build step as a progress line."""
    deadline = time.monotonic() + timeout
    with log.open("w") as out:
        proc = subprocess.Popen(
            cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, cwd=ROOT,
            env={**os.environ, **(env or {})}, bufsize=1,
        )
        assert proc.stdout is not None
        for line in proc.stdout:
            out.write(line)
            if line.startswith("Step ") or line.startswith("base-image:"):
                progress(f"{log.stem}: {line.strip()[:120]}")
            if time.monotonic() > deadline:
                proc.kill()
                break
        code = proc.wait(60)
    if code != 0:
        tail = "".join(log.read_text(errors="replace").splitlines(True)[-30:])
        raise RuntimeError(f"{' '.join(cmd)[:200]} exited {code} (log {log}):\n{tail}")


def build(tag: str, *, target: str | None = None, dockerfile: Path | None = None,
          context: Path = ROOT, base: str = LOCAL_BASE) -> float:
    cmd = ["docker", "build", "--network", "host", "--build-arg", f"BASE_IMAGE={base}",
           "-t", tag]
    if target:
        cmd += ["--target", target]
    if dockerfile:
        cmd += ["-f", str(dockerfile)]
    cmd.append(str(context))
    progress(f"building {tag}{f' (target {target})' if target else ''}")
    start = time.monotonic()
    _stream(cmd, STATE / f"build-{tag.replace(':', '-').replace('/', '-')}.log",
            BUILD_TIMEOUT, env={"DOCKER_BUILDKIT": "0"})
    seconds = time.monotonic() - start
    progress(f"built {tag} in {seconds:.0f} s")
    return seconds


def build_images() -> Images:
    """The base (unless ``$LAYERSCOPE_BASE_IMAGE`` names one), serving, training and
    Prometheus images; one build each per session, Docker's layer cache across sessions."""
    seconds: dict[str, float] = {}
    base = os.environ.get("LAYERSCOPE_BASE_IMAGE", "")
    with _lock("build"):
        if not base:
            base = LOCAL_BASE
            start = time.monotonic()
            _stream([str(ROOT / "deploy/docker/base-image.sh"), base],
                    STATE / "build-base.log", 900)
            seconds["base"] = time.monotonic() - start
        seconds["serving"] = build(SERVING_IMAGE, target="serving", base=base)
        seconds["training"] = build(TRAINING_IMAGE, target="training", base=base)
        seconds["prometheus"] = build(
            PROMETHEUS_IMAGE, dockerfile=ROOT / "deploy/docker/prometheus.Dockerfile",
            context=ROOT / "deploy/docker", base=base,
        )
        # earlier builds' images that lost their tags (only those on the local base), in
        # the background: removing gigabytes of layers can take minutes on a loaded disk
        subprocess.Popen(
            ["docker", "image", "prune", "-f", "--filter", "label=layerscope.base.recipe"],
            stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
            start_new_session=True,
        )
    images = Images(base, SERVING_IMAGE, TRAINING_IMAGE, PROMETHEUS_IMAGE, seconds)
    sizes = ", ".join(f"{i} {images.size(i) / 1e9:.2f} GB"
                      for i in (SERVING_IMAGE, TRAINING_IMAGE, PROMETHEUS_IMAGE, base))
    progress(f"images: {sizes}")
    return images


# -- containers ------------------------------------------------------------------------------
class Container:
    """A container this session started (labelled, removed with its anonymous volumes)."""

    def __init__(self, cid: str, name: str):
        self.id = cid
        self.name = name

    @classmethod
    def run(cls, image: str, *command: str, name: str, env: dict[str, str] | None = None,
            ports: dict[int, int] | None = None, volumes: Sequence[str] = (),
            options: Sequence[str] = (), entrypoint: str | None = None) -> Container:
        """``docker run -d``; ``ports`` maps container port -> host port on 127.0.0.1."""
        name = f"{name}-{os.getpid()}"
        docker("rm", "-f", "-v", name, check=False)
        args = ["run", "-d", "--name", name, "--label", f"{LABEL}={os.getpid()}"]
        for key, value in (env or {}).items():
            args += ["-e", f"{key}={value}"]
        for inner, outer in (ports or {}).items():
            args += ["-p", f"127.0.0.1:{outer}:{inner}"]
        for volume in volumes:
            args += ["-v", volume]
        if entrypoint is not None:
            args += ["--entrypoint", entrypoint]
        args += [*options, image, *command]
        cid = docker(*args, timeout=120).stdout.strip()
        return cls(cid, name)

    def inspect(self) -> dict:
        return json.loads(docker("inspect", self.id).stdout)[0]

    def state(self) -> dict:
        return self.inspect()["State"]

    def health(self) -> str | None:
        health = self.state().get("Health")
        return health["Status"] if health else None

    def logs(self, tail: int = 200) -> str:
        result = docker("logs", "--tail", str(tail), self.id, check=False, timeout=60)
        return result.stdout + result.stderr

    def exec(self, *cmd: str, user: str | None = None, timeout: float = 60
             ) -> subprocess.CompletedProcess:
        args = ["exec", *(["--user", user] if user else []), self.id, *cmd]
        return docker(*args, check=False, timeout=timeout)

    def stop(self, timeout: int) -> subprocess.CompletedProcess:
        return docker("stop", "-t", str(timeout), self.id, timeout=timeout + 60)

    def kill(self, signal: str = "KILL") -> None:
        docker("kill", "--signal", signal, self.id)

    def remove(self) -> None:
        docker("rm", "-f", "-v", self.id, check=False, timeout=60)

    def describe(self) -> str:
        """State and the last log lines, for assertion messages."""
        try:
            state = self.state()
        except RuntimeError as exc:
            return str(exc)
        lines, errors = [], []
        for line in self.logs(400).splitlines():
            if any(noise in line for noise in _LOG_NOISE):
                continue
            lines.append(line[:500])
            if '"exc_info"' in line:
                with contextlib.suppress(ValueError):
                    errors.append(json.loads(line)["exc_info"][-1500:])
        tail = "\n".join(lines[-30:])
        last_error = f"\nlast traceback:\n{errors[-1]}" if errors else ""
        return f"state {json.dumps(state)[:600]}\nlogs:\n{tail}{last_error}"


# TensorFlow's start-up chatter on stderr, left out of assertion messages
_LOG_NOISE = ("oneDNN custom operations", "absl::InitializeLog", "cpu_feature_guard",
              "To enable the following instructions", "cudart_stub", "rebuild TensorFlow")


def image_python(image: str, code: str, timeout: float = 120) -> str:
    """``python -c code`` in a throwaway container of ``image``; its stdout."""
    result = docker("run", "--rm", "--network", "none", "--entrypoint", "python", image,
                    "-c", code, timeout=timeout)
    return result.stdout


def terminal_writer(config) -> Callable[[str], None]:
    """Write lines to pytest's terminal even while output is captured."""
    capture = config.pluginmanager.getplugin("capturemanager")
    terminal = config.pluginmanager.getplugin("terminalreporter")

    def write(line: str) -> None:
        if terminal is None:
            print(line, file=sys.stderr)
            return
        with capture.global_and_fixture_disabled() if capture else contextlib.nullcontext():
            terminal.write_line(line)

    return write
