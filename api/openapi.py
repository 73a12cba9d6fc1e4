"""The OpenAPI 3.1 document, generated from the pydantic models in ``wire.schemas``.

``OPERATIONS`` lists every operation with each status code it can return and that body's model;
a test checks it against the app's routes and against the responses the API really sends.
"""

from dataclasses import dataclass

from pydantic import BaseModel
from pydantic.json_schema import models_json_schema

from api import __version__
from wire import schemas as s


@dataclass(frozen=True)
class Operation:
    method: str
    path: str
    summary: str
    security: str | None
    request: type[BaseModel] | None
    responses: dict[int, type[BaseModel]]
    query: type[BaseModel] | None = None


_COMMON = {401: s.Error, 413: s.Error, 400: s.Error, 422: s.Error, 503: s.Error}
# Calls with the gateway's key may meet RATE_LIMIT / RATE_LIMIT_PER_USER (429), and a failed
# Redis under RATE_LIMIT_REDIS_FAILURE=closed (503).
_LIMITED = {429: s.Error, 503: s.Error}
# A path parameter that is empty, ``.`` or ``..``, or holds a ``/``, makes a request target the
# app refuses before routing (400, ``api.auth.TargetGuard``).
_PATH_PARAMETER = {400: s.Error}

OPERATIONS = (
    Operation(
        "get",
        "/",
        "Health of the service and its database",
        None,
        None,
        {200: s.Health, 503: s.Health},
    ),
    Operation("get", "/openapi.json", "This document", None, None, {}),
    Operation(
        "get",
        "/metrics",
        "Prometheus metrics (text format); Authorization: Bearer METRICS_KEY when it is set",
        None,
        None,
        {},
    ),
    Operation(
        "post",
        "/api/check-budget",
        "May this user spend about cost_estimate? With request_id, place a hold",
        "api_key",
        s.CheckBudgetRequest,
        {
            200: s.CheckBudgetResponse,
            404: s.CheckBudgetNotFound,
            409: s.Error,
            **_COMMON,
            **_LIMITED,
        },
    ),
    Operation(
        "post",
        "/api/log-usage",
        "Record what a call cost; settles its hold",
        "api_key",
        s.LogUsageRequest,
        {
            201: s.LogUsageResponse,
            200: s.LogUsageResponse,
            404: s.Error,
            409: s.Error,
            **_COMMON,
            **_LIMITED,
        },
    ),
    Operation(
        "post",
        "/api/log-usage/batch",
        "Record many calls' costs at once (at most 1,000 records, within the body size limit);"
        " each record answered as POST /api/log-usage would answer it",
        "api_key",
        s.LogUsageBatchRequest,
        {200: s.LogUsageBatchResponse, **_COMMON, **_LIMITED},
    ),
    Operation(
        "post",
        "/api/release-reservation",
        "Release a hold (failed or cancelled call)",
        "api_key",
        s.ReleaseReservationRequest,
        {200: s.ReleaseReservationResponse, 404: s.Error, 409: s.Error, **_COMMON, **_LIMITED},
    ),
    Operation(
        "get",
        "/api/users/{user_id}/budget",
        "A user's budget and open period",
        "api_key",
        None,
        {200: s.UserBudgetResponse, 404: s.Error, 401: s.Error, **_PATH_PARAMETER, **_LIMITED},
    ),
    Operation(
        "get",
        "/api/users/{user_id}/usage",
        "A user's usage added up by model or day",
        "api_key",
        None,
        {
            200: s.UsageResponse,
            404: s.Error,
            401: s.Error,
            422: s.Error,
            **_PATH_PARAMETER,
            **_LIMITED,
        },
        query=s.UsageQuery,
    ),
    Operation(
        "post",
        "/api/admin/reset-budgets",
        "Close every user's open period now; with a period, the guarded monthly reset: once"
        " per label, refused (409 reset_refused) when it could only destroy a month",
        "admin_key",
        s.ResetBudgetsRequest,
        {200: s.ResetBudgetsResponse, 409: s.ResetRefusedError, **_COMMON},
    ),
    Operation(
        "post",
        "/api/admin/provision-user",
        "Create a user on a plan (and its PocketBase record when POCKETBASE_URL is set)",
        "admin_key",
        s.ProvisionUserRequest,
        {201: s.ProvisionUserResponse, 409: s.Error, 502: s.Error, **_COMMON},
    ),
    Operation(
        "get",
        "/api/admin/products",
        "List plans",
        "admin_key",
        None,
        {200: s.ProductList, 401: s.Error},
    ),
    Operation(
        "post",
        "/api/admin/products",
        "Create (201) or replace (200) a plan",
        "admin_key",
        s.ProductRequest,
        {201: s.ProductOut, 200: s.ProductOut, **_COMMON},
    ),
    Operation(
        "post",
        "/api/admin/tenants",
        "Create (201) or replace (200) a tenant",
        "admin_key",
        s.TenantRequest,
        {201: s.TenantOut, 200: s.TenantOut, **_COMMON},
    ),
    Operation(
        "get",
        "/api/admin/users",
        "The user holding an email (case-insensitive)",
        "admin_key",
        None,
        {200: s.UserOut, 404: s.Error, 401: s.Error, 400: s.Error, 422: s.Error},
        query=s.UserByEmailQuery,
    ),
    Operation(
        "get",
        "/api/admin/users/{user_id}",
        "A user",
        "admin_key",
        None,
        {200: s.UserOut, 404: s.Error, 401: s.Error, **_PATH_PARAMETER},
    ),
    Operation(
        "patch",
        "/api/admin/users/{user_id}",
        "Change a user's status or plan",
        "admin_key",
        s.UserPatchRequest,
        {200: s.UserOut, 404: s.Error, **_COMMON},
    ),
    Operation(
        "post",
        "/api/admin/users/{user_id}/credits",
        "Grant credit for the open period",
        "admin_key",
        s.CreditRequest,
        {201: s.CreditResponse, 200: s.CreditResponse, 404: s.Error, 409: s.Error, **_COMMON},
    ),
)

