"""``billing flows deploy``: create the work pool and deploy every entry of ``prefect.yaml``.

The work pool is created through Prefect's client (left as it is when it exists); the
deployments through ``prefect deploy --all``, so ``prefect.yaml`` stays their one definition.
"""

import os
import subprocess
import sys
from pathlib import Path

import httpx
import yaml
from prefect.client.orchestration import get_client
from prefect.client.schemas.actions import WorkPoolCreate
from prefect.exceptions import ObjectAlreadyExists
from prefect.settings import PREFECT_API_URL

from core.errors import ConfigurationError
from core.settings import Settings

PREFECT_FILE_NAME = "prefect.yaml"
DEPLOY_TIMEOUT_SECONDS = 600


class DeployFailed(Exception):
    """The Prefect API could not be reached or refused, or ``prefect deploy`` failed; the
    message says which, for an operator, without the traceback."""


def work_pool_names(prefect_file: Path) -> set[str]:
    """The work pools the deployments of ``prefect_file`` name."""
    config = yaml.safe_load(prefect_file.read_text("utf-8"))
    return {entry["work_pool"]["name"] for entry in config["deployments"]}


def ensure_work_pool(name: str) -> bool:
    """Create a ``process`` work pool named ``name``; False when it already exists."""
    with get_client(sync_client=True) as client:
        try:
            client.create_work_pool(WorkPoolCreate(name=name, type="process"))
        except ObjectAlreadyExists:
            return False
    return True


def deploy(settings: Settings, project_dir: Path) -> list[str]:
    """Create the work pools and deploy every flow of ``project_dir/prefect.yaml``."""
    prefect_file = project_dir / PREFECT_FILE_NAME
    if not prefect_file.is_file():
        raise ConfigurationError(f"no {PREFECT_FILE_NAME} in {project_dir}; run from the project")
    try:
        created = [name for name in sorted(work_pool_names(prefect_file)) if ensure_work_pool(name)]
    except httpx.HTTPStatusError as error:
        hint = (
            ": PREFECT_API_AUTH_STRING is missing or wrong"
            if error.response.status_code == 401
            else ""
        )
        raise DeployFailed(
            f"the Prefect API at {PREFECT_API_URL.value()} answered HTTP"
            f" {error.response.status_code}{hint}"
        ) from None
    except httpx.HTTPError as error:
        raise DeployFailed(
            f"the Prefect API at {PREFECT_API_URL.value()} does not answer"
            f" ({type(error).__name__}): is the server up, and PREFECT_API_URL right?"
        ) from None
    environment = os.environ | {
        "BUDGET_TIMEZONE": settings.budget_timezone,
        "BILLING_PROJECT_DIR": str(project_dir.resolve()),
    }
    deployed = subprocess.run(
        [
            sys.executable,
            "-m",
            "prefect",
            "--no-prompt",
            "deploy",
            "--all",
            "--prefect-file",
            str(prefect_file),
        ],
        cwd=project_dir,
        env=environment,
        timeout=DEPLOY_TIMEOUT_SECONDS,
    )
    if deployed.returncode != 0:
        raise DeployFailed(
            f"prefect deploy exited with status {deployed.returncode} (its output is above)"
        )
    return created
