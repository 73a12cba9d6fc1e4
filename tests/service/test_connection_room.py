"""Which connection makes room for a new one at the connection limit
(``service.server.ConnectionRoom``); through a real worker in tests/hostile/test_connections.py."""

from service.server import IDLE_CONNECTION_SCAN_MAX, ConnectionRoom


class Connection:
    """What the room reads of a waitress channel: its requests being answered, and the flag
    that has waitress's loop close it."""

    def __init__(self) -> None:
        self.requests: list[object] = []
        self.will_close = False


def opened(room: ConnectionRoom, count: int) -> list[Connection]:
    connections = [Connection() for _ in range(count)]
    for connection in connections:
        room.opened(connection)  # type: ignore[arg-type]
    return connections


def closed(connections: list[Connection]) -> list[int]:
    return [index for index, connection in enumerate(connections) if connection.will_close]


def test_up_to_its_capacity_no_connection_is_closed() -> None:
    connections = opened(ConnectionRoom(3), 3)
    assert closed(connections) == []


def test_a_connection_past_capacity_closes_the_least_recently_used_idle_one() -> None:
    room = ConnectionRoom(3)
    connections = opened(room, 3)
    room.used(connections[0])  # a request received on the oldest: now the most recently used
    newcomer = opened(room, 1)
    assert closed(connections) == [1]
    assert closed(newcomer) == []
    room.closed(connections[1])  # waitress's loop closed it
    opened(room, 1)
    assert closed(connections) == [1, 2]


def test_a_connection_with_a_request_being_answered_is_never_closed() -> None:
    room = ConnectionRoom(2)
    busy, idle = opened(room, 2)
    busy.requests.append(object())
    opened(room, 1)
    assert (busy.will_close, idle.will_close) == (False, True)


def test_when_every_other_connection_is_busy_the_newcomer_stays_and_none_is_closed() -> None:
    room = ConnectionRoom(2)
    connections = opened(room, 2)
    for connection in connections:
        connection.requests.append(object())
    newcomer = opened(room, 1)
    assert closed(connections + newcomer) == []


def test_the_search_for_an_idle_connection_is_bounded() -> None:
    room = ConnectionRoom(IDLE_CONNECTION_SCAN_MAX + 1)
    connections = opened(room, IDLE_CONNECTION_SCAN_MAX + 1)
    for connection in connections[:IDLE_CONNECTION_SCAN_MAX]:
        connection.requests.append(object())
    opened(room, 1)
    assert closed(connections) == [], "the idle one lies past the scan's bound"


def test_a_connection_already_closing_is_not_chosen_again() -> None:
    room = ConnectionRoom(1)
    connections = opened(room, 3)  # each newcomer closes one: the first, then the second
    assert closed(connections) == [0, 1]
