"""Memories of bounded size, kept per user by the callback: the least recently written goes
first."""

from collections import OrderedDict
from typing import TypeVar

K = TypeVar("K")
V = TypeVar("V")


def remember(entries: OrderedDict[K, V], key: K, value: V, entries_max: int) -> None:
    """Set ``key`` to ``value`` as the most recent entry; drop the oldest past ``entries_max``."""
    entries[key] = value
    entries.move_to_end(key)
    while len(entries) > entries_max:
        entries.popitem(last=False)
