"""What a budget reset does and when a labelled one is refused: the one statement of the rule.

A reset into month ``L`` closes open periods into ``period_history`` and opens ``L`` for their
users (used and credits zeroed, holds in flight kept). Which periods it closes:

- a labelled reset (the monthly flow, ``billing reset``, the API with ``period``) closes the
  periods of months before ``L``; a period already in ``L`` (a user provisioned since ``L``
  began) stays open, so a late run never closes a few minutes of the new month;
- a forced labelled reset, and the API's bare ``POST /api/admin/reset-budgets`` (the operator's
  explicit act of closing everything now), close every open period.

A label applies at most once. Before that, an unforced labelled reset is refused, changing
nothing, when it could only destroy a month (``reset_refusal``):

- ``L`` is after the current month in ``BUDGET_TIMEZONE``: it would open a month that has not
  begun, and the real reset of that month would later find its label used;
- an open period is later than ``L``: the reset would move users back in time;
- no open period is before ``L`` (there are open periods, all in ``L``): nothing is due, as in
  a manual run in the month the periods began.

Each store calls ``reset_refusal`` inside the transaction that starts the reset, on the open
periods it reads there, so two resets or a reset and a provisioning cannot slip between the
check and the start. What a reset did (``ResetOutcome``) and what it closed (``PeriodSummary``)
are here too.

A reset runs in bounded batches, never as one transaction. With 1,000,000 users the single
transaction took 5 s, during which every gateway write waited (log-usage p99 4.7 s at 8
connections). Two designs were weighed: periods that roll over per user on first touch after
the boundary, and a reset in bounded batches. The rollover would have every read (a check, the
budget view, a tenant's total, reconciliation, the admin reports) compute a period that the
rows do not hold yet, and a tenant's ``used`` would count its users' last month until each is
touched; the labels, ``force``, the refusals and "a label applies once" would need restating
for a reset that no longer happens at one moment. Batches keep every rule as it is and every
row true at every commit, so they were chosen. What they rest on:

- **A run.** ``start_reset`` checks the rule, in one write transaction, and records the run (label,
  what it closes) and its lanes (below), each with ``users_after`` = its first id's lower bound
  (the empty text for the first): no user visited yet. At most one run is unfinished at a time
  (a unique index in both schemas).
- **A batch** is one write transaction in one lane: the lane's next ``users_max`` users by id
  after its ``users_after``, each closed if its open period is one the run closes
  (``close_before_label``), and ``users_after`` moved to the last of them, in the same commit.
  Each user's period closes and the next opens in one transaction, so each usage row carries
  the start of exactly one period (the open one when it was written), and the user's counters,
  its tenant's ``used`` (lowered by what the batch closed) and the history agree at every
  commit.
- **Lanes.** A run's user ids are split, when it starts, into up to ``lanes_max`` lanes:
  contiguous ranges of ids, each with its own ``users_after``, whose batches run side by side
  (PostgreSQL; SQLite has one writer, so its runs have one lane). Every id falls in exactly one
  lane, and lanes never share a user, so what holds of one batch holds of batches side by side
  (two lanes that share a tenant lock it in turn, in the order every write takes). While lanes
  run, PostgreSQL's sweep of expired holds, which runs only when it can take the sweep's lock
  alone, mostly waits for the reset's end; every read already leaves an expired hold out, so
  no answer changes meanwhile.
- **Once per user, once per label.** Every user id is visited by exactly one committed batch of
  its lane: a batch that fails or a process that dies rolls back whole, leaving the lane's
  ``users_after`` where its last commit put it, and the next call resumes from there. A lane
  with no user left is marked finished; once every lane is, one more commit finishes the run:
  the label is recorded as applied, and a forced reset's notice written, in that commit.
- **Resuming.** A reset asked while a run is unfinished first finishes that run: the same
  reset asked again (same label, labelled or bare as before) returns the finished run's
  outcome, any other then starts its own run, exactly as if the two had run one after the
  other.
- **Users provisioned meanwhile** have the current month's label, so a guarded run never
  closes them; a run that closes every open period (forced, or bare) closes the period of a
  user provisioned after it started only when a batch of its lane reads the user's id ahead of
  the lane's ``users_after`` (as if provisioned just before the reset), else not (as if just
  after).
"""

from dataclasses import dataclass
from enum import StrEnum

from core.alerts import AdminNotice
from core.errors import ResetRefused
from core.money import Money
from core.periods import next_label

# How many users one batch of a reset visits: one write transaction, the longest a reset keeps
# other writes waiting. On 1,000,000 users (SQLite, 2 busy cores, bench.reset_under_load), a
# batch alone took p50 5.5 ms at 250 users, 8 ms at 500 and 20 ms at 1,000 (its commit writes
# every page it dirtied: each user's row lies on a page of its own), the whole reset 27, 20 and
# 23 s. Under log-usage at 8 connections, 250 held log-usage p99 at 34 ms during a 27 s reset.
RESET_BATCH_USERS_MAX = 250
# How many lanes of a run go side by side (PostgreSQL). Under log-usage at 8 connections on 2
# cores a lane's batches got about a tenth of the CPU: 1,000,000 users took 112 s in one lane,
# 61 s in two and 44 s in four, log-usage p99 during the reset 49, 51 and 57 ms (1.04-1.73x
# outside). Alone: 36, 28 and 20 s.
RESET_LANES_MAX = 4


