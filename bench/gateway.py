"""The gateway benchmark: what a budget costs a LiteLLM proxy per call.

Not a test. Real LiteLLM proxies (``.venv-litellm``, the pinned 1.106.12) answer the mock
``gpt-4o`` of ``examples/litellm/config.yaml``; wrk drives each at 16 connections, in rounds that
interleave the variants, so a slow spell of the machine hits them all alike:

- ``none``: no budget at all (the reference);
- ``none-again``: a second no-budget proxy, the same config: its ratio to ``none`` is what the
  bench reads when nothing differs (its noise, and any bias of a variant's place in a round);
- ``billing``: ``client.litellm`` in front of a real ``billing serve`` (SQLite), calls spread
  over 100 users (each calls about once every 0.7 s on each worker), usage in batches;
- ``billing-one-user``: the same proxy, every call one user's (both on budget leases);
- ``litellm-key``: LiteLLM's own in-process key budget (``bench/litellm_key_budget.py``; its
  database budgets need Prisma engines that cannot be installed here, so that row is not run).

Each at one and at two proxy workers. Prints req/s, p50/p99, the proxy's CPU per call (every
process of the proxy, from /proc/PID/stat) and each variant's ratio to ``none`` at the same
worker count, taken round by round (``Row.ratio``). Every call must answer 2xx, or the run fails.

    .venv/bin/python -m bench.gateway                      # about 10 minutes
    .venv/bin/python -m bench.gateway --duration 10 --repeat 3 --workers 1,2
"""

import argparse
import json
import os
import signal
import statistics
import sys
import tempfile
import time
import urllib.error
import urllib.request
from concurrent.futures import ThreadPoolExecutor
from contextlib import ExitStack
from dataclasses import dataclass, field
from decimal import Decimal
from pathlib import Path

from bench import BENCH_DIR, RESULTS_DIR, BenchFailure
from bench.load import run_wrk
from bench.machine import BUSY_FRACTION_MAX, CpuMeter, cpu_seconds, with_descendants
from bench.processes import Process, billing_command, free_port, server_env
from bench.scenarios import ADMIN_KEY, API_KEY, Scenario
from client import BillingClient
from core.money import NANOS_PER_UNIT, money_from_input

REPO = BENCH_DIR.parent
LITELLM_BIN = REPO / ".venv-litellm" / "bin" / "litellm"
MASTER_KEY = "sk-bench-gateway-master-0123456789"
CONNECTIONS = 16
WRK_THREADS = 2
USERS = 100
USER_BUDGET_DOLLARS = Decimal(1_000_000)
SMOKE_TIMEOUT_SECONDS = 60.0
PROXY_READY_SECONDS = 600.0
BURST_BUDGET_CALLS = 40
BURST_CONCURRENCY = 32
SETTLE_WAIT_SECONDS = 60.0
NANOS = NANOS_PER_UNIT

CHAT = Scenario(
    "chat",
    "chat completion",
    "/v1/chat/completions",
    "proxy",
    '{"model":"gpt-4o","user":"{user}","max_tokens":20,'
    '"messages":[{"role":"user","content":"hello"}]}',
)

_MODELS = """
model_list:
  - model_name: gpt-4o
    litellm_params:
      model: openai/gpt-4o
      api_key: sk-not-used-by-the-mock
      mock_response: "Hello from the mock model."
litellm_settings:
  num_retries: 0
"""
VARIANT_CONFIG = {
    "none": _MODELS,
    "none-again": _MODELS,
    "billing": _MODELS + "  callbacks: client.litellm.billing_callback\n",
    "litellm-key": _MODELS
    + "  enable_post_custom_auth_checks: true\n"
    + "general_settings:\n  custom_auth: bench.litellm_key_budget.user_api_key_auth\n",
}
# A variant measured on another's proxy, and with fewer users than ``USERS``: one user calling
# often is where leases serve many calls each.
VARIANT_PROXY = {"billing-one-user": "billing"}
VARIANT_USERS = {"billing-one-user": 1}
VARIANT_LABEL = {
    "none": "no budget",
    "none-again": "no budget, a second proxy",
    "billing": "our callback + billing serve",
    "billing-one-user": "the same, all calls one user's",
    "litellm-key": "LiteLLM in-process key budget",
}
assert set(VARIANT_LABEL) == set(VARIANT_CONFIG) | set(VARIANT_PROXY)
# The order of a round: the two variants of one proxy apart, a reference between them. Measured
# back to back, both fell to 0.6–0.7× in some rounds where the second no-budget proxy read
# 0.81–0.95×, as one slow spell of the machine across two runs would make them.
MEASURE_ORDER = ("none", "billing", "none-again", "billing-one-user", "litellm-key")
assert set(MEASURE_ORDER) == set(VARIANT_LABEL)


