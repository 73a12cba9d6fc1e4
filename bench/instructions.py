"""Instructions per request: what the app itself costs, counted by valgrind, not timed.

    python -m bench.instructions [--requests 2000] [--scenarios bare,check_budget,...]

wrk's req/s on a small virtual machine swings by ±20% from one run to the next, more than most
changes to the hot path are worth. An instruction count of the same code on the same requests
is the same every time. For each scenario this calls the WSGI app in process (no waitress, no
sockets, no load generator): the service's ``create_app`` on a copy of the small seed, with the
server's logging, or the bare app of ``bench.bare_app``. It runs twice under valgrind's
callgrind, with ``--requests`` more requests the second time, and reports the difference over
``--requests``: the instructions one request costs, its start-up and warm-up cancelled out.

Not a replacement for ``bench.run``: waitress's own work (about half a bare request's CPU),
thread hand-offs, fsync and the machine are not in it. It says whether a change to the app
made a request cheaper, by how much, reproducibly. Needs valgrind (Debian's package); a run of
the default scenarios takes about four minutes on 2 cores.
"""

import argparse
import io
import os
import random
import re
import shutil
import subprocess
import sys
import tempfile
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from contextlib import ExitStack
from pathlib import Path

from bench.scenarios import ADMIN_KEY, API_KEY, SCENARIOS, SMALL_USERS
from bench.seed import seeded_database, user_id

SCENARIO_BY_NAME = {scenario.name: scenario for scenario in SCENARIOS}
SCENARIO_NAMES = tuple(SCENARIO_BY_NAME)
# Requests before either measured count starts, so caches and lazy imports are warm in both.
WARMUP_REQUESTS = 300
REQUESTS_DEFAULT = 2_000
REQUESTS_MAX = 100_000
VALGRIND_TIMEOUT_SECONDS = 1_800
_COLLECTED = re.compile(r"Collected\s*:\s*([\d,]+)")


def request_body(scenario: str, number: int, pick: random.Random) -> tuple[str, bytes]:
    """The path and body wrk sends for ``scenario``; request ids unique per number."""
    spec = SCENARIO_BY_NAME[scenario]
    return spec.path, spec.fill(user_id(pick.randrange(SMALL_USERS)), f"ir-{number}")


def _environ(path: str, body: bytes) -> dict:
    """A WSGI environ as waitress builds it, written out: ``falcon.testing.create_environ``
    would do the same with many more instructions, all counted in every request."""
    return {
        "REQUEST_METHOD": "POST",
        "PATH_INFO": path,
        "QUERY_STRING": "",
        "SERVER_NAME": "127.0.0.1",
        "SERVER_PORT": "3000",
        "SERVER_PROTOCOL": "HTTP/1.1",
        "REMOTE_ADDR": "127.0.0.1",
        "CONTENT_TYPE": "application/json",
        "CONTENT_LENGTH": str(len(body)),
        "HTTP_X_API_KEY": API_KEY,
        "wsgi.version": (1, 0),
        "wsgi.url_scheme": "http",
        "wsgi.input": io.BytesIO(body),
        "wsgi.errors": sys.stderr,
        "wsgi.multithread": True,
        "wsgi.multiprocess": False,
        "wsgi.run_once": False,
    }


def _driver(app: Callable, scenario: str) -> Callable[[int], None]:
    """A function that sends request number ``n`` and insists on a 2xx answer."""
    pick = random.Random(7)
    statuses: list[str] = []

    def start_response(status: str, headers: list, exc_info: object = None) -> None:
        statuses.append(status)

    def send(number: int) -> None:
        path, body = request_body(scenario, number, pick)
        b"".join(app(_environ(path, body), start_response))
        status = statuses.pop()
        assert status.startswith("2"), f"{scenario}: {status}"

    return send


def _app(scenario: str, data_dir: Path, cleanup: ExitStack) -> Callable:
    """The bare app, or the service's app built as a server worker builds it."""
    if scenario == "bare":
        from bench.bare_app import create_bare_app

        return create_bare_app()
    from api.app import create_app
    from core.service import open_ledger
    from core.settings import Settings, resolve_keys
    from service.logs import configure_logging

    configure_logging()
    settings = Settings(
        database_url=f"sqlite:///{(data_dir / 'billing.db').resolve()}",
        data_dir=data_dir,
        billing_api_key=API_KEY,
        admin_secret_key=ADMIN_KEY,
    )
    store, ledger = open_ledger(settings)
    cleanup.callback(store.close)
    return create_app(settings, resolve_keys(settings), ledger)


