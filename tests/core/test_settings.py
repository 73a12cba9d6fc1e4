"""Settings validation and key resolution: generated once (mode 0600), configured keys used as given."""

import os
import stat

import pytest
import simplejson
from pydantic import ValidationError

from core.errors import ConfigurationError
from core.settings import KEYS_FILE_NAME, Settings, resolve_keys

LONG_API_KEY = "api-key-0123456789abcdef"
LONG_ADMIN_KEY = "admin-key-0123456789abcdef"


@pytest.fixture(autouse=True)
def clean_environment(monkeypatch):
    """No setting leaks in from the environment the tests run in."""
    for name in Settings.model_fields:
        monkeypatch.delenv(name.upper(), raising=False)
        monkeypatch.delenv(name, raising=False)


def test_keys_are_generated_once_into_the_data_dir_with_mode_0600(tmp_path):
    data_dir = tmp_path / "data"
    settings = Settings(data_dir=data_dir)
    first = resolve_keys(settings)
    path = data_dir / KEYS_FILE_NAME
    assert first.generated_path == path
    assert stat.S_IMODE(os.stat(path).st_mode) == 0o600
    assert len(first.api_key) >= 16 and len(first.admin_key) >= 16
    assert first.api_key != first.admin_key
    kept = simplejson.loads(path.read_text("utf-8"))
    assert kept == {"billing_api_key": first.api_key, "admin_secret_key": first.admin_key}

    second = resolve_keys(Settings(data_dir=data_dir))
    assert (second.api_key, second.admin_key) == (first.api_key, first.admin_key)
    assert sorted(entry.name for entry in data_dir.iterdir()) == [KEYS_FILE_NAME]


def test_configured_keys_are_used_as_given_and_nothing_is_written(tmp_path, monkeypatch):
    monkeypatch.setenv("BILLING_API_KEY", LONG_API_KEY)
    monkeypatch.setenv("ADMIN_SECRET_KEY", LONG_ADMIN_KEY)
    keys = resolve_keys(Settings(data_dir=tmp_path / "data"))
    assert (keys.api_key, keys.admin_key, keys.generated_path) == (
        LONG_API_KEY,
        LONG_ADMIN_KEY,
        None,
    )
    assert not (tmp_path / "data" / KEYS_FILE_NAME).exists()


def test_one_configured_key_and_one_kept_key(tmp_path, monkeypatch):
    data_dir = tmp_path / "data"
    generated = resolve_keys(Settings(data_dir=data_dir))
    monkeypatch.setenv("BILLING_API_KEY", LONG_API_KEY)
    keys = resolve_keys(Settings(data_dir=data_dir))
    assert keys.api_key == LONG_API_KEY
    assert keys.admin_key == generated.admin_key


def test_keys_given_to_the_constructor_are_used(tmp_path):
    settings = Settings(
        data_dir=tmp_path, billing_api_key=LONG_API_KEY, admin_secret_key=LONG_ADMIN_KEY
    )
    keys = resolve_keys(settings)
    assert (keys.api_key, keys.admin_key) == (LONG_API_KEY, LONG_ADMIN_KEY)


@pytest.mark.parametrize("variable", ["BILLING_API_KEY", "ADMIN_SECRET_KEY"])
def test_short_key_from_the_environment_is_refused_naming_the_field(variable, monkeypatch):
    monkeypatch.setenv(variable, "x" * 15)
    with pytest.raises(ValidationError) as caught:
        Settings()
    errors = caught.value.errors()
    assert [error["loc"] for error in errors] == [(variable.lower(),)]
    assert "16" in errors[0]["msg"]


def test_sixteen_character_key_is_accepted(monkeypatch):
    monkeypatch.setenv("BILLING_API_KEY", "x" * 16)
    assert Settings().billing_api_key.get_secret_value() == "x" * 16


@pytest.mark.parametrize("zone", ["Mars/Olympus_Mons", "../etc/passwd", "utc"])
def test_unknown_budget_timezone_is_refused(zone, monkeypatch):
    monkeypatch.setenv("BUDGET_TIMEZONE", zone)
    with pytest.raises(ValidationError) as caught:
        Settings()
    assert [error["loc"] for error in caught.value.errors()] == [("budget_timezone",)]