@dataclass
class Row:
    variant: str
    workers: int
    rates: list[float] = field(default_factory=list)
    p50s: list[float] = field(default_factory=list)
    p99s: list[float] = field(default_factory=list)
    cpu_ms: list[float] = field(default_factory=list)
    billing_cpu_ms: list[float] = field(default_factory=list)

    def median(self, name: str) -> float:
        return statistics.median(getattr(self, name))

    def ratios(self, base: "Row") -> list[float]:
        """Each round's ratio to ``base`` in the same round: on a shared VM the no-budget
        proxy's own rate moved by ±15% from round to round, and a round's slow spell hits every
        variant of that round alike."""
        return [rate / base_rate for rate, base_rate in zip(self.rates, base.rates, strict=True)]

    def ratio(self, base: "Row") -> float:
        """The median of the rounds' ratios to ``base``."""
        return statistics.median(self.ratios(base))

    def p50_delta(self, base: "Row") -> float:
        """The median of each round's p50 minus ``base``'s p50 in the same round."""
        return statistics.median(
            p50 - base_p50 for p50, base_p50 in zip(self.p50s, base.p50s, strict=True)
        )


def start_billing(workdir: Path) -> Process:
    port = free_port()
    env = server_env(port, 8, workdir / "billing-data", f"sqlite:///{workdir / 'billing.db'}")
    process = Process("billing serve", billing_command(), env, workdir / "billing.log", port)
    process.wait_ready("/")
    with BillingClient(process.base_url, API_KEY, ADMIN_KEY) as admin:
        admin.put_product("gw-plan", "Gateway bench", USER_BUDGET_DOLLARS)
        for index in range(USERS):
            user = f"bench-u{index}"
            email = f"{user}@example.test"
            admin.provision_user(email, "bench password 1", "gw-plan", user_id=user)
    return process


def start_proxy(workdir: Path, variant: str, workers: int, billing_url: str) -> Process:
    config = workdir / f"proxy-{variant}-{workers}.yaml"
    config.write_text(VARIANT_CONFIG[variant])
    port = free_port()
    env = {
        name: value
        for name, value in os.environ.items()
        if name != "DATABASE_URL" and not name.startswith("BILLING_")
    }
    env.update(
        LITELLM_MASTER_KEY=MASTER_KEY,
        LITELLM_LOCAL_MODEL_COST_MAP="True",
        LITELLM_LOG="ERROR",
        # uvicorn kills a worker not ready within 5 s and starts another: on a busy 2-core
        # machine importing LiteLLM takes longer, and two-worker proxies never came up.
        TIMEOUT_WORKER_HEALTHCHECK=str(int(PROXY_READY_SECONDS)),
        PYTHONPATH=str(REPO),
        BILLING_API_URL=billing_url,
        BILLING_API_KEY=API_KEY,
        BILLING_SPOOL_PATH=str(workdir / f"spool-{variant}-{workers}.sqlite3"),
    )
    command = [str(LITELLM_BIN), "--config", str(config), "--host", "127.0.0.1"]
    command += ["--port", str(port), "--num_workers", str(workers)]
    log_path = workdir / f"proxy-{variant}-{workers}.log"
    return Process(f"proxy {variant} ×{workers}", command, env, log_path, port)


def wait_ready(proxy: Process) -> None:
    """Ready when a chat call answers; a proxy starts in tens of seconds, minutes on a busy
    machine."""
    deadline = time.monotonic() + PROXY_READY_SECONDS
    while time.monotonic() < deadline:
        if proxy.popen.poll() is not None:
            raise BenchFailure(f"{proxy.name} exited:\n{proxy.log_tail()}")
        try:
            with urllib.request.urlopen(proxy.base_url + "/health/liveliness", timeout=2):
                break
        except (urllib.error.URLError, ConnectionError, TimeoutError):
            time.sleep(0.5)
    else:
        raise BenchFailure(f"{proxy.name} not ready after {PROXY_READY_SECONDS:.0f} s")
    smoke_test(proxy)


def smoke_test(proxy: Process) -> None:
    """One call answered 200, so a wrong setting fails with its answer and the first, slow call
    (the proxy loads much on first use) is not in a measured run."""
    request = urllib.request.Request(
        proxy.base_url + CHAT.path,
        data=CHAT.fill("bench-u0", ""),
        headers={"Content-Type": "application/json", "X-API-Key": MASTER_KEY},
    )
    try:
        with urllib.request.urlopen(request, timeout=SMOKE_TIMEOUT_SECONDS) as answer:
            answer.read()
    except urllib.error.HTTPError as error:
        raise BenchFailure(f"{proxy.name}: {error.code} {error.read()!r}") from None


