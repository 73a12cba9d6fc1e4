"""A Docker engine for the tests that run the stack in containers, and stand-ins for the base
images the project's Dockerfile names.

No image registry is reachable from the machines the tests run on, and only host networking
works there (``dockerd --bridge=none --iptables=false``). So the engine is installed from
Debian's packages and started here when it is not running, and each base image (``FROM``) is
replaced by a Debian root filesystem made with ``debootstrap``, with Debian's Python 3.11 in a
virtualenv on ``PATH`` (pip installs into it, as into the official image's ``/usr/local``), and
this machine's pip configuration and CA bundle, without which pip inside a build cannot reach
the package index. The stand-in is tagged by a hash of what it is made from and reused while
that stays the same: making it costs about 30 s, reusing it nothing.
"""

import hashlib
import os
import re
import shutil
import subprocess
import tempfile
import time
from pathlib import Path

# The Debian package of each program this module runs.
DOCKER_PACKAGES = {
    "dockerd": "docker.io",
    "docker-compose": "docker-compose",
    "debootstrap": "debootstrap",
}
DOCKERD_COMMAND = ("dockerd", "--bridge=none", "--iptables=false")
DOCKERD_LOG = Path(tempfile.gettempdir()) / "billing-tests-dockerd.log"
DOCKERD_WAIT_SECONDS = 60.0
APT_TIMEOUT_SECONDS = 600
DEBOOTSTRAP_TIMEOUT_SECONDS = 600
DEBIAN_SUITE = "bookworm"
DEBIAN_SOURCES = Path("/etc/apt/sources.list.d/debian.sources")
DEBIAN_MIRROR_DEFAULT = "http://deb.debian.org/debian"
STAND_IN_PACKAGES = ("python3", "python3-venv")
STAND_IN_VENV = "/opt/python"
STAND_IN_REPOSITORY = "billing-test-base"
CA_BUNDLE = Path("/etc/ssl/certs/ca-certificates.crt")
# Changing how the stand-in is made changes its tag, so an old one is never reused by mistake.
STAND_IN_RECIPE = (
    f"debootstrap --variant=minbase --include={','.join(STAND_IN_PACKAGES)} {DEBIAN_SUITE}; "
    f"python3 -m venv {STAND_IN_VENV}; PATH={STAND_IN_VENV}/bin first; pip.conf cert={CA_BUNDLE}"
)


class DockerUnavailable(Exception):
    """The engine is not running and could not be installed or started here."""


def docker(*arguments: str, timeout: float = 60, **kwargs) -> subprocess.CompletedProcess:
    return subprocess.run(
        ["docker", *arguments], capture_output=True, text=True, timeout=timeout, **kwargs
    )


def engine_answers() -> bool:
    try:
        return docker("version", "--format", "{{.Server.Version}}", timeout=10).returncode == 0
    except (OSError, subprocess.TimeoutExpired):
        return False


def ensure_engine() -> None:
    """A running Docker engine, with docker-compose and debootstrap installed beside it."""
    missing = [package for program, package in DOCKER_PACKAGES.items() if not shutil.which(program)]
    if missing:
        _apt_install(missing)
    if engine_answers():
        return
    if os.geteuid() != 0:
        raise DockerUnavailable("dockerd is not running and only root can start it")
    with DOCKERD_LOG.open("ab") as log:
        subprocess.Popen(
            DOCKERD_COMMAND, stdout=log, stderr=subprocess.STDOUT, start_new_session=True
        )
    deadline = time.monotonic() + DOCKERD_WAIT_SECONDS
    while not engine_answers():
        if time.monotonic() > deadline:
            raise DockerUnavailable(
                f"dockerd did not answer within {DOCKERD_WAIT_SECONDS:.0f} s (log: {DOCKERD_LOG})"
            )
        time.sleep(0.5)


