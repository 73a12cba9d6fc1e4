"""The load: one wrk run of a scenario, its figures, and the service's own log over the same run."""

import json
import math
import os
import re
import subprocess
from pathlib import Path

from api.observe import REQUEST_MESSAGE
from bench import BENCH_DIR, BenchFailure
from bench.scenarios import API_KEY, Scenario

LUA_SCRIPT = BENCH_DIR / "lua" / "post.lua"
WRK_GRACE_SECONDS = 30.0

_NON_2XX = re.compile(r"Non-2xx or 3xx responses:\s*(\d+)")
_SOCKET_ERRORS = re.compile(r"Socket errors:.*")


def run_wrk(
    scenario: Scenario,
    base_url: str,
    connections: int,
    threads: int,
    seconds: int,
    users: int,
    tag: str,
    api_key: str = API_KEY,
) -> dict:
    """One wrk run; returns the JSON line printed by the script's ``done``. Fails on any error.

    ``api_key`` goes in the ``X-API-Key`` header (a LiteLLM proxy takes its key there too).
    """
    command = [
        "wrk",
        f"-t{threads}",
        f"-c{connections}",
        f"-d{seconds}s",
        "--timeout",
        "5s",
        "-s",
        str(LUA_SCRIPT),
        base_url + scenario.path,
        "--",
        str(users),
        tag,
        scenario.body,
    ]
    env = dict(os.environ, BENCH_API_KEY=api_key)
    try:
        finished = subprocess.run(
            command,
            env=env,
            capture_output=True,
            text=True,
            timeout=seconds + WRK_GRACE_SECONDS,
            check=False,
        )
    except subprocess.TimeoutExpired as error:
        raise BenchFailure(f"wrk did not finish: {' '.join(command)}") from error
    output = finished.stdout + finished.stderr
    if finished.returncode != 0:
        raise BenchFailure(f"wrk exited with {finished.returncode}:\n{output}")
    lines = [line for line in finished.stdout.splitlines() if line.startswith("BENCH_JSON ")]
    if len(lines) != 1:
        raise BenchFailure(f"no result line from the wrk script:\n{output}")
    result = json.loads(lines[0].removeprefix("BENCH_JSON "))
    non_2xx = _NON_2XX.search(output)
    errors = result["errors"]
    if non_2xx or errors["status"] or _SOCKET_ERRORS.search(output) or any(errors.values()):
        raise BenchFailure(
            f"{scenario.name} at {connections} connections: wrk saw errors"
            f" ({'non-2xx: ' + non_2xx.group(1) if non_2xx else ''} {errors}):\n{output}"
        )
    if result["requests"] == 0:
        raise BenchFailure(f"{scenario.name}: wrk completed no request:\n{output}")
    return result


def in_app_latency(log_path: Path, offset: int, route: str) -> tuple[float, float] | None:
    """p50 and p99 (ms) of the 2xx requests to ``route`` the service logged after ``offset``.

    Each request line carries the time from the app's first middleware to its last
    (``api.observe``): what the service's own code took, without waitress, loopback or wrk.
    Beside wrk's figures it shows how much of a one-connection p99 is the app's. None when
    the log has no such line (the bare app logs none).
    """
    durations_ms = []
    with open(log_path, "rb") as log:
        log.seek(offset)
        for line in log:
            if f'"message":"{REQUEST_MESSAGE}"'.encode() not in line:
                continue
            try:
                record = json.loads(line)
            except ValueError:  # a line cut by the run's end, or one not of ours
                continue
            if record.get("route") == route and 200 <= record.get("status", 0) < 300:
                durations_ms.append(float(record["duration_ms"]))
    if not durations_ms:
        return None
    durations_ms.sort()
    return _nearest_rank(durations_ms, 0.50), _nearest_rank(durations_ms, 0.99)


def _nearest_rank(ordered: list[float], fraction: float) -> float:
    assert ordered and 0 < fraction <= 1
    return ordered[math.ceil(len(ordered) * fraction) - 1]
