"""POST /api/log-usage/batch: each record answered as POST /api/log-usage would answer it."""

from decimal import Decimal

from api_helpers import API, assert_rejected, call, check, figures, log_usage, usage_total

from wire.schemas import LOG_USAGE_BATCH_RECORDS_MAX

D = Decimal


def record(request_id: str, cost: object = D("1"), user_id: str = "alice", **extra) -> dict:
    return {
        "user_id": user_id,
        "model": "gpt-4o",
        "request_id": request_id,
        "tokens_input": 100,
        "tokens_output": 50,
        "cost_total": cost,
        "response_time": 850,
        **extra,
    }


def batch(client, *records: dict):
    return call(client, "POST", "/api/log-usage/batch", headers=API, json_body={"records": records})


def test_each_record_is_created_once_and_settles_its_hold(client, alice):
    assert check(client, "alice", D("2"), request_id="held-1").status == 200
    reply = batch(client, record("held-1", D("1.5")), record("free-2", D("0.25")))
    assert reply.status == 200
    assert reply["results"] == [
        {"request_id": "held-1", "status": 201, "result": "created"},
        {"request_id": "free-2", "status": 201, "result": "created"},
    ]
    assert figures(client, "alice") == {
        "total": 10,
        "used": D("1.75"),
        "remaining": D("8.25"),
        "reserved": 0,
    }


def test_replays_conflicts_and_unknown_users_are_answered_per_record(client, alice):
    assert log_usage(client, "alice", "done-1", D("1")).status == 201
    reply = batch(
        client,
        record("done-1", D("1")),
        record("done-1-other", D("1")),
        record("done-1", D("2")),
        record("ghost-1", D("1"), user_id="ghost"),
        record("priced-1", None, model="no-such-model"),
    )
    results = reply["results"]
    assert [result["status"] for result in results] == [200, 201, 409, 404, 422]
    assert [result["result"] for result in results] == [
        "exists",
        "created",
        "error",
        "error",
        "error",
    ]
    assert results[2]["error"] == "idempotency_conflict"
    assert results[3]["error"] == "not_found"
    assert results[4]["error"] == "validation_error"
    assert usage_total(client, "alice")["requests"] == 2
    assert figures(client, "alice")["used"] == D("2")


def test_a_whole_batch_sent_again_changes_nothing(client, alice):
    records = [record(f"again-{index}", D("0.01")) for index in range(50)]
    first = batch(client, *records)
    assert {result["status"] for result in first["results"]} == {201}
    second = batch(client, *records)
    assert {result["status"] for result in second["results"]} == {200}
    assert usage_total(client, "alice")["requests"] == 50
    assert figures(client, "alice")["used"] == D("0.5")


def test_the_same_request_id_twice_in_one_batch_is_created_then_exists(client, alice):
    reply = batch(client, record("twice", D("1")), record("twice", D("1")))
    assert [result["status"] for result in reply["results"]] == [201, 200]
    assert figures(client, "alice")["used"] == D("1")


def test_a_batch_is_bounded(client, alice):
    assert_rejected(batch(client), 422, "validation_error")
    too_many = [record(f"r{index}", D("0")) for index in range(LOG_USAGE_BATCH_RECORDS_MAX + 1)]
    reply = call(
        client, "POST", "/api/log-usage/batch", headers=API, json_body={"records": too_many}
    )
    assert reply.status in (413, 422)
    assert usage_total(client, "alice")["requests"] == 0


def test_a_nul_in_any_record_refuses_the_batch_naming_the_record_and_field(client, alice):
    """PostgreSQL cannot store U+0000 in text: refused as bad input, not a 503, on both stores."""
    reply = batch(client, record("clean-1"), record("dirty-2", model="gpt\u00004o"))
    assert_rejected(reply, 422, "validation_error", field="records.1.model")
    assert usage_total(client, "alice")["requests"] == 0


def test_an_absurd_amount_in_a_batch_is_refused_and_changes_nothing(client, alice):
    """$1e9 for one call is past COST_PER_CALL_MAX: the batch is refused as a bad request,
    naming the record, and none of it is written."""
    reply = batch(client, record("sane-1", D("1")), record("absurd-2", D("1000000000")))
    assert_rejected(reply, 422, "amount_out_of_range", field="records.1.cost_total")
    assert usage_total(client, "alice")["requests"] == 0