def child(scenario: str, requests: int, data_dir: Path) -> None:
    """Send ``WARMUP_REQUESTS + requests`` to the scenario's app; close its store after."""
    with ExitStack() as cleanup:
        send = _driver(_app(scenario, data_dir, cleanup), scenario)
        for number in range(WARMUP_REQUESTS + requests):
            send(number)


def count_instructions(scenario: str, requests: int, seed: Path) -> int:
    """Instructions valgrind counted in a child that sent ``requests`` measured requests."""
    with tempfile.TemporaryDirectory(prefix="bench-instructions-") as scratch:
        data_dir = Path(scratch)
        shutil.copyfile(seed, data_dir / "billing.db")
        valgrind_log = data_dir / "valgrind.log"
        command = [
            "valgrind",
            "--tool=callgrind",
            "--callgrind-out-file=/dev/null",
            f"--log-file={valgrind_log}",
            sys.executable,
            "-m",
            "bench.instructions",
            "--child",
            scenario,
            str(requests),
            str(data_dir),
        ]
        # No setting of the caller's environment leaks in; every run compiles the same modules
        # (no bytecode written), so the first run does not count compiling for the others.
        env = {
            "PATH": os.environ.get("PATH", ""),
            "PYTHONHASHSEED": "0",
            "PYTHONDONTWRITEBYTECODE": "1",
        }
        finished = subprocess.run(
            command,
            env=env,
            cwd=Path(__file__).resolve().parent.parent,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.PIPE,
            timeout=VALGRIND_TIMEOUT_SECONDS,
            check=False,
        )
        report = valgrind_log.read_text() if valgrind_log.exists() else ""
        found = _COLLECTED.search(report)
        if finished.returncode != 0 or found is None:
            tail = finished.stderr.decode(errors="replace")[-2_000:]
            raise RuntimeError(f"valgrind run of {scenario} failed: {tail}")
        return int(found.group(1).replace(",", ""))


def per_request(scenarios: list[str], requests: int, seed: Path) -> dict[str, float]:
    """For each scenario, the instructions of ``requests`` more requests over ``requests``.

    The valgrind runs go side by side, one per CPU: they are counted, not timed.
    """
    runs = [(scenario, sent) for scenario in scenarios for sent in (0, requests)]
    with ThreadPoolExecutor(max_workers=min(len(runs), os.cpu_count() or 1)) as pool:
        counted = pool.map(lambda run: count_instructions(*run, seed), runs)
        counts = dict(zip(runs, counted, strict=True))
    return {
        scenario: (counts[scenario, requests] - counts[scenario, 0]) / requests
        for scenario in scenarios
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m bench.instructions",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("--requests", type=int, default=REQUESTS_DEFAULT)
    parser.add_argument("--scenarios", default=",".join(SCENARIO_NAMES))
    parser.add_argument("--child", nargs=3, metavar=("SCENARIO", "REQUESTS", "DATA_DIR"))
    arguments = parser.parse_args(argv)
    if arguments.child:
        scenario, requests, data_dir = arguments.child
        child(scenario, int(requests), Path(data_dir))
        return 0
    if not 0 < arguments.requests <= REQUESTS_MAX:
        parser.error(f"--requests must be between 1 and {REQUESTS_MAX}")
    scenarios = arguments.scenarios.split(",")
    unknown = sorted(set(scenarios) - set(SCENARIO_NAMES))
    if unknown:
        parser.error(f"unknown scenarios {unknown}; known: {', '.join(SCENARIO_NAMES)}")
    if shutil.which("valgrind") is None:
        print("bench.instructions needs valgrind (apt-get install valgrind)", file=sys.stderr)
        return 2
    seed = seeded_database(SMALL_USERS, 0).path
    print(f"instructions per request, in process ({arguments.requests:,} requests each)")
    for scenario, instructions in per_request(scenarios, arguments.requests, seed).items():
        print(f"  {scenario:<14} {instructions:>10,.0f}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
