"""docker-compose.yml, the Dockerfile and .env.example agree with the code.

No Docker engine runs here, so these files are checked statically: every command names a real
entry point of the project, the image holds every package the ``billing`` command imports, and
every variable the code reads is documented in .env.example.
"""

import ast
import re
import shlex
import shutil
import subprocess
import sys
import tomllib
from fnmatch import fnmatch
from pathlib import Path

import pytest
import yaml

from core.settings import Settings

ROOT = Path(__file__).resolve().parents[2]
BIN = Path(sys.executable).parent
COMMAND_WAIT_SECONDS = 60
SERVICES_EXPECTED = {"api", "postgres", "redis", "prefect-server", "prefect-worker", "pocketbase"}
# Variables only docker-compose itself reads (passwords of its databases, the Prefect UI's URL).
COMPOSE_ONLY_VARIABLES = {"POSTGRES_PASSWORD", "PREFECT_POSTGRES_PASSWORD", "PREFECT_UI_API_URL"}
CODE_FOLDERS = ("api", "core", "flows", "adapters", "service")
ENVIRON_READ = re.compile(
    r"""(?:environ\.get|getenv|environ)\s*[(\[]\s*["']([A-Z][A-Z0-9_]*)["']"""
)


def compose() -> dict:
    return yaml.safe_load((ROOT / "docker-compose.yml").read_text())


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


def packages_imported_from(package: str) -> set[str]:
    """``package`` and every package of this repository its modules import, and theirs."""
    ours = {path.parent.name for path in ROOT.glob("*/__init__.py")}
    found: set[str] = set()
    pending = [package]
    while pending:
        current = pending.pop()
        if current in found:
            continue
        found.add(current)
        for source in (ROOT / current).rglob("*.py"):
            for node in ast.walk(ast.parse(source.read_text(), filename=str(source))):
                if isinstance(node, ast.Import):
                    names = [alias.name for alias in node.names]
                elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
                    names = [node.module]
                else:
                    continue
                pending.extend(name.split(".")[0] for name in names if name.split(".")[0] in ours)
    return found


def test_compose_has_every_service_of_the_deployment() -> None:
    services = compose()["services"]
    assert SERVICES_EXPECTED <= set(services)
    assert any("postgres-data" in volume for volume in services["postgres"]["volumes"])
    assert "4200:4200" in services["prefect-server"]["ports"]
    prefect_database = services["prefect-server"]["environment"][
        "PREFECT_API_DATABASE_CONNECTION_URL"
    ]
    assert "@prefect-postgres:" in prefect_database, "Prefect keeps its own PostgreSQL database"


def test_api_runs_on_postgresql_with_redis_and_pocketbase() -> None:
    api = compose()["services"]["api"]
    assert api["environment"]["DATABASE_URL"].startswith("postgresql://")
    assert api["environment"]["REDIS_URL"].startswith("redis://")
    assert api["environment"]["POCKETBASE_URL"].startswith("http://pocketbase:")


@pytest.mark.parametrize("command", project_commands(), ids=" ".join)
def test_each_command_names_a_real_entry_point(command: list[str]) -> None:
    program = command[0]
    if program == "billing":
        subcommand = [word for word in command[1:] if not word.startswith("-")][:2]
        words = command[1 : 1 + len(subcommand)]
        result = subprocess.run(
            [sys.executable, "-m", "service.cli", *words, "--help"],
            capture_output=True,
            text=True,
            timeout=COMMAND_WAIT_SECONDS,
        )
        assert result.returncode == 0, f"billing {' '.join(words)}: {result.stderr}"
    else:
        assert program in {"prefect", "pocketbase", "python"}, f"unknown program {program}"
        assert shutil.which(program, path=str(BIN)) or program == "python", program


def test_the_billing_script_runs_the_module_these_tests_run() -> None:
    """The commands above are checked with ``python -m service.cli``; the image runs the console
    script pyproject.toml makes, which must call the same function."""
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    assert project["scripts"]["billing"] == "service.cli:main"


def test_the_image_installs_every_package_the_billing_command_imports() -> None:
    needed = packages_imported_from("service")
    assert {"service", "api", "core", "flows", "adapters"} <= needed
    app_stage = re.split(r"^FROM ", (ROOT / "Dockerfile").read_text(), flags=re.M)[1]
    copied = set(re.findall(r"^COPY (\w+) \1$", app_stage, re.M))
    assert needed - copied == set(), "the Dockerfile does not COPY them"
    pyproject = tomllib.loads((ROOT / "pyproject.toml").read_text())
    included = pyproject["tool"]["setuptools"]["packages"]["find"]["include"]
    missing = {name for name in needed if not any(fnmatch(name, pattern) for pattern in included)}
    assert missing == set(), "pyproject.toml does not install them"


def test_every_variable_the_code_reads_is_documented() -> None:
    missing = variables_the_code_reads() - documented_variables()
    assert not missing, f".env.example lacks {sorted(missing)}"


def test_every_documented_variable_is_read_by_something() -> None:
    stale = documented_variables() - variables_the_code_reads() - COMPOSE_ONLY_VARIABLES
    assert not stale, f".env.example lists variables nothing reads: {sorted(stale)}"


def test_compose_interpolates_only_documented_variables() -> None:
    text = (ROOT / "docker-compose.yml").read_text()
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
