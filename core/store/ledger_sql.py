"""The ledger's SQL that both stores run, written once where the dialects agree, and the rows it
reads as values.

Parameters are SQLite's ``:name``; ``flows_sql.pg_params`` rewrites them as psycopg's
``%(name)s``, once, at import. Not here: the hot writes (SQLite's statements are in ``sqlite``,
PostgreSQL's are plpgsql functions in ``postgres_migrations``), the user's figures (a query in
``sqlite``, the ``ledger_user_view`` function on PostgreSQL), and the statements whose dialects
differ for a reason given beside them (resets, usage sums, pruning).
"""

from typing import Any

from core.accounts import CreditGrant, NewUser, Product, Tenant
from core.alerts import AdminNotice
from core.errors import Duplicate, Invalid
from core.money import Money
from core.reservations import Reservation, ReservationState
from core.resets import ResetRequest, ResetRun
from core.usage import UsageRecord


def _put(table: str) -> str:
    """Create or replace a product or a tenant: the two tables share these columns."""
    return (
        f"INSERT INTO {table} (id, name, monthly_budget, created_at, updated_at)"
        " VALUES (:id, :name, :monthly_budget, :now, :now) ON CONFLICT (id) DO UPDATE"
        " SET name = excluded.name, monthly_budget = excluded.monthly_budget,"
        " updated_at = excluded.updated_at"
    )


PUT_PRODUCT_SQL = _put("products")
PUT_TENANT_SQL = _put("tenants")
PRODUCT_EXISTS_SQL = "SELECT 1 FROM products WHERE id = :id"
TENANT_EXISTS_SQL = "SELECT 1 FROM tenants WHERE id = :id"

LIST_PRODUCTS_SQL = "SELECT id, name, monthly_budget FROM products ORDER BY id"

# What would refuse a new user: its id or email taken, its product unknown (``check_new_user``).
NEW_USER_CONFLICTS_SQL = (
    "SELECT EXISTS (SELECT 1 FROM users WHERE id = :id),"
    " EXISTS (SELECT 1 FROM users WHERE email_key = :email_key),"
    " EXISTS (SELECT 1 FROM products WHERE id = :product_id)"
)
# A user's tenant, named by its id, uncapped, unless it exists.
INSERT_TENANT_IF_NEW_SQL = (
    "INSERT INTO tenants (id, name, monthly_budget, created_at, updated_at)"
    " VALUES (:tenant_id, :tenant_id, NULL, :now, :now) ON CONFLICT (id) DO NOTHING"
)
INSERT_USER_SQL = (
    "INSERT INTO users (id, email, email_key, password_hash, product_id, tenant_id, status,"
    " period_label, period_start, created_at, updated_at) VALUES (:id, :email, :email_key,"
    " :password_hash, :product_id, :tenant_id, 'active', :period_label, :now, :now, :now)"
)
SET_USER_PRODUCT_SQL = "UPDATE users SET product_id = :product_id, updated_at = :now WHERE id = :id"
SET_USER_STATUS_SQL = "UPDATE users SET status = :status, updated_at = :now WHERE id = :id"
USER_ID_BY_EMAIL_SQL = "SELECT id FROM users WHERE email_key = :email_key"

CREDIT_GRANT_SQL = (
    "SELECT grant_id, user_id, amount, reason FROM credit_grants WHERE grant_id = :grant_id"
)
INSERT_CREDIT_GRANT_SQL = (
    "INSERT INTO credit_grants (grant_id, user_id, amount, reason, period_start, created_at)"
    " VALUES (:grant_id, :user_id, :amount, :reason, :period_start, :now)"
)
ADD_CREDITS_SQL = (
    "UPDATE users SET credits = credits + :amount, updated_at = :now WHERE id = :user_id"
)

COUNT_OPEN_RESERVATIONS_SQL = (
    "SELECT count(*) FROM reservations WHERE state = 'open' AND expires_at > :now"
)

APPLIED_RESET_SQL = "SELECT 1 FROM applied_resets WHERE label = :label"
# A reset's run (core.resets): the one unfinished, a new one, and one's state for its next batch.
UNFINISHED_RESET_SQL = "SELECT id, label, apply_once FROM reset_runs WHERE finished_at IS NULL"
INSERT_RESET_RUN_SQL = (
    "INSERT INTO reset_runs (label, apply_once, forced, close_before, users_after, started_at)"
    " VALUES (:label, :apply_once, :forced, :close_before, '', :now) RETURNING id"
)
INSERT_RESET_LANE_SQL = (
    "INSERT INTO reset_lanes (run_id, lane, users_after, users_upto)"
    " VALUES (:run_id, :lane, :users_after, :users_upto)"
)
# A run found unfinished that a worker of the previous release started has no lanes: it gets
# lane 0, from the run's own cursor on.
ENSURE_RESET_LANE_SQL = (
    "INSERT INTO reset_lanes (run_id, lane, users_after) SELECT id, 0, users_after"
    " FROM reset_runs WHERE id = :run_id"
    " AND NOT EXISTS (SELECT 1 FROM reset_lanes WHERE run_id = :run_id)"
)
COUNT_RESET_LANES_SQL = "SELECT COUNT(*) FROM reset_lanes WHERE run_id = :run_id"
PENDING_ADMIN_NOTICES_SQL = (
    "SELECT id, subject, body FROM admin_notices WHERE delivered_at IS NULL"
    " ORDER BY id LIMIT :limit"
)
INSERT_ADMIN_NOTICE_SQL = (
    "INSERT INTO admin_notices (subject, body, created_at) VALUES (:subject, :body, :now)"
)
ADMIN_NOTICE_DELIVERED_SQL = (
    "UPDATE admin_notices SET delivered_at = :now WHERE id = :id AND delivered_at IS NULL"
)

