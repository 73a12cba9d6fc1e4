"""A PostgreSQL cluster of a test's own: its data folder and port, started, stopped and started
again by the test (the shared server must not go down under other tests).

Needs the server's binaries (``initdb``, ``pg_ctl``: on the PATH, from ``pg_config --bindir``
or Debian's /usr/lib/postgresql/<version>/bin); without them the test skips, or fails under
``CI``. As root it runs them as the ``postgres`` user, since PostgreSQL refuses to run as root.
"""

import glob
import os
import pwd
import shutil
import subprocess
import tempfile
from pathlib import Path

from pg_testing import unavailable
from ports import free_port

SERVER_USER = "postgres"
COMMAND_SECONDS_MAX = 60
# Settings for a cluster that holds nothing worth keeping: no fsync, small, loopback only.
SERVER_OPTIONS = (
    "-c listen_addresses=127.0.0.1 -c fsync=off -c synchronous_commit=off"
    " -c full_page_writes=off -c shared_buffers=16MB -c max_connections=50"
)


def _binaries() -> Path | None:
    for found in (shutil.which("pg_ctl"), shutil.which("initdb")):
        if found:
            return Path(found).parent
    try:
        bindir = subprocess.run(
            ["pg_config", "--bindir"], capture_output=True, text=True, check=True
        ).stdout.strip()
    except (OSError, subprocess.CalledProcessError):
        bindir = ""
    candidates = [bindir, *sorted(glob.glob("/usr/lib/postgresql/*/bin"), reverse=True)]
    for candidate in candidates:
        if candidate and (Path(candidate) / "initdb").exists():
            return Path(candidate)
    return None


class ThrowawayPostgres:
    """``initdb`` into a fresh folder on a free loopback port; ``start``, ``stop``, ``remove``."""

    def __init__(self) -> None:
        binaries = _binaries()
        if binaries is None:
            unavailable("no initdb/pg_ctl on this machine")
        self._binaries = binaries
        self._as_server_user: list[str] = []
        self._owner: pwd.struct_passwd | None = None
        if os.geteuid() == 0:
            try:
                self._owner = pwd.getpwnam(SERVER_USER)
            except KeyError:
                unavailable(f"running as root and no {SERVER_USER!r} user to run PostgreSQL as")
            self._as_server_user = ["runuser", "-u", SERVER_USER, "--"]
        # Outside the test's own folders: the server user must be able to reach it.
        self.folder = Path(tempfile.mkdtemp(prefix="billing-throwaway-pg-"))
        if self._owner is not None:
            os.chown(self.folder, self._owner.pw_uid, self._owner.pw_gid)
        self.data = self.folder / "data"
        self.port = free_port()
        self.url = f"postgresql://postgres@127.0.0.1:{self.port}/postgres"
        self._run("initdb", "-D", str(self.data), "-U", "postgres", "-A", "trust", "--no-sync")

    def start(self) -> None:
        self._run(
            "pg_ctl",
            "-D",
            str(self.data),
            "-l",
            str(self.folder / "server.log"),
            "-o",
            f"-p {self.port} -k {self.folder} {SERVER_OPTIONS}",
            "-w",
            "start",
        )

    def stop(self) -> None:
        """A fast shutdown: sessions are ended, as by an operator's restart."""
        self._run("pg_ctl", "-D", str(self.data), "-m", "fast", "-w", "stop")

    def remove(self) -> None:
        if (self.data / "postmaster.pid").exists():
            self._run("pg_ctl", "-D", str(self.data), "-m", "immediate", "-w", "stop")
        shutil.rmtree(self.folder, ignore_errors=True)

    def _run(self, program: str, *arguments: str) -> None:
        command = [*self._as_server_user, str(self._binaries / program), *arguments]
        done = subprocess.run(
            command,
            stdin=subprocess.DEVNULL,
            capture_output=True,
            text=True,
            timeout=COMMAND_SECONDS_MAX,
            cwd=self.folder,
        )
        if done.returncode != 0:
            raise AssertionError(
                f"{program} failed ({done.returncode}):\n{done.stdout}{done.stderr}"
            )