def _apt_install(packages: list[str]) -> None:
    if os.geteuid() != 0 or shutil.which("apt-get") is None:
        raise DockerUnavailable(f"{', '.join(packages)} missing and apt-get cannot install them")
    environment = os.environ | {"DEBIAN_FRONTEND": "noninteractive"}
    for command in (["apt-get", "update"], ["apt-get", "install", "-y", *packages]):
        result = subprocess.run(
            command, capture_output=True, text=True, env=environment, timeout=APT_TIMEOUT_SECONDS
        )
        if result.returncode != 0:
            raise DockerUnavailable(f"{' '.join(command)}: {result.stderr.strip()[-2000:]}")


def base_image_names(dockerfile: Path) -> set[str]:
    """The images a Dockerfile builds ``FROM``, less its own stages."""
    names = set()
    stages = set()
    for image, stage in re.findall(
        r"^FROM\s+(\S+)(?:\s+AS\s+(\S+))?", dockerfile.read_text(), re.M | re.I
    ):
        if image not in stages:
            names.add(image)
        if stage:
            stages.add(stage)
    return names


def debian_mirror() -> str:
    """The Debian mirror this machine's apt uses (the ``URIs:`` line, not a commented one)."""
    if DEBIAN_SOURCES.is_file():
        for line in DEBIAN_SOURCES.read_text().splitlines():
            if line.startswith("URIs:"):
                return line.split()[1]
    return DEBIAN_MIRROR_DEFAULT


def stand_in_tag() -> str:
    digest = hashlib.sha256(STAND_IN_RECIPE.encode())
    digest.update(debian_mirror().encode())
    digest.update(CA_BUNDLE.read_bytes())
    return f"{STAND_IN_REPOSITORY}:{digest.hexdigest()[:16]}"


def image_exists(name: str) -> bool:
    return docker("image", "inspect", name, timeout=30).returncode == 0


def ensure_base_images(dockerfile: Path) -> str:
    """Tag a stand-in with every base image name of ``dockerfile``; made only when its tag is
    not there yet. Returns the stand-in's tag."""
    tag = stand_in_tag()
    if not image_exists(tag):
        _make_stand_in(tag)
    for name in base_image_names(dockerfile):
        result = docker("tag", tag, name)
        if result.returncode != 0:
            raise DockerUnavailable(f"docker tag {tag} {name}: {result.stderr.strip()}")
    return tag


def _make_stand_in(tag: str) -> None:
    with tempfile.TemporaryDirectory(prefix="billing-base-") as scratch:
        root = Path(scratch) / "root"
        _run(
            [
                "debootstrap",
                "--variant=minbase",
                f"--include={','.join(STAND_IN_PACKAGES)}",
                DEBIAN_SUITE,
                str(root),
                debian_mirror(),
            ],
            DEBOOTSTRAP_TIMEOUT_SECONDS,
        )
        _run(["chroot", str(root), "python3", "-m", "venv", STAND_IN_VENV], 120)
        shutil.copyfile(CA_BUNDLE, root / CA_BUNDLE.relative_to("/"))
        (root / "etc/pip.conf").write_text(f"[global]\ncert = {CA_BUNDLE}\n")
        shutil.rmtree(root / "var/cache/apt/archives", ignore_errors=True)
        tar = subprocess.Popen(["tar", "-C", str(root), "-c", "."], stdout=subprocess.PIPE)
        path = f"{STAND_IN_VENV}/bin:/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"
        result = subprocess.run(
            [
                "docker",
                "import",
                "--change",
                f"ENV PATH={path}",
                "--change",
                "ENV LANG=C.UTF-8",
                "-",
                tag,
            ],
            stdin=tar.stdout,
            capture_output=True,
            text=True,
            timeout=DEBOOTSTRAP_TIMEOUT_SECONDS,
        )
        tar.wait()
        if result.returncode != 0 or tar.returncode != 0:
            raise DockerUnavailable(f"docker import {tag}: {result.stderr.strip()}")


def _run(command: list[str], timeout: float) -> None:
    result = subprocess.run(command, capture_output=True, text=True, timeout=timeout)
    if result.returncode != 0:
        raise DockerUnavailable(f"{' '.join(command[:3])}: {result.stderr.strip()[-2000:]}")