def measure(
    rows: dict[tuple[str, int], Row],
    proxies: dict[tuple[str, int], Process],
    billing: Process,
    *,
    repeat: int,
    duration: int,
    warmup: int,
) -> float:
    """Interleaved rounds, every other one in reverse order, so that a drift of the machine's
    speed within a round favours no variant; returns the largest share of the CPUs other
    processes used."""
    busiest = 0.0
    billing_pids = with_descendants((billing.popen.pid,))
    order = sorted(rows, key=lambda key: (key[1], MEASURE_ORDER.index(key[0])))
    for round_index in range(repeat):
        for key in order if round_index % 2 == 0 else list(reversed(order)):
            variant, workers = key
            proxy = proxies[(VARIANT_PROXY.get(variant, variant), workers)]
            users = VARIANT_USERS.get(variant, USERS)
            pids = with_descendants((proxy.popen.pid,))
            tag = f"gw-{round_index}-{variant}-{workers}"
            run_wrk(CHAT, proxy.base_url, CONNECTIONS, WRK_THREADS, warmup, users, tag, MASTER_KEY)
            meter = CpuMeter(pids + billing_pids)
            proxy_before, billing_before = cpu_seconds(pids), cpu_seconds(billing_pids)
            result = run_wrk(
                CHAT, proxy.base_url, CONNECTIONS, WRK_THREADS, duration, users, tag, MASTER_KEY
            )
            calls = result["requests"]
            row = rows[key]
            row.rates.append(result["requests_per_sec"])
            row.p50s.append(result["p50_us"] / 1000)
            row.p99s.append(result["p99_us"] / 1000)
            row.cpu_ms.append((cpu_seconds(pids) - proxy_before) * 1000 / calls)
            row.billing_cpu_ms.append((cpu_seconds(billing_pids) - billing_before) * 1000 / calls)
            foreign = meter.foreign_share()
            busiest = max(busiest, foreign)
            note = f"  WARNING: others used {foreign:.0%}" if foreign > BUSY_FRACTION_MAX else ""
            print(
                f"  [{round_index + 1}/{repeat}] {VARIANT_LABEL[variant]:<31} ×{workers}"
                f" {row.rates[-1]:7.1f} req/s  p50 {row.p50s[-1]:6.1f} ms"
                f"  p99 {row.p99s[-1]:6.1f} ms  proxy CPU {row.cpu_ms[-1]:5.2f} ms/call{note}",
                flush=True,
            )
    return busiest


def burst(proxy: Process, billing: Process) -> str:
    """Exactness under a burst: a user with room for ``BURST_BUDGET_CALLS`` calls sends five
    times as many, ``BURST_CONCURRENCY`` at a time. Every answer is 200 or 429; then the time
    until the ledger's spend is final (every admitted call's usage in, no hold left)."""
    with BillingClient(billing.base_url, API_KEY, ADMIN_KEY) as admin:
        cost = money_from_input(_chat(proxy, "bench-u0")[1])
        admin.put_product("gw-burst", "Burst", Decimal(BURST_BUDGET_CALLS * cost) / NANOS)
        user = f"burst-{time.time_ns()}"
        admin.provision_user(f"{user}@example.test", "bench password 1", "gw-burst", user_id=user)
        with ThreadPoolExecutor(BURST_CONCURRENCY) as pool:
            answers = list(pool.map(lambda _: _chat(proxy, user), range(5 * BURST_BUDGET_CALLS)))
        answered = time.monotonic()
        admitted = [money_from_input(cost) for status, cost in answers if status == 200]
        if len(admitted) + sum(status == 429 for status, _ in answers) != len(answers):
            raise BenchFailure(f"burst: answers other than 200 and 429: {answers}")
        expected = Decimal(sum(admitted)) / NANOS
        deadline = answered + SETTLE_WAIT_SECONDS
        while time.monotonic() < deadline:
            budget = admin.user_budget(user).budget
            if budget.used == expected and budget.reserved == 0:
                break
            time.sleep(0.01)
        else:
            raise BenchFailure(f"burst: spend not final after {SETTLE_WAIT_SECONDS} s: {budget}")
        settled_ms = (time.monotonic() - answered) * 1000
        rows = admin.user_usage(user).total.requests
    overspend = max(Decimal(0), budget.used - budget.total)
    return (
        f"burst at {proxy.name}: budget {BURST_BUDGET_CALLS} calls, {5 * BURST_BUDGET_CALLS}"
        f" sent {BURST_CONCURRENCY} at a time: {len(admitted)} admitted, overspend ${overspend},"
        f" {rows} usage rows, spend final {settled_ms:.0f} ms after the last answer"
    )


