"""docker-compose.yml, the Dockerfile and .env.example agree with the code, checked without
Docker (tests/deploy/test_compose_stack.py runs them): the project installed from exactly what
the Dockerfile copies runs every command the files name, the stack's rules hold, and every
variable the code reads is documented in .env.example.
"""

import re
import shlex
import subprocess
import tomllib
from pathlib import Path

import pytest
import yaml
from image_context import clean_environment

from core.settings import Settings

ROOT = Path(__file__).resolve().parents[2]
COMMAND_WAIT_SECONDS = 60
SERVICES_EXPECTED = {
    "api",
    "postgres",
    "redis",
    "pocketbase",
    "init",
    "prefect-server",
    "flows-deploy",
    "prefect-worker",
    "alerts-watch",
}
# Variables only docker-compose and Prefect read (passwords of its databases, Prefect's login and
# the URL its UI calls).
COMPOSE_ONLY_VARIABLES = {
    "POSTGRES_PASSWORD",
    "PREFECT_POSTGRES_PASSWORD",
    "PREFECT_API_AUTH_STRING",
    "PREFECT_UI_API_URL",
}
CODE_FOLDERS = ("api", "core", "flows", "adapters", "service")
ENVIRON_READ = re.compile(
    r"""(?:environ\.get|getenv|environ)\s*[(\[]\s*["']([A-Z][A-Z0-9_]*)["']"""
)


def compose() -> dict:
    return yaml.safe_load((ROOT / "docker-compose.yml").read_text())


def published_ports() -> dict[str, list[str]]:
    services = yaml.safe_load((ROOT / "docker-compose.override.yml").read_text())["services"]
    return {name: service["ports"] for name, service in services.items()}


def documented_variables() -> set[str]:
    lines = (ROOT / ".env.example").read_text().splitlines()
    return {line.split("=", 1)[0] for line in lines if line and not line.startswith("#")}


def variables_the_code_reads() -> set[str]:
    names = {name.upper() for name in Settings.model_fields}
    for folder in CODE_FOLDERS:
        for source in (ROOT / folder).rglob("*.py"):
            names.update(ENVIRON_READ.findall(source.read_text()))
    return names


def shell_commands(command: list[str] | str) -> list[list[str]]:
    """The simple commands a service runs: `sh -c "a && exec b"` gives [a, b]."""
    words = shlex.split(command) if isinstance(command, str) else list(command)
    if words[:2] == ["sh", "-c"]:
        script = words[2].replace("$$", "$")
        return [
            [word for word in shlex.split(part) if word != "exec"] for part in script.split("&&")
        ]
    return [words]


def project_commands() -> list[list[str]]:
    """Commands of the services built from this repository, and the Dockerfile's own."""
    commands = []
    for service in compose()["services"].values():
        if "build" in service and "command" in service:
            commands.extend(shell_commands(service["command"]))
    dockerfile = (ROOT / "Dockerfile").read_text()
    for instruction in re.findall(
        r"^\s*(?:CMD|HEALTHCHECK .*CMD)\s*(\[.*\])\s*$", dockerfile, re.M
    ):
        commands.extend(shell_commands(yaml.safe_load(instruction)))
    return commands


def test_compose_has_every_service_of_the_deployment() -> None:
    services = compose()["services"]
    assert SERVICES_EXPECTED <= set(services)
    assert any("postgres-data" in volume for volume in services["postgres"]["volumes"])
    prefect_database = services["prefect-server"]["environment"][
        "PREFECT_API_DATABASE_CONNECTION_URL"
    ]
    assert "@prefect-postgres:" in prefect_database, "Prefect keeps its own PostgreSQL database"


def test_compose_is_valid_for_docker_compose_1() -> None:
    assert "name" not in compose(), "docker-compose 1.29 refuses a top-level name"


def test_api_runs_on_postgresql_with_redis_and_pocketbase() -> None:
    api = compose()["services"]["api"]
    assert (api["environment"]["HOST"], api["environment"]["PORT"]) == ("0.0.0.0", "3000")
    assert api["environment"]["DATABASE_URL"].startswith("postgresql://")
    assert api["environment"]["REDIS_URL"].startswith("redis://")
    assert api["environment"]["POCKETBASE_URL"].startswith("http://pocketbase:")


def test_services_of_the_image_read_env_and_keep_data_in_the_image_folder() -> None:
    """DATA_DIR from .env (`data`, for `make serve`) would put generated keys under /app, which
    the billing user cannot write: compose sets the image's folder over it."""
    services = compose()["services"]
    for name, service in services.items():
        if service.get("build", {}).get("target") == "app" and name != "prefect-server":
            assert service["env_file"] == ".env", name
            assert service["environment"]["DATA_DIR"] == "/data", name


def test_every_long_running_service_has_a_health_check_of_its_own() -> None:
    """The image's HEALTHCHECK asks the billing API, which only `api` runs."""
    services = compose()["services"]
    for name in ("prefect-server", "prefect-worker"):
        test = services[name]["healthcheck"]["test"]
        assert "billing" not in test and "healthcheck" not in test, name
    assert "--with-healthcheck" in services["prefect-worker"]["command"]
    for name in ("init", "flows-deploy", "alerts-watch"):
        assert services[name]["healthcheck"] == {"disable": True}, name


