"""LiteLLM proxy callback: admit each call against the budget, log its usage, release on failure.

Register it in the proxy's ``config.yaml``::

    litellm_settings:
      callbacks: client.litellm.billing_callback

Configured by environment variables (``BILLING_*``, see ``CallbackSettings`` and
``examples/litellm/README.md``). What it costs the proxy is kept off each call's path:

- **Leases.** A worker holds a slice of a user's budget as one ordinary hold (its own request
  id, ``lease-…``) and admits calls against it locally, with no round trip; the slice is at most
  ``lease_calls`` call estimates, twice the last one's while the user spends slices (up to
  ``lease_calls_max``, ``client.lease_sizes``), and at most ``lease_share_percent`` of what the
  user had left.
  A slice is returned (the hold released) once it is spent, or unused for a few of the user's
  usual gaps between calls (at least ``lease_idle_ms``, at most ``lease_idle_ms_max``,
  ``client.call_gaps``), and its calls' usage is logged. Until then the ledger counts it as
  held, so no worker can spend it twice. A slice is taken only for a user whose previous call on
  this worker came within that time, so that it serves more than one call. A call that no lease
  covers holds its own estimate, as a hold of the call's ``litellm_call_id``.
- **Usage in batches.** Usage waits in memory for the next flush, at most ``flush_interval_ms``
  after the one under way ends (a flush sends only what was queued when it began,
  ``client.usage_queue``), and is sent in batches of at most ``batch_records_max`` through
  ``POST /api/log-usage/batch``; the hold (the call's or its lease's) keeps the budget safe
  meanwhile. Near the end of a budget usage goes at once: a call whose hold left its user less
  than its estimate, and a denied call whose room may be in this worker's queue, start a flush.
- **No tokenizer for short plain text.** Such a prompt's tokens are bounded by its bytes
  (``client.prompt_tokens``): tokenizing lets go of the GIL, and LiteLLM's threads then keep the
  event loop waiting.
- **aiohttp.** Calls to the service go through one pooled keep-alive aiohttp session per event
  loop (``client.aiohttp_client``).

Usage the service cannot take now (an outage, a key fault), usage still queued when the proxy
stops, and the release of a failed call's hold go to a durable local spool (``client.spool``),
re-sent in the background until taken. A lease whose usage went to the spool is returned through
the spool too, which sends a release only after the usage spooled before it.
"""

import asyncio
import atexit
import logging
import secrets
import time
from collections import Counter, OrderedDict
from dataclasses import dataclass
from datetime import UTC, datetime
from decimal import ROUND_CEILING, ROUND_FLOOR, Decimal
from pathlib import Path
from typing import Any, Literal

import litellm
from fastapi import HTTPException
from litellm.integrations.custom_logger import CustomLogger
from pydantic import Field, SecretStr, ValidationError
from pydantic_settings import BaseSettings, SettingsConfigDict

from client import calls
from client.aiohttp_client import AiohttpBillingClient
from client.call_gaps import CallGaps
from client.calls import RetryPolicy, decimal_text
from client.errors import (
    BillingError,
    BudgetExceeded,
    Conflict,
    NotFound,
    Unauthorized,
    Unavailable,
)
from client.holds import fitting_hold
from client.lease_sizes import LeaseSizes
from client.prompt_tokens import chat_tokens_max, text_tokens_max
from client.recent import remember
from client.spool import SpoolForwarder, SpoolFull, UsageRecord, UsageSpool, batch_outcome
from client.sync import BillingClient
from client.usage_queue import UsageQueue
from wire.schemas import CheckBudgetResponse

log = logging.getLogger(__name__)

HOLDS_TRACKED_MAX = 100_000
USERS_TRACKED_MAX = 100_000
PRICED_MODELS_MAX = 1_000
# A hold is placed again at most this many times for one call: once more with what remains
# (an estimate that is a guess), and after each wait for held budget to settle.
HOLD_ATTEMPTS_MAX = 6
# A denied hold whose room may come from another worker's usage or slice is asked again after
# this pause: this worker's flushes say nothing of when another worker's usage is in.
SETTLE_RETRY_SECONDS = 0.05
# The service's bound on one call's estimate (COST_PER_CALL_MAX), which a lease's hold is too.
LEASE_DOLLARS_MAX = Decimal(1_000_000)
_PASSWORD_BYTES = 32
_NANO = Decimal("1e-9")


