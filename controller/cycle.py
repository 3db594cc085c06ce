"""One control cycle: ``(observation, forecast, cluster view, policy, memory) -> decisions``.

The daemon runs this every minute; ``replay`` runs it for every simulated minute of a trace. It
decides only; an actuator applies. The steps are separate functions, each testable alone:

1. **plan**: nodes needed per forecast minute (planner).
2. **prewarm**: start now what is needed within the lead time, so it is ready when needed.
3. **safety net**: what the observed load needs is a floor, whatever the forecast said: load above
   the ready capacity (or busy answers) scales up now; a missing or stale forecast falls back to
   reactive and says so. Where this service's missed surges last (``surprises``), a rise above the
   forecast's band is planned for where it will be once new nodes are ready.
4. **keep / stabilize**: do not release what the forecast needs again within ``keep_min``, nor
   below the highest recommendation of the stabilization window.
5. **limits**: min/max nodes, the largest step per cycle.
6. **blend**: split into reserved / spot / on-demand; never release a node still warming.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np

from controller.blend import blend, split
from controller.planner import lead_time_min, nodes_needed, planned_load
from controller.policy import CLASSES, Policy
from controller.state import ClusterView, Decision, Memory, MinuteForecast, Observation, Start

MINUTE = np.timedelta64(1, "m")
REPLACE_FAILED_SHARE = 0.5  # failed nodes replaced at most up to this share of their class's nodes


@dataclass(frozen=True)
class CycleResult:
    decisions: list[Decision]
    target: int  # total nodes decided on
    need_now: int  # nodes the forecast needs this minute
    mode: str  # predictive | reactive (forecast missing or stale)
    reason: str
    placeholder: int = 0  # nodes to hold warm (low priority) for what the forecast needs after the lead time


def prewarm_target(need: np.ndarray, lead_min: int) -> int:
    """Nodes to have started by now: the most needed within the lead time (ready by then)."""
    return int(need[: lead_min + 1].max()) if len(need) else 0


def keep_target(need: np.ndarray, lead_min: int, keep_min: float) -> int:
    """Nodes to keep: the most needed until a released node could be back, or within keep_min."""
    window = max(lead_min, int(math.ceil(keep_min)))
    return int(need[: window + 1].max()) if len(need) else 0


def stabilized(memory: Memory, now: np.datetime64, window_min: float) -> int:
    """Highest target of the stabilization window (Kubernetes HPA's scale-down rule)."""
    horizon = now - np.timedelta64(int(window_min), "m")
    best = 0
    for when, t in reversed(memory.recent_targets):  # appended in time order: stop at the window's edge
        if when <= horizon:
            break
        best = max(best, t)
    return best


def lead_times_to_learn(starts: list[Start], policy: Policy, memory: Memory) -> list[Start]:
    """The starts that measure a lead time. A spot node that waited for the scheduler more than twice
    spot's lead time waited out spot that could not be had (on-demand stood in for it: ``judge_spot``),
    which the simulated cluster, starting its clock once spot is there, never counts; one spot outage
    would otherwise make spot's p95 hours long. Within twice it is learned, so a guess too short corrects
    itself."""
    limit = 2 * lead_time_min(policy, memory, "spot")
    return [s for s in starts if s.cls != "spot" or s.unscheduled_min <= limit]


def control_cycle(obs: Observation, forecast: MinuteForecast | None, view: ClusterView, policy: Policy,
                  memory: Memory, rps_per_node: float, reserved: int, headroom: float | None = None) -> CycleResult:
    memory.learn(lead_times_to_learn(view.lead_samples, policy, memory))
    headroom = policy.planning.headroom if headroom is None else headroom
    elastic = ("spot", "on_demand") if policy.spot.max_share > 0 else ("on_demand",)
    lead = node_lead = max(lead_time_min(policy, memory, c) for c in elastic)
    # Spot asked for but stuck pending while spot cannot be had is not fleet: on-demand stands in for it
    # (``blend``), and counting both would hold the cover up through the per-cycle step limit, cycle on cycle.
    stuck = 0 if view.spot_available else view.counts["spot"]["pending"]
    current = sum(view.active(c) for c in CLASSES) - stuck

    age = None if forecast is None else (obs.now - forecast.start) / MINUTE
    # A forecast from the newest complete step starts up to a step before now (at signals.step 10m, up to
    # 9 minutes) and is still the freshest there is: stale is older than that by max_forecast_age_min.
    stale_after = None if forecast is None else policy.planning.max_forecast_age_min + forecast.step_min - 1
    usable = forecast is not None and 0 <= age <= stale_after and len(forecast.rps) > age + 1

    def nodes_for(load_rps: float) -> int:
        # (A replay sweep may plan below the forecast quantile with a negative headroom; never below
        # the load already observed.)
        return int(nodes_needed(np.array([load_rps]), rps_per_node, max(headroom, 0.0))[0])

    band_now = None  # the load the plan is built on for this minute
    if usable:
        offset = int(age)
        lead = min(lead, len(forecast.rps) - offset - 1)  # plan as far as the forecast reaches
        planned = planned_load(forecast.rps[offset:], policy, obs.now)
        band_now = float(planned[0])
        need = nodes_needed(planned, rps_per_node, headroom)
        up = prewarm_target(need, lead)
        keep = keep_target(need, lead, policy.planning.keep_min)
        mode = "predictive"
        peak_at = int(np.argmax(need[: lead + 1]))
        # (a lead time learned from the cluster's starts may outgrow the horizon the policy was checked against)
        short = f", as far as the forecast reaches: a node takes {node_lead}" if lead < node_lead else ""
        up_reason = f"forecast needs {up} by +{peak_at} min ({policy.planning.quantile}, lead {lead} min{short})"
        need_now = int(need[0])
        # the nodes the expected load (q50, events) needs by the time a node started now is ready: the
        # spot share is a share of these (``blend``)
        expected = prewarm_target(nodes_needed(planned_load(forecast.rps[offset:], policy, obs.now, "q50"),
                                               rps_per_node, 0.0), lead)
        later = need[lead + 1: 2 * lead + 1]
    else:
        later = np.zeros(0, dtype=int)
        mode = "reactive"
        why = "no forecast" if forecast is None else (
            f"forecast is {age:.0f} min old" if age > stale_after
            else "forecast from the future" if age < 0 else "forecast too short")
        load = obs.load_rps if obs.load_rps is not None else 0.0
        need_now = nodes_for(load)
        up = keep = need_now if obs.load_rps is not None else current
        expected = int(nodes_needed(np.array([load]), rps_per_node, 0.0)[0]) if obs.load_rps is not None else None
        up_reason = (f"reactive ({why}): observed {load:.1f} req/s needs {need_now}" if obs.load_rps is not None
                     else f"reactive ({why}) and no load observed: holding {current}")
    # A stale observation (signals down, the last load standing in) measures nothing: not recorded.
    surprise = memory.surprises.observe(obs.now, None if obs.stale else obs.load_rps, band_now, node_lead)

    # Safety net: what the observed load needs now is a floor, whatever the forecast said. It is a
    # recommendation like the forecast's, so the stabilization window remembers it too.
    floor = 0
    if policy.safety_net.enabled and obs.load_rps is not None:
        floor = nodes_for(obs.load_rps)
    rising = None  # why, when a rise above the band is followed
    follow = policy.safety_net.follow_rises
    if floor and surprise and (follow == "always" or (follow == "auto" and memory.surprises.follow())):
        projected = memory.surprises.project(obs.load_rps, node_lead)
        if projected > obs.load_rps:
            share = memory.surprises.persistent_share
            lasted = "" if share is None else \
                f"; {share:.0%} of the last {len(memory.surprises.scored)} missed surges lasted a lead time"
            rising = (f"safety net: observed {obs.load_rps:.1f} req/s above the forecast's "
                      f"{policy.planning.quantile} and rising{lasted}: planning for {projected:.1f} req/s "
                      f"in {node_lead} min")
            floor = max(floor, nodes_for(projected))
    # The stabilization window remembers recommendations, not held targets (else a hold would
    # re-hold itself for ever).
    memory.recent_targets.append((obs.now, max(up, floor)))
    target, reason = up, up_reason
    urgent = False
    if floor > up:
        ready_rps = view.ready() * rps_per_node
        busy = obs.busy_share > policy.safety_net.busy_share_trigger
        hot = obs.load_rps > policy.safety_net.utilization_trigger * ready_rps
        target = floor
        urgent = hot or busy or rising is not None
        observed = rising or (f"safety net: observed {obs.load_rps:.1f} req/s"
                              + (f", busy {obs.busy_share:.2%}" if busy else "")
                              + (f", {obs.load_rps / max(ready_rps, 1e-9):.0%} of ready capacity" if hot else ""))
        reason = f"{observed} needs {floor} (forecast: {up})"
    down = False  # said once the blend is known: its preemption buffer may keep the fleet as it is
    if target < current:  # scaling down: keep what is needed again soon, and stabilize
        held = max(keep, stabilized(memory, obs.now, policy.limits.scale_down_stabilization_min))
        if held > target:
            target = min(current, held)
            reason = (f"hold {target}: needed again within {policy.planning.keep_min:g} min or in the "
                      f"{policy.limits.scale_down_stabilization_min:g}-min stabilization window ({reason})")
        else:
            down = True

    bounded = min(max(target, policy.limits.min_nodes, reserved), policy.limits.max_nodes)
    step = policy.limits.max_step_per_cycle
    # Above its thresholds the safety net is urgent: the per-cycle step limit does not hold it back.
    limited = min(max(bounded, current - step), bounded if urgent else current + step)
    if limited != target:
        reason += f"; limit: {limited} (min {policy.limits.min_nodes}, max {policy.limits.max_nodes}, step {step})"

    spot_lead = lead_time_min(policy, memory, "spot")
    blended = limited
    if limited > bounded:
        # A scale-down the step holds back holds the fleet, the spot buffer within it, not on top: on top, sized
        # to the spot nodes held, the buffer outweighed the step (step 1, or 50 at 4,000 spot nodes) and grew
        # the fleet it was releasing, cycle on cycle, past max_nodes. (A rise the step holds back starts the
        # buffer beside it, as it did.)
        while blended > bounded and blended + split(blended, reserved, policy, spot_lead, expected=expected)[1] > \
                limited:
            blended -= 1
    by_class, notes = blend(blended, reserved, policy, view, spot_lead, expected=expected)
    if down and sum(by_class.values()) < current:
        reason = f"scale down: {reason}"
    decisions = []
    for cls in CLASSES:
        # Never release a node that is still warming; and while nodes warm, the ready ones that serve
        # the load now stay too (a release takes the ready node, not the one that is not serving yet).
        want = max(by_class[cls], min(view.ready(cls), by_class[cls]) + view.warming(cls))
        why = reason + "".join(f"; {note}" for note in notes.get(cls, []))
        if want > by_class[cls]:
            why += f"; keeping {view.warming(cls)} still warming"
        failed = view.failed(cls)
        if failed:
            # A failed node serves nothing: the class asks for its replacement beside it, and once the
            # healthy nodes cover what is wanted the failed one is the first released (the simulated
            # cluster releases failed nodes first; on Kubernetes they carry the lowest deletion cost). Not
            # reserved ones (their pool is committed), and never more than half the class's nodes: when
            # every start fails (a broken image), replacing each would grow the fleet with failing nodes.
            short = max(0, want - (view.active(cls) - failed))
            cap = 0 if cls == "reserved" else math.ceil(REPLACE_FAILED_SHARE * by_class[cls])
            replace = min(failed, short, cap)
            want += replace
            why += f"; {failed} failed (not serving; released first), {replace} kept while replaced"
            if short > cap:
                why += f" (at most {REPLACE_FAILED_SHARE:.0%} of the class's {by_class[cls]}: are its starts failing?)"
        paid = view.paid_left.get(cls)
        if paid and want < view.active(cls):
            # A node billed by the hour is paid to the end of its hour: it serves for free until then, so
            # only the pending ones and those whose paid time ends before the next cycle are released.
            keep = view.active(cls) - view.counts[cls]["pending"] - sum(1 for left in paid if left <= 1)
            if keep > want:
                why += f"; keeping {keep - want} already paid to the end of their billing block"
                want = keep
        decisions.append(Decision(cls, want, view.active(cls), why))
    placeholder = max(0, int(later.max()) - limited) if len(later) else 0
    return CycleResult(decisions, limited, need_now, mode, reason, placeholder)
