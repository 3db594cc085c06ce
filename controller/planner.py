"""Forecast -> nodes needed per minute, and the lead times to plan with.

The core "how many nodes" math (Ray Serve keeps its policy core this small too): the planning
quantile of the forecast, raised by known events and the headroom, divided by what one node serves
within the SLO.
"""

from __future__ import annotations

import math
from datetime import datetime
from zoneinfo import ZoneInfo

import numpy as np

from controller.policy import Policy
from controller.state import Memory, on_cycle_clock

QUANTILE_INDEX = {"q50": 0, "q90": 1, "q99": 2}


def event_multipliers(policy: Policy, start: np.datetime64, minutes: int) -> np.ndarray:
    """Per-minute multiplier from the policy's known events (the largest one where events overlap)."""
    out = np.ones(minutes)
    if not policy.events:
        return out
    times = start + np.arange(minutes) * np.timedelta64(1, "m")
    zone = policy.signals.timezone
    for event in policy.events:
        inside = (times >= utc_minute(event.start, zone)) & (times < utc_minute(event.end, zone))
        out[inside] = np.maximum(out[inside], event.multiplier)
    return out


def utc_minute(t: datetime, zone: str | None = None) -> np.datetime64:
    """A policy's time as the cycle's clock reads it (``on_cycle_clock``). One written without an offset
    is on the users' clock where the policy names it (``signals.timezone``, as a CronJob's ``timeZone``
    reads its schedule), else UTC. Not the machine's local time: ``astimezone()`` without a zone, used
    before, moved every event by the local offset on a machine outside UTC (a laptop replaying a trace)."""
    if t.tzinfo is None and zone is not None:
        t = t.replace(tzinfo=ZoneInfo(zone))
    return np.datetime64(on_cycle_clock(t), "m")


def nodes_needed(load_rps: np.ndarray, rps_per_node: float, headroom: float) -> np.ndarray:
    """Nodes that serve ``load_rps`` with ``headroom`` to spare, per minute."""
    return np.ceil(np.maximum(load_rps, 0.0) * (1.0 + headroom) / rps_per_node - 1e-9).astype(int)


def planned_load(forecast_rps: np.ndarray, policy: Policy, start: np.datetime64,
                 quantile: str | None = None) -> np.ndarray:
    """The load the plan is built on, per forecast minute: the policy's quantile (or ``quantile``), raised
    by known events."""
    q = forecast_rps[:, QUANTILE_INDEX[quantile or policy.planning.quantile]]
    return q * event_multipliers(policy, start, len(q))


def plan_need(forecast_rps: np.ndarray, policy: Policy, rps_per_node: float, start: np.datetime64,
              headroom: float | None = None) -> np.ndarray:
    """Nodes needed for each forecast minute at the policy's quantile, events and headroom."""
    return nodes_needed(planned_load(forecast_rps, policy, start), rps_per_node,
                        policy.planning.headroom if headroom is None else headroom)


def lead_time_min(policy: Policy, memory: Memory, cls: str) -> int:
    """Minutes to plan ahead for a class: p95 of measured starts once there are enough, else the
    policy's guess at about its p95 (mean + 2 spreads)."""
    if len(memory.lead_samples[cls]) >= policy.planning.learn_lead_times_after:
        return math.ceil(memory.lead_p95(cls))
    lead = getattr(policy.classes, cls).lead_time
    return math.ceil(lead.mean_min + 2 * lead.spread_min)
