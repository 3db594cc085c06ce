"""Plain data the control cycle reads and writes: what the cluster holds, what was observed,
what was decided and why, and what the controller must remember between cycles.
"""

from __future__ import annotations

from collections import deque
from dataclasses import dataclass, field
from typing import NamedTuple

import numpy as np
import pandas as pd

from controller.policy import CLASSES
from controller.surprises import Surprises

# failed: a node that is there (and paid) but will not turn ready by itself: its container crash-loops or
# cannot pull its image. Not capacity on its way; released first.
STATES = ("pending", "booting", "warming", "ready", "draining", "failed")


@dataclass(frozen=True)
class Decision:
    """Desired node count of one capacity class, and why. Actuators apply; they decide nothing."""

    cls: str
    desired: int
    current: int
    reason: str

    @property
    def delta(self) -> int:
        return self.desired - self.current


def on_cycle_clock(t):
    """A time (a datetime, a Timestamp or an index of them) as the cycle's clock reads it: UTC, naive, as
    the daemon's clock and replay's are. A time without a zone is UTC already; one with an offset is
    converted (not the machine's local time, and not its own wall clock with the offset dropped)."""
    if t.tzinfo is None:
        return t
    if not isinstance(t, (pd.Timestamp, pd.DatetimeIndex)):
        t = pd.Timestamp(t)
    return t.tz_convert("UTC").tz_localize(None)


class Start(NamedTuple):
    """A node that became ready: its class, minutes from when it was asked for to ready, and how many of
    them it waited for the scheduler (a node for it; on Kubernetes only, 0 where nobody can tell)."""

    cls: str
    minutes: float
    unscheduled_min: float = 0.0


def paid_minutes_left(elapsed_min: int, block_min: int) -> int:
    """Minutes until a node running ``elapsed_min`` minutes reaches the end of its billing block (0 there)."""
    return (-elapsed_min) % block_min


@dataclass
class ClusterView:
    """Node counts per class and state, as the actuator sees the cluster now."""

    counts: dict[str, dict[str, int]] = field(default_factory=lambda: {c: dict.fromkeys(STATES, 0) for c in CLASSES})
    spot_available: bool = True
    spot_unavailable_why: str | None = None  # what showed it, where the actuator can tell (on Kubernetes)
    # The spot node asked for that has waited longest for capacity, where the actuator can tell (on
    # Kubernetes): (what waits, minutes), e.g. ("spot pod s5 unscheduled", 25.0). Past spot's lead time,
    # spot cannot be had (``judge_spot``).
    spot_wait: tuple[str, float] | None = None
    # Pods asked for that are not being created (a quota, an admission webhook refusing them), per
    # workload: "llm-spot: 3 pod(s) not created (FailedCreate: ...)". They count as pending meanwhile.
    uncreated: list[str] = field(default_factory=list)
    lead_samples: list[Start] = field(default_factory=list)  # nodes that became ready since the last view
    preempted: int = 0  # spot nodes preempted since the last view
    # Minutes until each ready node's paid billing block ends, per class billed by the hour (or any
    # block over a minute), where the actuator knows: such a node serves for free until then.
    paid_left: dict[str, list[int]] = field(default_factory=dict)
    failures: list[str] = field(default_factory=list)  # why each failed node failed, e.g. "llm-spot-7d9f: CrashLoopBackOff"
    # Other autoscalers that scale the same workloads (an HPA left in place): each undoes the other's
    # replicas, e.g. "HorizontalPodAutoscaler llm-spot-hpa scales Deployment llm-spot too".
    conflicts: list[str] = field(default_factory=list)

    def judge_spot(self, lead_min: float) -> None:
        """Spot cannot be had when a spot node has waited for capacity (unscheduled, or not even created)
        longer than spot's whole lead time (the one the cycle plans with: learned p95 once measured, else
        the policy's): on-demand must cover it."""
        if self.spot_wait is not None and self.spot_wait[1] > lead_min:
            what, waited = self.spot_wait
            self.spot_available = False
            self.spot_unavailable_why = f"{what} for {waited:.0f} min (spot's lead time is {lead_min:g} min)"

    def waits_for_spot(self, what: str, minutes: float) -> None:
        """Note a spot node waiting for capacity; the longest wait is the one judged."""
        if self.spot_wait is None or minutes > self.spot_wait[1]:
            self.spot_wait = (what, minutes)

    def alive(self, cls: str) -> int:
        """Nodes that are serving or on their way (not pending, not draining)."""
        c = self.counts[cls]
        return c["booting"] + c["warming"] + c["ready"]

    def active(self, cls: str) -> int:
        """Nodes the class's workload counts as its replicas: everything asked for and not released."""
        c = self.counts[cls]
        return c["pending"] + c["booting"] + c["warming"] + c["ready"] + c["failed"]

    def ready(self, cls: str | None = None) -> int:
        return sum(self.counts[c]["ready"] for c in ([cls] if cls else CLASSES))

    def warming(self, cls: str) -> int:
        c = self.counts[cls]
        return c["booting"] + c["warming"]

    def failed(self, cls: str | None = None) -> int:
        return sum(self.counts[c]["failed"] for c in ([cls] if cls else CLASSES))


