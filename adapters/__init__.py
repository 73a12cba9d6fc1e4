"""Adapters to outside systems over HTTP (httpx), behind interfaces defined in ``core``."""
