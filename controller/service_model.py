"""How much of each minute's load the ready capacity serves in time, late, or refuses as busy.

A fluid queue, documented so the numbers can be checked by hand. ``rps_per_node`` is by definition
the rate one node sustains *within* the latency SLO, so arrivals up to the ready capacity are served
in time. Arrivals above it wait in a bounded queue that holds ``queue_seconds`` of the ready
capacity's work: they are served, but late (in the next sub-step, before new arrivals, as a FIFO
server would). What does not fit in the queue is answered "busy" at once. Sub-steps are the
trace's own intervals under a minute (per second for the request logs, two for a 30-s step), else
the whole minute, its count taken as spread evenly over it.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np


@dataclass
class ServiceTotals:
    arrived: float = 0.0
    in_time: float = 0.0
    late: float = 0.0
    busy: float = 0.0
    minutes_short: int = 0

    @property
    def sla_compliance(self) -> float:
        return self.in_time / self.arrived if self.arrived else 1.0

    def as_dict(self) -> dict:
        a = self.arrived or 1.0
        return {"sla_compliance": self.sla_compliance, "busy_share": self.busy / a, "late_share": self.late / a,
                "minutes_short": self.minutes_short}


class ServiceModel:
    def __init__(self, rps_per_node: float, queue_seconds: float):
        self.rps_per_node = rps_per_node
        self.queue_seconds = queue_seconds
        self.backlog = 0.0
        self.totals = ServiceTotals()

    def serve_minute(self, arrivals: np.ndarray | float, ready_nodes: int) -> tuple[float, float, float]:
        """Serve one minute of arrivals (a count, or per-second counts); returns (in_time, late, busy)."""
        sub = np.atleast_1d(np.asarray(arrivals, dtype=float))
        seconds = 60.0 / len(sub)
        capacity = ready_nodes * self.rps_per_node * seconds  # requests servable in time per sub-step
        queue_cap = ready_nodes * self.rps_per_node * self.queue_seconds
        in_time = late = busy = 0.0
        backlog = self.backlog
        for a in sub:
            served_late = min(backlog, capacity)
            backlog -= served_late
            late += served_late
            ok = min(a, capacity - served_late)
            in_time += ok
            excess = a - ok
            room = max(0.0, queue_cap - backlog)
            queued = min(excess, room)
            backlog += queued
            busy += excess - queued
        if backlog > queue_cap:  # capacity fell (nodes left): what no longer fits is refused
            busy += backlog - queue_cap
            backlog = queue_cap
        self.backlog = backlog
        total = float(sub.sum())
        t = self.totals
        t.arrived += total
        t.in_time += in_time
        t.late += late
        t.busy += busy
        if in_time < total - 1e-9:
            t.minutes_short += 1
        return in_time, late, busy

    def skip_minute(self) -> None:
        """A minute with no data (a gap): nothing is scored, the queue empties."""
        self.backlog = 0.0
