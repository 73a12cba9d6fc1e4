"""What ``run_waitress`` does to the heap before serving (``service.server.freeze_startup_heap``)."""

import gc
import weakref

from service.server import freeze_startup_heap


class _Node:
    """An object that can sit in a reference cycle."""

    partner: "_Node"


def test_freeze_collects_startup_garbage_then_freezes_what_lives() -> None:
    first, second = _Node(), _Node()
    first.partner, second.partner = second, first
    garbage = weakref.ref(first)
    del first, second
    survivor = _Node()
    try:
        freeze_startup_heap()
        assert garbage() is None, "a cycle left over from start-up must be collected, not kept"
        assert gc.get_freeze_count() > 0
        assert gc.is_tracked(survivor)
        assert all(tracked is not survivor for tracked in gc.get_objects()), "not frozen"
    finally:
        gc.unfreeze()
