"""Back-off delays are jittered (processes that failed together do not retry together) and stay
within their bounds."""

from __future__ import annotations

from itertools import islice

from yarl import URL

from roost_shared.bus import JitteredRobustConnection
from roost_shared.retry import backoff


def test_backoff_delays_vary_and_stay_within_initial_and_cap():
    delays = list(islice(backoff(initial=0.2, cap=5.0), 2000))
    assert all(0.2 <= d <= 5.0 for d in delays)
    assert len({round(d, 6) for d in delays}) > 1000  # not a fixed schedule
    assert max(delays) == 5.0  # it does reach the cap


def test_two_processes_failing_together_do_not_retry_together():
    a = list(islice(backoff(initial=0.5, cap=30.0), 10))
    b = list(islice(backoff(initial=0.5, cap=30.0), 10))
    assert a != b
    # The first retries are spread over [initial, 3 * initial], not all at initial.
    firsts = [next(backoff(initial=0.5, cap=30.0)) for _ in range(500)]
    assert min(firsts) < 0.7 and max(firsts) > 1.3
    assert all(0.5 <= f <= 1.5 for f in firsts)


def test_backoff_grows_towards_the_cap():
    runs = [list(islice(backoff(initial=0.1, cap=10.0), 12)) for _ in range(200)]
    early = sum(r[0] for r in runs) / len(runs)
    late = sum(r[-1] for r in runs) / len(runs)
    assert late > 10 * early


async def test_broker_reconnect_intervals_vary_within_bounds_and_restart_when_connected():
    connection = JitteredRobustConnection(URL("amqp://guest:guest@127.0.0.1:1/"))
    low, high = connection.RECONNECT_INITIAL_S, connection.RECONNECT_CAP_S
    intervals = [connection.reconnect_interval for _ in range(500)]
    assert all(low <= i <= high for i in intervals)
    assert len({round(i, 6) for i in intervals}) > 100
    assert max(intervals) == high
    connection._restart_delays()  # what a successful connection does
    assert connection.reconnect_interval <= 3 * low
