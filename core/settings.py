"""Service configuration, read from the environment first (pydantic-settings)."""

import os
import secrets
from dataclasses import dataclass
from pathlib import Path
from typing import Literal
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

import simplejson
from limits import parse as parse_rate_limit
from pydantic import Field, SecretStr, field_validator
from pydantic_settings import BaseSettings, SettingsConfigDict

from core.errors import ConfigurationError

KEY_LENGTH_MIN = 16
KEYS_FILE_NAME = "keys.json"
# PostgreSQL: connections per process (one per busy request thread), and how long a request
# waits for one before it is refused with 503.
DATABASE_POOL_SIZE_DEFAULT = 16
DATABASE_POOL_TIMEOUT_SECONDS_DEFAULT = 5.0
WORKERS_MAX = 64
RATE_LIMIT_TEXT_LENGTH_MAX = 64


def _cpu_count() -> int:
    """CPUs this process may run on: its affinity mask where there is one (docker --cpuset-cpus).

    A CPU quota (docker --cpus) is not visible here; set WORKERS with one.
    """
    if hasattr(os, "sched_getaffinity"):
        return min(len(os.sched_getaffinity(0)), WORKERS_MAX)
    return min(os.cpu_count() or 1, WORKERS_MAX)


class Settings(BaseSettings):
    """Every knob of the service; names are the environment variables, upper-cased."""

    # An empty variable counts as unset, so an .env copied from .env.example with blanks left
    # means "use the default" (generated keys, UTC) rather than an invalid empty value.
    model_config = SettingsConfigDict(
        env_prefix="", case_sensitive=False, extra="ignore", env_ignore_empty=True
    )

    port: int = Field(3000, ge=1, le=65535)
    host: str = "0.0.0.0"
    billing_api_key: SecretStr | None = None
    admin_secret_key: SecretStr | None = None
    data_dir: Path = Path("data")
    database_url: str = "sqlite:///data/billing.db"
    cors_origins: str = ""
    budget_timezone: str = "UTC"
    reservation_ttl_seconds: int = Field(600, ge=1, le=7 * 24 * 3600)
    body_bytes_max: int = Field(64 * 1024, ge=1024, le=16 * 1024 * 1024)
    threads: int = Field(32, ge=1, le=256)
    model_prices_path: Path | None = None
    sqlite_synchronous: Literal["FULL", "NORMAL"] = "FULL"
    database_pool_size: int = Field(DATABASE_POOL_SIZE_DEFAULT, ge=1, le=1000)
    database_pool_timeout_seconds: float = Field(
        DATABASE_POOL_TIMEOUT_SECONDS_DEFAULT, gt=0, le=300
    )
    # Serving: worker processes, rate limits (Redis when set), who may read /metrics.
    workers: int = Field(default_factory=_cpu_count, ge=1, le=WORKERS_MAX)
    pin_workers_to_cpus: bool = True
    rate_limit: str | None = Field(None, max_length=RATE_LIMIT_TEXT_LENGTH_MAX)
    rate_limit_per_user: str | None = Field(None, max_length=RATE_LIMIT_TEXT_LENGTH_MAX)
    rate_limit_redis_failure: Literal["open", "closed"] = "open"
    rate_limit_key_prefix: str = Field("billing", pattern=r"^[A-Za-z0-9_.:-]{1,64}$")
    redis_url: SecretStr | None = None
    redis_timeout_ms: int = Field(250, ge=10, le=10_000)
    metrics_key: SecretStr | None = None
    # Identity store (PocketBase), used by provisioning when the URL is set.
    pocketbase_url: str | None = None
    pocketbase_admin_email: str | None = None
    pocketbase_admin_password: SecretStr | None = None
    pocketbase_collection: str = Field("users", pattern=r"^[A-Za-z0-9_]{1,64}$")
    pocketbase_timeout_seconds: float = Field(10, gt=0, le=120)
    # Mail from the flows (reset summaries, reports, alerts, invites) through prefect-email.
    smtp_host: str | None = None
    smtp_port: int = Field(25, ge=1, le=65535)
    smtp_security: Literal["INSECURE", "STARTTLS", "SSL"] = "STARTTLS"
    smtp_username: str | None = None
    smtp_password: SecretStr | None = None
    # Each step of sending a mail (connect, every reply awaited): a relay that never answers
    # fails the send instead of holding the flow run.
    smtp_timeout_seconds: float = Field(30, gt=0, le=300)
    mail_from: str = "billing@localhost"
    admin_email: str | None = None
    # Where users sign in (the app in front of PocketBase): in invites, and PocketBase's appURL.
    app_url: str | None = Field(None, pattern=r"^https?://\S+$", max_length=2048)
    # Alert delivery to a webhook (JSON POST with a dedup header), besides mail.
    alert_webhook_url: str | None = None
    # LiteLLM's spend logs, read by reconciliation when both are set.
    litellm_url: str | None = None
    litellm_admin_key: SecretStr | None = None

    @field_validator("billing_api_key", "admin_secret_key", "metrics_key")
    @classmethod
    def _key_long_enough(cls, key: SecretStr | None) -> SecretStr | None:
        if key is not None and len(key.get_secret_value()) < KEY_LENGTH_MIN:
            raise ValueError(f"must be at least {KEY_LENGTH_MIN} characters")
        return key

    @field_validator("rate_limit", "rate_limit_per_user", "redis_url", "metrics_key", mode="before")
    @classmethod
    def _blank_is_unset(cls, value: object) -> object:
        """An empty variable (``REDIS_URL=`` in a .env file) means "not set"."""
        return None if isinstance(value, str) and not value.strip() else value

    @field_validator("workers", mode="before")
    @classmethod
    def _blank_workers_is_cpu_count(cls, value: object) -> object:
        return _cpu_count() if isinstance(value, str) and not value.strip() else value

    @field_validator("rate_limit", "rate_limit_per_user")
    @classmethod
    def _rate_limit_parses(cls, text: str | None) -> str | None:
        """``limits`` notation, one limit (``1000/second``, ``20 per minute``)."""
        if text is None:
            return None
        try:
            parse_rate_limit(text)
        except ValueError:
            raise ValueError(
                f"{text!r} is not a rate limit such as 1000/second or 20 per minute"
            ) from None
        return text.strip()

    @field_validator("redis_url")
    @classmethod
    def _redis_scheme(cls, url: SecretStr | None) -> SecretStr | None:
        if url is not None and not url.get_secret_value().startswith(
            ("redis://", "rediss://", "redis+unix://")
        ):
            raise ValueError("must start with redis://, rediss:// or redis+unix://")
        return url

    @field_validator("budget_timezone")
    @classmethod
    def _known_zone(cls, name: str) -> str:
        try:
            ZoneInfo(name)
        except (ZoneInfoNotFoundError, ValueError):
            raise ValueError(f"unknown time zone {name!r}") from None
        return name

    @property
    def zone(self) -> ZoneInfo:
        return ZoneInfo(self.budget_timezone)

    @property
    def cors_origin_list(self) -> list[str]:
        return [origin.strip() for origin in self.cors_origins.split(",") if origin.strip()]


