"""JSON in and out: bounded body parsing, validation errors, and every error as JSON."""

from decimal import Decimal
from typing import Any, TypeVar

import falcon
import simplejson
from pydantic import BaseModel, ValidationError

from core.errors import LedgerError

ModelT = TypeVar("ModelT", bound=BaseModel)

JSON = "application/json"

_LEDGER_STATUS = {
    "not_found": falcon.HTTP_404,
    "idempotency_conflict": falcon.HTTP_409,
    "reservation_closed": falcon.HTTP_409,
    "conflict": falcon.HTTP_409,
    "reset_refused": falcon.HTTP_409,
    "validation_error": falcon.HTTP_422,
    "amount_out_of_range": falcon.HTTP_422,
    "unavailable": falcon.HTTP_503,
    "identity_store_error": falcon.HTTP_502,
}

# The stable ``error`` code of an HTTP error raised by Falcon (404, 405, …) or by waitress
# before the app sees the request (400, 413, 431, 501; ``service.server``).
HTTP_ERROR_CODES = {
    400: "bad_request",
    401: "unauthorized",
    404: "not_found",
    405: "method_not_allowed",
    413: "payload_too_large",
    415: "unsupported_media_type",
    431: "headers_too_large",
    500: "internal_error",
    501: "not_implemented",
    503: "unavailable",
}


class ApiError(falcon.HTTPError):
    """An HTTP error with a stable ``code`` and extra JSON fields."""

    def __init__(self, status: str, code: str, message: str, **fields: object) -> None:
        super().__init__(status, title=code, description=message)
        self.code = code
        self.fields = fields


# Client text an error quotes (a duplicated key, an id it names) is cut to this many
# characters and escaped (``excerpt``): an answer never carries a client's text back whole.
EXCERPT_CHARS_MAX = 40


def excerpt(text: str) -> str:
    """At most ``EXCERPT_CHARS_MAX`` characters of ``text``, with ``…`` when cut; backslashes,
    double quotes and unprintable characters (controls, NUL, bidi overrides) escaped as in a
    Python string literal: no control sequence reaches a terminal or log showing the answer."""
    cut = text[:EXCERPT_CHARS_MAX]
    if not cut.isprintable() or '"' in cut or "\\" in cut:
        cut = "".join(_escaped(char) for char in cut)
    return cut + "…" if len(text) > EXCERPT_CHARS_MAX else cut


def _escaped(char: str) -> str:
    if char in '"\\':
        return "\\" + char
    return char if char.isprintable() else repr(char)[1:-1]


def _reject_constant(name: str) -> None:
    raise ApiError(falcon.HTTP_400, "invalid_json", f"{name} is not a valid JSON number")


