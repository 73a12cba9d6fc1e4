"""The gateway's calls: check-budget before an LLM call, log-usage after it, release on failure."""

from decimal import ROUND_HALF_EVEN, Decimal

import falcon

from api.http import ledger_status_code, read_model, respond, respond_text
from api.metrics import NOT_FOUND_REASON, Metrics
from api.render import check_answer, log_answer, money_json
from core.errors import IdempotencyConflict, LedgerError, NotFound, RateLimited
from core.ledger import Ledger, UsageEntry
from core.money import Money
from core.rate_limits import RateLimiter
from core.usage import LogOutcome
from wire.schemas import (
    CheckBudgetRequest,
    LogUsageBatchRequest,
    LogUsageRequest,
    ReleaseReservationRequest,
)

_NOT_FOUND_BUDGET = {"total": 0, "used": 0, "remaining": 0}
_LOGGED = "Usage logged and budget updated successfully"
_ALREADY_LOGGED = "Usage already logged; nothing changed"


class _GatewayCall:
    """What the gateway's rate-limited calls are made with: the ledger, the body limit, the
    per-user limiter and the metrics."""

    def __init__(
        self, ledger: Ledger, body_bytes_max: int, limiter: RateLimiter, metrics: Metrics
    ) -> None:
        self._ledger = ledger
        self._body_bytes_max = body_bytes_max
        self._limiter = limiter
        self._metrics = metrics


class CheckBudgetResource(_GatewayCall):
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


class LogUsageResource(_GatewayCall):
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


class LogUsageBatchResource(_GatewayCall):
    """Many log-usages in one request: each record answered as POST /api/log-usage would
    answer it (201, 200, or its error's status and code), the request itself 200."""

    def on_post(self, req: falcon.Request, resp: falcon.Response) -> None:
        body = read_model(req, LogUsageBatchRequest, self._body_bytes_max)
        results: list[dict | None] = []
        admitted: list[UsageEntry] = []
        for record in body.records:
            try:
                self._limiter.admit_user(record.user_id)
            except RateLimited as limited:
                results.append(_record_error(record.request_id, limited))
                continue
            admitted.append(
                UsageEntry(
                    record.user_id,
                    record.model,
                    record.request_id,
                    record.tokens_input,
                    record.tokens_output,
                    None if record.cost_total is None else Money(record.cost_total),
                    None if record.response_time is None else _whole_ms(record.response_time),
                )
            )
            results.append(None)
        outcomes = iter(self._ledger.log_usage_batch(admitted))
        answers = []
        for record, result in zip(body.records, results, strict=True):
            if result is None:
                result = self._answer(record.request_id, next(outcomes))
            answers.append(result)
        respond(resp, {"results": answers})

    def _answer(self, request_id: str, outcome: LogOutcome | LedgerError) -> dict:
        if isinstance(outcome, LedgerError):
            if isinstance(outcome, IdempotencyConflict):
                self._metrics.log_usage_result("conflict")
            return _record_error(request_id, outcome)
        result = "created" if outcome.created else "exists"
        self._metrics.log_usage_result(result)
        status = 201 if outcome.created else 200
        return {"request_id": request_id, "status": status, "result": result}


def _record_error(request_id: str, error: LedgerError) -> dict:
    return {
        "request_id": request_id,
        "status": ledger_status_code(error),
        "result": "error",
        "error": error.code,
        "message": error.message,
    }


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
