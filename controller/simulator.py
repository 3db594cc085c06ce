"""The simulated cluster: the embedded default actuator, and the one ``replay`` runs against.

Nodes move through pending -> booting -> warming -> ready -> draining -> gone. A started node is
ready after its class's lead time (normal, mean and spread from the policy, at least a minute); the
last 30% of it is warm-up. Spot is a seeded random process: each spot node is preempted with the
policy's hourly rate (it stops taking work at the notice and is gone when the notice runs out), and
spot capacity alternates between available and unavailable (mean outage from the policy, long-run
availability as the policy says); a spot node asked for while spot is unavailable waits pending.
Reserved nodes are committed: they run (and are paid) all the time. Billing rounds each node's time
up to its class's billing granularity. Injected faults (``Faults``) add preemption waves, spot outages,
slower starts, and starts that never turn ready (*failed*: paid, serving nothing, released first).
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np

from controller.policy import CLASSES, Policy
from controller.state import ClusterView, Decision, Start, paid_minutes_left

WARMUP_SHARE = 0.3
DRAIN_MIN = 1


@dataclass
class Node:
    cls: str
    requested: int  # minute index
    state: str = "pending"
    started: int = -1
    ready_at: int = -1
    gone_at: int = -1


@dataclass
class Faults:
    """Injected faults for tests and what-ifs (on top of the policy's random processes)."""

    lead_time_factor: float = 1.0
    spot_unavailable: tuple[tuple[int, int], ...] = ()  # minute ranges [a, b)
    preemption_wave: tuple[tuple[int, float], ...] = ()  # (minute, share of spot nodes preempted)
    failed_start_share: float = 0.0  # share of started nodes that never turn ready (a model that does not load)


class SimulatedCluster:
    def __init__(self, policy: Policy, reserved: int = 0, seed: int = 0, faults: Faults | None = None,
                 release_paid_out_first: bool = True):
        self.policy = policy
        # peakpilot releases the node whose paid billing block ends soonest; Kubernetes' own scale-down
        # (what HPA gets) takes the newest pod, which replay's reactive baselines keep.
        self.release_paid_out_first = release_paid_out_first
        self.rng = np.random.default_rng(seed)
        self.faults = faults or Faults()
        self.minute = 0
        self.nodes: list[Node] = [Node("reserved", 0, "ready", 0, 0) for _ in range(reserved)]
        self.spot_available = True
        self._forced = False
        self.billed_minutes = dict.fromkeys(CLASSES, 0.0)
        self.cold_starts = 0
        self.preemptions = 0
        self._lead_samples: list[Start] = []
        self._preempted_since_view = 0
        spot = policy.spot
        self._p_recover = 1.0 / spot.unavailable_mean_min
        up_mean = spot.unavailable_mean_min * spot.availability / max(1e-9, 1.0 - spot.availability)
        self._p_outage = 0.0 if spot.availability >= 1.0 else 1.0 / up_mean
        self._p_preempt = 1.0 - math.exp(-spot.preemption_rate_per_hour / 60.0)

    # -- actuator interface ----------------------------------------------------------------------
    def view(self) -> ClusterView:
        view = ClusterView(spot_available=self.spot_available, lead_samples=self._lead_samples,
                           preempted=self._preempted_since_view)
        for n in self.nodes:
            view.counts[n.cls][n.state] += 1
            if n.state == "failed":
                view.failures.append(f"{n.cls} node started at minute {n.started}: did not turn ready")
            if n.state == "ready" and n.cls != "reserved" and self._block(n) > 1:
                view.paid_left.setdefault(n.cls, []).append(self._paid_left(n))
        self._lead_samples, self._preempted_since_view = [], 0
        return view

    def _block(self, n: Node) -> int:
        return getattr(self.policy.classes, n.cls).billing_min

    def _paid_left(self, n: Node) -> int:
        return paid_minutes_left(self.minute - n.started, self._block(n))

    def apply(self, decisions: list[Decision]) -> None:
        for d in decisions:
            # Reserved nodes follow their decided count like the others (the replay's committed pool is
            # there from the start and decided at that count, so nothing moves; the daemon's count comes
            # from its training with ``reserved: auto``, after the cluster was made).
            active = [n for n in self.nodes if n.cls == d.cls and
                      n.state in ("pending", "booting", "warming", "ready", "failed")]
            if d.desired > len(active):
                for _ in range(d.desired - len(active)):
                    self.nodes.append(Node(d.cls, self.minute))
            elif d.desired < len(active):
                surplus = len(active) - d.desired
                # Failed ones first (paid, serving nothing; as their lowest deletion cost does on
                # Kubernetes), then pending ones (nothing paid yet), then ready ones: the least paid time
                # left first (ties and per-minute billing: newest first); never warming ones.
                ready = [n for n in active if n.state == "ready"][::-1]
                if self.release_paid_out_first:
                    ready.sort(key=self._paid_left)
                failed = [n for n in active if n.state == "failed"]
                for n in failed + [n for n in active if n.state == "pending"][::-1] + ready:
                    if surplus == 0:
                        break
                    if n.state == "pending":
                        n.state, n.gone_at = "gone", self.minute
                    else:
                        n.state, n.gone_at = "draining", self.minute + DRAIN_MIN
                    surplus -= 1

    # -- time ------------------------------------------------------------------------------------
    def ready_nodes(self) -> int:
        return sum(1 for n in self.nodes if n.state == "ready")

    def advance(self) -> None:
        """Move one minute on: spot weather, preemptions, starts, readiness, billing."""
        m = self.minute
        forced_out = any(a <= m < b for a, b in self.faults.spot_unavailable)
        if forced_out:
            self.spot_available, self._forced = False, True
        elif self._forced:  # an injected outage ends when it says
            self.spot_available, self._forced = True, False
        elif self.spot_available and self.rng.random() < self._p_outage:
            self.spot_available = False
        elif not self.spot_available and self.rng.random() < self._p_recover:
            self.spot_available = True
        wave = sum(share for when, share in self.faults.preemption_wave if when == m)
        notice = max(1, math.ceil(self.policy.spot.notice_s / 60))
        for n in self.nodes:
            if n.cls == "spot" and n.state in ("booting", "warming", "ready"):
                if self.rng.random() < (wave or self._p_preempt):
                    n.state, n.gone_at = "draining", m + notice
                    self.preemptions += 1
                    self._preempted_since_view += 1
            if n.state == "pending" and (n.cls != "spot" or self.spot_available):
                lead = getattr(self.policy.classes, n.cls).lead_time
                minutes = max(1.0, self.rng.normal(lead.mean_min, lead.spread_min)) * self.faults.lead_time_factor
                n.state, n.started, n.ready_at = "booting", m, m + max(1, round(minutes))
                self.cold_starts += 1
            if n.state in ("booting", "warming"):
                if m >= n.ready_at and self.faults.failed_start_share and \
                        self.rng.random() < self.faults.failed_start_share:
                    n.state = "failed"  # paid from here on, and never serves
                elif m >= n.ready_at:
                    n.state = "ready"
                    # Lead time runs from when capacity was had (the boot began), not from the request:
                    # waiting for spot capacity says nothing about how long a node takes to be ready.
                    self._lead_samples.append(Start(n.cls, float(n.ready_at - n.started)))
                elif n.state == "booting" and m >= n.ready_at - WARMUP_SHARE * (n.ready_at - n.started):
                    n.state = "warming"
            if n.state == "draining" and m >= n.gone_at:
                n.state = "gone"
                self._bill(n, m)
        if any(n.state == "gone" for n in self.nodes):
            self.nodes = [n for n in self.nodes if n.state != "gone"]
        self.minute += 1

    def _bill(self, n: Node, end: int) -> None:
        if n.started < 0:
            return
        granularity = getattr(self.policy.classes, n.cls).billing_min
        minutes = max(1, end - n.started)
        self.billed_minutes[n.cls] += math.ceil(minutes / granularity) * granularity

    def finish(self) -> dict[str, float]:
        """Bill every node still running at the end; returns billed node-minutes per class."""
        for n in self.nodes:
            if n.started >= 0:
                self._bill(n, self.minute)
        self.nodes = []
        return dict(self.billed_minutes)

    def running_cost_by_class(self) -> dict[str, float]:
        """What the nodes running now cost per hour, by class."""
        out = dict.fromkeys(CLASSES, 0.0)
        for n in self.nodes:
            if n.started >= 0:
                out[n.cls] += self.policy.price(n.cls)
        return out

    def cost_so_far(self) -> float:
        """Cost billed so far plus what running nodes have used (not yet rounded to their granularity)."""
        done = sum(self.billed_minutes[c] / 60.0 * self.policy.price(c) for c in CLASSES)
        running = sum((self.minute - n.started) / 60.0 * self.policy.price(n.cls) for n in self.nodes if n.started >= 0)
        return done + running

