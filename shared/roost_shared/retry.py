"""Retry policies (tenacity) shared by every service, so back-off behaves the same everywhere."""

from __future__ import annotations

import logging
import random
from collections.abc import Iterator
from typing import TYPE_CHECKING

if TYPE_CHECKING:  # imported when first used: processes that never retry a start-up skip it
    from tenacity import AsyncRetrying

log = logging.getLogger(__name__)


def until_available(
    what: str,
    *,
    deadline_s: float = 60.0,
    exceptions: tuple[type[BaseException], ...] = (Exception,),
) -> AsyncRetrying:
    """Retry a start-up connection (database, broker) with jittered back-off up to a deadline.

    Usage: ``async for attempt in until_available("broker"): with attempt: await connect()``.
    """
    from tenacity import (
        AsyncRetrying,
        before_sleep_log,
        retry_if_exception_type,
        stop_after_delay,
        wait_exponential_jitter,
    )

    return AsyncRetrying(
        retry=retry_if_exception_type(exceptions),
        wait=wait_exponential_jitter(multiplier=0.2, max=5.0),
        stop=stop_after_delay(deadline_s),
        before_sleep=before_sleep_log(log, logging.WARNING),
        reraise=True,
    )


def backoff(initial: float = 0.2, cap: float = 30.0, factor: float = 3.0) -> Iterator[float]:
    """An endless sequence of delays for long-running loops (relays, webhook delivery).

    Decorrelated jitter (each delay drawn between ``initial`` and ``factor`` times the previous
    one, at most ``cap``): many processes that failed together (a broker or database restart)
    do not retry together, and every delay stays within ``[initial, cap]``.
    """
    delay = initial
    while True:
        delay = min(cap, random.uniform(initial, delay * factor))
        yield delay
