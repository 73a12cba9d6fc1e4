"""The gateway's calls: check-budget before an LLM call, log-usage after it, release on failure."""

from decimal import ROUND_HALF_EVEN, Decimal

import falcon

from api.http import read_model, respond, respond_text
from api.metrics import NOT_FOUND_REASON, Metrics
from api.render import check_answer, log_answer, money_json
from core.errors import IdempotencyConflict, NotFound
from core.ledger import Ledger
from core.money import Money
from core.rate_limits import RateLimiter
from wire.schemas import CheckBudgetRequest, LogUsageRequest, ReleaseReservationRequest

_NOT_FOUND_BUDGET = {"total": 0, "used": 0, "remaining": 0}
_LOGGED = "Usage logged and budget updated successfully"
_ALREADY_LOGGED = "Usage already logged; nothing changed"


class CheckBudgetResource:
    def __init__(
        self, ledger: Ledger, body_bytes_max: int, limiter: RateLimiter, metrics: Metrics
    ) -> None:
        self._ledger = ledger
        self._body_bytes_max = body_bytes_max
        self._limiter = limiter
        self._metrics = metrics

    def on_post(self, req: falcon.Request, resp: falcon.Response) -> None:
        body = read_model(req, CheckBudgetRequest, self._body_bytes_max)
        self._limiter.admit_user(body.user_id)
        try:
            result = self._ledger.check_budget(
                body.user_id,
                body.model,
                body.tokens_input,
                body.tokens_output,
                None if body.cost_estimate is None else Money(body.cost_estimate),
                body.request_id,
            )
        except NotFound as error:
            self._metrics.budget_decision(NOT_FOUND_REASON)
            # The contract: a 404 that also has the shape of a check, so old clients read "no".
            not_found = {
                "error": error.code,
                "message": error.message,
                "allowed": False,
                "budget": _NOT_FOUND_BUDGET,
                "status": "not_found",
            }
            respond(resp, not_found, falcon.HTTP_404)
            return
        self._metrics.budget_decision(result.status.value)
        respond_text(resp, check_answer(result))


def _whole_ms(response_time: Decimal) -> int:
    return int(response_time.to_integral_value(rounding=ROUND_HALF_EVEN))


class LogUsageResource:
    def __init__(
        self, ledger: Ledger, body_bytes_max: int, limiter: RateLimiter, metrics: Metrics
    ) -> None:
        self._ledger = ledger
        self._body_bytes_max = body_bytes_max
        self._limiter = limiter
        self._metrics = metrics

    def on_post(self, req: falcon.Request, resp: falcon.Response) -> None:
        body = read_model(req, LogUsageRequest, self._body_bytes_max)
        self._limiter.admit_user(body.user_id)
        try:
            outcome = self._ledger.log_usage(
                body.user_id,
                body.model,
                body.request_id,
                body.tokens_input,
                body.tokens_output,
                None if body.cost_total is None else Money(body.cost_total),
                None if body.response_time is None else _whole_ms(body.response_time),
            )
        except IdempotencyConflict:
            self._metrics.log_usage_result("conflict")
            raise
        if outcome.created:
            message, result, status = _LOGGED, "created", falcon.HTTP_201
        else:
            message, result, status = _ALREADY_LOGGED, "exists", falcon.HTTP_200
        self._metrics.log_usage_result(result)
        respond_text(resp, log_answer(message, result, outcome), status)


class ReleaseReservationResource:
    def __init__(self, ledger: Ledger, body_bytes_max: int) -> None:
        self._ledger = ledger
        self._body_bytes_max = body_bytes_max

    def on_post(self, req: falcon.Request, resp: falcon.Response) -> None:
        body = read_model(req, ReleaseReservationRequest, self._body_bytes_max)
        reservation = self._ledger.release_reservation(body.request_id)
        answer = {
            "request_id": reservation.request_id,
            "released": money_json(reservation.amount),
        }
        respond(resp, answer)
