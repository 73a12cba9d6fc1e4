"""Read-only views for dashboards (X-API-Key): a user's budget and their usage aggregates."""

from datetime import date, datetime, time
from zoneinfo import ZoneInfo

import falcon

from api.http import refuse_nul_in_path, respond, validate
from api.render import budget_json, money_json
from core.errors import Invalid
from core.ledger import Ledger
from core.money import Money
from core.periods import TIME_MS_MAX, TIME_MS_MIN, iso_from_ms, time_in_range, to_ms
from wire.schemas import UsageQuery


@falcon.before(refuse_nul_in_path)
class UserBudgetResource:
    def __init__(self, ledger: Ledger) -> None:
        self._ledger = ledger

    def on_get(self, req: falcon.Request, resp: falcon.Response, user_id: str) -> None:
        user = self._ledger.user(user_id)
        budget = budget_json(user.budget)
        budget["reserved"] = money_json(user.budget.held)
        respond(
            resp,
            {
                "user_id": user.id,
                "status": user.status.value,
                "budget": budget,
                "period": {
                    "label": user.period_label,
                    "start": iso_from_ms(user.period_start_ms),
                    "end": iso_from_ms(self._ledger.period_end_ms(user)),
                },
            },
        )


@falcon.before(refuse_nul_in_path)
class UserUsageResource:
    def __init__(self, ledger: Ledger) -> None:
        self._ledger = ledger

    def on_get(self, req: falcon.Request, resp: falcon.Response, user_id: str) -> None:
        query = validate(UsageQuery, req.params)
        zone = self._ledger.zone
        from_ms = _parse_time(query.from_, "from", zone)
        to_ms_ = _parse_time(query.to, "to", zone)
        summary = self._ledger.usage_summary(user_id, from_ms, to_ms_, query.group_by)
        groups = [
            {
                "key": str(group.key),
                "requests": group.requests,
                "tokens_input": group.tokens_input,
                "tokens_output": group.tokens_output,
                "cost": money_json(group.cost),
            }
            for group in summary.groups
        ]
        total = {
            "key": "total",
            "requests": sum(group.requests for group in summary.groups),
            "tokens_input": sum(group.tokens_input for group in summary.groups),
            "tokens_output": sum(group.tokens_output for group in summary.groups),
            "cost": money_json(Money(sum(group.cost for group in summary.groups))),
        }
        respond(
            resp,
            {
                "user_id": user_id,
                "from": iso_from_ms(summary.from_ms),
                "to": iso_from_ms(summary.to_ms),
                "group_by": query.group_by,
                "groups": groups,
                "total": total,
            },
        )


def _parse_time(value: str | None, field: str, zone: ZoneInfo) -> int | None:
    """A date (``2026-11-01``, midnight in the budget zone) or an ISO 8601 time with an offset,
    within the years the service writes (``core.periods``)."""
    if value is None:
        return None
    try:
        if len(value) == 10:
            moment = datetime.combine(date.fromisoformat(value), time(), tzinfo=zone)
        else:
            moment = datetime.fromisoformat(value)
        if moment.tzinfo is None:
            moment = moment.replace(tzinfo=zone)
        time_ms = to_ms(moment)
    except ValueError:
        raise Invalid(f"{field}: must be a date or ISO 8601 time", field=field) from None
    if not time_in_range(time_ms):
        raise Invalid(
            f"{field}: must lie between {iso_from_ms(TIME_MS_MIN)} and {iso_from_ms(TIME_MS_MAX)}",
            field=field,
        )
    return time_ms
