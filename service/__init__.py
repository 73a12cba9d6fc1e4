"""The process runtime: the ``billing`` command, its supervisor and workers, waitress, logs and
process metrics; it wires ``api``, ``flows`` and ``adapters`` together."""
