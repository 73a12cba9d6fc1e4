"""The ledger's operations, as the API and the flows call them.

This layer resolves what the store should not know (prices, the clock, hold expiry, period
labels, password hashing) and hands the store one transaction per operation.
"""

import secrets
import time
from collections.abc import Callable, Iterable, Mapping
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from zoneinfo import ZoneInfo

from core.accounts import CreditGrant, NewUser, Product, Tenant, UserView
from core.alerts import AdminNotice, Alert, AlertChannel
from core.budget import CheckResult, UserStatus, check, check_cost
from core.errors import Invalid, LedgerError, NotFound, Unavailable
from core.money import Money
from core.passwords import hash_password
from core.periods import label_at, label_bounds_ms, local_day, parse_label
from core.prices import PriceTable
from core.reconcile import (
    BACKFILL_SOURCE,
    DRIFT_FINDINGS_MAX,
    EXPIRED_HOLD_GRACE_MS,
    BackfillReport,
    ReconcileReport,
    backfill,
)
from core.reservations import Reservation, retention_cutoff_ms
from core.resets import (
    RESET_BATCH_USERS_MAX,
    RESET_LANES_MAX,
    PeriodSummary,
    ResetOutcome,
    ResetRequest,
    ResetRun,
)
from core.store.base import LedgerStore
from core.usage import LogOutcome, UsageGroup, UsageRecord

USAGE_RANGE_DAYS_MAX = 366
PRUNE_BATCH_MAX = 10_000
PRUNE_BATCHES_MAX = 100
DAY_MS = 24 * 3600 * 1000
# Runs one reset call may finish: one left unfinished before it, then its own; a third only when
# another caller started a run in between.
RESET_RUNS_PER_CALL_MAX = 3


@dataclass(frozen=True, slots=True)
class UsageEntry:
    """One record of a log-usage batch, as ``Ledger.log_usage`` takes its arguments."""

    user_id: str
    model: str
    request_id: str
    tokens_input: int
    tokens_output: int
    cost_total: Money | None
    response_time_ms: int | None


def wall_clock_ms() -> int:
    return time.time_ns() // 1_000_000


def new_user_id() -> str:
    """A user id for a provisioning that did not name one."""
    return f"usr_{secrets.token_hex(8)}"


@dataclass(frozen=True, slots=True)
class UsageSummary:
    from_ms: int
    to_ms: int
    groups: list[UsageGroup]


