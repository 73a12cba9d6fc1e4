"""``monthly-budget-reset``: close every open period once per label, then mail the admin a summary.

The reset is ``Ledger.reset_budgets`` with a label, the admin endpoint's operation, so a retried
or duplicated run never resets twice. Without a ``period`` parameter the label is the month, in
``BUDGET_TIMEZONE``, of the run's scheduled start time (not of the moment it happens to run), so
a run scheduled at 00:00 on the 1st in that zone opens that month even when it starts late.
"""

import sqlite3
from dataclasses import asdict, dataclass
from zoneinfo import ZoneInfo

from prefect import flow, task
from prefect.cache_policies import NO_CACHE
from prefect.logging import get_run_logger
from prefect.runtime import flow_run
from prefect.tasks import exponential_backoff

from core.errors import LedgerError, Unavailable
from core.ledger import Ledger, ResetResult
from core.money import money_to_text
from core.periods import label_at, to_ms
from core.store.base import PeriodSummary
from flows.common import ADMIN_NOTICE_HOOKS, flow_settings, mail_admin, opened_ledger

RESET_RETRIES = 4
RESET_BACKOFF_SECONDS = 2
TOP_SPENDERS_MAX = 100


def _transient(_task: object, _run: object, state: object) -> bool:
    """Retry only what may pass: a busy or unreachable store, not a refused label."""
    error = state.result(raise_on_failure=False)  # type: ignore[attr-defined]
    return isinstance(error, Unavailable | sqlite3.OperationalError)


@task(
    name="reset-budgets",
    retries=RESET_RETRIES,
    retry_delay_seconds=exponential_backoff(backoff_factor=RESET_BACKOFF_SECONDS),
    retry_condition_fn=_transient,
    cache_policy=NO_CACHE,
)
def reset_budgets(ledger: Ledger, label: str) -> ResetResult:
    return ledger.reset_budgets(label)


@dataclass(frozen=True)
class ResetReport:
    label: str
    users_reset: int
    already_done: bool
    users_closed: int
    spend_total: str
    top_spenders: list[dict[str, str]]
    failures: list[str]


def summary_text(report: ResetReport) -> str:
    """The admin's mail: what was reset, what the closed periods spent, who spent most."""
    lines = [f"Monthly budget reset to period {report.label}"]
    if report.already_done:
        lines.append("Already applied by an earlier run: nothing was reset again.")
    lines.append(f"Users reset: {report.users_reset}")
    lines.append(f"Closed periods: {report.users_closed} users, total spend ${report.spend_total}")
    lines.append(f"Top spenders ({len(report.top_spenders)}):")
    lines += [
        f"  {rank}. {spender['user_id']} <{spender['email']}>: ${spender['used']}"
        for rank, spender in enumerate(report.top_spenders, start=1)
    ]
    lines.append("Failures: none" if not report.failures else "Failures:")
    lines += [f"  - {failure}" for failure in report.failures]
    return "\n".join(lines) + "\n"


def _report(
    result: ResetResult | None, label: str, summary: PeriodSummary | None, failures: list[str]
) -> ResetReport:
    return ResetReport(
        label=label,
        users_reset=0 if result is None else result.users_reset,
        already_done=False if result is None else result.already_done,
        users_closed=0 if summary is None else summary.users,
        spend_total=money_to_text(0 if summary is None else summary.spend_total),
        top_spenders=[]
        if summary is None
        else [
            {"user_id": s.user_id, "email": s.email, "used": money_to_text(s.used)}
            for s in summary.top_spenders
        ],
        failures=failures,
    )


def due_label(zone: ZoneInfo) -> str:
    """The month of this run's scheduled start, in the budget zone."""
    return label_at(to_ms(flow_run.scheduled_start_time), zone)


@flow(name="monthly-budget-reset", **ADMIN_NOTICE_HOOKS)
def monthly_budget_reset(period: str | None = None, top_spenders: int = 10) -> dict:
    """Reset every budget into ``period`` (default: the scheduled month) and mail a summary."""
    if not 1 <= top_spenders <= TOP_SPENDERS_MAX:
        raise ValueError(f"top_spenders must be between 1 and {TOP_SPENDERS_MAX}")
    settings = flow_settings()
    label = period if period is not None else due_label(settings.zone)
    logger = get_run_logger()
    failures: list[str] = []
    result: ResetResult | None = None
    summary: PeriodSummary | None = None
    with opened_ledger(settings) as ledger:
        try:
            result = reset_budgets(ledger, label)
        except (LedgerError, sqlite3.Error) as error:
            failures.append(f"reset {label}: {type(error).__name__}: {error}")
        if result is not None:
            summary = ledger.closed_period_summary(label, top_spenders)
    report = _report(result, label, summary, failures)
    logger.info(
        "reset %s: %d users reset, already done: %s", label, report.users_reset, report.already_done
    )
    status = "FAILED" if failures else ("already done" if report.already_done else "done")
    mail_admin(f"Budget reset {label}: {status}", summary_text(report))
    if failures:
        raise RuntimeError(f"budget reset {label} failed: {failures[0]}")
    return asdict(report)
