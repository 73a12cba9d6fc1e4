"""LiteLLM proxy callback: hold the budget before each call, log usage after it, release on failure.

Register it in the proxy's ``config.yaml``::

    litellm_settings:
      callbacks: client.litellm.billing_callback

Configured by environment variables (``BILLING_*``, see ``CallbackSettings`` and
``examples/litellm/README.md``). The request id of every billing call is LiteLLM's
``litellm_call_id``, so a retried hold or log is idempotent at the service. Usage, and the
release of a failed call's hold, that the service cannot take now go to a durable local spool
(``client.spool``) and are re-sent in the background until taken.
"""

import asyncio
import logging
import secrets
from collections import OrderedDict
from dataclasses import asdict
from datetime import datetime
from decimal import Decimal
from pathlib import Path
from typing import Any, Literal

import litellm
from fastapi import HTTPException
from litellm.integrations.custom_logger import CustomLogger
from pydantic import Field, SecretStr, ValidationError
from pydantic_settings import BaseSettings, SettingsConfigDict

from client.aio import AsyncBillingClient
from client.calls import RetryPolicy, decimal_text
from client.errors import (
    BillingError,
    BudgetExceeded,
    Conflict,
    NotFound,
    Unauthorized,
    Unavailable,
)
from client.spool import SpoolForwarder, SpoolFull, UsageRecord, UsageSpool
from client.sync import BillingClient

log = logging.getLogger(__name__)

HOLDS_TRACKED_MAX = 100_000
_PASSWORD_BYTES = 32


class CallbackSettings(BaseSettings):
    """Every setting of the callback; each is read from ``BILLING_<NAME>`` in the environment."""

    model_config = SettingsConfigDict(env_prefix="BILLING_", extra="ignore")

    api_url: str
    api_key: SecretStr
    admin_key: SecretStr | None = Field(None, description="needed only with default_product")
    user_source: Literal["end_user", "key_user"] = "end_user"
    default_product: str | None = Field(None, description="auto-provision unknown users onto it")
    default_tenant: str = "default"
    provision_email_domain: str = "users.invalid"
    failure_mode: Literal["fail_closed", "fail_open"] = "fail_closed"
    output_tokens_default: int = Field(1024, ge=0, le=1_000_000)
    timeout_seconds: float = Field(5.0, gt=0, le=300)
    attempts_max: int = Field(3, ge=1, le=10)
    spool_path: Path = Path("billing-spool.sqlite3")
    spool_records_max: int = Field(100_000, ge=1, le=10_000_000)
    spool_retry_seconds: float = Field(5.0, gt=0, le=3600)
    spool_batch_max: int = Field(100, ge=1, le=10_000)


def settings_from_env() -> CallbackSettings:
    """The settings, or one error naming every ``BILLING_*`` variable that is missing or bad."""
    try:
        return CallbackSettings()
    except ValidationError as error:
        problems = "; ".join(
            f"BILLING_{'_'.join(str(part) for part in item['loc']).upper()}: {item['msg']}"
            for item in error.errors(include_url=False, include_input=False)
        )
        raise ValueError(f"client.litellm cannot start: {problems}") from None


