"""A real Layerscope server for the benchmarks and the end-to-end tests:
``service/entrypoint.sh`` (Gunicorn + the app) on a free 127.0.0.1 port, in its own process
group, plus the small process helpers (free port, workers and RSS from /proc, polling)
they all need. Importable from the tests (pytest's pythonpath is the project root)."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import time
from collections.abc import Callable, Mapping
from pathlib import Path

import requests

ROOT = Path(__file__).resolve().parents[1]
ENTRYPOINT = ROOT / "service" / "entrypoint.sh"


def free_port() -> int:
    """A TCP port on 127.0.0.1 that was free a moment ago."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def children(pid: int) -> set[int]:
    """Direct child processes of ``pid`` (the Gunicorn workers of a master), from /proc."""
    found = set()
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            fields = stat.read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue
        if int(fields[1]) == pid:
            found.add(int(stat.parent.name))
    return found


def rss_kb(pid: int) -> int:
    """Resident set size of ``pid`` in kB (0 when it is gone)."""
    try:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith("VmRSS:"):
                return int(line.split()[1])
    except OSError:
        pass
    return 0


def wait_for(
    predicate: Callable[[], object], timeout: float, interval: float = 0.2, what: str = ""
) -> None:
    """Poll ``predicate`` until it is true; AssertionError after ``timeout`` seconds."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():
            return
        time.sleep(interval)
    raise AssertionError(f"timed out after {timeout}s waiting for {what}")


class LayerscopeServer:
    """``service/entrypoint.sh`` on a free port, serving ``repo`` (when given).

    ``env`` adds or overrides variables (LAYERSCOPE_*, TF_CPP_MIN_LOG_LEVEL, ...) on top of
    the host, port, workers, threads, repository, Prometheus multiprocess directory and an
    empty CUDA_VISIBLE_DEVICES. Output goes to ``workdir / log_name`` (``{port}`` in the
    name is replaced by the port). ``proc`` is the raw Popen (the Gunicorn master: the
    entrypoint execs into it) for tests that signal it themselves."""

    def __init__(
        self,
        repo: Path | None,
        workdir: Path,
        *,
        workers: int = 2,
        threads: int = 2,
        env: Mapping[str, str] | None = None,
        multiproc_dir: Path | None = None,
        log_name: str = "gunicorn.log",
        append_log: bool = False,
    ):
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.workdir = Path(workdir)
        self.workers = workers
        self.multiproc_dir = multiproc_dir or self.workdir / "metrics"
        self.log_path = self.workdir / log_name.format(port=self.port)
        self._append_log = append_log
        self.env = {
            **os.environ,
            "LAYERSCOPE_HOST": "127.0.0.1",
            "LAYERSCOPE_PORT": str(self.port),
            "LAYERSCOPE_WORKERS": str(workers),
            "LAYERSCOPE_THREADS": str(threads),
            "PROMETHEUS_MULTIPROC_DIR": str(self.multiproc_dir),
            "CUDA_VISIBLE_DEVICES": "",
        }
        if repo is not None:
            self.env["LAYERSCOPE_MODEL_REPOSITORY"] = str(repo)
        self.env.update(env or {})
        self.proc: subprocess.Popen | None = None
        self._log_file = None

    # -- life cycle ------------------------------------------------------------------------
    def start(self) -> LayerscopeServer:
        self._log_file = open(self.log_path, "ab" if self._append_log else "wb")  # noqa: SIM115
        self.proc = subprocess.Popen(
            [str(ENTRYPOINT)],
            cwd=ROOT,
            env=self.env,
            stdout=self._log_file,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
        return self

    @property
    def pid(self) -> int:
        return self.proc.pid

    def wait_ready(
        self,
        timeout: float = 180,
        *,
        path: str = "/readyz",
        interval: float = 0.5,
        consecutive: int = 1,
    ) -> None:
        """Until ``path`` answered 200 ``consecutive`` times in a row (new connection each
        time). RuntimeError with the log tail if Gunicorn exits; TimeoutError after
        ``timeout`` seconds."""
        deadline = time.monotonic() + timeout
        streak, last = 0, None
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(
                    f"gunicorn exited {self.proc.returncode}:\n{self.log_text(4000)}"
                )
            try:
                last = requests.get(self.url + path, timeout=5).status_code
            except requests.RequestException as exc:
                last = exc
            streak = streak + 1 if last == 200 else 0
            if streak >= consecutive:
                return
            time.sleep(interval)
        raise TimeoutError(
            f"timed out after {timeout}s waiting for {path} 200; last: {last!r}\n"
            + self.log_text(4000)
        )

    def wait_workers_ready(self, timeout: float = 300, interval: float = 0.05) -> None:
        """Until every one of the ``workers`` workers has answered /readyz with 200."""
        deadline = time.monotonic() + timeout
        ready: set[int] = set()
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(
                    f"gunicorn exited {self.proc.returncode} during start-up:\n"
                    + self.log_text(4000)
                )
            try:
                r = requests.get(self.url + "/readyz", timeout=5)
                if r.status_code == 200:
                    ready.add(r.json()["pid"])
            except requests.RequestException:
                pass
            live = self.worker_pids()
            if len(live) == self.workers and ready >= live:
                return
            time.sleep(interval)
        raise RuntimeError(f"workers not ready after {timeout}s:\n{self.log_text(4000)}")

    def stop(self, timeout: float = 30) -> None:
        """SIGTERM to the process group, SIGKILL after ``timeout`` seconds."""
        if self.proc is not None and self.proc.poll() is None:
            os.killpg(self.proc.pid, signal.SIGTERM)
            try:
                self.proc.wait(timeout)
            except subprocess.TimeoutExpired:
                os.killpg(self.proc.pid, signal.SIGKILL)
                self.proc.wait(10)
        if self._log_file is not None:
            self._log_file.close()

    def __enter__(self) -> LayerscopeServer:
        return self if self.proc is not None else self.start()

    def __exit__(self, *exc) -> None:
        self.stop()

    # -- inspection ------------------------------------------------------------------------
    def worker_pids(self) -> set[int]:
        """Children of the Gunicorn master."""
        return children(self.proc.pid)

    def log_text(self, tail: int | None = None) -> str:
        """The server's output so far (its last ``tail`` characters)."""
        try:
            text = self.log_path.read_text(errors="replace")
        except OSError:
            return ""
        return text if tail is None else text[-tail:]
