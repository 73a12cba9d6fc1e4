"""Usage: one append-only row per ``request_id``; a replay must carry the same content."""

from dataclasses import dataclass

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


def check_replay(existing: UsageRecord, incoming: UsageRecord) -> None:
    """An identical replay is accepted as already done; any difference is a conflict."""
    assert existing.request_id == incoming.request_id
    if existing != incoming:
        raise IdempotencyConflict(
            "request_id was already logged with different content", request_id=incoming.request_id
        )
