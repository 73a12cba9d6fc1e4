"""API keys: ``X-API-Key`` opens ``/api/*``, ``X-Admin-Key`` (only) opens ``/api/admin/*``."""

import hmac

import falcon

from api.http import ApiError
from core.settings import Keys

ADMIN_PREFIX = "/api/admin/"
API_PREFIX = "/api/"


class KeyAuth:
    """Falcon middleware; compares keys in constant time, answers 401 JSON on a mismatch."""

    def __init__(self, keys: Keys) -> None:
        self._api_key = keys.api_key.encode()
        self._admin_key = keys.admin_key.encode()

    def process_request(self, req: falcon.Request, resp: falcon.Response) -> None:
        if req.method == "OPTIONS" or not req.path.startswith(API_PREFIX):
            return
        if req.path.startswith(ADMIN_PREFIX):
            header, expected = "X-Admin-Key", self._admin_key
        else:
            header, expected = "X-API-Key", self._api_key
        provided = req.get_header(header)
        if provided is None or not hmac.compare_digest(provided.encode(), expected):
            raise ApiError(falcon.HTTP_401, "unauthorized", f"missing or invalid {header} header")