class CallbackSettings(BaseSettings):
    """Every setting of the callback; each is read from ``BILLING_<NAME>`` in the environment."""

    model_config = SettingsConfigDict(env_prefix="BILLING_", extra="ignore")

    api_url: str
    api_key: SecretStr
    admin_key: SecretStr | None = Field(None, description="needed only with default_product")
    user_source: Literal["end_user", "key_user"] = "end_user"
    default_product: str | None = Field(None, description="auto-provision unknown users onto it")
    default_tenant: str = "default"
    provision_email_domain: str = "users.invalid"
    failure_mode: Literal["fail_closed", "fail_open"] = "fail_closed"
    output_tokens_default: int = Field(1024, ge=0, le=1_000_000)
    timeout_seconds: float = Field(5.0, gt=0, le=300)
    attempts_max: int = Field(3, ge=1, le=10)
    spool_path: Path = Path("billing-spool.sqlite3")
    spool_records_max: int = Field(100_000, ge=1, le=10_000_000)
    spool_retry_seconds: float = Field(5.0, gt=0, le=3600)
    spool_batch_max: int = Field(100, ge=1, le=10_000)
    batch_records_max: int = Field(200, ge=1, le=1_000, description="usage records per batch")
    flush_interval_ms: int = Field(250, ge=1, le=10_000, description="pause between flushes")
    usage_queue_max: int = Field(10_000, ge=1, le=1_000_000, description="records in memory")
    lease_calls: int = Field(20, ge=0, le=10_000, description="0: a hold per call, no leases")
    lease_calls_max: int = Field(1_000, ge=1, le=10_000, description="growth cap of slices")
    lease_share_percent: int = Field(25, ge=1, le=100)
    lease_idle_ms: int = Field(500, ge=1, le=600_000, description="least a slice stays unused")
    lease_idle_ms_max: int = Field(5_000, ge=1, le=600_000, description="most a slice stays")
    lease_seconds_max: float = Field(30.0, gt=0, le=3600)
    settle_wait_ms: int = Field(1_000, ge=0, le=60_000, description="a denial waits this long")


def settings_from_env() -> CallbackSettings:
    """The settings, or one error naming every ``BILLING_*`` variable that is missing or bad."""
    try:
        return CallbackSettings()
    except ValidationError as error:
        problems = "; ".join(
            f"BILLING_{'_'.join(str(part) for part in item['loc']).upper()}: {item['msg']}"
            for item in error.errors(include_url=False, include_input=False)
        )
        raise ValueError(f"client.litellm cannot start: {problems}") from None


class Lease:
    """A slice of one user's budget held by this worker: ``amount`` held in the ledger under
    ``request_id``; ``committed`` is what the calls admitted against it may cost."""

    __slots__ = (
        "request_id", "user_id", "amount", "calls", "committed", "calls_open", "unlogged",
        "spooled", "closed", "last_used", "admit_until",
    )  # fmt: skip

    def __init__(
        self, request_id: str, user_id: str, amount: Decimal, calls: int, admit_until: float
    ) -> None:
        self.request_id = request_id
        self.user_id = user_id
        self.amount = amount
        self.calls = calls  # the call estimates it was sized for
        self.committed = Decimal(0)
        self.calls_open = 0
        self.unlogged = 0
        self.spooled = False
        self.closed = False
        self.last_used = time.monotonic()
        self.admit_until = admit_until

    def has_room(self, estimate: Decimal) -> bool:
        return self.committed + estimate <= self.amount

    def take(self, estimate: Decimal) -> bool:
        """Admit a call of ``estimate`` if the slice still has room for it."""
        if self.closed or not self.has_room(estimate):
            return False
        now = time.monotonic()
        if now >= self.admit_until:
            return False
        self.committed += estimate
        self.calls_open += 1
        self.last_used = now
        return True

    def settled(self) -> bool:
        return self.closed and self.calls_open == 0 and self.unlogged == 0


@dataclass(frozen=True, slots=True)
class CallEstimate:
    """One LLM call as its admission sees it: whose, its id, and what it may cost.
    ``estimate_is_guess``: the request set no output limit (``fitting_hold`` then applies)."""

    user_id: str
    request_id: str
    model: str
    tokens_input: int
    tokens_output: int
    estimate: Decimal
    estimate_is_guess: bool