@dataclass(frozen=True)
class Observation:
    """The live signals of the last minute. ``load_rps`` is None when there is no data (a gap); ``stale``
    when the signals could not be read and the last known load stands in (a floor, not a measurement)."""

    now: np.datetime64
    load_rps: float | None
    busy_share: float = 0.0
    stale: bool = False


@dataclass(frozen=True)
class MinuteForecast:
    """Forecast load in requests/s for each minute from ``start``; columns q50, q90, q99."""

    start: np.datetime64
    rps: np.ndarray  # (minutes, 3)
    model: str = ""
    status: str = "ok"
    step_min: float = 1.0  # the step of the history it was made from: fresh, it starts up to a step ago


@dataclass
class Memory:
    """What the controller carries from one cycle to the next (persisted in the store when live)."""

    recent_targets: deque = field(default_factory=lambda: deque(maxlen=240))  # (minute, total target)
    lead_samples: dict[str, list[float]] = field(default_factory=lambda: {c: [] for c in CLASSES})

    last_load_rps: float | None = None  # the last observed load: the reactive floor while signals are down
    surprises: Surprises = field(default_factory=Surprises)  # missed surges, and whether they last
    _p95: dict[str, float] = field(default_factory=dict, repr=False, compare=False)  # cache, reset by learn()

    def to_json(self) -> dict:
        return {"recent_targets": [[str(t), int(v)] for t, v in self.recent_targets],
                "lead_samples": self.lead_samples, "last_load_rps": self.last_load_rps,
                "surprises": self.surprises.to_json()}

    @classmethod
    def from_json(cls, data: dict) -> Memory:
        memory = cls()
        memory.recent_targets.extend((np.datetime64(t, "m"), v) for t, v in data.get("recent_targets", []))
        memory.lead_samples.update({k: list(v) for k, v in data.get("lead_samples", {}).items()})
        memory.last_load_rps = data.get("last_load_rps")
        memory.surprises = Surprises.from_json(data.get("surprises", {}))
        return memory

    def lead_p95(self, cls: str) -> float:
        """p95 of the measured lead times of a class (cached: the cycle asks every minute)."""
        if cls not in self._p95:
            self._p95[cls] = float(np.percentile(self.lead_samples[cls], 95))
        return self._p95[cls]

    def learn(self, samples: list[Start]) -> None:
        for cls, minutes, _ in samples:
            self._p95.pop(cls, None)
            bucket = self.lead_samples[cls]
            bucket.append(minutes)
            if len(bucket) > 500:
                del bucket[: len(bucket) - 500]