def test_the_flows_are_deployed_once_the_prefect_server_is_healthy() -> None:
    services = compose()["services"]
    deploy = services["flows-deploy"]
    assert deploy["command"] == ["billing", "flows", "deploy"]
    assert deploy["restart"] == "no"
    assert deploy["depends_on"]["prefect-server"] == {"condition": "service_healthy"}
    assert services["prefect-worker"]["depends_on"]["flows-deploy"] == {
        "condition": "service_completed_successfully"
    }


def test_prefect_asks_for_a_login_and_admin_uis_listen_on_loopback_only() -> None:
    services = compose()["services"]
    server = services["prefect-server"]["environment"]
    assert "PREFECT_API_AUTH_STRING" in server["PREFECT_SERVER_API_AUTH_STRING"]
    assert all("ports" not in service for service in services.values()), "host networking"
    for name in ("prefect-server", "pocketbase"):
        for port in published_ports()[name]:
            assert port.startswith("127.0.0.1:"), f"{name} publishes {port} beyond loopback"


def test_image_tags_are_pinned_to_a_release() -> None:
    images = [service["image"] for service in compose()["services"].values() if "image" in service]
    images += re.findall(r"^FROM (\S+)", (ROOT / "Dockerfile").read_text(), re.M)
    for image in images:
        assert re.fullmatch(r"[\w./-]+:\d+\.\d+(\.\d+)?-[\w.-]+", image), f"{image} floats"


@pytest.mark.parametrize("command", project_commands(), ids=" ".join)
def test_each_command_runs_from_what_the_image_installs(
    command: list[str], image_install: Path
) -> None:
    """Each command's program and subcommands exist there, and its options are in its help."""
    program, *rest = command
    if program == "python":
        return
    known = {"billing", "billing-healthcheck", "prefect", "pocketbase"}
    assert program in known, f"unknown program {program}"
    if program == "pocketbase":
        return
    words = [word for word in rest if not word.startswith("-")][:2]
    words = rest[: len(words)]
    result = subprocess.run(
        [str(image_install / program), *words, "--help"],
        capture_output=True,
        text=True,
        timeout=COMMAND_WAIT_SECONDS,
        env=clean_environment(),
    )
    assert result.returncode == 0, f"{program} {' '.join(words)}: {result.stderr}"
    for option in (word for word in rest if word.startswith("--")):
        assert option in result.stdout, f"{' '.join(command)}: {option} is not an option"


def test_every_console_script_runs_from_what_the_image_installs(
    image_install: Path, tmp_path: Path
) -> None:
    scripts = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["scripts"]
    for script in scripts:
        result = subprocess.run(
            [str(image_install / script), "--help"],
            capture_output=True,
            text=True,
            cwd=tmp_path,
            timeout=COMMAND_WAIT_SECONDS,
            env=clean_environment(),
        )
        assert result.returncode == 0, f"{script} --help: {result.stderr}"


def test_billing_migrate_runs_from_what_the_image_installs(
    image_install: Path, tmp_path: Path
) -> None:
    environment = clean_environment() | {
        "DATABASE_URL": f"sqlite:///{tmp_path / 'billing.db'}",
        "DATA_DIR": str(tmp_path),
    }
    result = subprocess.run(
        [str(image_install / "billing"), "migrate"],
        capture_output=True,
        text=True,
        cwd=tmp_path,
        timeout=COMMAND_WAIT_SECONDS,
        env=environment,
    )
    assert result.returncode == 0, result.stderr
    assert result.stdout.startswith("applied: 0001_ledger.sql"), result.stdout


def test_every_variable_the_code_reads_is_documented() -> None:
    missing = variables_the_code_reads() - documented_variables()
    assert not missing, f".env.example lacks {sorted(missing)}"


def test_every_documented_variable_is_read_by_something() -> None:
    stale = documented_variables() - variables_the_code_reads() - COMPOSE_ONLY_VARIABLES
    assert not stale, f".env.example lists variables nothing reads: {sorted(stale)}"


def test_compose_interpolates_only_documented_variables() -> None:
    text = (ROOT / "docker-compose.yml").read_text()
    text += (ROOT / "docker-compose.override.yml").read_text()
    interpolated = set(re.findall(r"\$\{([A-Z][A-Z0-9_]*)", text))
    assert interpolated <= documented_variables()


def test_the_images_run_as_a_non_root_user_with_a_health_check() -> None:
    dockerfile = (ROOT / "Dockerfile").read_text()
    stages = re.split(r"^FROM ", dockerfile, flags=re.M)[1:]
    assert len(stages) == 2
    for stage in stages:
        users = re.findall(r"^USER (\S+)", stage, re.M)
        assert users and users[-1] not in {"root", "0"}, stage.splitlines()[0]
        assert "HEALTHCHECK" in stage, stage.splitlines()[0]
