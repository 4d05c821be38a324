"""Drive an HTTP endpoint with a load generator from Debian and collect its figures.

``wrk`` is the default: its latency histogram has microsecond resolution and it costs
the 2-core machine little CPU. ``hey`` prints latencies in 0.1 ms steps, too coarse for
sub-millisecond requests (a 0.8 ms p50 reads 0.8 or 0.9: a ratio of two such figures
moves by up to 25 %), and its own CPU takes a larger share of the cores the servers use."""

from __future__ import annotations

import json
import re
import shutil
import subprocess
import tempfile
from dataclasses import dataclass
from pathlib import Path


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


def run_load(
    url: str,
    body: bytes | Payload,
    *,
    concurrency: int,
    seconds: float,
    generator: str = "wrk",
) -> LoadResult:
    """POST ``body`` to ``url`` with ``generator`` ("wrk" or "hey")."""
    run = {"wrk": run_wrk, "hey": run_hey}.get(generator)
    if run is None:
        raise ValueError(f"unknown load generator: Received: generator={generator!r}")
    return run(url, body, concurrency=concurrency, seconds=seconds)


# The request and a JSON summary for wrk: wrk.body is read from a file (it may be binary,
# e.g. the OIP binary tensor extension); done() prints the percentiles in microseconds.
WRK_SCRIPT = """
local f = assert(io.open({body_path}, "rb"))
wrk.method = "POST"
wrk.body = f:read("*a")
f:close()
{headers}
done = function(summary, latency, requests)
  local e = summary.errors
  io.write(string.format(
    "\\nWRK-JSON {{\\"requests\\": %d, \\"duration_us\\": %d, \\"p50\\": %d, "
    .. "\\"p90\\": %d, \\"p99\\": %d, \\"status_errors\\": %d, "
    .. "\\"socket_errors\\": %d}}\\n",
    summary.requests, summary.duration, latency:percentile(50), latency:percentile(90),
    latency:percentile(99), e.status, e.connect + e.read + e.write + e.timeout))
end
"""


def _lua_string(text: str) -> str:
    return '"' + text.replace("\\", "\\\\").replace('"', '\\"') + '"'


def wrk_script(body_path: str, payload: Payload) -> str:
    headers = [("Content-Type", payload.content_type), *payload.headers]
    lines = "\n".join(f"wrk.headers[{_lua_string(k)}] = {_lua_string(v)}" for k, v in headers)
    return WRK_SCRIPT.format(body_path=_lua_string(body_path), headers=lines)


def parse_wrk(output: str) -> dict:
    """The summary ``WRK_SCRIPT`` prints (latencies in microseconds)."""
    match = re.search(r"^WRK-JSON (\{.*\})$", output, re.M)
    if match is None:
        raise RuntimeError(f"no summary in wrk's output:\n{output[-2000:]}")
    return json.loads(match.group(1))


def run_wrk(url: str, body: bytes | Payload, *, concurrency: int, seconds: float) -> LoadResult:
    """POST ``body`` to ``url`` for ``seconds`` (whole seconds, at least 1: wrk's unit) on
    ``concurrency`` keep-alive connections driven by one wrk thread (a few percent of a
    core at these rates, so the servers keep the rest)."""
    if shutil.which("wrk") is None:
        raise RuntimeError("the load generator `wrk` is missing: apt-get install wrk")
    payload = body if isinstance(body, Payload) else Payload(body)
    with tempfile.TemporaryDirectory(prefix="bench-wrk-") as tmp:
        body_path, script = Path(tmp) / "body", Path(tmp) / "post.lua"
        body_path.write_bytes(payload.data)
        script.write_text(wrk_script(str(body_path), payload))
        out = subprocess.run(
            [
                "wrk",
                "-t1",
                f"-c{concurrency}",
                f"-d{max(1, round(seconds))}s",
                "--timeout",
                "30s",
                "-s",
                str(script),
                url,
            ],
            capture_output=True,
            text=True,
            check=True,
        ).stdout
    parsed = parse_wrk(out)
    errors = parsed["status_errors"] + parsed["socket_errors"]
    return LoadResult(
        url=url,
        concurrency=concurrency,
        requests=parsed["requests"],
        rps=parsed["requests"] / (parsed["duration_us"] / 1e6),
        p50_ms=parsed["p50"] / 1000,
        p90_ms=parsed["p90"] / 1000,
        p99_ms=parsed["p99"] / 1000,
        errors=errors,
    )


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
