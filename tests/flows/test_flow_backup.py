"""backup-database run for real in the Prefect harness, on a real SQLite file."""

import sqlite3
from contextlib import closing

import pytest
from flow_helpers import seed_users
from prefect.exceptions import ParameterTypeError

from flows.backup import backup_database
from flows.common import opened_ledger


def test_each_run_adds_a_checked_copy_and_the_oldest_past_keep_go(flow_settings, tmp_path):
    with opened_ledger(flow_settings) as ledger:
        seed_users(ledger, {"ann": "1"})
    folder = tmp_path / "elsewhere"
    folder.mkdir()
    (folder / "by-hand.db").write_bytes(b"a copy made by hand")
    runs = [backup_database(folder=str(folder), keep=2) for _ in range(3)]
    made = [run["backup"] for run in runs]
    assert len(set(made)) == 3
    assert runs[2]["deleted"] == [made[0]]
    assert sorted(path.name for path in folder.iterdir()) == sorted(
        [made[1].rsplit("/", 1)[1], made[2].rsplit("/", 1)[1], "by-hand.db"]
    )
    with closing(sqlite3.connect(made[2])) as copy:
        assert copy.execute("SELECT id FROM users").fetchall() == [("ann",)]


def test_without_a_folder_copies_go_under_the_data_folder(flow_settings, tmp_path, monkeypatch):
    with opened_ledger(flow_settings):
        pass  # creates and migrates the database
    monkeypatch.setenv("DATA_DIR", str(tmp_path / "data"))
    run = backup_database()
    assert run["backup"].startswith(str(tmp_path / "data" / "backups"))


def test_keep_out_of_range_is_refused():
    """By the flow's parameter schema, before the run starts (the UI refuses it too)."""
    with pytest.raises(ParameterTypeError, match="keep"):
        backup_database(keep=0)
