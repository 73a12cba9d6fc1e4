"""The process runtime that wires ``api``, ``flows`` and ``adapters`` into ``billing``."""