@dataclass(frozen=True, slots=True)
class Admission:
    """How a call was admitted: against ``lease``, or by a hold of its own. ``urgent``: its
    hold left the user less than its estimate, so the user's next call may well wait for its
    usage, which is then sent as soon as the call ends rather than at the next flush."""

    user_id: str
    estimate: Decimal
    lease: Lease | None
    urgent: bool = False


class Gateway:
    """The callback's state in one event loop (a proxy worker): its HTTP session, the usage
    queue and its flusher, the leases, and the calls admitted and not yet ended.

    ``_unsettled`` counts each user's usage records queued and not yet taken: while it is not
    zero, a denied hold may find room once they are logged (their holds then stop counting).
    """

    def __init__(self, settings: CallbackSettings, spool: UsageSpool) -> None:
        self.settings = settings
        self.spool = spool
        admin_key = settings.admin_key
        self.http = AiohttpBillingClient(
            settings.api_url,
            settings.api_key.get_secret_value(),
            None if admin_key is None else admin_key.get_secret_value(),
            timeout_seconds=settings.timeout_seconds,
            retry=RetryPolicy(attempts_max=settings.attempts_max),
        )
        self._worker = secrets.token_hex(6)
        self._leases_taken = 0
        self._admitted: dict[str, Admission] = {}
        self._leases: dict[str, Lease] = {}
        self._closing: list[Lease] = []
        self._lease_locks: dict[str, asyncio.Lock] = {}
        self._remaining: OrderedDict[str, Decimal] = OrderedDict()
        self._lease_sizes = LeaseSizes(
            max(1, settings.lease_calls), settings.lease_calls_max, USERS_TRACKED_MAX
        )
        self._call_gaps = CallGaps(
            settings.lease_idle_ms / 1000, settings.lease_idle_ms_max / 1000, USERS_TRACKED_MAX
        )
        self._unsettled: Counter[str] = Counter()
        self._queue: UsageQueue[tuple[UsageRecord, Lease | None]] = UsageQueue(
            settings.usage_queue_max, settings.batch_records_max
        )
        self._batch_ready = asyncio.Event()
        self._flushed = asyncio.Event()
        self._flusher = asyncio.get_running_loop().create_task(self._flush_forever())

    # -- admission ------------------------------------------------------------------------

    async def admit(self, call: CallEstimate) -> None:
        """Admit the call or raise ``BudgetExceeded`` (or the service's error)."""
        user_id, estimate = call.user_id, call.estimate
        if self.settings.lease_calls > 0:
            often = self._calling_often(user_id)
            lease = self._leases.get(user_id)
            admitted = lease is not None and lease.take(estimate)
            if not admitted and often:
                lease = await self._new_lease(user_id, estimate)
                admitted = lease is not None
            if admitted:
                self._remember(call.request_id, Admission(user_id, estimate, lease))
                return
        remaining = await self._hold(call)
        urgent = remaining < estimate
        self._remember(call.request_id, Admission(user_id, estimate, None, urgent))

    def _calling_often(self, user_id: str) -> bool:
        """Whether the user's previous call on this worker came within the time their slice
        stays unused (``client.call_gaps``): only then is a slice likely to serve more than one
        call before it goes back idle. A slice that serves one call costs two round trips (its
        hold, its release) where a hold of the call's own costs one."""
        return self._call_gaps.called(user_id, time.monotonic())

    def _remember(self, request_id: str, admission: Admission) -> None:
        """Calls admitted by this worker and not yet ended (bounded: a call whose end never
        comes is forgotten, and its hold or slice expires on its own)."""
        self._admitted[request_id] = admission
        if len(self._admitted) > HOLDS_TRACKED_MAX:
            del self._admitted[next(iter(self._admitted))]

    async def _new_lease(self, user_id: str, estimate: Decimal) -> Lease | None:
        """A new slice for ``user_id`` with room for ``estimate`` (the call taken from it), or
        None when a slice of at least two calls is not to be had."""
        lock = self._lease_locks.setdefault(user_id, asyncio.Lock())
        async with lock:
            current = self._leases.get(user_id)
            if current is not None:
                if current.take(estimate):
                    return current
                self._close(current)
                if not current.has_room(estimate):  # spent, not expired
                    self._lease_sizes.spent(user_id, current.calls)
            calls_count = self._lease_sizes.calls(user_id)
            size = self._lease_size(user_id, estimate, calls_count)
            if size is None:
                return None
            self._leases_taken += 1
            lease_id = f"lease-{self._worker}-{self._leases_taken}"
            try:
                answer = await self.http.run(
                    calls.check_budget(user_id, None, 0, 0, size, lease_id, True)
                )
            except BudgetExceeded as denied:
                self._note_remaining(user_id, denied.check)
                return None
            self._note_remaining(user_id, answer)
            lease = Lease(lease_id, user_id, size, calls_count, self._admit_until(answer))
            self._leases[user_id] = lease
            return lease if lease.take(estimate) else None

    def _lease_size(self, user_id: str, estimate: Decimal, calls_count: int) -> Decimal | None:
        remaining = self._remaining.get(user_id)
        if remaining is None or estimate <= 0:
            return None  # the first call of a user holds alone, and learns what remains
        share = remaining * self.settings.lease_share_percent / 100
        size = min(estimate * calls_count, share, LEASE_DOLLARS_MAX)
        size = size.quantize(_NANO, ROUND_FLOOR)
        return size if size >= 2 * estimate else None

    def _admit_until(self, answer: CheckBudgetResponse) -> float:
        """Calls are admitted against a lease for at most ``lease_seconds_max``, and only in
        the first half of its hold's life, so a call still running has its hold behind it."""
        limit = self.settings.lease_seconds_max
        if answer.reservation is not None:
            expires = datetime.fromisoformat(answer.reservation.expires_at)
            life = (expires - datetime.now(UTC)).total_seconds()
            limit = min(limit, life / 2)
        return time.monotonic() + limit

    async def _hold(self, call: CallEstimate) -> Decimal:
        """A hold of the call's own; what the user has left after it. Denied: a guessed
        estimate holds what remains instead (``fitting_hold``); while some of the user's budget
        is still to settle, the hold is asked again (``_settlement``), for at most
        ``settle_wait_ms``."""
        user_id = call.user_id
        deadline = time.monotonic() + self.settings.settle_wait_ms / 1000
        amount = call.estimate
        denial: CheckBudgetResponse | None = None
        for _ in range(HOLD_ATTEMPTS_MAX):
            check = calls.check_budget(
                user_id,
                call.model or None,
                call.tokens_input,
                call.tokens_output,
                amount,
                call.request_id,
                True,
            )
            try:
                answer = await self.http.run(check)
                self._note_remaining(user_id, answer)
                return answer.budget.remaining
            except BudgetExceeded as denied:
                denial = denied.check
            self._note_remaining(user_id, denial)
            fitting = fitting_hold(call.estimate, call.estimate_is_guess, denial)
            if fitting is not None and fitting < amount:
                amount = fitting
            elif not await self._settlement(user_id, deadline, denial):
                break
        assert denial is not None
        raise BudgetExceeded(denial)

    async def _settlement(self, user_id: str, deadline: float, denial: CheckBudgetResponse) -> bool:
        """Wait while some of ``user_id``'s budget is only held (by calls whose usage is on its
        way, or by slices, of this worker or another): a hold asked again then may find room.
        When some of it is this worker's own, wait for this worker's flush, started at once;
        otherwise for ``SETTLE_RETRY_SECONDS``. False when nothing is held, or past the
        deadline."""
        lease = self._leases.get(user_id)
        if lease is not None:
            self._close(lease)
        self._lease_sizes.paused(user_id)
        budget = denial.budget
        settling_here = self._unsettled[user_id] > 0 or any(
            lease.user_id == user_id for lease in self._closing
        )
        pending = settling_here or budget.total - budget.used - budget.remaining > 0
        wait = deadline - time.monotonic()
        if not pending or wait <= 0:
            return False
        if not settling_here:
            await asyncio.sleep(min(wait, SETTLE_RETRY_SECONDS))
            return True
        self._batch_ready.set()  # the denied call waits for this flush, not the interval
        try:
            await asyncio.wait_for(self._flushed.wait(), wait)
        except TimeoutError:
            return False
        return True

    def _note_remaining(self, user_id: str, answer: CheckBudgetResponse) -> None:
        remember(self._remaining, user_id, answer.budget.remaining, USERS_TRACKED_MAX)

    def _close(self, lease: Lease) -> None:
        if not lease.closed:
            lease.closed = True
            self._closing.append(lease)
        if self._leases.get(lease.user_id) is lease:
            del self._leases[lease.user_id]

    # -- after the call -------------------------------------------------------------------

    def finished(self, record: UsageRecord) -> None:
        """A call succeeded: queue its usage for the next batch (or the spool, when full)."""
        admission = self._admitted.pop(record.request_id, None)
        lease = None if admission is None else admission.lease
        if lease is not None and admission is not None:
            lease.calls_open -= 1
            lease.unlogged += 1
            if record.cost_total is not None:
                cost = Decimal(record.cost_total).quantize(_NANO, ROUND_CEILING)
                lease.committed += cost - admission.estimate
        self._unsettled[record.user_id] += 1
        if self._queue.full():
            self._spool_now([(record, lease)], "usage queue full")
            return
        self._queue.put((record, lease))
        if self._queue.batch_ready() or (admission is not None and admission.urgent):
            self._batch_ready.set()

    def failed(self, request_id: str | None) -> str | None:
        """A call failed: return its slice of a lease; the request id of a hold to release."""
        if request_id is None:
            return None
        admission = self._admitted.pop(request_id, None)
        if admission is None:
            return None
        if admission.lease is None:
            return request_id
        admission.lease.calls_open -= 1
        admission.lease.committed -= admission.estimate
        return None

    def _settle_user(self, user_id: str) -> None:
        self._unsettled[user_id] -= 1
        if self._unsettled[user_id] <= 0:
            del self._unsettled[user_id]

    # -- the flusher ----------------------------------------------------------------------

    async def _flush_forever(self) -> None:
        interval = self.settings.flush_interval_ms / 1000
        while True:
            try:
                await asyncio.wait_for(self._batch_ready.wait(), interval)
            except TimeoutError:
                pass
            self._batch_ready.clear()
            try:
                await self.flush()
            except Exception:  # the flusher must outlive any one bad round
                log.exception("billing: flushing usage failed")

    async def flush(self) -> None:
        """Send the usage queued when the flush began, return the slices that are done, wake
        the waiters."""
        for batch in self._queue.batches():
            await self._send(batch)
        await self._return_leases()
        flushed, self._flushed = self._flushed, asyncio.Event()
        flushed.set()

    async def _send(self, batch: list[tuple[UsageRecord, Lease | None]]) -> None:
        bodies = [record.body() for record, _ in batch]
        try:
            answer = await self.http.run(calls.log_usage_batch(bodies))
        except (Unavailable, Unauthorized) as error:
            await self._spool(batch, None, f"usage batch of {len(batch)} spooled: {error}")
            return
        except BillingError as error:
            # The request as a whole was refused (a record the schema refuses): the spool sends
            # the records one by one, and keeps the refused one aside.
            await self._spool(batch, None, f"usage batch refused, spooled: {error}")
            return
        retry: list[tuple[UsageRecord, Lease | None]] = []
        for (record, lease), result in zip(batch, answer.results, strict=True):
            outcome = batch_outcome(result.status)
            if outcome == "taken":
                self._logged(record, lease)
            elif outcome == "retry":
                retry.append((record, lease))
            else:
                reason = f"{result.status} {result.error}: {result.message}"
                log.error("billing refused usage %s: %s", record.request_id, reason)
                await self._spool([(record, lease)], reason, None)
        if retry:
            await self._spool(retry, None, f"{len(retry)} usage records spooled")

    def _logged(self, record: UsageRecord, lease: Lease | None, spooled: bool = False) -> None:
        self._settle_user(record.user_id)
        if lease is not None:
            lease.unlogged -= 1
            lease.spooled = lease.spooled or spooled

    async def _spool(
        self, batch: list[tuple[UsageRecord, Lease | None]], rejected: str | None, why: str | None
    ) -> None:
        if why is not None:
            log.warning("billing: %s", why)
        records = [record for record, _ in batch]
        try:
            await asyncio.to_thread(self.spool.put_many, records, rejected)
        except SpoolFull as error:
            log.error("usage of %d calls not recorded: %s", len(records), error)
        for record, lease in batch:
            self._logged(record, lease, spooled=rejected is None)

    def _spool_now(self, batch: list[tuple[UsageRecord, Lease | None]], why: str) -> None:
        """Spool in this thread: the queue is full, or the loop is gone."""
        log.warning("billing: %d usage records spooled: %s", len(batch), why)
        try:
            self.spool.put_many([record for record, _ in batch], None)
        except SpoolFull as error:
            log.error("usage of %d calls not recorded: %s", len(batch), error)
        for record, lease in batch:
            self._logged(record, lease, spooled=True)

    async def _return_leases(self) -> None:
        now = time.monotonic()
        for lease in list(self._leases.values()):
            if now - lease.last_used >= self._call_gaps.idle_seconds(lease.user_id):
                self._close(lease)
                self._lease_sizes.paused(lease.user_id)
            elif now >= lease.admit_until:
                self._close(lease)  # still in use: the next slice is as large
        done = [lease for lease in self._closing if lease.settled()]
        if not done:
            return
        self._closing = [lease for lease in self._closing if not lease.settled()]
        for lease in done:
            if lease.spooled:
                await self._spool_release(lease.request_id)
            else:
                await self.release(lease.request_id)

    async def release(self, request_id: str) -> None:
        """Release a hold; unreachable, or a wrong key: spooled and re-sent."""
        try:
            await self.http.run(calls.release_reservation(request_id))
        except (NotFound, Conflict):
            return
        except (Unavailable, Unauthorized) as error:
            log.warning("release of hold %s spooled: %s", request_id, error)
            await self._spool_release(request_id)
        except BillingError as error:
            log.warning("hold %s not released (it expires on its own): %s", request_id, error)

    async def _spool_release(self, request_id: str) -> None:
        """The spool sends a release after all the usage it holds (``UsageSpool.pending``)."""
        try:
            await asyncio.to_thread(self.spool.put_release, request_id)
        except SpoolFull as full:
            log.error("hold %s not released (it expires on its own): %s", request_id, full)

    def abandon(self) -> None:
        """The loop is gone (the proxy stops): queued usage to the spool, and every slice's
        release after it (the spool sends usage first)."""
        if not self._flusher.get_loop().is_closed():
            self._flusher.cancel()
        queued = self._queue.take_all()
        if queued:
            self._spool_now(queued, "the proxy stops")
        for lease in [*self._leases.values(), *self._closing]:
            try:
                self.spool.put_release(lease.request_id)
            except SpoolFull:
                log.error("lease %s not released (it expires on its own)", lease.request_id)


