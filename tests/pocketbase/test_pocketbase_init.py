"""`billing pocketbase init` against a real PocketBase: adds the fields once, then changes nothing."""

import os
import subprocess
import sys

from pocketbase_server import PocketBaseServer

from adapters.pocketbase import BILLING_FIELDS


def billing(pocketbase: PocketBaseServer, *args: str, **env: str) -> subprocess.CompletedProcess:
    environment = {**os.environ, **pocketbase.environment(), **env}
    return subprocess.run(
        [sys.executable, "-m", "service.cli", *args],
        env=environment,
        capture_output=True,
        text=True,
        timeout=120,
    )


def collection(pocketbase: PocketBaseServer, name: str) -> dict:
    with pocketbase.admin() as client:
        reply = client.get(f"/api/collections/{name}")
        reply.raise_for_status()
        return reply.json()


def test_init_adds_the_fields_and_a_second_run_is_a_no_op(pocketbase):
    before = collection(pocketbase, "users")
    first = billing(pocketbase, "pocketbase", "init")
    assert first.returncode == 0, first.stderr
    assert first.stdout.strip() == "users: added fields user_id, product_id, tenant_id"
    after = collection(pocketbase, "users")
    fields = {field["name"]: field for field in after["fields"]}
    for name in BILLING_FIELDS:
        assert fields[name]["type"] == "text"
    # The collection's own fields (email, password, …) are all kept, with their ids.
    kept = {field["id"] for field in before["fields"]}
    assert kept <= {field["id"] for field in after["fields"]}

    second = billing(pocketbase, "pocketbase", "init")
    assert second.returncode == 0, second.stderr
    assert second.stdout.strip() == "users: fields are up to date"
    assert collection(pocketbase, "users")["fields"] == after["fields"]


def test_init_creates_a_missing_auth_collection(pocketbase):
    run = billing(pocketbase, "pocketbase", "init", POCKETBASE_COLLECTION="customers")
    assert run.returncode == 0, run.stderr
    created = collection(pocketbase, "customers")
    assert created["type"] == "auth"
    assert set(BILLING_FIELDS) <= {field["name"] for field in created["fields"]}


def test_init_names_the_problem_and_never_prints_the_admin_password(pocketbase):
    wrong = billing(pocketbase, "pocketbase", "init", POCKETBASE_ADMIN_PASSWORD="not-the-password")
    assert wrong.returncode == 1
    assert "POCKETBASE_ADMIN_PASSWORD" in wrong.stderr
    assert "not-the-password" not in wrong.stderr + wrong.stdout
    unset = billing(pocketbase, "pocketbase", "init", POCKETBASE_URL="")
    assert unset.returncode == 2
    assert "POCKETBASE_URL" in unset.stderr
