"""The HTTP API's contract, shared by the server (``api``) and the client (``client``).

``wire.schemas`` holds the request and response models, ``wire.money`` how they read and
publish amounts. The contract imports pydantic and core's modules of plain values
(``core.money``, ``core.periods``, ``core.identifiers``) and nothing else, so the client can be
installed without the server.
"""
