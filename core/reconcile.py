"""Reconciliation: prove the ledger's counters against its facts, report, repair on request.

The invariants, each a ``Check`` (the store evaluates them by query in ``find_drift``):

- ``user_used``: a user's ``used`` = the sum of their usage rows in the open period;
- ``user_held``: ``held`` = the sum of their holds in state ``open``;
- ``user_credits``: ``credits`` = the sum of their grants in the open period;
- ``tenant_used`` / ``tenant_held``: a tenant's counters = the same sums over its users;
- ``hold_expired_open``: no hold is still open (so still in ``held``) ``EXPIRED_HOLD_GRACE_MS``
  past its expiry; the writer's sweep normally closes it within a second;
- ``history_used``: each closed period's ``used`` (with its recorded corrections) = the sum of
  the usage rows of that period.

A repair re-checks its one subject inside its own write transaction, sets the figure to what the
facts say and appends an audit row to ``ledger_repairs`` in the same transaction; period history
is append-only, so its repair is a correction row read through ``period_history_effective``.
Nothing is ever edited silently. Usage found in LiteLLM's spend logs that never reached
log-usage is backfilled by request id (see ``usage_from_spend_log``), audited the same way.
"""

from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from decimal import Decimal
from enum import StrEnum

from core.errors import IdempotencyConflict, LedgerError, NotFound
from core.money import MoneyError, money_from_input, money_to_text
from core.usage import UsageRecord

DRIFT_FINDINGS_MAX = 1_000
EXPIRED_HOLD_GRACE_MS = 60_000
SPEND_LOGS_MAX = 100_000
BACKFILL_SOURCE = "litellm_spend_logs"


class Check(StrEnum):
    USER_USED = "user_used"
    USER_HELD = "user_held"
    USER_CREDITS = "user_credits"
    TENANT_USED = "tenant_used"
    TENANT_HELD = "tenant_held"
    HOLD_EXPIRED_OPEN = "hold_expired_open"
    HISTORY_USED = "history_used"
    BACKFILL = "backfill"


@dataclass(frozen=True, slots=True)
class Drift:
    """One difference: what the ledger records for a subject, and what its facts add up to.

    Subjects: a user or tenant id; a hold's request_id; a period_history row id.
    """

    check: Check
    subject_id: str
    recorded: int
    expected: int

    def describe(self) -> str:
        if self.check is Check.HOLD_EXPIRED_OPEN:
            amount = money_to_text(self.recorded)
            return f"{self.check}: hold {self.subject_id} of ${amount} still open past its expiry"
        return (
            f"{self.check}: {self.subject_id} records ${money_to_text(self.recorded)},"
            f" facts say ${money_to_text(self.expected)}"
        )


@dataclass(slots=True)
class BackfillReport:
    """Spend-log entries compared with the usage ledger, by request id."""

    entries_read: int = 0
    created: list[str] = field(default_factory=list)
    refused: list[tuple[str, str]] = field(default_factory=list)
    truncated: bool = False


@dataclass(slots=True)
class ReconcileReport:
    drifts: list[Drift]
    repaired: list[Drift]
    truncated: bool
    backfill: BackfillReport | None = None

    @property
    def anything_found(self) -> bool:
        backfill = self.backfill
        found_in_logs = backfill is not None and bool(
            backfill.created or backfill.refused or backfill.truncated
        )
        return bool(self.drifts) or self.truncated or found_in_logs

    def text(self) -> str:
        """The report as mailed to the admin."""
        more = " (the first ones only)" if self.truncated else ""
        lines = [f"Differences found: {len(self.drifts)}{more}"]
        lines += [f"  - {drift.describe()}" for drift in self.drifts]
        lines.append(f"Repaired (each with an audit record): {len(self.repaired)}")
        lines += [f"  - {drift.describe()}" for drift in self.repaired]
        if self.backfill is not None:
            backfill = self.backfill
            lines.append(
                f"LiteLLM spend logs read: {backfill.entries_read}"
                + (" (limit reached, some not read)" if backfill.truncated else "")
            )
            lines.append(f"Usage backfilled: {len(backfill.created)}")
            lines += [f"  - {request_id}" for request_id in backfill.created]
            lines.append(f"Spend-log entries refused: {len(backfill.refused)}")
            lines += [f"  - {request_id}: {reason}" for request_id, reason in backfill.refused]
        return "\n".join(lines) + "\n"


def usage_from_spend_log(entry: Mapping[str, object]) -> UsageRecord | None:
    """The usage a LiteLLM spend-log row stands for, as the gateway callback logs it.

    The gateway logs under ``litellm_call_id`` (falling back to the row's ``request_id``), for
    the request's ``end_user`` (else ``user``), with the model group's name. Failed calls and
    rows without a user are no usage (None). Raises ValueError naming a malformed field.
    """
    if entry.get("status") == "failure":
        return None
    request_id = entry.get("litellm_call_id") or entry.get("request_id")
    user_id = entry.get("end_user") or entry.get("user")
    if not user_id:
        return None
    if not isinstance(request_id, str) or not isinstance(user_id, str):
        raise ValueError("request_id and user must be strings")
    model = entry.get("model_group") or entry.get("model") or "unknown"
    spend = entry.get("spend") or 0
    if isinstance(spend, float):
        raise ValueError("spend must be parsed as a decimal, not a float")
    try:
        cost = money_from_input(spend if isinstance(spend, int | Decimal | str) else str(spend))
    except MoneyError as error:
        raise ValueError(f"spend {error}") from None
    tokens_input = entry.get("prompt_tokens") or 0
    tokens_output = entry.get("completion_tokens") or 0
    if not isinstance(tokens_input, int) or not isinstance(tokens_output, int):
        raise ValueError("prompt_tokens and completion_tokens must be integers")
    if min(tokens_input, tokens_output) < 0:
        raise ValueError("token counts must not be negative")
    return UsageRecord(request_id, user_id, str(model), tokens_input, tokens_output, cost)


def backfill(
    entries: Iterable[Mapping[str, object]], record_usage: Callable[[UsageRecord], bool]
) -> BackfillReport:
    """Record each spend-log entry's usage unless the ledger has it; report what was done.

    ``record_usage`` returns True when it created the row, False when an identical row exists;
    a different row under the same request id, or an unknown user, is reported, never overwritten.
    """
    report = BackfillReport()
    for entry in entries:
        if report.entries_read >= SPEND_LOGS_MAX:
            report.truncated = True
            break
        report.entries_read += 1
        request_id = str(entry.get("litellm_call_id") or entry.get("request_id") or "?")
        try:
            record = usage_from_spend_log(entry)
            if record is not None and record_usage(record):
                report.created.append(record.request_id)
        except ValueError as error:
            report.refused.append((request_id, f"malformed spend log: {error}"))
        except IdempotencyConflict:
            report.refused.append((request_id, "logged with different content"))
        except NotFound:
            report.refused.append((request_id, "unknown user"))
        except LedgerError as error:
            report.refused.append((request_id, error.message))
    return report
