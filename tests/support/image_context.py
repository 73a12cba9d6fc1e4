"""What the Dockerfile's ``app`` stage puts in the image, reproduced without Docker: its build
context (the tree less ``.dockerignore``), its ``COPY`` lines into ``WORKDIR``, the extras it
installs, and the dependencies its first ``pip install`` layer takes from ``pyproject.toml``."""

import os
import re
import shutil
import tomllib
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
DOCKERFILE = ROOT / "Dockerfile"


def dockerignore_patterns(root: Path = ROOT) -> list[str]:
    lines = (root / ".dockerignore").read_text().splitlines()
    patterns = [
        line.strip().strip("/") for line in lines if line.strip() and not line.startswith("#")
    ]
    # Docker's `!` exceptions re-include paths; this reader does not, so it refuses them.
    assert not any(pattern.startswith("!") for pattern in patterns), "exceptions are not read"
    return patterns


def _pattern_regex(pattern: str) -> re.Pattern[str]:
    parts = re.split(r"(\*\*/|\*\*|\*|\?)", pattern)
    wildcards = {"**/": "(?:.*/)?", "**": ".*", "*": "[^/]*", "?": "[^/]"}
    return re.compile("".join(wildcards.get(part, re.escape(part)) for part in parts) + r"\Z")


def ignored(relative: str, patterns: list[str]) -> bool:
    """Whether Docker leaves ``relative`` out of the build context: a pattern matching the path
    or any folder above it excludes it."""
    regexes = [_pattern_regex(pattern) for pattern in patterns]
    parts = relative.split("/")
    prefixes = ["/".join(parts[: index + 1]) for index in range(len(parts))]
    return any(regex.match(prefix) for regex in regexes for prefix in prefixes)


def context_files(root: Path = ROOT) -> list[str]:
    """Every file of the build context, relative to ``root``."""
    patterns = dockerignore_patterns(root)
    return sorted(
        path.relative_to(root).as_posix()
        for path in root.rglob("*")
        if path.is_file() and not ignored(path.relative_to(root).as_posix(), patterns)
    )


def app_stage(dockerfile: Path = DOCKERFILE) -> str:
    stages = re.split(r"^FROM ", dockerfile.read_text(), flags=re.M)[1:]
    [stage] = [stage for stage in stages if re.match(r"\S+ AS app\b", stage, re.I)]
    return stage


def extras(dockerfile: Path = DOCKERFILE) -> str:
    return re.search(r"^ARG EXTRAS=(\S+)$", app_stage(dockerfile), re.M).group(1)


def copy_as_the_dockerfile(target: Path, root: Path = ROOT) -> Path:
    """Lay out under ``target`` what the ``app`` stage's ``COPY`` lines put in its ``WORKDIR``;
    returns that folder."""
    stage = app_stage(root / "Dockerfile")
    workdir = target / re.search(r"^WORKDIR /(\S+)$", stage, re.M).group(1)
    workdir.mkdir(parents=True)
    files = context_files(root)
    for line in re.findall(r"^COPY (.+)$", stage, re.M):
        *sources, destination = line.split()
        assert not any(word.startswith("--") for word in sources), f"COPY flags: {line}"
        # Every COPY of this Dockerfile copies into a folder (`./`, `.`, `name/`).
        assert destination in {".", "./"} or destination.endswith("/"), line
        for source in sources:
            source = "" if source in {".", "./"} else source.strip("/")
            copied = 0
            for name in files:
                if source == "":
                    relative = name
                elif name == source:
                    relative = Path(name).name
                elif name.startswith(source + "/"):
                    relative = name[len(source) + 1 :]
                else:
                    continue
                path = workdir / destination / relative
                path.parent.mkdir(parents=True, exist_ok=True)
                shutil.copyfile(root / name, path)
                copied += 1
            assert copied, f"COPY {source}: nothing in the build context"
    return workdir


def dependencies(root: Path = ROOT) -> list[str]:
    """The requirements of the Dockerfile's dependency layer: the project's, and its extras'."""
    project = tomllib.loads((root / "pyproject.toml").read_text())["project"]
    chosen = extras(root / "Dockerfile").split(",")
    return project["dependencies"] + [
        requirement for extra in chosen for requirement in project["optional-dependencies"][extra]
    ]


def build_requirements(root: Path = ROOT) -> list[str]:
    return tomllib.loads((root / "pyproject.toml").read_text())["build-system"]["requires"]


def clean_environment() -> dict[str, str]:
    """This process's environment without PYTHONPATH and the like, which would let the
    checkout's modules stand in for installed ones."""
    return {name: value for name, value in os.environ.items() if not name.startswith("PYTHON")}