def _chat(proxy: Process, user: str) -> tuple[int, str | None]:
    """One call: its status and LiteLLM's response cost header (None when refused)."""
    request = urllib.request.Request(
        proxy.base_url + CHAT.path,
        data=CHAT.fill(user, ""),
        headers={"Content-Type": "application/json", "X-API-Key": MASTER_KEY},
    )
    try:
        with urllib.request.urlopen(request, timeout=SMOKE_TIMEOUT_SECONDS) as answer:
            answer.read()
            return answer.status, answer.headers["x-litellm-response-cost"]
    except urllib.error.HTTPError as error:
        error.read()
        return error.code, None


def table(rows: dict[tuple[str, int], Row]) -> str:
    lines = [
        "| proxy | workers | req/s | × none | rounds' × none | p50 ms | p50 − none | p99 ms"
        " | proxy CPU ms/call | billing CPU ms/call |",
        "|---|---|---|---|---|---|---|---|---|---|",
    ]
    for (variant, workers), row in rows.items():
        base = rows[("none", workers)]
        on_billing = VARIANT_PROXY.get(variant, variant) == "billing"
        billing_cpu = row.median("billing_cpu_ms") if on_billing else None
        ratios = row.ratios(base)
        lines.append(
            f"| {VARIANT_LABEL[variant]} | {workers} | {row.median('rates'):.1f}"
            f" | {row.ratio(base):.2f} | {min(ratios):.2f}–{max(ratios):.2f}"
            f" | {row.median('p50s'):.1f} | {row.p50_delta(base):+.1f}"
            f" | {row.median('p99s'):.1f} | {row.median('cpu_ms'):.2f}"
            f" | {'—' if billing_cpu is None else f'{billing_cpu:.2f}'} |"
        )
    lines.append(
        "| LiteLLM database budget (PostgreSQL) | — | not run | | | | | | | |"
        " <!-- needs Prisma engines, which cannot be downloaded here -->"
    )
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.gateway", description=__doc__)
    parser.add_argument("--duration", type=int, default=10, help="seconds of each measured run")
    parser.add_argument("--warmup", type=int, default=3, help="seconds of warm-up before each")
    parser.add_argument("--repeat", type=int, default=3, help="interleaved rounds")
    parser.add_argument("--workers", default="1,2", help="proxy worker counts, comma-separated")
    parser.add_argument("--variants", default=",".join(VARIANT_LABEL), help="comma-separated")
    args = parser.parse_args(argv)
    # A stopped run stops its proxies too (the ExitStack unwinds on SystemExit).
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(1))
    if not LITELLM_BIN.exists():
        raise BenchFailure(f"{LITELLM_BIN} missing: run `make litellm-proxy`")
    workers_list = [int(count) for count in args.workers.split(",")]
    variants = args.variants.split(",")
    if "none" not in variants:
        raise BenchFailure("the `none` variant is the reference every ratio needs")
    RESULTS_DIR.mkdir(parents=True, exist_ok=True)
    load_before = os.getloadavg()
    with ExitStack() as stack:
        workdir = Path(stack.enter_context(tempfile.TemporaryDirectory(dir=RESULTS_DIR)))
        billing = start_billing(workdir)
        stack.callback(billing.stop)
        proxies: dict[tuple[str, int], Process] = {}
        configs = dict.fromkeys(VARIANT_PROXY.get(variant, variant) for variant in variants)
        for workers in workers_list:
            for config in configs:
                proxy = start_proxy(workdir, config, workers, billing.base_url)
                stack.callback(proxy.stop)
                proxies[(config, workers)] = proxy
        for proxy in proxies.values():
            wait_ready(proxy)
        rows = {(variant, workers): Row(variant, workers) for workers in workers_list
                for variant in variants}  # fmt: skip
        print(f"load average before: {' '.join(f'{v:.2f}' for v in load_before)}", flush=True)
        busiest = measure(
            rows, proxies, billing, repeat=args.repeat, duration=args.duration, warmup=args.warmup
        )
        for key, proxy in proxies.items():
            if proxy.popen.poll() is not None:
                raise BenchFailure(f"proxy {key} died:\n{proxy.log_tail()}")
        burst_line = None
        if ("billing", 2) in proxies:
            burst_line = burst(proxies[("billing", 2)], billing)
    load_after = os.getloadavg()
    print()
    print(table(rows))
    print(
        f"\n{args.repeat} interleaved rounds of {args.duration} s, wrk {CONNECTIONS} connections;"
        f" load average {load_before[0]:.2f} before, {load_after[0]:.2f} after;"
        f" other processes used at most {busiest:.0%} of the CPUs in a run."
    )
    if burst_line is not None:
        print(burst_line)
    (RESULTS_DIR / "gateway.json").write_text(
        json.dumps([row.__dict__ for row in rows.values()], indent=1)
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
