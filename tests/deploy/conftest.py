"""The project installed as the image installs it, without Docker: into a clean virtualenv, from
exactly the files the Dockerfile copies, with the extras it names."""

import hashlib
import json
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest
from image_context import (
    build_requirements,
    clean_environment,
    copy_as_the_dockerfile,
    dependencies,
    extras,
)

ROOT = Path(__file__).resolve().parents[2]
# The dependencies alone, kept between runs like the image's dependency layer: installing them
# takes about 50 s here, the project on top about 5 s.
IMAGE_VENV = ROOT / ".venv-image"
DISTRIBUTION = "cloudfreedom-billing"
INSTALL_WAIT_SECONDS = 600


def _pip(python: Path, *arguments: str) -> None:
    subprocess.run(
        [str(python), "-m", "pip", "--quiet", *arguments],
        check=True,
        timeout=INSTALL_WAIT_SECONDS,
        env=clean_environment(),
    )


@pytest.fixture(scope="session")
def image_install(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Path]:
    """The ``bin`` folder of a virtualenv holding the dependencies the Dockerfile installs and
    the project as installed from the Dockerfile's ``COPY`` lines (``--no-index``: nothing comes
    from anywhere else). The project is uninstalled again afterwards."""
    python = IMAGE_VENV / "bin" / "python"
    key = json.dumps([sys.version, dependencies(), build_requirements()])
    stamp = IMAGE_VENV / f".dependencies-{hashlib.sha256(key.encode()).hexdigest()[:16]}"
    if not stamp.exists():
        subprocess.run([sys.executable, "-m", "venv", "--clear", str(IMAGE_VENV)], check=True)
        _pip(python, "install", *dependencies(), *build_requirements())
        stamp.touch()
    else:
        _pip(python, "uninstall", "--yes", DISTRIBUTION)
    workdir = copy_as_the_dockerfile(tmp_path_factory.mktemp("image"))
    _pip(python, "install", "--no-index", "--no-build-isolation", f"{workdir}[{extras()}]")
    try:
        yield IMAGE_VENV / "bin"
    finally:
        _pip(python, "uninstall", "--yes", DISTRIBUTION)
