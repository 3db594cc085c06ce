"""Is the policy's capacity per node the nodes' own?

Every plan is sized on ``capacity.rps_per_node``. Set too high (measured with shorter answers than the
service's, on a faster GPU, or copied from another service), every peak is planned short: the nodes
answer busy before the plan thinks them full, and only the safety net catches up, a lead time late.
Nothing else would say why. So each cycle the load offered per ready node is set against the busy
share: nodes that shed load (``BUSY_SHARE`` of their answers busy) while under ``BELOW`` of the
capacity the policy gives them, in most of the last cycles (``ALARM`` of ``WINDOW``), say the capacity
is overstated, with the load per node at which they did. Too low a capacity shows nothing at run time
(the nodes simply are never full): `peakpilot profile` measures a node either way.

In the simulated cluster the nodes serve exactly the policy's capacity, so it never fires there.
"""

from __future__ import annotations

from collections import deque
from dataclasses import dataclass, field

import numpy as np

WINDOW = 15  # cycles looked back on
ALARM = 10  # of them with busy answers under BELOW of the capacity: said
CLEAR = 5  # ... fewer than this: no longer
BUSY_SHARE = 0.01  # busy answers that count as shedding (the safety net's trigger is finer: it reacts, this judges)
BELOW = 0.8  # offered load per ready node, as a share of the policy's capacity, under which shedding is early


@dataclass
class CapacityCheck:
    rps_per_node: float
    # each observed cycle's load per ready node where the nodes shed under BELOW of the capacity, else None
    seen: deque = field(default_factory=lambda: deque(maxlen=WINDOW))
    flagged: bool = False

    def observe(self, load_rps: float | None, busy_share: float, ready: int) -> str | None:
        """Record a cycle (one without a load or a ready node says nothing); the line that needs a look
        while the capacity looks overstated, else None."""
        if load_rps is not None and ready >= 1:
            per_node = load_rps / ready
            early = busy_share >= BUSY_SHARE and per_node < BELOW * self.rps_per_node
            self.seen.append(per_node if early else None)
            hits = sum(x is not None for x in self.seen)
            self.flagged = hits >= ALARM or (self.flagged and hits >= CLEAR)
        return self.line()

    def line(self) -> str | None:
        if not self.flagged:
            return None
        hits = [x for x in self.seen if x is not None]
        at = float(np.median(hits))
        return (f"capacity.rps_per_node {self.rps_per_node:g} looks too high: the ready nodes answered busy at "
                f"{at:.1f} req/s each ({at / self.rps_per_node:.0%} of it) in {len(hits)} of the last "
                f"{len(self.seen)} cycles, so every rise is planned short (measure a node: peakpilot profile)")

    def set_capacity(self, rps_per_node: float) -> None:
        """A reloaded policy's capacity: what was seen judged the old one."""
        if rps_per_node != self.rps_per_node:
            self.rps_per_node, self.flagged = rps_per_node, False
            self.seen.clear()
