"""A real LiteLLM proxy (from .venv-litellm, see `make litellm-proxy`) with our callback loaded."""

import os
import subprocess
import time
from pathlib import Path

import httpx
import pytest
from integration_support import free_port, server_env

REPO = Path(__file__).resolve().parents[2]
LITELLM_BIN = REPO / ".venv-litellm" / "bin" / "litellm"
MASTER_KEY = "sk-litellm-master-test-0123456789"
PROXY_READY_WAIT_SECONDS = 240.0
PROXY_STOP_WAIT_SECONDS = 20.0


def require_litellm() -> None:
    """Skip without the proxy's virtualenv, except in CI, where a missing proxy is an error."""
    if LITELLM_BIN.exists():
        return
    message = f"{LITELLM_BIN} missing: run `make litellm-proxy`"
    if os.environ.get("CI", "").lower() in ("1", "true", "yes"):
        pytest.fail(message)
    pytest.skip(message)


class LiteLLMProxy:
    """`litellm --config` on 127.0.0.1:<free port>; DATABASE_URL unset, bundled cost map."""

    def __init__(self, workdir: Path, config_path: Path, billing_env: dict[str, str]) -> None:
        self.port = free_port()
        self.base_url = f"http://127.0.0.1:{self.port}"
        self.log_path = workdir / "litellm-proxy.log"
        env = server_env(LITELLM_MASTER_KEY=MASTER_KEY, LITELLM_LOCAL_MODEL_COST_MAP="True")
        env = {name: value for name, value in env.items() if not name.startswith("BILLING_")}
        env.update(billing_env)
        self._command = [str(LITELLM_BIN), "--config", str(config_path), "--host", "127.0.0.1"]
        self._command += ["--port", str(self.port)]
        self._workdir = workdir
        self._env = env
        self.start()

    def start(self) -> None:
        """Spawn the proxy process (on the same port each time); output appended to the log."""
        self._log = open(self.log_path, "ab")  # noqa: SIM115 - closed in stop()
        self.process = subprocess.Popen(
            self._command,
            cwd=self._workdir,
            env=self._env,
            stdin=subprocess.DEVNULL,
            stdout=self._log,
            stderr=subprocess.STDOUT,
        )

    def restart(self) -> None:
        self.stop()
        self.start()
        self.wait_ready()

    def output(self) -> str:
        return self.log_path.read_text(errors="replace")

    def wait_ready(self, timeout: float = PROXY_READY_WAIT_SECONDS) -> None:
        deadline = time.monotonic() + timeout
        with httpx.Client(base_url=self.base_url, timeout=5.0) as client:
            while time.monotonic() < deadline:
                if self.process.poll() is not None:
                    raise AssertionError(f"proxy exited early:\n{self.output()[-5000:]}")
                try:
                    if client.get("/health/liveliness").status_code == 200:
                        return
                except httpx.TransportError:
                    pass
                time.sleep(0.5)
        self.stop()
        raise AssertionError(f"proxy not ready within {timeout} s:\n{self.output()[-5000:]}")

    def stop(self) -> None:
        if self.process.poll() is None:
            self.process.terminate()
            try:
                self.process.wait(timeout=PROXY_STOP_WAIT_SECONDS)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait(timeout=PROXY_STOP_WAIT_SECONDS)
        if not self._log.closed:
            self._log.close()