class BillingCallback(CustomLogger):
    """The CloudFreedom Billing hooks of a LiteLLM proxy (one instance per proxy process)."""

    def __init__(self, settings: CallbackSettings | None = None) -> None:
        super().__init__()
        self.settings = settings or settings_from_env()
        self._retry = RetryPolicy(attempts_max=self.settings.attempts_max)
        self._client: AsyncBillingClient | None = None
        self._client_loop: asyncio.AbstractEventLoop | None = None
        self._holds: OrderedDict[str, None] = OrderedDict()
        self.spool = UsageSpool(self.settings.spool_path, self.settings.spool_records_max)
        self._forwarder = SpoolForwarder(
            self.spool,
            BillingClient(**self._client_options()),
            self.settings.spool_retry_seconds,
            self.settings.spool_batch_max,
        )
        self._forwarder.start()

    def _client_options(self) -> dict[str, Any]:
        admin_key = self.settings.admin_key
        return {
            "base_url": self.settings.api_url,
            "api_key": self.settings.api_key.get_secret_value(),
            "admin_key": None if admin_key is None else admin_key.get_secret_value(),
            "timeout_seconds": self.settings.timeout_seconds,
            "retry": self._retry,
        }

    def billing(self) -> AsyncBillingClient:
        """The async client of the running event loop (an httpx pool belongs to one loop)."""
        loop = asyncio.get_running_loop()
        if self._client is None or self._client_loop is not loop:
            self._client = AsyncBillingClient(**self._client_options())
            self._client_loop = loop
        return self._client

    # -- before the call ------------------------------------------------------------------

    async def async_pre_call_hook(
        self, user_api_key_dict: Any, cache: Any, data: dict, call_type: str
    ) -> dict:
        """Place a hold of the estimated cost; 429 denied, 403 unknown user, 503 unreachable."""
        request_id = data.get("litellm_call_id")
        assert request_id, "the proxy sets litellm_call_id before the pre-call hook"
        user_id = self._request_user(user_api_key_dict, data)
        if user_id is None:
            raise HTTPException(
                status_code=403, detail=f"no billing user on this request ({self._user_hint()})"
            )
        if self.spool.full():
            raise HTTPException(status_code=503, detail="billing usage spool is full")
        model = str(data.get("model") or "")
        tokens_input = _prompt_tokens(model, data)
        tokens_output = _output_tokens(data, self.settings.output_tokens_default)
        estimate = _cost_estimate(model, tokens_input, tokens_output)
        try:
            await self._reserve(user_id, request_id, model, tokens_input, tokens_output, estimate)
        except BudgetExceeded as denied:
            raise HTTPException(status_code=429, detail=denied.message) from None
        except NotFound:
            raise HTTPException(
                status_code=403, detail=f"unknown billing user {user_id!r}"
            ) from None
        except Unavailable as error:
            if self.settings.failure_mode == "fail_open":
                log.warning("billing unavailable, call %s let through (fail_open)", request_id)
                return data
            log.error("billing unavailable, call %s refused (fail_closed): %s", request_id, error)
            raise HTTPException(status_code=503, detail="billing service unavailable") from None
        except BillingError as error:
            # A wrong key, a refused estimate or id: the proxy's set-up is at fault, not the caller.
            log.error(
                "billing refused the check of call %s: %s %s", request_id, error.status, error
            )
            raise HTTPException(
                status_code=503, detail=f"billing check failed: {error.code}"
            ) from None
        self._remember_hold(request_id)
        return data

    async def _reserve(
        self,
        user_id: str,
        request_id: str,
        model: str,
        tokens_input: int,
        tokens_output: int,
        estimate: Decimal,
    ) -> None:
        """A hold; an unknown user is provisioned onto ``default_product`` first, when set."""
        arguments = (user_id, request_id, estimate, model or None, tokens_input, tokens_output)
        try:
            await self.billing().reserve(*arguments)
        except NotFound:
            if self.settings.default_product is None:
                raise
            await self._provision(user_id)
            await self.billing().reserve(*arguments)

    async def _provision(self, user_id: str) -> None:
        email = user_id if "@" in user_id else f"{user_id}@{self.settings.provision_email_domain}"
        try:
            await self.billing().provision_user(
                email,
                secrets.token_urlsafe(_PASSWORD_BYTES),
                str(self.settings.default_product),
                self.settings.default_tenant,
                user_id,
            )
        except Conflict:
            log.info("billing user %r was provisioned concurrently", user_id)
            return
        log.info("billing user %r provisioned onto %s", user_id, self.settings.default_product)

    def _request_user(self, user_api_key_dict: Any, data: dict) -> str | None:
        if self.settings.user_source == "key_user":
            user = getattr(user_api_key_dict, "user_id", None)
        else:
            user = data.get("user") or getattr(user_api_key_dict, "end_user_id", None)
        return str(user) if user else None

    def _user_hint(self) -> str:
        if self.settings.user_source == "key_user":
            return "the API key has no user_id"
        return "set the request's `user` field"

    def _remember_hold(self, request_id: str) -> None:
        """Holds placed by this process, so failures release only what exists (bounded)."""
        self._holds[request_id] = None
        while len(self._holds) > HOLDS_TRACKED_MAX:
            self._holds.popitem(last=False)

    # -- after the call -------------------------------------------------------------------

    async def async_log_success_event(
        self, kwargs: dict, response_obj: Any, start_time: datetime, end_time: datetime
    ) -> None:
        """Log the call's usage (streamed responses arrive here once, complete)."""
        record = self._usage_record(kwargs, start_time, end_time)
        if record is None:
            return
        self._holds.pop(record.request_id, None)
        try:
            await self.billing().log_usage(**asdict(record))
        except (Unavailable, Unauthorized) as error:
            log.warning("usage %s spooled: %s", record.request_id, error)
            await self._spool(record, None)
        except BillingError as error:
            reason = f"{error.status} {error.code}: {error.message}"
            log.error("billing refused usage %s: %s", record.request_id, reason)
            await self._spool(record, reason)

    async def _spool(self, record: UsageRecord, rejected: str | None) -> None:
        try:
            await asyncio.to_thread(self.spool.put, record, rejected)
        except SpoolFull as error:
            log.error("usage %s of %s not recorded: %s", record.request_id, record.user_id, error)

    def _usage_record(
        self, kwargs: dict, start_time: datetime, end_time: datetime
    ) -> UsageRecord | None:
        payload = kwargs.get("standard_logging_object") or {}
        request_id = kwargs.get("litellm_call_id") or payload.get("litellm_call_id")
        metadata = payload.get("metadata") or {}
        if self.settings.user_source == "key_user":
            user_id = metadata.get("user_api_key_user_id")
        else:
            user_id = payload.get("end_user") or kwargs.get("user")
        if not request_id or not user_id:
            log.warning("usage without request id or billing user not logged: %s", request_id)
            return None
        model = payload.get("model_group") or kwargs.get("model") or "unknown"
        latency_ms = round((end_time - start_time).total_seconds() * 1000)
        return UsageRecord(
            user_id=str(user_id),
            model=str(model),
            request_id=str(request_id),
            tokens_input=int(payload.get("prompt_tokens") or 0),
            tokens_output=int(payload.get("completion_tokens") or 0),
            cost_total=decimal_text(kwargs.get("response_cost", payload.get("response_cost"))),
            response_time_ms=max(latency_ms, 0),
        )

    # -- when the call fails --------------------------------------------------------------

    async def async_log_failure_event(
        self, kwargs: dict, response_obj: Any, start_time: datetime, end_time: datetime
    ) -> None:
        await self._release(kwargs.get("litellm_call_id"))

    async def async_post_call_failure_hook(
        self,
        request_data: dict,
        original_exception: Exception,
        user_api_key_dict: Any,
        traceback_str: str | None = None,
    ) -> None:
        await self._release(request_data.get("litellm_call_id"))

    async def _release(self, request_id: str | None) -> None:
        """Release this process's hold; unreachable, or a wrong key: spooled and re-sent."""
        if request_id is None or request_id not in self._holds:
            return
        self._holds.pop(request_id, None)
        try:
            await self.billing().release_reservation(request_id)
        except (NotFound, Conflict):
            return
        except (Unavailable, Unauthorized) as error:
            log.warning("release of hold %s spooled: %s", request_id, error)
            try:
                await asyncio.to_thread(self.spool.put_release, request_id)
            except SpoolFull as full:
                log.error("hold %s not released (it expires on its own): %s", request_id, full)
        except BillingError as error:
            log.warning("hold %s not released (it expires on its own): %s", request_id, error)


