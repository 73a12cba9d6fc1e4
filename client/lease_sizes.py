"""How many call estimates a worker's next slice of a user's budget holds: twice the last one's
while the user spends slices, the starting size again once they pause.

Each new slice is one round trip that the user's calls on that worker wait for. In the gateway
bench (two proxy workers, every call one user's, six alternating rounds) slices of 20 estimates
left 0.83× of the no-budget proxy's throughput and slices of 1,000 left 0.95×, the proxy's CPU
per call then within 2% of the no-budget proxy's; flushing usage 20 times less often instead
left 0.86×. A slice is still at most a share of what the user has left (the callback's
``lease_share_percent``), so a larger count strands no more than that share.
"""

from collections import OrderedDict

from client.recent import remember


class LeaseSizes:
    """The next slice's size in call estimates, per user; at most ``users_max`` users are
    remembered (the least recently sized forgotten first: they start small again)."""

    def __init__(self, calls_first: int, calls_max: int, users_max: int) -> None:
        assert calls_first >= 1 and users_max >= 1
        self.calls_first = calls_first
        self.calls_max = max(calls_first, calls_max)
        self.users_max = users_max
        self._next: OrderedDict[str, int] = OrderedDict()

    def calls(self, user_id: str) -> int:
        return self._next.get(user_id, self.calls_first)

    def spent(self, user_id: str, calls: int) -> None:
        """A slice of ``calls`` estimates ran out of room while the user was calling."""
        remember(self._next, user_id, min(2 * calls, self.calls_max), self.users_max)

    def paused(self, user_id: str) -> None:
        """A slice went back unspent (the user stopped calling) or was given up for a denied
        call: the next one starts at ``calls_first``."""
        self._next.pop(user_id, None)
