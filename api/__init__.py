"""The HTTP API: a thin Falcon app over ``core`` (parse, call, render)."""

__version__ = "0.1.0"