def _prompt_tokens(model: str, data: dict) -> int:
    """Prompt tokens as LiteLLM counts them; 0 when the request has no messages or prompt."""
    messages = data.get("messages")
    if messages:
        return int(litellm.token_counter(model=model, messages=messages))
    prompt = data.get("prompt") or data.get("input")
    if isinstance(prompt, str | list) and prompt:
        return int(litellm.token_counter(model=model, text=prompt))
    return 0


def _output_tokens(data: dict, default: int) -> int:
    for name in ("max_tokens", "max_completion_tokens", "max_output_tokens"):
        value = data.get(name)
        if isinstance(value, int) and not isinstance(value, bool) and value >= 0:
            return value
    return default


def _cost_estimate(model: str, tokens_input: int, tokens_output: int) -> Decimal:
    """Prices of the model group (or LiteLLM's map) × tokens, exact; 0 for an unpriced model."""
    input_price, output_price = _prices(model)
    return input_price * tokens_input + output_price * tokens_output


def _prices(model: str) -> tuple[Decimal, Decimal]:
    from litellm.proxy import proxy_server  # loaded by then: the proxy is what loads this module

    info: Any = None
    router = getattr(proxy_server, "llm_router", None)
    if router is not None:
        info = router.get_model_group_info(model)
    if info is not None:
        found = (info.input_cost_per_token, info.output_cost_per_token)
    else:
        try:
            mapped = litellm.get_model_info(model)
        except Exception:  # litellm raises a bare Exception for a model it does not know
            log.warning("no price for model %r; its cost estimate is 0", model)
            return Decimal(0), Decimal(0)
        found = (mapped.get("input_cost_per_token"), mapped.get("output_cost_per_token"))
    input_price, output_price = (Decimal(repr(price)) if price else Decimal(0) for price in found)
    return input_price, output_price


billing_callback = BillingCallback()
