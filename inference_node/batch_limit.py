"""How many rows the node batches, after a batch ran out of the device's memory.

The start's memory probe finds the widest batch of the longest request that fits (model.fitting_batch), so a
batch that still runs out of memory while serving found the device shorter than it was at the start: another
process on the GPU, a fragmented allocator, or a ``--max-batch`` too wide that ``--no-warmup`` never probed.
The node then batches half as many rows, rather than fail every batch that wide. A node that stayed at half for
good would serve half of the requests/s the controller plans it for (``capacity.rps_per_node``) until it is
restarted, so once ``backoff_s`` have passed without running out again it tries twice as many, towards the
width it started with; each time it runs out again it waits twice as long before the next try. A width that is
simply too wide costs one batch of busy answers (retried by their clients) per try, at ever longer intervals:
10 minutes, then 20, 40, ... at the default. A node that has served at its full width for as long as its last
wait starts over at ``backoff_s`` the next time: a shortage of memory weeks later is not made to wait a day.
"""

from __future__ import annotations

import time
from typing import Callable

BACKOFF_CAP_S = 24 * 3600.0  # the longest the node waits before trying a wider batch again


class BatchLimit:
    """``value``: the rows the node batches now; ``ceiling``: the width it started with (``--max-batch``, or
    what the memory probe found). ``shrink(rows)`` after a batch of ``rows`` ran out of memory, ``regrow()``
    whenever the batcher looks (a new width, or None). ``backoff_s`` 0: never grows back."""

    def __init__(self, ceiling: int, backoff_s: float = 600.0, clock: Callable[[], float] = time.monotonic):
        self.ceiling = self.value = ceiling
        self.backoff_s = backoff_s
        self.clock = clock
        self.wait_s = backoff_s  # before the next try: doubled by each time it runs out of memory again
        self.next_try: float | None = None  # when to try a wider batch; None: not below the ceiling, or never
        self.shortages = 0  # batches that ran out of the device's memory
        self.whole_since: float | None = None  # when it last came back to its full width

    def shrink(self, rows: int) -> int | None:
        """A batch of ``rows`` ran out of the device's memory: the new width, half that batch's, or None where
        the width is already that low (every row of one batch reports the same failure)."""
        fewer = max(1, rows // 2)
        if fewer >= self.value:
            return None
        healthy = self.whole_since is not None and self.clock() - self.whole_since >= self.wait_s
        if healthy:  # at full width for as long as it last waited: start over
            self.wait_s = self.backoff_s
        elif self.shortages:  # out of memory again soon: wait longer before the next try
            self.wait_s = min(2 * self.wait_s, BACKOFF_CAP_S)
        self.whole_since = None
        self.shortages += 1
        self.value = fewer
        self.next_try = self.clock() + self.wait_s if self.backoff_s > 0 else None
        return fewer

    def regrow(self) -> int | None:
        """Twice the width (at most the ceiling) where the wait since the last change is over, else None."""
        if self.next_try is None or self.clock() < self.next_try:
            return None
        self.value = min(self.ceiling, 2 * self.value)
        whole = self.value >= self.ceiling
        self.next_try = None if whole else self.clock() + self.wait_s
        self.whole_since = self.clock() if whole else None
        return self.value
