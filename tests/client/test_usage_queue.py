"""``client.usage_queue.UsageQueue``: a flush sends what was queued when it began, no more."""

import pytest

from client.usage_queue import UsageQueue


def five_queued() -> UsageQueue[int]:
    queue: UsageQueue[int] = UsageQueue(items_max=100, batch_items_max=2)
    for item in range(5):
        queue.put(item)
    return queue


def test_a_flush_sends_what_was_queued_when_it_began_in_batches() -> None:
    queue = five_queued()
    flush = queue.batches()
    assert next(flush) == [0, 1]
    queue.put(5)  # a call ends while the first batch is on its way
    queue.put(6)
    assert list(flush) == [[2, 3], [4]]
    assert queue.take_all() == [5, 6]


def test_what_a_stopped_flush_did_not_take_stays_queued() -> None:
    queue = five_queued()
    flush = queue.batches()
    assert next(flush) == [0, 1]
    flush.close()  # the send failed or the loop is stopping
    assert queue.take_all() == [2, 3, 4]
    assert list(queue.batches()) == []


def test_the_queue_is_bounded_and_says_when_a_batch_is_ready() -> None:
    queue: UsageQueue[int] = UsageQueue(items_max=3, batch_items_max=2)
    queue.put(0)
    assert not queue.batch_ready()
    queue.put(1)
    assert queue.batch_ready()
    queue.put(2)
    assert queue.full() and len(queue) == 3
    with pytest.raises(AssertionError):
        queue.put(3)
