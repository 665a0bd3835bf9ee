"""Load generators: `wrk` (HTTP/1.1 through Envoy, saturation), `h2load` (HTTP/2 saturation straight at a gRPC
port with a pre-encoded CheckRequest frame) and our paced client (`paced.py`: fixed rate through Envoy).

wrk and h2load are C programs, so the client is never the bottleneck of a Python server. wrk reports its own
latency percentiles through a Lua `done()` hook (written as JSON); h2load writes one line per request to
`--log-file` and the percentiles are computed here. h2load's own `--rps` is not used for the fixed rate: it
sends in bursts (see paced.py). Debian's `wrk` and `nghttp2-client` are installed with apt-get when missing
(and we are root), otherwise the error says what to install.
"""

from __future__ import annotations

import json
import os
import shutil
import struct
import subprocess
import sys
import tempfile
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from pathlib import Path

TOOLS = {"wrk": "wrk", "h2load": "nghttp2-client", "redis-server": "redis-server"}
REPO = Path(__file__).resolve().parents[1]

_WRK_DONE = """
done = function(summary, latency, requests)
  local e = summary.errors
  local f = io.open(os.getenv("BENCH_OUT"), "w")
  f:write(string.format(
    '{"requests": %d, "duration_us": %d, "errors": %d, "status_errors": %d, '
    .. '"p50_us": %d, "p90_us": %d, "p99_us": %d, "max_us": %d}',
    summary.requests, summary.duration, e.connect + e.read + e.write + e.timeout, e.status,
    latency:percentile(50), latency:percentile(90), latency:percentile(99), latency.max))
  f:close()
end
"""

# Rotates one header's value over the lines of a file (one fresh credential per request, e.g. cold JWTs).
_WRK_ROTATE = """
local values, n, i = {}, 0, 0
local header, prefix = os.getenv("BENCH_ROTATE_HEADER"), os.getenv("BENCH_ROTATE_PREFIX") or ""
for line in io.lines(os.getenv("BENCH_ROTATE_FILE")) do n = n + 1; values[n] = prefix .. line end
request = function()
  i = i % n + 1
  wrk.headers[header] = values[i]
  return wrk.format()
end
"""


@dataclass(frozen=True, slots=True)
class LoadResult:
    """What one load run measured. Latencies in microseconds."""

    requests: int
    seconds: float
    errors: int
    p50_us: float
    p90_us: float
    p99_us: float
    max_us: float

    @property
    def rps(self) -> float:
        return self.requests / self.seconds if self.seconds else 0.0

    def as_dict(self) -> dict[str, float]:
        return {**asdict(self), "rps": round(self.rps, 1)}


@dataclass(frozen=True, slots=True)
class Rotation:
    """One header whose value changes every request: `header: prefix + <next line of file>`."""

    header: str
    prefix: str
    values_file: Path


def ensure_tools(names: Sequence[str] = ("wrk", "h2load")) -> None:
    """Install Debian's packages for missing load generators (as root), or raise saying what to install."""
    missing = [TOOLS[n] for n in names if shutil.which(n) is None]
    if not missing:
        return
    if os.geteuid() == 0 and shutil.which("apt-get"):
        env = {**os.environ, "DEBIAN_FRONTEND": "noninteractive"}
        subprocess.run(["apt-get", "update", "-qq"], check=True, env=env, capture_output=True)
        subprocess.run(["apt-get", "install", "-y", "-qq", *missing], check=True, env=env, capture_output=True)
        return
    raise RuntimeError(f"the benchmark needs {', '.join(missing)}: sudo apt-get install {' '.join(missing)}")


def run_wrk(
    url: str,
    connections: int,
    seconds: float,
    headers: Sequence[tuple[str, str]] = (),
    rotation: Rotation | None = None,
    threads: int = 1,
) -> LoadResult:
    """Saturate `url` with wrk for `seconds` over `connections` keep-alive HTTP/1.1 connections."""
    with tempfile.TemporaryDirectory(prefix="bench-wrk-") as tmp:
        script, out = Path(tmp) / "bench.lua", Path(tmp) / "out.json"
        script.write_text((_WRK_ROTATE if rotation else "") + _WRK_DONE)
        env = {**os.environ, "BENCH_OUT": str(out)}
        if rotation is not None:
            env |= {
                "BENCH_ROTATE_HEADER": rotation.header,
                "BENCH_ROTATE_PREFIX": rotation.prefix,
                "BENCH_ROTATE_FILE": str(rotation.values_file),
            }
        cmd = ["wrk", "-t", str(threads), "-c", str(max(connections, threads)), "-d", f"{max(1, round(seconds))}s"]
        cmd += ["--timeout", "5s", "-s", str(script)]
        for name, value in headers:
            cmd += ["-H", f"{name}: {value}"]
        done = subprocess.run([*cmd, url], capture_output=True, text=True, env=env, timeout=seconds + 60, check=False)
        if done.returncode != 0 or not out.exists():
            raise RuntimeError(f"wrk failed ({done.returncode}): {done.stderr or done.stdout}")
        data = json.loads(out.read_text())
    return LoadResult(
        requests=data["requests"],
        seconds=data["duration_us"] / 1e6,
        errors=data["errors"] + data["status_errors"],
        p50_us=data["p50_us"],
        p90_us=data["p90_us"],
        p99_us=data["p99_us"],
        max_us=data["max_us"],
    )