# The columns ``request_from_row`` reads: the hold, then the usage, under one request_id.
REQUEST_COLUMNS_COUNT = 9


def put_params(plan: Product | Tenant, now_ms: int) -> dict[str, Any]:
    """The parameters of ``PUT_PRODUCT_SQL``, ``PUT_TENANT_SQL`` and their ``*_EXISTS_SQL``."""
    return {"id": plan.id, "name": plan.name, "monthly_budget": plan.monthly_budget, "now": now_ms}


def new_user_params(user: NewUser, now_ms: int) -> dict[str, Any]:
    """The parameters of ``NEW_USER_CONFLICTS_SQL``, ``INSERT_TENANT_IF_NEW_SQL`` and
    ``INSERT_USER_SQL``; emails are compared by their ``casefold``."""
    return {
        "id": user.id,
        "email": user.email,
        "email_key": user.email.casefold(),
        "password_hash": user.password_hash,
        "product_id": user.product_id,
        "tenant_id": user.tenant_id,
        "period_label": user.period_label,
        "now": now_ms,
    }


def check_new_user(id_taken: object, email_taken: object, product_known: object) -> None:
    """Refuse a new user by the row of ``NEW_USER_CONFLICTS_SQL``, the id's conflict first."""
    if id_taken:
        raise Duplicate("a user with this id exists", field="user_id")
    if email_taken:
        raise Duplicate("a user with this email exists", field="email")
    if not product_known:
        raise Invalid("unknown product", field="product_id")


def grant_params(grant: CreditGrant, period_start_ms: int, now_ms: int) -> dict[str, Any]:
    """The parameters of the credit grant's statements; it counts in the period it lands in."""
    return {
        "grant_id": grant.grant_id,
        "user_id": grant.user_id,
        "amount": grant.amount,
        "reason": grant.reason,
        "period_start": period_start_ms,
        "now": now_ms,
    }


def reset_run_params(request: ResetRequest, now_ms: int) -> dict[str, Any]:
    """The parameters of ``INSERT_RESET_RUN_SQL``."""
    return {
        "label": request.label,
        "apply_once": request.apply_once,
        "forced": request.force,
        "close_before": request.close_before_label,
        "now": now_ms,
    }


def unfinished_run(row: tuple[Any, ...], lanes: int, request: ResetRequest) -> ResetRun:
    """The run of an ``UNFINISHED_RESET_SQL`` row, with its ``lanes``, as ``request`` finds it."""
    run_id, label, apply_once = row
    return ResetRun(run_id, label, bool(apply_once), False, lanes).carrying(request)


def reset_lane_params(run_id: int, lasts: list[str]) -> list[dict[str, Any]]:
    """The rows of ``INSERT_RESET_LANE_SQL`` for a run split after each id of ``lasts`` (in
    order): lane i runs from the end of lane i - 1 (the first from the empty text) to its last
    id (the last lane to no bound), so every user id falls in exactly one lane."""
    assert len(set(lasts)) == len(lasts), lasts
    afters = ["", *lasts]
    uptos: list[str | None] = [*lasts, None]
    return [
        {"run_id": run_id, "lane": lane, "users_after": after, "users_upto": upto}
        for lane, (after, upto) in enumerate(zip(afters, uptos, strict=True))
    ]


def products_from_rows(rows: Any) -> list[Product]:
    return [Product(id_, name, Money(budget)) for id_, name, budget in rows]


def notices_from_rows(rows: Any) -> list[AdminNotice]:
    return [AdminNotice(subject, body, notice_id) for notice_id, subject, body in rows]


def hold_from_row(request_id: str, row: tuple[Any, ...]) -> Reservation | None:
    """The hold under ``request_id`` from its user, amount, state and expiry (NULLs: none)."""
    user_id, amount, state, expires_at = row
    if user_id is None:
        return None
    return Reservation(request_id, user_id, Money(amount), ReservationState(state), expires_at)


def request_from_row(
    request_id: str, row: tuple[Any, ...]
) -> tuple[Reservation | None, UsageRecord | None]:
    """The hold and the usage under ``request_id`` from ``REQUEST_COLUMNS_COUNT`` columns: the
    hold's as ``hold_from_row`` reads them, then the usage's user, model, tokens and cost.

    The hold is built here rather than by a call of ``hold_from_row``: this runs on every hold
    and every usage SQLite writes."""
    r_user, r_amount, r_state, r_expires, u_user, model, tokens_in, tokens_out, cost = row
    reservation = (
        None
        if r_user is None
        else Reservation(request_id, r_user, Money(r_amount), ReservationState(r_state), r_expires)
    )
    usage = (
        None
        if u_user is None
        else UsageRecord(request_id, u_user, model, tokens_in, tokens_out, Money(cost))
    )
    return reservation, usage
