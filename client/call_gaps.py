"""How long a worker keeps a user's unused slice after their last call: a few of the user's
usual gaps between calls on that worker, within set bounds.

A slice that goes back while the user is still calling costs two round trips more (its release,
and the next slice's hold), and the next slice starts small again. In the gateway bench (two
proxy workers, 100 users each calling about once every 0.7 s on each worker) slices kept for a
fixed 500 ms went back between most calls and left 0.68× of the no-budget proxy's throughput,
kept for 5 s 0.92× in the same run (in another, 0.77× against 0.85× kept for 2 s). A user
calling every few milliseconds has their slice back within the lower bound of a pause, so the
end of a budget settles as soon as before.
"""

from collections import OrderedDict

from client.recent import remember

# A slice stays for this many of the user's mean gaps: gaps between calls spread widely (for
# calls arriving at random, one gap in 55 is past four times the mean, one in 3,000 past eight).
IDLE_GAPS = 8
# How much each new gap moves the mean: a quarter, so one long pause does not set it alone.
GAP_WEIGHT = 0.25


class CallGaps:
    """Per user, when their last call on this worker came and the mean gap between their calls;
    at most ``users_max`` users are remembered (the least recently called forgotten first)."""

    def __init__(self, idle_seconds_min: float, idle_seconds_max: float, users_max: int) -> None:
        assert 0 < idle_seconds_min and users_max >= 1
        self.idle_seconds_min = idle_seconds_min
        self.idle_seconds_max = max(idle_seconds_min, idle_seconds_max)
        self.users_max = users_max
        self._calls: OrderedDict[str, tuple[float, float | None]] = OrderedDict()

    def called(self, user_id: str, now: float) -> bool:
        """Note a call at ``now`` (monotonic seconds); whether it came within the idle time of
        the user's previous call, that is whether a slice taken then would still be here."""
        previous = self._calls.get(user_id)
        if previous is None:
            remember(self._calls, user_id, (now, None), self.users_max)
            return False
        last, gap_mean = previous
        gap = min(max(0.0, now - last), self.idle_seconds_max)
        gap_mean_next = gap if gap_mean is None else gap_mean + GAP_WEIGHT * (gap - gap_mean)
        remember(self._calls, user_id, (now, gap_mean_next), self.users_max)
        return now - last < self._idle_seconds(gap_mean)

    def idle_seconds(self, user_id: str) -> float:
        """How long the user's slice may stay unused before it goes back."""
        previous = self._calls.get(user_id)
        return self._idle_seconds(None if previous is None else previous[1])

    def _idle_seconds(self, gap_mean: float | None) -> float:
        """Before a user's second call there is no gap to go by: the upper bound."""
        if gap_mean is None:
            return self.idle_seconds_max
        return min(max(IDLE_GAPS * gap_mean, self.idle_seconds_min), self.idle_seconds_max)