def run_paced(
    url: str,
    rate: int,
    seconds: float,
    headers: Sequence[tuple[str, str]] = (),
    rotation: Rotation | None = None,
    connections: int = 16,
) -> LoadResult:
    """Fixed-rate load with latency from the schedule (`benchmarks/paced.py`, in its own process)."""
    cmd = [sys.executable, "-m", "benchmarks.paced", url, "--rate", str(rate), "--seconds", str(seconds)]
    cmd += ["--connections", str(connections)]
    for name, value in headers:
        cmd += ["-H", f"{name}: {value}"]
    if rotation is not None:
        cmd += ["--rotate-file", str(rotation.values_file), "--rotate-header", rotation.header]
        cmd += ["--rotate-prefix", rotation.prefix]
    done = subprocess.run(cmd, cwd=REPO, capture_output=True, text=True, timeout=seconds + 60, check=False)
    if done.returncode != 0:
        raise RuntimeError(f"paced client failed ({done.returncode}): {done.stderr[-2000:]}")
    data = json.loads(done.stdout)
    return LoadResult(
        requests=data["requests"],
        seconds=data["seconds"],
        errors=data["errors"],
        p50_us=data["p50_us"],
        p90_us=data["p90_us"],
        p99_us=data["p99_us"],
        max_us=data["max_us"],
    )


def grpc_frame(message: bytes) -> bytes:
    """One gRPC length-prefixed message (uncompressed)."""
    return b"\x00" + struct.pack(">I", len(message)) + message


def run_h2load(
    url: str,
    clients: int,
    seconds: float,
    warmup: float = 0.0,
    streams: int = 1,
    rate_per_client: int | None = None,
    headers: Sequence[tuple[str, str]] = (),
    body: bytes | None = None,
) -> LoadResult:
    """Drive `url` with h2load (HTTP/2 prior knowledge) for `seconds`; fixed rate when `rate_per_client` is set.

    With `body`, requests are POSTs of those bytes (a framed CheckRequest for the gRPC port). A gRPC answer is
    HTTP 200 whatever its grpc-status, so for gRPC the caller checks decisions separately; here non-2xx and
    failed requests count as errors.
    """
    with tempfile.TemporaryDirectory(prefix="bench-h2load-") as tmp:
        log = Path(tmp) / "requests.tsv"
        cmd = ["h2load", "-t", "1", "-c", str(clients), "-m", str(streams), "-D", f"{max(1, round(seconds))}"]
        if warmup:
            cmd += ["--warm-up-time", f"{max(1, round(warmup))}"]
        if rate_per_client:
            cmd += ["--rps", str(rate_per_client)]
        for name, value in headers:
            cmd += ["-H", f"{name}: {value}"]
        if body is not None:
            data = Path(tmp) / "body.bin"
            data.write_bytes(body)
            cmd += ["-d", str(data)]
        cmd += ["--log-file", str(log), url]
        done = subprocess.run(cmd, capture_output=True, text=True, timeout=seconds + warmup + 60, check=False)
        if done.returncode != 0 or not log.exists():
            raise RuntimeError(f"h2load failed ({done.returncode}): {done.stderr or done.stdout}")
        return summarize_log(log.read_text(), done.stdout)


def summarize_log(log_text: str, stdout: str) -> LoadResult:
    """Percentiles and rate from h2load's per-request log (start_us, status, elapsed_us per line)."""
    starts: list[int] = []
    latencies: list[int] = []
    errors = 0
    for line in log_text.splitlines():
        parts = line.split("\t")
        if len(parts) < 3:
            continue
        start, status, elapsed = int(parts[0]), int(parts[1]), int(parts[2])
        if not 200 <= status < 300:
            errors += 1
            continue
        starts.append(start)
        latencies.append(elapsed)
    errors += _h2load_failed(stdout)
    if not latencies:
        raise RuntimeError(f"h2load completed no request:\n{stdout}")
    latencies.sort()
    span = (max(starts) - min(starts)) / 1e6 if len(starts) > 1 else 0.0
    return LoadResult(
        requests=len(latencies),
        seconds=span or 1.0,
        errors=errors,
        p50_us=percentile(latencies, 50),
        p90_us=percentile(latencies, 90),
        p99_us=percentile(latencies, 99),
        max_us=float(latencies[-1]),
    )


def _h2load_failed(stdout: str) -> int:
    """The `N failed` count of h2load's summary line `requests: ... N failed, ...`."""
    for line in stdout.splitlines():
        if line.startswith("requests:"):
            for part in line.split(","):
                words = part.split()
                if len(words) == 2 and words[1] == "failed":
                    return int(words[0])
    return 0


def percentile(sorted_values: Sequence[int], pct: float) -> float:
    """Nearest-rank percentile of already sorted values."""
    if not sorted_values:
        return 0.0
    rank = max(1, min(len(sorted_values), round(pct / 100 * len(sorted_values) + 0.5)))
    return float(sorted_values[rank - 1])