def test_an_empty_variable_means_the_default(monkeypatch):
    """An .env copied from .env.example keeps its blanks: they mean "unset", not "empty"."""
    for name in ("BUDGET_TIMEZONE", "BILLING_API_KEY", "ADMIN_SECRET_KEY", "PORT", "REDIS_URL"):
        monkeypatch.setenv(name, "")
    settings = Settings()
    assert settings.budget_timezone == "UTC"
    assert settings.billing_api_key is None and settings.admin_secret_key is None
    assert settings.port == 3000
    assert settings.redis_url is None


def test_known_budget_timezone(monkeypatch):
    monkeypatch.setenv("BUDGET_TIMEZONE", "Europe/Berlin")
    settings = Settings()
    assert settings.budget_timezone == "Europe/Berlin"
    assert settings.zone.key == "Europe/Berlin"


def test_defaults():
    settings = Settings()
    assert settings.port == 3000
    assert settings.budget_timezone == "UTC"
    assert settings.reservation_ttl_seconds == 600
    assert settings.sqlite_synchronous == "FULL"
    assert settings.billing_api_key is None and settings.admin_secret_key is None


def test_cors_origin_list(monkeypatch):
    monkeypatch.setenv("CORS_ORIGINS", " https://a.example , ,https://b.example")
    assert Settings().cors_origin_list == ["https://a.example", "https://b.example"]


@pytest.mark.parametrize(
    "kept", ['{"billing_api_key": "only-one-key-here"}', "not json", '["a", "b"]', "\udcff"]
)
def test_keys_file_without_both_keys_is_refused(tmp_path, kept):
    (tmp_path / KEYS_FILE_NAME).write_text(kept, "utf-8", errors="surrogateescape")
    with pytest.raises(ConfigurationError, match="does not hold the two keys; delete it"):
        resolve_keys(Settings(data_dir=tmp_path))


def test_a_data_dir_that_cannot_hold_the_keys_is_refused_naming_it(tmp_path):
    not_a_folder = tmp_path / "a-file"
    not_a_folder.write_text("", "utf-8")
    with pytest.raises(ConfigurationError, match="DATA_DIR: cannot keep the generated keys in"):
        resolve_keys(Settings(data_dir=not_a_folder))


def test_identical_api_and_admin_keys_are_refused(tmp_path):
    same = "s" * 20
    settings = Settings(data_dir=tmp_path, billing_api_key=same, admin_secret_key=same)
    with pytest.raises(ConfigurationError, match="must differ"):
        resolve_keys(settings)


def test_rate_limits_are_off_unless_set_and_parse_in_limits_notation():
    assert Settings().rate_limit is None and Settings().rate_limit_per_user is None
    settings = Settings(rate_limit="1000/second", rate_limit_per_user=" 20 per minute ")
    assert (settings.rate_limit, settings.rate_limit_per_user) == ("1000/second", "20 per minute")
    assert Settings(rate_limit="  ").rate_limit is None
    with pytest.raises(ValidationError, match="rate_limit"):
        Settings(rate_limit="lots")


def test_workers_default_to_the_cpu_count_within_bounds():
    assert 1 <= Settings().workers <= 64
    assert Settings(workers=3).workers == 3
    for bad in (0, 65):
        with pytest.raises(ValidationError, match="workers"):
            Settings(workers=bad)


def test_redis_url_and_metrics_key_are_secret_and_checked():
    settings = Settings(redis_url="redis://:pw-secret@127.0.0.1:6379/0")
    assert "pw-secret" not in repr(settings)
    with pytest.raises(ValidationError, match="redis_url"):
        Settings(redis_url="http://127.0.0.1:6379")
    with pytest.raises(ValidationError, match="metrics_key"):
        Settings(metrics_key="short")
    with pytest.raises(ValidationError, match="rate_limit_redis_failure"):
        Settings(rate_limit_redis_failure="maybe")


def test_empty_serving_variables_count_as_unset(monkeypatch):
    """A .env file with ``WORKERS=`` or ``REDIS_URL=`` left empty gets the defaults."""
    for name in ("WORKERS", "RATE_LIMIT", "RATE_LIMIT_PER_USER", "REDIS_URL", "METRICS_KEY"):
        monkeypatch.setenv(name, "")
    settings = Settings()
    assert settings.workers >= 1
    assert settings.rate_limit is None and settings.rate_limit_per_user is None
    assert settings.redis_url is None and settings.metrics_key is None
