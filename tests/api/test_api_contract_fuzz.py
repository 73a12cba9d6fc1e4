"""Every operation against its own OpenAPI document, with inputs generated from it (schemathesis).

The app runs in process on a real SQLite file, seeded with a plan, a tenant and a user so
generated calls reach more than the 404s. Each call must answer with a status the document
lists for the operation, a body matching that status's schema, JSON as its content type, and
never a 5xx. Schema-valid requests that the ledger refuses for what it holds (an unknown plan
or user, a model without a price) are the documented 422 and 404, so the check that every
schema-valid request is accepted is left out.
"""

import json
from collections.abc import Iterator

import falcon
import pytest
import schemathesis
from api_helpers import ADMIN_KEY, API_KEY, env_with_alice
from hypothesis import HealthCheck, settings
from schemathesis.checks import positive_data_acceptance

from api.http import dumps
from api.openapi import openapi_document

EXAMPLES_PER_OPERATION_MAX = 30
BOTH_KEYS = {"X-API-Key": API_KEY, "X-Admin-Key": ADMIN_KEY}


# The document as a client reads it (its amounts as JSON numbers), built from the models alone;
# the app it is checked against is the fixture's.
schema = schemathesis.openapi.from_dict(json.loads(dumps(openapi_document())))


@pytest.fixture(scope="module")
def contract_app(tmp_path_factory: pytest.TempPathFactory) -> Iterator[falcon.App]:
    with env_with_alice(tmp_path_factory.mktemp("contract")) as env:
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
    case.call_and_validate(headers=BOTH_KEYS, excluded_checks=[positive_data_acceptance])
