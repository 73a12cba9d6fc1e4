"""The gateway's two hot bodies, written as JSON text, are byte for byte what the generic
encoder writes for the same dict (``dumps`` of ``budget_json`` and friends)."""

import json

import pytest

from api.http import dumps
from api.render import budget_json, check_answer, log_answer, money_json
from core.budget import BudgetSnapshot, BudgetStatus, CheckResult, UserStatus
from core.periods import iso_from_ms
from core.reservations import Reservation, ReservationState
from core.usage import LogOutcome

BUDGETS = [
    BudgetSnapshot(UserStatus.ACTIVE, 10**19, 0, 123_000_000, 1, None, 0, 0),
    BudgetSnapshot(UserStatus.ACTIVE, 10**10, 5 * 10**8, 2 * 10**10, 7, 10**12, 3, 4),
    BudgetSnapshot(UserStatus.SUSPENDED, 0, 0, 0, 0, None, 0, 0),
]
# A caller's request_id may hold anything an Identifier allows; it must come out escaped.
REQUEST_IDS = ["req-1", 'quote"and\\backslash', "tab\tnewline\n", "ünïcødé-€-😀", "</script>"]


def generic_check(result: CheckResult) -> bytes:
    answer = {
        "allowed": result.allowed,
        "budget": budget_json(result.budget),
        "status": result.status.value,
        "message": result.message,
    }
    if result.reservation is not None:
        answer["reservation"] = {
            "request_id": result.reservation.request_id,
            "amount": money_json(result.reservation.amount),
            "expires_at": iso_from_ms(result.reservation.expires_at_ms),
        }
    return dumps(answer)


@pytest.mark.parametrize("budget", BUDGETS)
@pytest.mark.parametrize("status", list(BudgetStatus))
def test_check_answer_without_a_hold_is_the_generic_encoding(budget, status):
    result = CheckResult(status, budget, None)
    assert check_answer(result) == generic_check(result)
    assert json.loads(check_answer(result))["allowed"] is (status is BudgetStatus.ACTIVE)


@pytest.mark.parametrize("request_id", REQUEST_IDS)
def test_check_answer_with_a_hold_escapes_the_request_id_like_the_encoder(request_id):
    held = Reservation(request_id, "u", 1_500_000, ReservationState.OPEN, 1_796_000_000_123)
    result = CheckResult(BudgetStatus.ACTIVE, BUDGETS[1], held)
    assert check_answer(result) == generic_check(result)
    assert json.loads(check_answer(result))["reservation"]["request_id"] == request_id


@pytest.mark.parametrize("budget", BUDGETS)
@pytest.mark.parametrize(
    ("message", "result"),
    [
        ("Usage logged and budget updated successfully", "created"),
        ("Usage already logged; nothing changed", "exists"),
    ],
)
def test_log_answer_is_the_generic_encoding(budget, message, result):
    outcome = LogOutcome(result == "created", budget)
    expected = dumps({"message": message, "result": result, "budget": budget_json(budget)})
    assert log_answer(message, result, outcome) == expected
