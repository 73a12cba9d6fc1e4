"""prefect.yaml, the one place deployments are defined: every entrypoint names a real flow, and
``billing flows deploy`` creates the work pool and the deployments on a real Prefect API (the
test harness's), the reset's schedule in BUDGET_TIMEZONE."""

import importlib
import os
import socket
import subprocess
import sys
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pytest
import yaml
from prefect import Flow, get_client
from prefect.exceptions import PrefectHTTPStatusError
from prefect.settings import PREFECT_API_URL

PROJECT_DIR = Path(__file__).resolve().parents[2]
FLOW_NAMES = {
    "flows/reset.py:monthly_budget_reset": "monthly-budget-reset",
    "flows/reconcile.py:reconcile_usage": "reconcile-usage",
    "flows/alerts.py:deliver_alerts": "deliver-alerts",
    "flows/provision.py:provision_user": "provision-user",
    "flows/provision.py:resend_invite": "resend-invite",
    "flows/backup.py:backup_database": "backup-database",
}
# Run from the UI, with no schedule; runs for different users need not wait for each other.
ON_DEMAND = {"flows/provision.py:provision_user", "flows/provision.py:resend_invite"}


def deployments() -> list[dict]:
    return yaml.safe_load((PROJECT_DIR / "prefect.yaml").read_text("utf-8"))["deployments"]


def test_every_entrypoint_imports_and_names_a_real_flow():
    entries = deployments()
    assert {entry["entrypoint"] for entry in entries} == set(FLOW_NAMES)
    for entry in entries:
        path, function = entry["entrypoint"].split(":")
        module = importlib.import_module(path.removesuffix(".py").replace("/", "."))
        flow = getattr(module, function)
        assert isinstance(flow, Flow)
        assert flow.name == FLOW_NAMES[entry["entrypoint"]]
        assert entry["work_pool"]["name"] == "billing"
        if entry["entrypoint"] in ON_DEMAND:
            assert "schedules" not in entry
        else:
            assert entry["concurrency_limit"] == 1


def test_schedules_are_the_issues():
    schedules = {entry["entrypoint"]: entry.get("schedules") for entry in deployments()}
    assert schedules["flows/reset.py:monthly_budget_reset"] == [
        {"cron": "0 0 1 * *", "timezone": "{{ $BUDGET_TIMEZONE }}"}
    ]
    assert schedules["flows/reconcile.py:reconcile_usage"][0]["cron"] == "30 2 * * *"
    # off: `billing alerts watch` delivers; the schedule is the fallback an operator turns on
    assert schedules["flows/alerts.py:deliver_alerts"] == [{"interval": 60, "active": False}]
    assert schedules["flows/backup.py:backup_database"][0]["cron"] == "0 3 * * *"


def test_billing_flows_deploy_creates_the_pool_and_the_deployments(tmp_path):
    environment = os.environ | {
        "PREFECT_API_URL": PREFECT_API_URL.value(),
        "BUDGET_TIMEZONE": "Europe/Berlin",
        "DATABASE_URL": f"sqlite:///{tmp_path / 'billing.db'}",
    }
    billing = [sys.executable, "-m", "service.cli"]
    for _ in range(2):  # a second deploy finds the pool and updates the deployments
        subprocess.run(
            [*billing, "flows", "deploy", "--project-dir", str(PROJECT_DIR)],
            env=environment,
            check=True,
            timeout=300,
            capture_output=True,
        )
    with get_client(sync_client=True) as client:
        pool = client.read_work_pool("billing")
        assert pool.type == "process"
        found = {d.name: d for d in client.read_deployments()}
    assert set(found) == {
        "monthly",
        "nightly",
        "nightly-backup",
        "every-minute",
        "provision-user",
        "resend-invite",
    }
    for name, deployment in found.items():
        assert deployment.work_pool_name == "billing"
        if name in ("provision-user", "resend-invite"):
            assert deployment.schedules == []
        else:
            assert deployment.global_concurrency_limit.limit == 1
    [every_minute] = found["every-minute"].schedules
    assert (every_minute.schedule.interval.total_seconds(), every_minute.active) == (60, False)
    monthly = found["monthly"]
    [schedule] = monthly.schedules
    assert (schedule.schedule.cron, schedule.schedule.timezone) == ("0 0 1 * *", "Europe/Berlin")
    assert monthly.pull_steps == [
        {"prefect.deployments.steps.set_working_directory": {"directory": str(PROJECT_DIR)}}
    ]


