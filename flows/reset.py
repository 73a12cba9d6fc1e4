"""``monthly-budget-reset``: close the periods of past months once per label, then mail the admin
a summary.

The reset is ``Ledger.reset_budgets`` with a label, the admin endpoint's operation, so a retried
or duplicated run never resets twice, and the reset rule of ``core.resets`` refuses a label
that could only destroy a month (a future one, one not later than the open periods) unless the
run sets ``force``. Without a ``period`` parameter the label is the month, in
``BUDGET_TIMEZONE``, of the run's scheduled start time (not of the moment it happens to run), so
a run scheduled at 00:00 on the 1st in that zone opens that month even when it starts late. A
run the schedule made always passes: a refusal there means the month was already opened (or
nothing is due), which it reports as skipped. A manual run without a period in the month the
open periods began is refused like any other label.
"""

import sqlite3
from dataclasses import asdict, dataclass
from typing import Annotated
from uuid import UUID
from zoneinfo import ZoneInfo

from prefect import flow, get_client, task
from prefect.cache_policies import NO_CACHE
from prefect.logging import get_run_logger
from prefect.runtime import flow_run
from prefect.tasks import exponential_backoff
from pydantic import Field

from core.errors import LedgerError, ResetRefused, Unavailable
from core.ledger import Ledger
from core.money import money_to_text
from core.periods import PeriodLabel, label_at, to_ms
from core.resets import PeriodSummary, ResetOutcome
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
def reset_budgets(ledger: Ledger, label: str, force: bool) -> ResetOutcome:
    return ledger.reset_budgets(label, force)


@dataclass(frozen=True)
class ResetReport:
    label: str
    users_reset: int
    already_done: bool
    forced: bool
    skipped: str | None
    users_closed: int
    spend_total: str
    top_spenders: list[dict[str, str]]
    failures: list[str]


def summary_text(report: ResetReport) -> str:
    """The admin's mail: what was reset, what the closed periods spent, who spent most."""
    lines = [f"Monthly budget reset to period {report.label}"]
    if report.forced:
        lines.append("FORCED: every open period was closed, whatever its month.")
    if report.already_done:
        lines.append("Already applied by an earlier run: nothing was reset again.")
    if report.skipped is not None:
        lines.append(f"Skipped, nothing changed: {report.skipped}")
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
    result: ResetOutcome | None,
    label: str,
    forced: bool,
    skipped: str | None,
    summary: PeriodSummary | None,
    failures: list[str],
) -> ResetReport:
    return ResetReport(
        label=label,
        users_reset=0 if result is None else result.users_reset,
        already_done=False if result is None else result.already_done,
        forced=forced,
        skipped=skipped,
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


def _status(report: ResetReport) -> str:
    """The word of the admin's mail subject."""
    if report.failures:
        return "FAILED"
    if report.skipped is not None:
        return "skipped"
    if report.already_done:
        return "already done"
    return "FORCED" if report.forced else "done"


def due_label(zone: ZoneInfo) -> str:
    """The month of this run's scheduled start, in the budget zone."""
    return label_at(to_ms(flow_run.scheduled_start_time), zone)


def made_by_schedule() -> bool:
    """Whether this run was created by its deployment's schedule (not a manual or CLI run)."""
    run_id = flow_run.get_id()
    if run_id is None:
        return False
    with get_client(sync_client=True) as client:
        return client.read_flow_run(UUID(run_id)).auto_scheduled


@flow(name="monthly-budget-reset", **ADMIN_NOTICE_HOOKS)
def monthly_budget_reset(
    period: PeriodLabel | None = None,
    top_spenders: Annotated[int, Field(ge=1, le=TOP_SPENDERS_MAX)] = 10,
    force: bool = False,
) -> dict:
    """Close the periods of past months into a month label and mail the admin a summary.

    Args:
        period: The month to open, YYYY-MM (e.g. 2026-12). Empty: the month of the run's
            scheduled start in BUDGET_TIMEZONE. A label applies once; one that could only
            destroy a month (a future month, or not later than the open periods) is refused.
        top_spenders: How many of the top spenders of the closed periods the mail lists
            (1 to 100).
        force: Apply a period the reset rule refuses and close every open period, whatever
            its month; logged and mailed to the admin. Only to repair a mistake.
    """
    if not 1 <= top_spenders <= TOP_SPENDERS_MAX:
        raise ValueError(f"top_spenders must be between 1 and {TOP_SPENDERS_MAX}")
    settings = flow_settings()
    label = period if period is not None else due_label(settings.zone)
    logger = get_run_logger()
    if force:
        logger.warning("forced reset to %s: every open period will be closed", label)
    failures: list[str] = []
    skipped: str | None = None
    result: ResetOutcome | None = None
    summary: PeriodSummary | None = None
    with opened_ledger(settings) as ledger:
        try:
            result = reset_budgets(ledger, label, force)
        except ResetRefused as refusal:
            if period is None and made_by_schedule():
                skipped = refusal.message
            else:
                failures.append(f"reset {label}: {refusal.message}")
        except (LedgerError, sqlite3.Error) as error:
            failures.append(f"reset {label}: {type(error).__name__}: {error}")
        if result is not None:
            summary = ledger.closed_period_summary(label, top_spenders)
    report = _report(result, label, force, skipped, summary, failures)
    logger.info(
        "reset %s: %d users reset, already done: %s, forced: %s, skipped: %s",
        label,
        report.users_reset,
        report.already_done,
        force,
        skipped or "no",
    )
    mail_admin(f"Budget reset {label}: {_status(report)}", summary_text(report))
    if failures:
        raise RuntimeError(f"budget reset {label} failed: {failures[0]}")
    return asdict(report)