class Ledger:
    """Budget checks, usage, holds, resets and administration over one ``LedgerStore``."""

    def __init__(
        self,
        store: LedgerStore,
        prices: PriceTable,
        zone: ZoneInfo,
        reservation_ttl_seconds: int,
        clock_ms: Callable[[], int] = wall_clock_ms,
        reset_batch_users_max: int = RESET_BATCH_USERS_MAX,
        reset_lanes_max: int = RESET_LANES_MAX,
    ) -> None:
        assert reservation_ttl_seconds > 0 and reset_batch_users_max > 0 and reset_lanes_max > 0
        self.store = store
        self.prices = prices
        self.zone = zone
        self.reservation_ttl_ms = reservation_ttl_seconds * 1000
        self.clock_ms = clock_ms
        self.reset_batch_users_max = reset_batch_users_max
        self.reset_lanes_max = reset_lanes_max

    # -- the gateway's two calls ------------------------------------------------------------

    def check_budget(
        self,
        user_id: str,
        model: str | None,
        tokens_input: int,
        tokens_output: int,
        cost_estimate: Money | None,
        request_id: str | None,
    ) -> CheckResult:
        """Read-only without ``request_id``; with it, an allowed check places a hold.

        Both are decided by ``core.budget.check`` on the figures read: here for a read-only
        check; for a hold, in the store's write transaction, whose answer is returned as it is.
        """
        amount = self._price_or(cost_estimate, model, tokens_input, tokens_output, "cost_estimate")
        now_ms = self.clock_ms()
        if request_id is None:
            return check(self._require_user(user_id, now_ms).budget, amount)
        expires_at_ms = now_ms + self.reservation_ttl_ms
        return self.store.reserve(user_id, request_id, amount, expires_at_ms, now_ms)

    def log_usage(
        self,
        user_id: str,
        model: str,
        request_id: str,
        tokens_input: int,
        tokens_output: int,
        cost_total: Money | None,
        response_time_ms: int | None,
    ) -> LogOutcome:
        cost = self._price_or(cost_total, model, tokens_input, tokens_output, "cost_total")
        record = UsageRecord(request_id, user_id, model, tokens_input, tokens_output, cost)
        return self.store.log_usage(record, response_time_ms, self.clock_ms())

    def log_usage_batch(self, entries: list[UsageEntry]) -> list[LogOutcome | LedgerError]:
        """``log_usage`` of each entry, in order: its outcome or its own refusal (an unknown
        price, a bound, a conflict), the others written all the same."""
        now_ms = self.clock_ms()
        results: list[LogOutcome | LedgerError | None] = []
        priced: list[tuple[UsageRecord, int | None]] = []
        for entry in entries:
            try:
                cost = self._price_or(
                    entry.cost_total, entry.model, entry.tokens_input, entry.tokens_output,
                    "cost_total",
                )  # fmt: skip
            except LedgerError as refused:
                results.append(refused)
                continue
            record = UsageRecord(
                entry.request_id,
                entry.user_id,
                entry.model,
                entry.tokens_input,
                entry.tokens_output,
                cost,
            )
            priced.append((record, entry.response_time_ms))
            results.append(None)
        written = iter(self.store.log_usage_many(priced, now_ms) if priced else [])
        return [next(written) if result is None else result for result in results]

    def release_reservation(self, request_id: str) -> Reservation:
        return self.store.release(request_id, self.clock_ms())

    # -- reads ------------------------------------------------------------------------------

    def check_health(self) -> None:
        """Raise if the database cannot answer a query, or cannot take writes now."""
        self.store.check_health()

    def user(self, user_id: str) -> UserView:
        return self._require_user(user_id, self.clock_ms())

    def find_user(self, user_id: str) -> UserView | None:
        """The user with this id, or None."""
        return self.store.read_user(user_id, self.clock_ms())

    def user_by_email(self, email: str) -> UserView | None:
        """The user with this email (case-insensitive), or None."""
        user_id = self.store.user_id_by_email(email)
        return None if user_id is None else self.store.read_user(user_id, self.clock_ms())

    def tenant_exists(self, tenant_id: str) -> bool:
        return self.store.tenant_exists(tenant_id)

    def open_reservations(self) -> int:
        """How many holds count now (open, not expired), for the metrics gauge."""
        return self.store.count_open_reservations(self.clock_ms())

    def period_end_ms(self, view: UserView) -> int:
        """When the open period is due to close: the start of the month after its label."""
        return label_bounds_ms(view.period_label, self.zone)[1]

    def usage_summary(
        self, user_id: str, from_ms: int | None, to_ms: int | None, group_by: str
    ) -> UsageSummary:
        """Usage added up by model or by day (in the budget time zone) over ``[from, to)``.

        Without bounds it covers the user's open period up to now (at most the last
        ``USAGE_RANGE_DAYS_MAX`` days of it); a range given is at most that long.
        """
        now_ms = self.clock_ms()
        view = self._require_user(user_id, now_ms)
        end_ms = now_ms + 1 if to_ms is None else to_ms
        range_ms_max = USAGE_RANGE_DAYS_MAX * DAY_MS
        start_ms = max(view.period_start_ms, end_ms - range_ms_max) if from_ms is None else from_ms
        if end_ms < start_ms:
            raise Invalid("must not be before from", field="to")
        if end_ms - start_ms > range_ms_max:
            raise Invalid(f"range must not exceed {USAGE_RANGE_DAYS_MAX} days", field="to")
        if group_by == "model":
            groups = self.store.usage_groups(user_id, start_ms, end_ms, "model")
        else:
            groups = self._by_local_day(
                self.store.usage_groups(user_id, start_ms, end_ms, "bucket")
            )
        return UsageSummary(start_ms, end_ms, groups)

    def _by_local_day(self, buckets: list[UsageGroup]) -> list[UsageGroup]:
        """Fold 15-minute buckets into local days: every UTC offset is a multiple of 15 min."""
        days: dict[str, UsageGroup] = {}
        for bucket in buckets:
            assert isinstance(bucket.key, int)
            day = local_day(bucket.key, self.zone).isoformat()
            seen = days.get(day)
            if seen is None:
                days[day] = UsageGroup(
                    day, bucket.requests, bucket.tokens_input, bucket.tokens_output, bucket.cost
                )
            else:
                days[day] = UsageGroup(
                    day,
                    seen.requests + bucket.requests,
                    seen.tokens_input + bucket.tokens_input,
                    seen.tokens_output + bucket.tokens_output,
                    Money(seen.cost + bucket.cost),
                )
        return list(days.values())

    # -- administration ---------------------------------------------------------------------

    def reset_budgets(self, label: str | None, force: bool = False) -> ResetOutcome:
        """Without a label, close every open period now (the operator's explicit act). With
        one, at most once per label, by the reset rule of ``core.resets``: refused
        (``ResetRefused``) when it could only destroy a month, unless ``force``.

        In bounded batches (``core.resets``): a run left unfinished (a crash, a failed batch)
        is finished first, by any later call; the same reset asked again returns its outcome.
        """
        if label is not None:
            try:
                parse_label(label)
            except ValueError as error:
                raise Invalid(str(error), field="period") from None
        elif force:
            raise Invalid("force applies to a reset with a period", field="force")
        now_ms = self.clock_ms()
        current_label = label_at(now_ms, self.zone)
        request = ResetRequest(
            label=current_label if label is None else label,
            apply_once=label is not None,
            force=force,
            current_label=current_label,
            lanes_max=self.reset_lanes_max,
            batch_users_max=self.reset_batch_users_max,
        )
        for _ in range(RESET_RUNS_PER_CALL_MAX):
            started = self.store.start_reset(request, now_ms)
            if isinstance(started, ResetOutcome):
                return started
            outcome = self._finish_reset(started)
            if started.carries_request:
                assert outcome.label == request.label, (outcome, request)
                return outcome
        raise Unavailable("other resets kept starting before this one; retry shortly")

    def _finish_reset(self, run: ResetRun) -> ResetOutcome:
        """Every lane of the run to its end, each on its own thread, then the run's finish. A
        lane that fails stops only itself: the others go on, and its error is raised once they
        are done (the run stays unfinished, for a later call)."""
        with ThreadPoolExecutor(run.lanes, thread_name_prefix="reset-lane") as lanes:
            for lane in [lanes.submit(self._finish_lane, run.run_id, n) for n in range(run.lanes)]:
                lane.result()
        outcome = self.store.finish_reset(run.run_id, self.clock_ms())
        assert outcome is not None, run
        return outcome

    def _finish_lane(self, run_id: int, lane: int) -> None:
        """Batches of the lane until one finds no user left; each batch advances the lane by up
        to ``reset_batch_users_max`` users, so the loop ends."""
        while not self.store.reset_batch(run_id, lane, self.reset_batch_users_max, self.clock_ms()):
            pass

    def provision_user(
        self, email: str, password: str, product_id: str, tenant_id: str, user_id: str | None
    ) -> UserView:
        now_ms = self.clock_ms()
        new_user = NewUser(
            id=user_id if user_id is not None else new_user_id(),
            email=email,
            password_hash=hash_password(password),
            product_id=product_id,
            tenant_id=tenant_id,
            period_label=label_at(now_ms, self.zone),
        )
        return self.store.provision_user(new_user, now_ms)

    def put_product(self, product: Product) -> bool:
        return self.store.put_product(product, self.clock_ms())

    def list_products(self) -> list[Product]:
        return self.store.list_products()

    def put_tenant(self, tenant: Tenant) -> bool:
        return self.store.put_tenant(tenant, self.clock_ms())

    def update_user(
        self, user_id: str, status: UserStatus | None, product_id: str | None
    ) -> UserView:
        return self.store.update_user(user_id, status, product_id, self.clock_ms())

    def grant_credit(
        self, user_id: str, amount: Money, reason: str, grant_id: str | None
    ) -> tuple[bool, UserView, str]:
        """Credit for the open period. Without ``grant_id`` every call is a new grant."""
        assert amount > 0
        key = grant_id if grant_id is not None else f"grant_{secrets.token_hex(12)}"
        grant = CreditGrant(key, user_id, amount, reason)
        created, user = self.store.grant_credit(grant, self.clock_ms())
        return created, user, key

    def closed_period_summary(self, label: str, top_n: int) -> PeriodSummary:
        """What the reset ``label`` closed: users, total spend, the ``top_n`` largest spenders."""
        return self.store.closed_period_summary(label, top_n)

    # -- alerts and reconciliation (the flows) ----------------------------------------------

    def pending_admin_notices(self, limit: int) -> list[AdminNotice]:
        return self.store.pending_admin_notices(limit)

    def admin_notice_delivered(self, notice_id: int) -> None:
        self.store.admin_notice_delivered(notice_id, self.clock_ms())

    def pending_alerts(self, after_id: int, limit: int) -> list[Alert]:
        return self.store.pending_alerts(after_id, limit)

    def record_alert_attempt(
        self, alert_id: int, channels_done: frozenset[AlertChannel], error: str | None
    ) -> None:
        self.store.record_alert_attempt(alert_id, channels_done, error, self.clock_ms())

    def reconcile(self, repair: bool) -> ReconcileReport:
        """Every drift between counters and facts; with ``repair``, each fixed with an audit row."""
        now_ms = self.clock_ms()
        found = self.store.find_drift(now_ms, EXPIRED_HOLD_GRACE_MS, DRIFT_FINDINGS_MAX + 1)
        drifts = found[:DRIFT_FINDINGS_MAX]
        repaired = []
        if repair:
            for drift in drifts:
                done = self.store.repair_drift(drift, self.clock_ms())
                if done is not None:
                    repaired.append(done)
        return ReconcileReport(drifts, repaired, len(found) > DRIFT_FINDINGS_MAX)

    def prune_closed_reservations(self, retention_seconds: int) -> int:
        """Delete holds closed more than ``retention_seconds`` ago, in bounded batches."""
        ttl_seconds = self.reservation_ttl_ms // 1000
        cutoff_ms = retention_cutoff_ms(self.clock_ms(), retention_seconds, ttl_seconds)
        deleted = 0
        for _ in range(PRUNE_BATCHES_MAX):
            batch = self.store.delete_closed_reservations(cutoff_ms, PRUNE_BATCH_MAX)
            deleted += batch
            if batch < PRUNE_BATCH_MAX:
                break
        return deleted

    def backfill_usage(self, entries: Iterable[Mapping[str, object]]) -> BackfillReport:
        """Usage from LiteLLM's spend logs that never reached log-usage, recorded by request id."""
        return backfill(
            entries,
            lambda record: self.store.backfill_usage(record, BACKFILL_SOURCE, self.clock_ms()),
        )

    # -- helpers ----------------------------------------------------------------------------

    def _require_user(self, user_id: str, now_ms: int) -> UserView:
        view = self.store.read_user(user_id, now_ms)
        if view is None:
            raise NotFound("unknown user", user_id=user_id)
        return view

    def _price_or(
        self,
        given: Money | None,
        model: str | None,
        tokens_input: int,
        tokens_output: int,
        field: str,
    ) -> Money:
        """The amount given, else the model's price for the tokens; either within the per-call
        bound, since a table laid over the bundled one may price a call at anything."""
        amount = given
        if amount is None and model is not None:
            amount = self.prices.cost(model, tokens_input, tokens_output)
        if amount is None:
            raise Invalid(f"{field} is required when the model's price is not known", field=field)
        check_cost(amount, field)
        return amount