@dataclass(frozen=True)
class Keys:
    api_key: str
    admin_key: str
    generated_path: Path | None


def resolve_keys(settings: Settings) -> Keys:
    """The configured keys, or keys generated once and kept in ``data_dir`` (mode 0600).

    Each key missing from the environment comes from the kept file; there is no fixed fallback.
    """
    api_key = settings.billing_api_key.get_secret_value() if settings.billing_api_key else None
    admin_key = settings.admin_secret_key.get_secret_value() if settings.admin_secret_key else None
    if api_key is not None and admin_key is not None:
        keys = Keys(api_key, admin_key, None)
    else:
        path = settings.data_dir / KEYS_FILE_NAME
        try:
            kept = _read_or_create_keys(path)
        except OSError as error:
            raise ConfigurationError(
                f"DATA_DIR: cannot keep the generated keys in {path}: {error.strerror or error}"
            ) from None
        keys = Keys(api_key or kept["billing_api_key"], admin_key or kept["admin_secret_key"], path)
    if keys.api_key == keys.admin_key:
        # One key would open both the gateway's and the admin's routes.
        raise ConfigurationError("BILLING_API_KEY and ADMIN_SECRET_KEY must differ")
    return keys


def _read_or_create_keys(path: Path) -> dict[str, str]:
    path.parent.mkdir(parents=True, exist_ok=True)
    fresh = {
        "billing_api_key": secrets.token_urlsafe(32),
        "admin_secret_key": secrets.token_urlsafe(32),
    }
    if not path.exists():
        _publish_once(path, simplejson.dumps(fresh))
    try:
        kept = simplejson.loads(path.read_text("utf-8"))
    except ValueError:  # not JSON, or not UTF-8
        kept = None
    if not isinstance(kept, dict) or not all(isinstance(kept.get(name), str) for name in fresh):
        raise ConfigurationError(f"{path} does not hold the two keys; delete it to make new ones")
    return kept


def _publish_once(path: Path, text: str) -> None:
    """Write ``text`` to ``path`` only if it does not exist, whole or not at all (mode 0600).

    The file is written aside and hard-linked into place: of two processes starting at once,
    one link wins and both then read the same complete file.
    """
    staging = path.with_name(f".{path.name}.{os.getpid()}.{secrets.token_hex(4)}")
    descriptor = os.open(staging, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    try:
        with os.fdopen(descriptor, "w") as handle:
            handle.write(text)
            handle.flush()
            os.fsync(handle.fileno())
        try:
            os.link(staging, path)
        except FileExistsError:
            pass
    finally:
        staging.unlink()