def test_every_parameter_has_a_description_and_a_malformed_value_is_refused_at_creation(
    tmp_path,
):
    """What the Prefect UI shows and checks: each deployment's parameter schema, as served."""
    environment = os.environ | {
        "PREFECT_API_URL": PREFECT_API_URL.value(),
        "DATABASE_URL": f"sqlite:///{tmp_path / 'billing.db'}",
    }
    subprocess.run(
        [sys.executable, "-m", "service.cli", "flows", "deploy", "--project-dir", str(PROJECT_DIR)],
        env=environment,
        check=True,
        timeout=300,
        capture_output=True,
    )
    with get_client(sync_client=True) as client:
        found = {d.name: d for d in client.read_deployments()}
        for deployment in found.values():
            properties = deployment.parameter_openapi_schema["properties"]
            assert properties, deployment.name
            for name, schema in properties.items():
                assert schema.get("description"), (deployment.name, name)
            assert deployment.enforce_parameter_schema, deployment.name
        period = found["monthly"].parameter_openapi_schema["properties"]["period"]
        assert any("pattern" in option for option in period["anyOf"])

        for deployment, parameters in [
            ("monthly", {"period": "Dec-2026"}),
            ("monthly", {"top_spenders": 0}),
            ("provision-user", {"email": "not-an-email", "product_id": "starter"}),
            ("resend-invite", {"email": "ada.example.com"}),
            ("nightly", {"litellm_days": 99}),
        ]:
            with pytest.raises(PrefectHTTPStatusError) as refused:
                client.create_flow_run_from_deployment(found[deployment].id, parameters=parameters)
            assert refused.value.response.status_code in (409, 422), refused.value.response.text
        run = client.create_flow_run_from_deployment(
            found["monthly"].id, parameters={"period": "2026-12"}
        )
        assert run.parameters == {"period": "2026-12"}
        client.delete_flow_run(run.id)


def _deploy_against(api_url: str, tmp_path: Path) -> subprocess.CompletedProcess:
    environment = os.environ | {
        "PREFECT_API_URL": api_url,
        "PREFECT_API_AUTH_STRING": "admin:not-the-password",
        "DATABASE_URL": f"sqlite:///{tmp_path / 'billing.db'}",
    }
    return subprocess.run(
        [sys.executable, "-m", "service.cli", "flows", "deploy", "--project-dir", str(PROJECT_DIR)],
        env=environment,
        timeout=120,
        capture_output=True,
        text=True,
    )


def test_billing_flows_deploy_says_when_the_prefect_api_does_not_answer(tmp_path):
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        dead = f"http://127.0.0.1:{probe.getsockname()[1]}/api"
    result = _deploy_against(dead, tmp_path)
    assert result.returncode == 1
    assert result.stderr.strip() == (
        f"billing: flows deploy: the Prefect API at {dead} does not answer (ConnectError):"
        " is the server up, and PREFECT_API_URL right?"
    )


class _RefusesEveryLogin(BaseHTTPRequestHandler):
    def do_POST(self) -> None:  # noqa: N802 - the name http.server calls
        self.send_response(401)
        self.send_header("Content-Type", "application/json")
        self.end_headers()
        self.wfile.write(b'{"exception_message": "Unauthorized"}')

    do_GET = do_POST  # noqa: N815 - the name http.server calls

    def log_message(self, *arguments) -> None:
        pass


def test_billing_flows_deploy_says_when_the_prefect_login_is_refused(tmp_path):
    """As a Prefect server with basic auth answers a wrong PREFECT_API_AUTH_STRING."""
    server = ThreadingHTTPServer(("127.0.0.1", 0), _RefusesEveryLogin)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        api = f"http://127.0.0.1:{server.server_address[1]}/api"
        result = _deploy_against(api, tmp_path)
    finally:
        server.shutdown()
        server.server_close()
    assert result.returncode == 1
    assert result.stderr.strip() == (
        f"billing: flows deploy: the Prefect API at {api} answered HTTP 401:"
        " PREFECT_API_AUTH_STRING is missing or wrong"
    )
    assert "not-the-password" not in result.stderr
