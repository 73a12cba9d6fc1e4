"""Prefect flows over ``core``: the scheduled and long-running work (reset, provisioning, reconciliation)."""
