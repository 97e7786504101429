"""Errors the engine raises for conditions a user caused; the HTTP layer maps them to 4xx.

`ValueError` (bad input) -> 422, `NotFound` -> 404, `Conflict` -> 409. Messages say what was
expected and what came, with the numbers.
"""


class NotFound(LookupError):
    """A collection, vector or job that does not exist."""


class Conflict(RuntimeError):
    """A request that clashes with the current state (collection exists, rebuild running)."""
