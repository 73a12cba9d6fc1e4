"""The session's Prefect harness runs a flow against its temporary API."""

from prefect import flow


@flow
def answer() -> int:
    return 42


def test_a_flow_runs_in_the_harness() -> None:
    assert answer() == 42