@dataclass(frozen=True, slots=True)
class ResetRequest:
    """One reset as the store carries it out; ``current_label`` is the month it runs in, and
    ``lanes_max`` and ``batch_users_max`` how many lanes its run may have (``lane_count``)."""

    label: str
    apply_once: bool
    force: bool
    current_label: str
    lanes_max: int = 1
    batch_users_max: int = RESET_BATCH_USERS_MAX

    @property
    def guarded(self) -> bool:
        """An unforced labelled reset: the rule may refuse it, and it closes earlier months only."""
        return self.apply_once and not self.force

    @property
    def close_before_label(self) -> str:
        """The stores close the open periods labelled before this text: the label itself when
        guarded, else a text that sorts after every label (every open period closes)."""
        return self.label if self.guarded else "9999-99"

    def lane_count(self, users: int) -> int:
        """The lanes of a run over ``users`` users: up to ``lanes_max``, each a full batch or
        more."""
        assert self.lanes_max > 0 and self.batch_users_max > 0
        return max(1, min(self.lanes_max, users // self.batch_users_max))


@dataclass(frozen=True, slots=True)
class ResetRun:
    """A reset under way, as recorded by the store that started it (or found it unfinished).

    ``carries_request``: this run is what the request asked for (started for it, or the same
    label asked again); else it is an earlier unfinished run, to finish before the request
    starts its own.
    """

    run_id: int
    label: str
    apply_once: bool
    carries_request: bool
    lanes: int

    def carrying(self, request: ResetRequest) -> "ResetRun":
        """This run, found unfinished when ``request`` came: whether it is the same reset."""
        same = self.label == request.label and self.apply_once == request.apply_once
        return ResetRun(self.run_id, self.label, self.apply_once, same, self.lanes)


@dataclass(frozen=True, slots=True)
class OpenPeriods:
    """The earliest and latest labels of the open periods (None when there are no users)."""

    earliest_label: str | None
    latest_label: str | None


@dataclass(frozen=True, slots=True)
class ResetOutcome:
    """What a reset did: how many users' periods it closed, or that its label was applied."""

    label: str
    users_reset: int
    already_done: bool


@dataclass(frozen=True, slots=True)
class Spender:
    user_id: str
    email: str
    used: Money


@dataclass(frozen=True, slots=True)
class PeriodSummary:
    """What the reset labelled ``label`` closed: from period history, corrections applied."""

    label: str
    users: int
    spend_total: Money
    top_spenders: list[Spender]


class RefusalReason(StrEnum):
    FUTURE = "future_period"
    EARLIER_THAN_OPEN = "earlier_than_open_periods"
    NOTHING_DUE = "nothing_due"


def reset_refusal(request: ResetRequest, open_periods: OpenPeriods) -> ResetRefused | None:
    """The refusal of an unforced labelled reset that could only destroy a month, else None.

    Labels are ``YYYY-MM``, so their text order is their calendar order.
    """
    if not request.guarded:
        return None
    label, current = request.label, request.current_label
    earliest, latest = open_periods.earliest_label, open_periods.latest_label
    if label > current:
        reason = RefusalReason.FUTURE
        why = f"{label} is after the current month {current}"
    elif latest is not None and latest > label:
        reason = RefusalReason.EARLIER_THAN_OPEN
        why = f"an open period is already {latest}, later than {label}"
    elif earliest is not None and earliest >= label:
        reason = RefusalReason.NOTHING_DUE
        why = f"every open period is already {label}: nothing is due"
    else:
        return None
    valid = valid_label(current, open_periods)
    when = "now" if valid == current else f"from the start of {valid}"
    return ResetRefused(
        f"period {label} refused: {why}; the next valid period is {valid} ({when});"
        " force overrides this and closes every open period",
        reason=str(reason),
        period=label,
        valid_period=valid,
    )


def forced_reset_notice(label: str, users_reset: int) -> AdminNotice:
    """What the admin is mailed about a forced reset (the store writes it with the reset)."""
    return AdminNotice(
        subject=f"Budget reset {label} was FORCED",
        body=f"A forced budget reset applied period {label} and closed every open period"
        f" ({users_reset} users), bypassing the reset rule. If that was not intended, the closed"
        " periods are in the period history with closed_by = the label.\n",
    )


def valid_label(current_label: str, open_periods: OpenPeriods) -> str:
    """The label an unforced reset could apply next: this month while an open period is from
    an earlier month, else the next month (valid once it has begun)."""
    earliest = open_periods.earliest_label
    if earliest is not None and earliest < current_label:
        return current_label
    return next_label(current_label)
