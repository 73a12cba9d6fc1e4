"""Usage: one append-only row per ``request_id``; a replay must carry the same content.

What a log-usage answers (``LogOutcome``) and usage added up for a report (``UsageGroup``) are
here too.
"""

from dataclasses import dataclass

from core.budget import BudgetSnapshot
from core.errors import IdempotencyConflict
from core.money import Money


@dataclass(frozen=True, slots=True)
class UsageRecord:
    """What identifies a usage fact; ``response_time_ms`` is telemetry and not compared."""

    request_id: str
    user_id: str
    model: str
    tokens_input: int
    tokens_output: int
    cost: Money


@dataclass(frozen=True, slots=True)
class LogOutcome:
    """A log-usage's answer: whether it was new, and the figures after it."""

    created: bool
    budget: BudgetSnapshot


@dataclass(frozen=True, slots=True)
class UsageGroup:
    """Usage added up over one key: a model name, or a 15-minute bucket start for days."""

    key: str | int
    requests: int
    tokens_input: int
    tokens_output: int
    cost: Money


def check_replay(existing: UsageRecord, incoming: UsageRecord) -> None:
    """An identical replay is accepted as already done; any difference is a conflict."""
    assert existing.request_id == incoming.request_id
    if existing != incoming:
        raise IdempotencyConflict(
            "request_id was already logged with different content", request_id=incoming.request_id
        )
