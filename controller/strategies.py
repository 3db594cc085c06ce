"""The strategies replay compares, each as a decider with one knob.

* ``predictive``: peakpilot's control cycle fed the forecast (knob: headroom over the planning quantile).
* ``oracle``: the same cycle fed the true future load (knob: headroom): the cost floor for the SLA.
* ``reactive``: Kubernetes HPA's documented algorithm on on-demand nodes (knob: target utilization):
  desired = ceil(current * utilization / target), left alone within a 10% tolerance, scale-up at once,
  scale-down to the highest recommendation of the last 5 minutes.
* ``reactive_spot``: the same HPA total on spot up to the policy's share (applied as the control cycle
  applies it), with on-demand standing in for every spot node that is not ready (as SkyPilot's SkyServe
  falls back): the strongest reactive peer.
* ``static``: a fixed fleet of committed (reserved-price) nodes (knob: fleet size).
"""

from __future__ import annotations

import math
from collections import deque

import numpy as np

from controller.blend import spot_nodes
from controller.cycle import control_cycle
from controller.policy import Policy
from controller.state import ClusterView, Decision, Memory, MinuteForecast, Observation

HPA_TOLERANCE = 0.1
HPA_SCALE_DOWN_WINDOW_MIN = 5


class PredictiveDecider:
    """peakpilot: the real control cycle."""

    def __init__(self, policy: Policy, rps_per_node: float, reserved: int, headroom: float):
        self.policy, self.rps_per_node, self.reserved, self.headroom = policy, rps_per_node, reserved, headroom
        self.memory = Memory()
        self.last = None

    def decide(self, obs: Observation, forecast: MinuteForecast | None, view: ClusterView) -> list[Decision]:
        self.last = control_cycle(obs, forecast, view, self.policy, self.memory, self.rps_per_node, self.reserved,
                                  self.headroom)
        return self.last.decisions


class HPADecider:
    """Kubernetes HorizontalPodAutoscaler (autoscaling/v2 defaults), under the same lead times."""

    def __init__(self, policy: Policy, rps_per_node: float, target_utilization: float, use_spot: bool = False):
        self.policy, self.rps_per_node, self.target = policy, rps_per_node, target_utilization
        self.use_spot = use_spot
        self.recommendations: deque = deque()
        self.total = max(1, policy.limits.min_nodes)
        self.load_rps: float | None = None  # the last observed load
        self.last_reason = ""

    def decide(self, obs: Observation, forecast: MinuteForecast | None, view: ClusterView) -> list[Decision]:
        if obs.load_rps is not None:  # HPA leaves the scale alone when the metric is missing
            self.load_rps = obs.load_rps
            current = max(1, self.total)
            utilization = obs.load_rps / (current * self.rps_per_node)
            ratio = utilization / self.target
            desired = current if abs(ratio - 1.0) <= HPA_TOLERANCE else math.ceil(current * ratio - 1e-9)
            desired = min(max(desired, self.policy.limits.min_nodes, 1), self.policy.limits.max_nodes)
            self.recommendations.append((obs.now, desired))
            horizon = obs.now - np.timedelta64(HPA_SCALE_DOWN_WINDOW_MIN, "m")
            while self.recommendations and self.recommendations[0][0] <= horizon:
                self.recommendations.popleft()
            stable = max(d for _, d in self.recommendations)
            self.total = desired if desired > current else stable
            self.last_reason = f"HPA: utilization {utilization:.2f} vs target {self.target:.2f} -> {self.total}"
        if not self.use_spot:
            return [Decision("on_demand", self.total, view.active("on_demand"), self.last_reason)]
        # the policy's spot share, as the control cycle applies it: of the nodes the load needs at full
        # utilization (the margin HPA keeps above them may all be spot), or of the whole fleet
        expected = None if self.load_rps is None else math.ceil(self.load_rps / self.rps_per_node - 1e-9)
        spot = spot_nodes(self.total, self.total, self.policy, expected)
        fallback = self.total - spot + max(0, spot - view.ready("spot"))
        return [Decision("spot", spot, view.active("spot"), self.last_reason),
                Decision("on_demand", fallback, view.active("on_demand"),
                         self.last_reason + f"; on-demand for {max(0, spot - view.ready('spot'))} spot not ready")]


class StaticDecider:
    """A fixed fleet: nothing to decide (the fleet is the cluster's committed capacity)."""

    def decide(self, obs: Observation, forecast: MinuteForecast | None, view: ClusterView) -> list[Decision]:
        return []
