"""Usage a gateway worker keeps in memory until its next flush, and what one flush sends."""

from collections.abc import Iterator
from typing import Generic, TypeVar

Item = TypeVar("Item")


class UsageQueue(Generic[Item]):
    """Items in the order they came, at most ``items_max``; a flush sends them in batches.

    A flush sends only what was queued when it began. Draining until the queue was empty sent,
    under load, a batch of one or two records per round trip back to back: calls end while a
    batch is on its way, so each flush of a two-worker proxy sent about ten, whatever the
    flush interval.
    """

    def __init__(self, items_max: int, batch_items_max: int) -> None:
        assert items_max >= 1 and batch_items_max >= 1
        self._items: list[Item] = []
        self._items_max = items_max
        self._batch_items_max = batch_items_max

    def __len__(self) -> int:
        return len(self._items)

    def full(self) -> bool:
        return len(self._items) >= self._items_max

    def batch_ready(self) -> bool:
        """Whether a whole batch is waiting: worth a flush before the interval ends."""
        return len(self._items) >= self._batch_items_max

    def put(self, item: Item) -> None:
        assert not self.full(), "put on a full queue: the caller spools instead"
        self._items.append(item)

    def batches(self) -> Iterator[list[Item]]:
        """The items queued now, ``batch_items_max`` at a time. Each batch leaves the queue as
        it is taken, so what is still queued when the loop stops (``take_all``) is kept."""
        items_left = len(self._items)
        while items_left > 0 and self._items:
            batch = self._items[: min(items_left, self._batch_items_max)]
            del self._items[: len(batch)]
            items_left -= len(batch)
            yield batch

    def take_all(self) -> list[Item]:
        taken, self._items = self._items, []
        return taken
