"""One way to wait for a condition: poll it until it holds or a deadline passes.

Every wait in pgwarden (a server to accept connections, a replica to replay up to a
position, a promoted server to leave recovery, a test's expectation) is the same loop;
this is that loop, once. It never raises on time-out: the caller knows what it waited
for and says so in its own error.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import TypeVar

T = TypeVar("T")


def poll_until(
    check: Callable[[], T],
    *,
    timeout_s: float,
    interval_s: float = 0.05,
    clock: Callable[[], float] = time.monotonic,
    sleep: Callable[[float], None] = time.sleep,
) -> T:
    """Call ``check`` until it returns something truthy or ``timeout_s`` has passed.

    Returns the first truthy result, or the last (falsy) one at the deadline. ``check``
    runs at least once, even with ``timeout_s <= 0``, and once more at the deadline, so a
    condition that becomes true during the last sleep is not missed. Sleeps never run
    past the deadline. Exceptions from ``check`` propagate unchanged.
    """
    deadline = clock() + timeout_s
    while True:
        result = check()
        if result:
            return result
        remaining_s = deadline - clock()
        if remaining_s <= 0:
            return result
        sleep(min(interval_s, remaining_s))
