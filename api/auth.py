"""Who may call what: every route declares its ``Access`` where it is registered, and the key
check runs on the route a request matched, never on the spelling of its path.

``TargetGuard`` first refuses a request target that is not a plain path (before routing);
``KeyAuth`` then asks for the key the matched route's access names. A request that matches no
route is Falcon's 404 and reaches no resource.
"""

import hmac
import re
from enum import Enum
from typing import NamedTuple
from urllib.parse import urlsplit

import falcon

from api.http import ApiError
from core.settings import Keys


class Access(Enum):
    """Who may call a route."""

    PUBLIC = "public"
    GATEWAY = "gateway"  # X-API-Key
    ADMIN = "admin"  # X-Admin-Key, and only it: the gateway's key opens no admin route
    METRICS = "metrics"  # Authorization: Bearer <METRICS_KEY> when METRICS_KEY is set, else open


class RouteAccess:
    """The declared access of each route template of one app."""

    def __init__(self) -> None:
        self._by_template: dict[str, Access] = {}

    def declare(self, template: str, access: Access) -> None:
        if not isinstance(access, Access):
            raise TypeError(f"route {template}: access must be an Access, not {access!r}")
        if template in self._by_template:
            raise ValueError(f"route {template} is declared twice")
        self._by_template[template] = access

    def of(self, template: str) -> Access:
        """The access of a matched route; ``LookupError`` for a route that reached the router
        without declaring one (a bug: the request is refused with a 500, its resource not run)."""
        access = self._by_template.get(template)
        if access is None:
            raise LookupError(f"route {template} declares no access")
        return access

    def items(self) -> list[tuple[str, Access]]:
        return list(self._by_template.items())


# A path that names a route only once normalised: an empty segment (``//``), a dot segment
# (``.`` or ``..``, percent-encoded too) or an encoded slash. Waitress passes each to the app
# (collapsing leading slashes, decoding ``%2F`` into ``/``); Falcon's router matches
# ``//api/x`` and ``/api%2Fx`` as ``/api/x``. One trailing slash is no empty segment here: the
# app strips it (``strip_url_path_trailing_slash``).
_NOT_PLAIN = re.compile(r"//|%2f|/(?:\.|%2e){1,2}(?:/|$)", re.IGNORECASE)
_ABSOLUTE_FORM_SCHEMES = ("http", "https")


class TargetGuard:
    """Falcon middleware: before routing, a request target that is not a plain path is a 400.

    The target is read as the request line sent it (waitress's ``REQUEST_URI``, ``RAW_URI`` from
    Falcon's and werkzeug's test clients), not as ``PATH_INFO``: that has been decoded, and
    waitress has collapsed its leading slashes. A server that gives neither leaves
    ``PATH_INFO``, where only what that server normalised goes unseen.

    - origin-form, ``/path?query``: the normal case, checked by ``_NOT_PLAIN``;
    - absolute-form, ``http://host/path`` or ``https://…``: routed by its path, with the same
      checks and the same key check as the origin-form of that path. RFC 9112 (3.2.2) says a
      server MUST accept it; its host decides nothing here (no virtual hosts, keys are not
      bound to a host), and waitress hands the app its path alone;
    - anything else (``api/x``, ``*``, ``host:port``, another scheme): 400. Waitress passes
      ``api/x`` on as ``PATH_INFO`` ``api/x``, which Falcon's router matches as ``/api/x``.
    """

    def process_request(self, req: falcon.Request, resp: falcon.Response) -> None:
        env = req.env
        target = env.get("REQUEST_URI") or env.get("RAW_URI") or env["PATH_INFO"]
        path = target.split("?", 1)[0]
        if not path.startswith("/"):
            path = _absolute_form_path(path)
        if _NOT_PLAIN.search(path):
            raise ApiError(
                falcon.HTTP_400,
                "bad_request",
                "request target has an empty or dot segment or an encoded slash",
            )


def _absolute_form_path(target: str) -> str:
    # urlsplit raises ValueError for an unclosed "[" of an IPv6 host. Waitress drops such a
    # connection itself, unanswered; from a server that passes it on, it is a 400.
    try:
        parts = urlsplit(target)
    except ValueError:
        parts = None
    if parts is None or parts.scheme not in _ABSOLUTE_FORM_SCHEMES or not parts.netloc:
        raise ApiError(
            falcon.HTTP_400,
            "bad_request",
            "request target must be a path starting with / or an absolute http(s) URL",
        )
    return parts.path or "/"


class _Credential(NamedTuple):
    header: str
    expected: bytes
    names: str  # what a refusal says is missing


class KeyAuth:
    """Falcon middleware: after routing, the key the matched route's access asks for, compared
    in constant time; 401 JSON on a mismatch.

    OPTIONS is let through: on every route Falcon's own responder answers it (``BillingApp``
    takes no resource with an ``on_options``), it runs none of our code, and a browser's CORS
    preflight carries no key.
    """

    def __init__(self, keys: Keys, metrics_key: str | None, route_access: RouteAccess) -> None:
        self._route_access = route_access
        self._credentials: dict[Access, _Credential | None] = {
            Access.PUBLIC: None,
            Access.GATEWAY: _Credential("X-API-Key", keys.api_key.encode(), "X-API-Key"),
            Access.ADMIN: _Credential("X-Admin-Key", keys.admin_key.encode(), "X-Admin-Key"),
            Access.METRICS: None
            if metrics_key is None
            else _Credential(
                "Authorization",
                f"Bearer {metrics_key}".encode(),
                "Authorization: Bearer <METRICS_KEY>",
            ),
        }

    def process_resource(
        self, req: falcon.Request, resp: falcon.Response, resource: object, params: dict
    ) -> None:
        if req.method == "OPTIONS":
            return
        credential = self._credentials[self._route_access.of(req.uri_template)]
        if credential is None:
            return
        provided = req.get_header(credential.header)
        if provided is None or not hmac.compare_digest(provided.encode(), credential.expected):
            raise ApiError(
                falcon.HTTP_401, "unauthorized", f"missing or invalid {credential.names} header"
            )