class BillingCallback(CustomLogger):
    """The CloudFreedom Billing hooks of a LiteLLM proxy (one instance per proxy process)."""

    def __init__(self, settings: CallbackSettings | None = None) -> None:
        super().__init__()
        self.settings = settings or settings_from_env()
        self._gateway: Gateway | None = None
        self._gateway_loop: asyncio.AbstractEventLoop | None = None
        self._prices: dict[tuple[int, str], tuple[Decimal, Decimal]] = {}
        self.spool = UsageSpool(self.settings.spool_path, self.settings.spool_records_max)
        admin_key = self.settings.admin_key
        self._forwarder = SpoolForwarder(
            self.spool,
            BillingClient(
                self.settings.api_url,
                self.settings.api_key.get_secret_value(),
                None if admin_key is None else admin_key.get_secret_value(),
                timeout_seconds=self.settings.timeout_seconds,
                retry=RetryPolicy(attempts_max=self.settings.attempts_max),
            ),
            self.settings.spool_retry_seconds,
            self.settings.spool_batch_max,
        )
        self._forwarder.start()
        atexit.register(self._stop)

    def gateway(self) -> Gateway:
        """The state of the running event loop (an HTTP session belongs to one loop)."""
        loop = asyncio.get_running_loop()
        if self._gateway is None or self._gateway_loop is not loop:
            if self._gateway is not None:
                self._gateway.abandon()
            self._gateway = Gateway(self.settings, self.spool)
            self._gateway_loop = loop
        return self._gateway

    def _stop(self) -> None:
        if self._gateway is not None:
            self._gateway.abandon()

    # -- before the call ------------------------------------------------------------------

    async def async_pre_call_hook(
        self, user_api_key_dict: Any, cache: Any, data: dict, call_type: str
    ) -> dict:
        """Admit the call; 429 denied, 403 unknown user, 503 unreachable."""
        request_id = data.get("litellm_call_id")
        assert request_id, "the proxy sets litellm_call_id before the pre-call hook"
        user_id = self._request_user(user_api_key_dict, data)
        if user_id is None:
            raise HTTPException(
                status_code=403, detail=f"no billing user on this request ({self._user_hint()})"
            )
        if self.spool.full():
            raise HTTPException(status_code=503, detail="billing usage spool is full")
        model = str(data.get("model") or "")
        tokens_input = _prompt_tokens(model, data)
        limit = _output_limit(data)
        tokens_output = self.settings.output_tokens_default if limit is None else limit
        input_price, output_price = self._model_prices(model)
        estimate = input_price * tokens_input + output_price * tokens_output
        call = CallEstimate(
            user_id, request_id, model, tokens_input, tokens_output, estimate, limit is None
        )
        try:
            await self._provisioned(self.gateway(), call)
        except BudgetExceeded as denied:
            raise HTTPException(status_code=429, detail=denied.message) from None
        except NotFound:
            raise HTTPException(
                status_code=403, detail=f"unknown billing user {user_id!r}"
            ) from None
        except Unavailable as error:
            if self.settings.failure_mode == "fail_open":
                log.warning("billing unavailable, call %s let through (fail_open)", request_id)
                return data
            log.error("billing unavailable, call %s refused (fail_closed): %s", request_id, error)
            raise HTTPException(status_code=503, detail="billing service unavailable") from None
        except BillingError as error:
            # A wrong key, a refused estimate or id: the proxy's set-up is at fault, not the caller.
            log.error(
                "billing refused the check of call %s: %s %s", request_id, error.status, error
            )
            raise HTTPException(
                status_code=503, detail=f"billing check failed: {error.code}"
            ) from None
        return data

    async def _provisioned(self, gateway: Gateway, call: CallEstimate) -> None:
        """``gateway.admit``; an unknown user is provisioned onto ``default_product`` first, when
        set."""
        try:
            await gateway.admit(call)
        except NotFound:
            if self.settings.default_product is None:
                raise
            await self._provision(call.user_id)
            await gateway.admit(call)

    async def _provision(self, user_id: str) -> None:
        email = user_id if "@" in user_id else f"{user_id}@{self.settings.provision_email_domain}"
        call = calls.provision_user(
            email,
            secrets.token_urlsafe(_PASSWORD_BYTES),
            str(self.settings.default_product),
            self.settings.default_tenant,
            user_id,
        )
        try:
            await self.gateway().http.run(call)
        except Conflict:
            log.info("billing user %r was provisioned concurrently", user_id)
            return
        log.info("billing user %r provisioned onto %s", user_id, self.settings.default_product)

    def _request_user(self, user_api_key_dict: Any, data: dict) -> str | None:
        if self.settings.user_source == "key_user":
            user = getattr(user_api_key_dict, "user_id", None)
        else:
            user = data.get("user") or getattr(user_api_key_dict, "end_user_id", None)
        return str(user) if user else None

    def _user_hint(self) -> str:
        if self.settings.user_source == "key_user":
            return "the API key has no user_id"
        return "set the request's `user` field"

    def _model_prices(self, model: str) -> tuple[Decimal, Decimal]:
        """``_prices``, looked up once per model and router: about 3% of the proxy's CPU when
        looked up on every call (py-spy)."""
        from litellm.proxy import proxy_server  # loaded by then: the proxy is what loads this

        key = (id(getattr(proxy_server, "llm_router", None)), model)
        prices = self._prices.get(key)
        if prices is None:
            if len(self._prices) >= PRICED_MODELS_MAX:
                self._prices.clear()
            prices = self._prices[key] = _prices(model)
        return prices

    # -- after the call -------------------------------------------------------------------

    async def async_log_success_event(
        self, kwargs: dict, response_obj: Any, start_time: datetime, end_time: datetime
    ) -> None:
        """Queue the call's usage (streamed responses arrive here once, complete)."""
        record = self._usage_record(kwargs, start_time, end_time)
        if record is not None:
            self.gateway().finished(record)

    def _usage_record(
        self, kwargs: dict, start_time: datetime, end_time: datetime
    ) -> UsageRecord | None:
        payload = kwargs.get("standard_logging_object") or {}
        request_id = kwargs.get("litellm_call_id") or payload.get("litellm_call_id")
        metadata = payload.get("metadata") or {}
        if self.settings.user_source == "key_user":
            user_id = metadata.get("user_api_key_user_id")
        else:
            user_id = payload.get("end_user") or kwargs.get("user")
        if not request_id or not user_id:
            log.warning("usage without request id or billing user not logged: %s", request_id)
            return None
        model = payload.get("model_group") or kwargs.get("model") or "unknown"
        latency_ms = round((end_time - start_time).total_seconds() * 1000)
        return UsageRecord(
            user_id=str(user_id),
            model=str(model),
            request_id=str(request_id),
            tokens_input=int(payload.get("prompt_tokens") or 0),
            tokens_output=int(payload.get("completion_tokens") or 0),
            cost_total=decimal_text(kwargs.get("response_cost", payload.get("response_cost"))),
            response_time_ms=max(latency_ms, 0),
        )

    # -- when the call fails --------------------------------------------------------------

    async def async_log_failure_event(
        self, kwargs: dict, response_obj: Any, start_time: datetime, end_time: datetime
    ) -> None:
        await self._release(kwargs.get("litellm_call_id"))

    async def async_post_call_failure_hook(
        self,
        request_data: dict,
        original_exception: Exception,
        user_api_key_dict: Any,
        traceback_str: str | None = None,
    ) -> None:
        await self._release(request_data.get("litellm_call_id"))

    async def _release(self, request_id: str | None) -> None:
        gateway = self.gateway()
        hold = gateway.failed(request_id)
        if hold is not None:
            await gateway.release(hold)


