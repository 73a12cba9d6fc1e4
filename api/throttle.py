"""The per-key rate limit as Falcon middleware, and the 429 answer with ``Retry-After``.

The per-user limit is checked by the check-budget and log-usage resources once the body names
the user; the policy itself lives in ``core.rate_limits``.
"""

import falcon

from api.auth import Access, RouteAccess
from api.http import respond
from core.errors import RateLimited
from core.rate_limits import RateLimiter


class KeyRateLimit:
    """Counts every call to a route whose access is the gateway's key (``Access.GATEWAY``).

    Runs after routing and after ``KeyAuth`` (``process_resource``, on the matched route), so
    only authenticated calls to real routes count; admin, metrics and public routes are not
    limited.
    """

    def __init__(self, limiter: RateLimiter, route_access: RouteAccess) -> None:
        self._limiter = limiter
        self._route_access = route_access

    def process_resource(
        self, req: falcon.Request, resp: falcon.Response, resource: object, params: dict
    ) -> None:
        if req.method == "OPTIONS" or self._route_access.of(req.uri_template) is not Access.GATEWAY:
            return
        self._limiter.admit_key()


def handle_rate_limited(
    req: falcon.Request, resp: falcon.Response, error: RateLimited, _: dict
) -> None:
    resp.set_header("Retry-After", str(error.retry_after_seconds))
    respond(
        resp,
        {"error": error.code, "message": error.message, **error.details},
        falcon.HTTP_429,
    )