_SECURITY_SCHEMES = {
    "api_key": {"type": "apiKey", "in": "header", "name": "X-API-Key"},
    "admin_key": {"type": "apiKey", "in": "header", "name": "X-Admin-Key"},
}


def openapi_document() -> dict:
    models = {op.request for op in OPERATIONS if op.request is not None}
    for op in OPERATIONS:
        models.update(op.responses.values())
    ordered = sorted(models, key=lambda model: model.__name__)
    keyed, definitions = models_json_schema(
        [
            (model, "validation" if issubclass(model, s.Request) else "serialization")
            for model in ordered
        ],
        ref_template="#/components/schemas/{model}",
    )
    paths: dict[str, dict] = {}
    for op in OPERATIONS:
        entry: dict = {"summary": op.summary, "operationId": _operation_id(op), "responses": {}}
        if op.security is not None:
            entry["security"] = [{op.security: []}]
        parameters = [
            {"name": name, "in": "path", "required": True, "schema": {"type": "string"}}
            for name in _path_parameters(op.path)
        ] + _query_parameters(op.query)
        if parameters:
            entry["parameters"] = parameters
        if op.request is not None:
            mode = "validation"
            entry["requestBody"] = {
                "required": op.request is not s.ResetBudgetsRequest,
                "content": {"application/json": {"schema": keyed[(op.request, mode)]}},
            }
        for status, model in sorted(op.responses.items()):
            entry["responses"][str(status)] = {
                "description": model.__doc__.splitlines()[0] if model.__doc__ else model.__name__,
                "content": {"application/json": {"schema": keyed[(model, "serialization")]}},
            }
        if not op.responses:
            entry["responses"]["200"] = {"description": op.summary}
        paths.setdefault(op.path, {})[op.method] = entry
    return {
        "openapi": "3.1.0",
        "info": {"title": "CloudFreedom Billing", "version": __version__},
        "paths": paths,
        "components": {
            "schemas": definitions.get("$defs", {}),
            "securitySchemes": _SECURITY_SCHEMES,
        },
    }


def _query_parameters(query: type[BaseModel] | None) -> list[dict]:
    """One parameter per field of the query's model, named by its alias (``from``)."""
    if query is None:
        return []
    schema = query.model_json_schema(by_alias=True)
    required = set(schema.get("required", ()))
    return [
        {"name": name, "in": "query", "required": name in required, "schema": _not_null(field)}
        for name, field in schema["properties"].items()
    ]


def _not_null(field: dict) -> dict:
    """A query parameter is left out, never null: ``X | None`` is published as ``X``."""
    options = field.get("anyOf", ())
    kept = [option for option in options if option != {"type": "null"}]
    if len(options) != 2 or len(kept) != 1:
        return field
    rest = {key: value for key, value in field.items() if key not in ("anyOf", "default")}
    return {**kept[0], **rest}


def _path_parameters(path: str) -> list[str]:
    return [part[1:-1] for part in path.split("/") if part.startswith("{")]


def _operation_id(op: Operation) -> str:
    words = [part for part in op.path.replace("{", "").replace("}", "").split("/") if part]
    return "_".join([op.method, *[word.replace("-", "_") for word in words]]) or op.method
