"""Closed holds are deleted only past a retention that outlasts their TTL (core/reservations.py)."""

import pytest
from core_helpers import TTL_SECONDS, usd

from core.errors import Invalid
from core.reservations import RESERVATION_RETENTION_MARGIN_SECONDS, retention_cutoff_ms

DAY_MS = 24 * 3600 * 1000


def test_retention_must_outlast_the_ttl_and_a_day():
    minimum = TTL_SECONDS + RESERVATION_RETENTION_MARGIN_SECONDS
    assert retention_cutoff_ms(10**12, minimum, TTL_SECONDS) == 10**12 - minimum * 1000
    with pytest.raises(Invalid, match="at least"):
        retention_cutoff_ms(10**12, minimum - 1, TTL_SECONDS)


def holds(raw):
    return raw.execute("SELECT request_id, state FROM reservations ORDER BY request_id").fetchall()


def test_only_holds_closed_before_the_retention_are_deleted(ledger, alice, raw, clock):
    for request_id in ("settled", "released", "stale"):
        ledger.check_budget("alice", None, 0, 0, usd("0.1"), request_id)
    ledger.log_usage("alice", "gpt-4o", "settled", 1, 1, usd("0.1"), None)
    ledger.release_reservation("released")
    clock.advance(2 * DAY_MS)
    ledger.check_budget("alice", None, 0, 0, usd("0.1"), "recent")
    ledger.release_reservation("recent")
    ledger.check_budget("alice", None, 0, 0, usd("0.1"), "open-now")
    # "stale" expired unsettled; it is swept (closed) only now, so it is kept.
    retention_seconds = TTL_SECONDS + RESERVATION_RETENTION_MARGIN_SECONDS
    assert ledger.prune_closed_reservations(retention_seconds) == 2
    remaining = dict(holds(raw))
    assert set(remaining) == {"stale", "recent", "open-now"}
    assert ledger.user("alice").budget.used == usd("0.1")