def _prompt_tokens(model: str, data: dict) -> int:
    """Prompt tokens for the estimate: a bound from the bytes of short plain text
    (``client.prompt_tokens``), else as LiteLLM counts them; 0 with no messages or prompt."""
    messages = data.get("messages")
    if messages:
        bound = chat_tokens_max(messages)
        return bound if bound is not None else _counted_tokens(model, messages=messages)
    prompt = data.get("prompt") or data.get("input")
    if isinstance(prompt, str | list) and prompt:
        bound = text_tokens_max(prompt)
        return bound if bound is not None else _counted_tokens(model, text=prompt)
    return 0


def _counted_tokens(model: str, **prompt: Any) -> int:
    """LiteLLM's count, with images at its default size: asked for an image's size, it would
    download the image in the proxy's event loop, blocking the worker's every call meanwhile
    (and failing the call when the image cannot be fetched from the proxy's host). A prompt it
    cannot count is the request's fault: 400."""
    try:
        return int(litellm.token_counter(model=model, use_default_image_token_count=True, **prompt))
    except Exception as error:  # LiteLLM raises several kinds for content it cannot read
        log.warning("prompt tokens not countable: %s", type(error).__name__)
        raise HTTPException(
            status_code=400, detail="billing cannot count this request's prompt tokens"
        ) from None


def _output_limit(data: dict) -> int | None:
    """The request's own limit on output tokens, if it sets one."""
    for name in ("max_tokens", "max_completion_tokens", "max_output_tokens"):
        value = data.get(name)
        if isinstance(value, int) and not isinstance(value, bool) and value >= 0:
            return value
    return None


def _prices(model: str) -> tuple[Decimal, Decimal]:
    """Prices per token of the model group (or LiteLLM's map), exact; 0 for an unpriced model."""
    from litellm.proxy import proxy_server  # loaded by then: the proxy is what loads this module

    info: Any = None
    router = getattr(proxy_server, "llm_router", None)
    if router is not None:
        info = router.get_model_group_info(model)
    if info is not None:
        found = (info.input_cost_per_token, info.output_cost_per_token)
    else:
        try:
            mapped = litellm.get_model_info(model)
        except Exception:  # litellm raises a bare Exception for a model it does not know
            log.warning("no price for model %r; its cost estimate is 0", model)
            return Decimal(0), Decimal(0)
        found = (mapped.get("input_cost_per_token"), mapped.get("output_cost_per_token"))
    input_price, output_price = (Decimal(repr(price)) if price else Decimal(0) for price in found)
    return input_price, output_price


billing_callback = BillingCallback()
