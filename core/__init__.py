"""The ledger's domain and storage: no HTTP, no Prefect."""