def _object(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
    """A JSON object, refused when a key appears twice: taking the last value silently would
    let a body mean one thing to this service and another to a proxy or log reader."""
    found = dict(pairs)
    if len(found) != len(pairs):
        seen: set[str] = set()
        for key, _ in pairs:
            if key in seen:
                raise ApiError(
                    falcon.HTTP_400,
                    "invalid_json",
                    f'malformed JSON body: duplicate key "{excerpt(key)}"',
                    field=excerpt(key),
                )
            seen.add(key)
    return found


# One encoder and one decoder for the process: simplejson.dumps/loads with options would build
# a new one per call, a measurable share of a check-budget request. Bodies are decoded here,
# not by pydantic's ``model_validate_json`` (about 4 µs faster on a check): its parser reads a
# JSON number with a fraction as a float first, so a cost of more than 17 significant digits
# would be rounded twice (github.com/pydantic/pydantic-core/issues/1688); ``parse_float=Decimal``
# keeps it exact.
# Objects are built by ``_object``, which finds duplicate keys (0.4 µs more per check body).
_ENCODER = simplejson.JSONEncoder(use_decimal=True, separators=(",", ":"))
_DECODER = simplejson.JSONDecoder(
    parse_float=Decimal, parse_constant=_reject_constant, object_pairs_hook=_object
)


def dumps(body: object) -> bytes:
    """JSON bytes; Decimals and RawJSON amounts are written exactly as they are."""
    return _ENCODER.encode(body).encode()


def respond(resp: falcon.Response, body: object, status: str = falcon.HTTP_200) -> None:
    respond_text(resp, dumps(body), status)


def respond_text(resp: falcon.Response, text: bytes, status: str = falcon.HTTP_200) -> None:
    """Answer with a body already written as JSON."""
    resp.status = status
    resp.content_type = JSON
    resp.data = text


def read_model(req: falcon.Request, model: type[ModelT], body_bytes_max: int) -> ModelT:
    """Read at most ``body_bytes_max`` bytes of JSON and validate them against ``model``.

    The body is JSON whatever its Content-Type says: ``curl -d`` sends a form type, and the
    gateway's clients never needed to say.
    """
    raw = read_body(req, body_bytes_max)
    if not raw.strip():
        return validate(model, {})
    try:
        text = raw.decode("utf-8")
        payload = _DECODER.decode(text)
    except ValueError as error:  # JSONDecodeError, bad UTF-8, an int of too many digits
        raise ApiError(falcon.HTTP_400, "invalid_json", f"malformed JSON body: {error}") from None
    except RecursionError:  # arrays in arrays in …: the decoder recurses once per level
        raise ApiError(
            falcon.HTTP_400, "invalid_json", "malformed JSON body: nested too deeply"
        ) from None
    body = validate(model, payload)
    # A NUL can only arrive escaped (the decoder refuses raw control characters).
    if _NUL_ESCAPE in text:
        _refuse_nul(body)
    return body


# U+0000 in the text of a request field is refused: PostgreSQL cannot store it in a text column
# (it would fail as a 503, as if a retry could help), and SQLite must accept what PostgreSQL
# does, so ids and names move between the stores.
NUL = "\x00"
_NUL_ESCAPE = "\\u0000"


def _refuse_nul(body: BaseModel, prefix: str = "") -> None:
    """422 naming the first field of ``body`` whose text holds NUL (``records.3.model`` in a
    list of models, as in a batch: the names pydantic's own errors give).

    Only the model's own fields are read: keys the model ignores, and their values, never reach
    a store, so a NUL in one is no reason to refuse, and the answer never quotes them.
    """
    for field, value in body:
        name = f"{prefix}{field}"
        if isinstance(value, str) and NUL in value:
            raise ApiError(
                falcon.HTTP_422,
                "validation_error",
                f"{name}: must not contain NUL (U+0000)",
                field=name,
            )
        if isinstance(value, list):
            for index, item in enumerate(value):
                if isinstance(item, BaseModel):
                    _refuse_nul(item, f"{name}.{index}.")


def refuse_nul_in_path(
    req: falcon.Request, resp: falcon.Response, resource: object, params: dict[str, str]
) -> None:
    """A Falcon ``before`` hook: an id with NUL (``%00`` in the URL) names nothing that exists,
    since no body may create one; 404, before a store is asked."""
    for name, value in params.items():
        if NUL in value:
            raise ApiError(falcon.HTTP_404, "not_found", f"no such {name}: it contains NUL")


def read_body(req: falcon.Request, body_bytes_max: int) -> bytes:
    if req.content_length is not None and req.content_length > body_bytes_max:
        raise _too_large(body_bytes_max)
    raw = req.bounded_stream.read(body_bytes_max + 1)
    if len(raw) > body_bytes_max:
        raise _too_large(body_bytes_max)
    return raw


def too_large_message(body_bytes_max: int) -> str:
    """What a 413 says, whether the app or waitress (``service.server``) refuses the body."""
    return f"request body exceeds {body_bytes_max} bytes"


def _too_large(body_bytes_max: int) -> ApiError:
    return ApiError(falcon.HTTP_413, "payload_too_large", too_large_message(body_bytes_max))


def validate(model: type[ModelT], payload: object) -> ModelT:
    if not isinstance(payload, dict):
        raise ApiError(
            falcon.HTTP_422, "validation_error", "body must be a JSON object", field=None
        )
    try:
        return model.model_validate(payload)
    except ValidationError as error:
        raise validation_error(error) from None


def validation_error(error: ValidationError) -> ApiError:
    """422 naming the first field at fault; an amount past its bound is ``amount_out_of_range``
    with that ``bound``, the code a store gives a counter that would pass one."""
    items = error.errors(include_url=False, include_input=False)
    details = [
        {"field": ".".join(str(part) for part in item["loc"]) or None, "message": item["msg"]}
        for item in items
    ]
    first = details[0]
    message = f"{first['field']}: {first['message']}" if first["field"] else first["message"]
    if items[0]["type"] == "amount_out_of_range":
        bound = items[0]["ctx"]["bound"]
        return ApiError(
            falcon.HTTP_422,
            "amount_out_of_range",
            message,
            field=first["field"],
            bound=bound,
            details=details,
        )
    return ApiError(
        falcon.HTTP_422, "validation_error", message, field=first["field"], details=details
    )


def ledger_status_code(error: LedgerError) -> int:
    """The HTTP status a ledger error is answered with, as a number."""
    if error.code == "rate_limited":
        return 429
    return int(_LEDGER_STATUS.get(error.code, falcon.HTTP_400).split(" ", 1)[0])


def handle_ledger_error(
    req: falcon.Request, resp: falcon.Response, error: LedgerError, _: dict
) -> None:
    """The error as JSON; ids it names (a user id from the path, a request id) as excerpts."""
    details = {
        name: excerpt(value) if isinstance(value, str) else value
        for name, value in error.details.items()
    }
    respond(
        resp,
        {"error": error.code, "message": error.message, **details},
        _LEDGER_STATUS.get(error.code, falcon.HTTP_400),
    )


def serialize_error(req: falcon.Request, resp: falcon.Response, error: falcon.HTTPError) -> None:
    """Every HTTP error, ours or Falcon's (404, 405, …), as ``{"error", "message", …}``."""
    if isinstance(error, ApiError):
        body = {"error": error.code, "message": error.description, **error.fields}
    else:
        code = HTTP_ERROR_CODES.get(error.status_code, "http_error")
        body = {"error": code, "message": error.description or error.title}
    resp.content_type = JSON
    resp.data = dumps(body)
