"""Every operation against its own OpenAPI document, with inputs generated from it (schemathesis),
on both stores.

The app runs in process, seeded with a plan, a tenant and a user so generated calls reach more
than the 404s. Every check schemathesis has runs (its ``--checks all``): each call must answer
with a status the document lists for the operation, a body matching that status's schema, JSON
as its content type, never a 5xx, and a refusal without a key. A schema-valid request may still
be refused for what the ledger holds (an unknown plan or user, a model without a price, a
taken id, a reset label the reset rule refuses), so the check that schema-valid data is accepted
takes those documented statuses (404, 409, 422) as answers too.
"""

import json
from collections.abc import Iterator

import falcon
import pytest
import schemathesis
from api_helpers import ADMIN_KEY, API_KEY, env_with_alice
from hypothesis import HealthCheck, settings
from schemathesis.config import PositiveDataAcceptanceConfig
from schemathesis.config._checks import (
    NEGATIVE_DATA_REJECTION_EXPECTED_STATUSES,
    NegativeDataRejectionConfig,
)

from api.http import dumps
from api.openapi import openapi_document

EXAMPLES_PER_OPERATION_MAX = 30
BOTH_KEYS = {"X-API-Key": API_KEY, "X-Admin-Key": ADMIN_KEY}


# The document as a client reads it (its amounts as JSON numbers), built from the models alone;
# the app it is checked against is the fixture's.
schema = schemathesis.openapi.from_dict(json.loads(dumps(openapi_document())))
schema.config.checks.positive_data_acceptance = PositiveDataAcceptanceConfig(
    expected_statuses=["2xx", "404", "409", "422"]
)
# A log-usage batch past its 1,000 records can be past BODY_BYTES_MAX too, and is then refused
# as too large before it is read.
schema.config.checks.negative_data_rejection = NegativeDataRejectionConfig(
    expected_statuses=[*NEGATIVE_DATA_REJECTION_EXPECTED_STATUSES, "413"]
)


@pytest.fixture(scope="module")
def contract_app(
    tmp_path_factory: pytest.TempPathFactory, backend: str, request: pytest.FixtureRequest
) -> Iterator[falcon.App]:
    database_url = (
        request.getfixturevalue("postgres").fresh_schema("contract")
        if backend == "postgres"
        else None
    )
    with env_with_alice(tmp_path_factory.mktemp("contract"), database_url) as env:
        yield env.app


@schema.parametrize()
@settings(
    max_examples=EXAMPLES_PER_OPERATION_MAX,
    deadline=None,
    database=None,
    suppress_health_check=list(HealthCheck),
)
def test_every_answer_is_one_the_document_lists(case, contract_app: falcon.App) -> None:
    # On the operation and its schema, not only on this call: a check that sends requests of its
    # own (the same call without its key must be refused) sends them where those point.
    case.operation.app = case.operation.schema.app = contract_app
    case.call_and_validate(headers=BOTH_KEYS)
