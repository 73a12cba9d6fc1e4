"""A real LiteLLM proxy (from .venv-litellm, see `make litellm-proxy`) with our callback loaded,
a restartable billing service for it, and helpers to drive and observe both."""

import os
import subprocess
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from decimal import Decimal
from pathlib import Path

import httpx
import openai
import pytest
from integration_support import API_KEY, BillingServer, read_only, server_env
from ports import free_port

from client import BillingClient
from core.money import NANOS_PER_UNIT, money_from_input
from wire.schemas import BudgetWithReserved

REPO = Path(__file__).resolve().parents[2]
LITELLM_BIN = REPO / ".venv-litellm" / "bin" / "litellm"
MASTER_KEY = "sk-litellm-master-test-0123456789"
PROXY_READY_WAIT_SECONDS = 240.0
PROXY_STOP_WAIT_SECONDS = 20.0
SETTLE_WAIT_SECONDS = 60.0
SLOW_DELAY_SECONDS = 3
OUTAGE_DELAY_SECONDS = 8

CONFIG = f"""
model_list:
  - model_name: gpt-4o
    litellm_params: {{model: openai/gpt-4o, api_key: sk-unused, mock_response: "Hello"}}
  - model_name: gpt-4o-slow
    litellm_params:
      model: openai/gpt-4o
      api_key: sk-unused
      mock_response: "Hello, slowly"
      mock_delay: {SLOW_DELAY_SECONDS}
  - model_name: gpt-4o-slower
    litellm_params:
      model: openai/gpt-4o
      api_key: sk-unused
      mock_response: "Hello, very slowly"
      mock_delay: {OUTAGE_DELAY_SECONDS}
  - model_name: gpt-4o-broken
    litellm_params:
      model: openai/gpt-4o
      api_key: sk-unused
      mock_response: "litellm.InternalServerError"
  - model_name: gpt-4o-slower-broken
    litellm_params:
      model: openai/gpt-4o
      api_key: sk-unused
      mock_response: "litellm.InternalServerError"
      mock_delay: {OUTAGE_DELAY_SECONDS}
litellm_settings:
  callbacks: client.litellm.billing_callback
  num_retries: 0
router_settings:
  num_retries: 0
"""


def require_litellm() -> None:
    """Skip without the proxy's virtualenv, except in CI, where a missing proxy is an error."""
    if LITELLM_BIN.exists():
        return
    message = f"{LITELLM_BIN} missing: run `make litellm-proxy`"
    if os.environ.get("CI", "").lower() in ("1", "true", "yes"):
        pytest.fail(message)
    pytest.skip(message)


class Billing:
    """`billing serve` on one fixed port and database file, so it can stop and come back."""

    def __init__(self, workdir: Path) -> None:
        self.workdir = workdir
        self.db_path = workdir / "litellm-billing.db"
        self.port = free_port()
        self.base_url = f"http://127.0.0.1:{self.port}"
        self.runs = 0
        self.server: BillingServer | None = None

    @classmethod
    @contextmanager
    def running(cls, workdir: Path) -> Iterator["Billing"]:
        """A started service (the proxy's tests need the proxy too), stopped on exit."""
        require_litellm()
        service = cls(workdir)
        service.start()
        try:
            yield service
        finally:
            service.stop()

    def start(self) -> None:
        self.runs += 1
        name = f"billing-{self.runs}"
        self.server = BillingServer(self.workdir, self.db_path, name, port=self.port)
        self.server.wait_ready()

    def stop(self) -> None:
        assert self.server is not None
        self.server.stop()


class LiteLLMProxy:
    """`litellm --config` on 127.0.0.1:<free port>; DATABASE_URL unset, bundled cost map."""

    def __init__(
        self, workdir: Path, config_path: Path, billing_env: dict[str, str], workers: int = 1
    ) -> None:
        self.port = free_port()
        self.base_url = f"http://127.0.0.1:{self.port}"
        self.log_path = workdir / "litellm-proxy.log"
        # TIMEOUT_WORKER_HEALTHCHECK: uvicorn kills a worker not ready within 5 s and starts
        # another; on a busy machine importing LiteLLM takes longer, and a two-worker proxy
        # never came up.
        env = server_env(
            LITELLM_MASTER_KEY=MASTER_KEY,
            LITELLM_LOCAL_MODEL_COST_MAP="True",
            TIMEOUT_WORKER_HEALTHCHECK=str(int(PROXY_READY_WAIT_SECONDS)),
        )
        env = {name: value for name, value in env.items() if not name.startswith("BILLING_")}
        env.update(billing_env)
        self._command = [str(LITELLM_BIN), "--config", str(config_path), "--host", "127.0.0.1"]
        self._command += ["--port", str(self.port), "--num_workers", str(workers)]
        self._workdir = workdir
        self._env = env
        self.start()

    def start(self) -> None:
        """Spawn the proxy process (on the same port each time); output appended to the log."""
        self._log = open(self.log_path, "ab")  # noqa: SIM115 - closed in stop()
        self.process = subprocess.Popen(
            self._command,
            cwd=self._workdir,
            env=self._env,
            stdin=subprocess.DEVNULL,
            stdout=self._log,
            stderr=subprocess.STDOUT,
        )

    def restart(self) -> None:
        self.stop()
        self.start()
        self.wait_ready()

    def output(self) -> str:
        return self.log_path.read_text(errors="replace")

    def wait_ready(self, timeout: float = PROXY_READY_WAIT_SECONDS) -> None:
        deadline = time.monotonic() + timeout
        with httpx.Client(base_url=self.base_url, timeout=5.0) as client:
            while time.monotonic() < deadline:
                if self.process.poll() is not None:
                    raise AssertionError(f"proxy exited early:\n{self.output()[-5000:]}")
                try:
                    if client.get("/health/liveliness").status_code == 200:
                        return
                except httpx.TransportError:
                    pass
                time.sleep(0.5)
        self.stop()
        raise AssertionError(f"proxy not ready within {timeout} s:\n{self.output()[-5000:]}")

    def stop(self) -> None:
        if self.process.poll() is None:
            self.process.terminate()
            try:
                self.process.wait(timeout=PROXY_STOP_WAIT_SECONDS)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait(timeout=PROXY_STOP_WAIT_SECONDS)
        if not self._log.closed:
            self._log.close()


