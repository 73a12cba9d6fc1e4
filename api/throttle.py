"""The per-key rate limit as Falcon middleware, and the 429 answer with ``Retry-After``.

The per-user limit is checked by the check-budget and log-usage resources once the body names
the user; the policy itself lives in ``core.rate_limits``.
"""

import falcon

from api.auth import ADMIN_PREFIX, API_PREFIX
from api.http import respond
from core.errors import RateLimited
from core.rate_limits import RateLimiter


class KeyRateLimit:
    """Counts every routed call made with the gateway's key (``/api/*`` outside admin).

    Runs after routing (``process_resource``), so only authenticated calls to real routes
    count; admin calls are not limited.
    """

    def __init__(self, limiter: RateLimiter) -> None:
        self._limiter = limiter

    def process_resource(
        self, req: falcon.Request, resp: falcon.Response, resource: object, params: dict
    ) -> None:
        if (
            resource is None
            or req.method == "OPTIONS"
            or not req.path.startswith(API_PREFIX)
            or req.path.startswith(ADMIN_PREFIX)
        ):
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
