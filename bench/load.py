"""Drive an HTTP endpoint with `hey` (Debian package) and parse its summary."""

from __future__ import annotations

import re
import shutil
import subprocess
import tempfile
from dataclasses import dataclass


@dataclass
class LoadResult:
    url: str
    concurrency: int
    requests: int
    rps: float
    p50_ms: float
    p90_ms: float
    p99_ms: float
    errors: int

    def row(self) -> dict:
        return self.__dict__.copy()


def parse_hey(output: str) -> dict:
    """Requests/sec, latency percentiles (ms), status counts from hey's text summary."""
    rps = float(re.search(r"Requests/sec:\s+([0-9.]+)", output).group(1))
    pct = {
        int(m.group(1)): float(m.group(2)) * 1000
        for m in re.finditer(r"^\s*(\d+)% in ([0-9.]+) secs", output, re.M)
    }
    statuses = {int(c): int(n) for c, n in re.findall(r"\[(\d{3})\]\s+(\d+) responses", output)}
    error_lines = re.search(r"Error distribution:\n((?:\s+\[\d+\].*\n?)*)", output)
    transport_errors = 0
    if error_lines:
        transport_errors = sum(int(n) for n in re.findall(r"\[(\d+)\]", error_lines.group(1)))
    ok = statuses.get(200, 0)
    bad = sum(n for code, n in statuses.items() if code != 200) + transport_errors
    return {"rps": rps, "pct": pct, "ok": ok, "errors": bad}


@dataclass(frozen=True)
class Payload:
    """A request body that is not plain JSON (e.g. the OIP binary tensor extension)."""

    data: bytes
    content_type: str = "application/json"
    headers: tuple[tuple[str, str], ...] = ()


def run_hey(url: str, body: bytes | Payload, *, concurrency: int, seconds: float) -> LoadResult:
    """POST `body` to `url` for `seconds` at `concurrency` and return the figures."""
    if shutil.which("hey") is None:
        raise RuntimeError("the load generator `hey` is missing: apt-get install hey")
    payload = body if isinstance(body, Payload) else Payload(body)
    headers = [arg for key, value in payload.headers for arg in ("-H", f"{key}: {value}")]
    with tempfile.NamedTemporaryFile(suffix=".body") as handle:
        handle.write(payload.data)
        handle.flush()
        out = subprocess.run(
            [
                "hey",
                "-z",
                f"{seconds}s",
                "-c",
                str(concurrency),
                "-m",
                "POST",
                "-T",
                payload.content_type,
                *headers,
                "-D",
                handle.name,
                "-t",
                "30",
                url,
            ],
            capture_output=True,
            text=True,
            check=True,
        ).stdout
    parsed = parse_hey(out)
    return LoadResult(
        url=url,
        concurrency=concurrency,
        requests=parsed["ok"] + parsed["errors"],
        rps=parsed["rps"],
        p50_ms=parsed["pct"].get(50, float("nan")),
        p90_ms=parsed["pct"].get(90, float("nan")),
        p99_ms=parsed["pct"].get(99, float("nan")),
        errors=parsed["errors"],
    )