def billing_env(billing: Billing, spool_path: Path, **settings: str) -> dict[str, str]:
    """The callback's environment: this billing service, a spool re-sent every 0.5 s."""
    return {
        "BILLING_API_URL": billing.base_url,
        "BILLING_API_KEY": API_KEY,
        "BILLING_SPOOL_PATH": str(spool_path),
        "BILLING_SPOOL_RETRY_SECONDS": "0.5",
        "BILLING_ATTEMPTS_MAX": "2",
        **settings,
    }


@contextmanager
def start_proxy(workdir: Path, env: dict[str, str], workers: int = 1) -> Iterator[LiteLLMProxy]:
    """A ready proxy with ``CONFIG``'s mock models, stopped on exit."""
    config_path = workdir / "config.yaml"
    config_path.write_text(CONFIG)
    started = LiteLLMProxy(workdir, config_path, env, workers)
    try:
        started.wait_ready()
        yield started
    finally:
        started.stop()


def proxy_client(proxy: LiteLLMProxy, http_client: httpx.Client | None = None) -> openai.OpenAI:
    """The `openai` client as users call the proxy: its master key, no retries of its own;
    over ``http_client`` when given (for its connection limits)."""
    return openai.OpenAI(
        base_url=f"{proxy.base_url}/v1",
        api_key=MASTER_KEY,
        max_retries=0,
        timeout=120,
        http_client=http_client,
    )


def chat(ai: openai.OpenAI, user: str, model: str = "gpt-4o", max_tokens: int | None = 1):
    """One chat call (``max_tokens`` None: the request sets no output limit); the raw response
    keeps LiteLLM's headers (call id, response cost)."""
    limit = {} if max_tokens is None else {"max_tokens": max_tokens}
    return ai.chat.completions.with_raw_response.create(
        model=model, user=user, messages=[{"role": "user", "content": "hi"}], **limit
    )


def one_call_cost(ai: openai.OpenAI, admin: BillingClient, user: str, **options) -> int:
    """What one mock call costs (nanodollars), from a call of ``user``, a user of its own
    already provisioned; returns once its usage is in."""
    cost = response_cost_nanos(chat(ai, user, **options))
    settled(admin, user, 1)
    return cost


def response_cost_nanos(raw) -> int:
    """LiteLLM's float response cost, rounded by our money rule."""
    return money_from_input(raw.headers["x-litellm-response-cost"])


def dollars(nanos: int) -> Decimal:
    return Decimal(nanos) / NANOS_PER_UNIT


def eventually(condition: Callable[[], bool], what: str) -> None:
    """Wait (bounded) for work LiteLLM does after answering: its logging runs in the background."""
    deadline = time.monotonic() + SETTLE_WAIT_SECONDS
    while not condition():
        assert time.monotonic() < deadline, f"not within {SETTLE_WAIT_SECONDS} s: {what}"
        time.sleep(0.1)


def settled(admin: BillingClient, user_id: str, requests: int) -> BudgetWithReserved:
    """The user's budget once ``requests`` usage rows are in and no hold is left."""

    def done() -> bool:
        usage = admin.user_usage(user_id)
        return usage.total.requests == requests and admin.user_budget(user_id).budget.reserved == 0

    eventually(done, f"{requests} usage rows and no hold for {user_id}")
    return admin.user_budget(user_id).budget


def holds(db_path: Path, user_id: str, state: str, request_id_like: str = "%") -> list[int]:
    """Amounts of the user's holds in ``state`` (of request ids matching ``request_id_like``,
    an SQL LIKE pattern: ``lease-%`` for slices), read from the service's file."""
    with read_only(db_path) as db:
        rows = db.execute(
            "SELECT amount FROM reservations WHERE user_id = ? AND state = ? AND request_id LIKE ?",
            (user_id, state, request_id_like),
        ).fetchall()
    return [row[0] for row in rows]


def spooled(spool_path: Path) -> int:
    """Records waiting in the callback's spool file: usage and hold releases."""
    with read_only(spool_path) as db:
        return db.execute(
            "SELECT (SELECT count(*) FROM usage_spool WHERE rejected IS NULL)"
            " + (SELECT count(*) FROM release_spool)"
        ).fetchone()[0]
