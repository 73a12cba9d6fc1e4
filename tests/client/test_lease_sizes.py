"""``client.lease_sizes.LeaseSizes``: a worker's slices of a user's budget grow while they are
spent and start small again after a pause."""

from client.lease_sizes import LeaseSizes


def test_each_spent_slice_doubles_the_next_up_to_the_maximum() -> None:
    sizes = LeaseSizes(calls_first=20, calls_max=100, users_max=10)
    seen = [sizes.calls("ada")]
    for _ in range(4):
        sizes.spent("ada", seen[-1])
        seen.append(sizes.calls("ada"))
    assert seen == [20, 40, 80, 100, 100]


def test_a_pause_starts_the_next_slice_small_again() -> None:
    sizes = LeaseSizes(calls_first=20, calls_max=1_000, users_max=10)
    sizes.spent("ada", 20)
    sizes.spent("ada", 40)
    sizes.paused("ada")
    assert sizes.calls("ada") == 20


def test_users_grow_apart() -> None:
    sizes = LeaseSizes(calls_first=20, calls_max=1_000, users_max=10)
    sizes.spent("ada", 20)
    assert (sizes.calls("ada"), sizes.calls("bob")) == (40, 20)


def test_the_maximum_is_never_below_the_first_size() -> None:
    sizes = LeaseSizes(calls_first=50, calls_max=10, users_max=10)
    sizes.spent("ada", 50)
    assert sizes.calls("ada") == 50


def test_past_users_max_the_least_recently_grown_user_starts_small() -> None:
    sizes = LeaseSizes(calls_first=20, calls_max=1_000, users_max=2)
    for user in ("ada", "bob", "cy"):
        sizes.spent(user, 20)
    assert [sizes.calls(user) for user in ("ada", "bob", "cy")] == [20, 40, 40]
