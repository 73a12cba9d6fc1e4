"""Prefect flows over ``core``: the scheduled and long-running work of the ledger."""
