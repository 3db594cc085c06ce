"""The control cycle as a pure function of plain data: prewarm, keep, safety net, limits, blend."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from controller.blend import blend, spot_buffer
from controller.cycle import control_cycle
from controller.planner import event_multipliers, lead_time_min, plan_need
from controller.policy import load_policy
from controller.state import ClusterView, Memory, MinuteForecast, Observation, Start

ROOT = Path(__file__).resolve().parent.parent
NOW = np.datetime64("2024-05-01T12:00", "m")


@pytest.fixture
def policy():
    # 10 req/s per node, no reserved, no spot: the arithmetic is easy to follow.
    return load_policy(ROOT / "configs" / "policy.yaml").with_changes(
        capacity={"peak_nodes": None, "rps_per_node": 10.0}, reserved={"count": 0},
        spot={"max_share": 0.0}, planning={"headroom": 0.0, "keep_min": 20}, limits={"min_nodes": 1})


def view_with(on_demand_ready=0, warming=0, spot_ready=0, spot_available=True) -> ClusterView:
    view = ClusterView(spot_available=spot_available)
    view.counts["on_demand"]["ready"] = on_demand_ready
    view.counts["on_demand"]["warming"] = warming
    view.counts["spot"]["ready"] = spot_ready
    return view


def flat_forecast(levels: list[tuple[int, float]], minutes: int = 60) -> MinuteForecast:
    """Forecast in req/s: ``levels`` as (from minute, value)."""
    rps = np.zeros(minutes)
    for start, value in levels:
        rps[start:] = value
    return MinuteForecast(NOW, np.repeat(rps[:, None], 3, axis=1))


def decide(policy, forecast, view, load=None, memory=None, now=NOW):
    return control_cycle(Observation(now, load), forecast, view, policy, memory or Memory(), 10.0, 0)


def desired(result, cls="on_demand"):
    return next(d.desired for d in result.decisions if d.cls == cls)


def test_prewarm_starts_nodes_one_lead_time_before_the_peak(policy):
    lead = lead_time_min(policy, Memory(), "on_demand")  # mean 8 + 2 x spread 2 = 12
    assert lead == 12
    # Load 30 req/s now (3 nodes), 80 req/s from minute 25 on (8 nodes).
    forecast = flat_forecast([(0, 30.0), (25, 80.0)])
    early = decide(policy, forecast, view_with(3), load=30.0)
    assert desired(early) == 3  # the peak is beyond the lead time: nothing to start yet
    # 13 minutes later the peak is 12 minutes away: start the 5 nodes now.
    later = decide(policy, MinuteForecast(NOW, forecast.rps[13:]), view_with(3), load=30.0)
    assert desired(later) == 8
    assert "forecast needs 8 by +12 min" in later.decisions[2].reason


def test_a_learned_lead_time_beyond_the_forecast_is_said_where_the_plan_stops_short(policy):
    """Starts measured at 75 minutes on a 60-minute forecast: the plan reaches as far as the forecast does,
    and the reason says so, with how long a node takes (the policy's own 12 is not said to be short)."""
    memory = Memory()
    memory.lead_samples["on_demand"] = [75.0] * policy.planning.learn_lead_times_after
    forecast = flat_forecast([(0, 30.0), (50, 80.0)])
    result = decide(policy, forecast, view_with(3), load=30.0, memory=memory)
    assert desired(result) == 8
    assert "(q90, lead 59 min, as far as the forecast reaches: a node takes 75)" in result.decisions[2].reason
    assert "as far as the forecast reaches" not in decide(policy, forecast, view_with(3), load=30.0).decisions[2].reason


def test_scale_down_keeps_what_is_needed_again_soon(policy):
    # 8 nodes up; the load dips for 15 minutes, then comes back: keep them (keep_min 20).
    forecast = flat_forecast([(0, 20.0), (15, 80.0)])
    result = decide(policy, forecast, view_with(8), load=20.0)
    assert desired(result) == 8 and "hold 8" in result.reason
    # A dip longer than keep_min and the lead time is released.
    released = decide(policy, flat_forecast([(0, 20.0), (40, 80.0)]), view_with(8), load=20.0)
    assert desired(released) == 2 and released.reason.startswith("scale down")


def test_a_plan_the_spot_buffer_keeps_at_the_fleet_it_has_is_not_called_a_scale_down(policy):
    """8 needed where 9 spot nodes run: the blend adds a spot node for preemption risk and the fleet
    stays at 9, so no decision says "scale down" (an operator reading ``peakpilot status`` saw it on
    every line of a fleet that did not move)."""
    spotty = policy.with_changes(spot={"max_share": 1.0})
    result = control_cycle(Observation(NOW, 80.0), flat_forecast([(0, 80.0)], minutes=120), view_with(spot_ready=9),
                           spotty, Memory(), 10.0, 0)
    assert sum(d.desired for d in result.decisions) == 9
    assert not any(d.reason.startswith("scale down") for d in result.decisions), result.decisions[1].reason
    fewer = control_cycle(Observation(NOW, 60.0), flat_forecast([(0, 60.0)], minutes=120), view_with(spot_ready=9),
                          spotty, Memory(), 10.0, 0)
    assert sum(d.desired for d in fewer.decisions) < 9 and fewer.reason.startswith("scale down")


def test_stabilization_window_holds_the_highest_recent_recommendation(policy):
    memory = Memory()
    decide(policy, flat_forecast([(0, 70.0)]), view_with(7), load=70.0, memory=memory)
    later = NOW + np.timedelta64(5, "m")
    result = decide(policy, MinuteForecast(later, flat_forecast([(0, 20.0)]).rps), view_with(7), load=20.0,
                    memory=memory, now=later)
    assert desired(result) == 7  # within the 10-minute window
    much_later = NOW + np.timedelta64(11, "m")
    result = decide(policy, MinuteForecast(much_later, flat_forecast([(0, 20.0)]).rps), view_with(7), load=20.0,
                    memory=memory, now=much_later)
    assert desired(result) == 2


def test_never_releases_a_node_that_is_still_warming(policy):
    result = decide(policy, flat_forecast([(0, 10.0)]), view_with(on_demand_ready=1, warming=4), load=10.0)
    assert desired(result) == 5 and "keeping 4 still warming" in result.decisions[2].reason


def test_a_failed_node_is_not_held_as_warming_is_replaced_and_said(policy):
    # 1 ready, 4 crash-looping: the load needs 1. Were the four "warming", the cycle would keep them (and
    # their GPU nodes) for ever; failed, and not needed, they go.
    view = view_with(on_demand_ready=1)
    view.counts["on_demand"]["failed"] = 4
    assert view.active("on_demand") == 5 and view.warming("on_demand") == 0 and view.failed() == 4
    result = decide(policy, flat_forecast([(0, 10.0)]), view, load=10.0)
    assert desired(result) == 1 and "still warming" not in result.decisions[2].reason
    assert "4 failed (not serving; released first), 0 kept while replaced" in result.decisions[2].reason
    # 1 ready and 1 failed where 2 are needed: the failed one stays counted so that a replacement starts
    # beside it (3 asked for); once the replacement is there, it is the one released.
    view = view_with(on_demand_ready=1)
    view.counts["on_demand"]["failed"] = 1
    assert desired(decide(policy, flat_forecast([(0, 20.0)]), view, load=20.0)) == 3
    view.counts["on_demand"]["warming"] = 1
    assert desired(decide(policy, flat_forecast([(0, 20.0)]), view, load=20.0)) == 2
    # Every start failing (a broken image): at most half the class more, and the decision asks why.
    view = view_with()
    view.counts["on_demand"]["failed"] = 10
    broken = decide(policy, flat_forecast([(0, 100.0)]), view, load=100.0)
    assert desired(broken) == 15 and "are its starts failing?" in broken.decisions[2].reason


def test_nodes_paid_to_the_end_of_their_hour_are_released_only_when_it_ends(policy):
    view = view_with(on_demand_ready=4)
    view.counts["on_demand"]["pending"] = 1
    view.paid_left["on_demand"] = [30, 1, 45, 0]  # minutes of paid time left on each ready node
    result = decide(policy, flat_forecast([(0, 10.0)]), view, load=10.0)
    # The forecast needs 1; the pending one and the two whose hour ends now go, the two paid on stay.
    assert desired(result) == 2 and "keeping 1 already paid to the end of their billing block" in \
        result.decisions[2].reason
    view.paid_left["on_demand"] = [1, 1, 0, 0]
    assert desired(decide(policy, flat_forecast([(0, 10.0)]), view, load=10.0)) == 1


def test_safety_net_scales_up_now_whatever_the_forecast_said(policy):
    result = decide(policy, flat_forecast([(0, 20.0)]), view_with(2), load=100.0)
    assert desired(result) == 10
    assert result.reason.startswith("safety net: observed 100.0 req/s, 500% of ready capacity needs 10")


def test_a_negative_headroom_plans_below_the_forecast_but_never_below_the_observed_load(policy):
    """Replay's sweep plans under the quantile to find the cheapest setting at each SLA level."""
    forecast = flat_forecast([(0, 100.0)])
    cut = control_cycle(Observation(NOW, 50.0), forecast, view_with(10), policy, Memory(), 10.0, 0, headroom=-0.2)
    assert cut.target == 8  # 100 req/s x 0.8 / 10 per node
    # The observed load needs 9 nodes: the floor holds it at 9, without the cut.
    floor = control_cycle(Observation(NOW, 90.0), forecast, view_with(10), policy, Memory(), 10.0, 0,
                          headroom=-0.2)
    assert floor.target == 9 and "safety net: observed 90.0 req/s needs 9 (forecast: 8)" in floor.reason


def test_a_forecast_from_a_coarse_step_is_as_fresh_as_its_step_allows(policy):
    """At signals.step 30m the newest complete step ends up to 29 minutes before the cycle; read as stale
    past 15 minutes, the daemon planned on the safety net alone for half of every hour, a fresh forecast
    in hand. Stale is older than the step by max_forecast_age_min."""
    rps = flat_forecast([(0, 90.0)], minutes=90).rps
    fresh = MinuteForecast(NOW - np.timedelta64(25, "m"), rps, step_min=30)
    assert decide(policy, fresh, view_with(3), load=40.0).mode == "predictive"
    old = MinuteForecast(NOW - np.timedelta64(45, "m"), rps, step_min=30)
    result = decide(policy, old, view_with(3), load=40.0)
    assert result.mode == "reactive" and "forecast is 45 min old" in result.reason


def test_stale_or_missing_forecast_falls_back_to_reactive_and_says_so(policy):
    stale = MinuteForecast(NOW - np.timedelta64(30, "m"), flat_forecast([(0, 90.0)]).rps)
    result = decide(policy, stale, view_with(3), load=40.0)
    assert result.mode == "reactive" and "forecast is 30 min old" in result.reason
    assert desired(result) == 4
    missing = decide(policy, None, view_with(3), load=40.0)
    assert missing.mode == "reactive" and "no forecast" in missing.reason
    # nor a load (Prometheus down since the daemon started): the fleet is held, and said to be, not sized for 0
    blind = decide(policy, None, view_with(6), load=None)
    assert desired(blind) == 6 and "reactive (no forecast) and no load observed: holding 6" in blind.reason
    assert "0.0 req/s" not in blind.reason


def test_limits_bound_the_fleet_and_the_step(policy):
    tight = policy.with_changes(limits={"max_nodes": 6, "max_step_per_cycle": 2, "min_nodes": 2})
    result = decide(tight, flat_forecast([(0, 30.0), (5, 200.0)]), view_with(3), load=30.0)
    assert desired(result) == 5 and "limit: 5" in result.reason  # +2 per cycle
    result = decide(tight, flat_forecast([(0, 0.0)]), view_with(0), load=0.0)
    assert desired(result) == 2  # min_nodes


@pytest.mark.parametrize("spot_nodes,step", [(30, 1), (4000, 50)])
def test_a_scale_down_held_by_the_step_releases_nodes_with_spot_in_the_fleet(policy, spot_nodes, step):
    """A fleet of spot nodes far above the plan, released at most ``step`` a cycle: the fleet, its preemption
    buffer within it, shrinks by the step. The buffer was added on top of the held count, sized to the spot
    nodes held (1 of 30, 50 of 4,000 at 5%/h over 15 min), so it matched or outweighed the step: the fleet never
    shrank, and with the nodes still warming kept besides, grew cycle on cycle (to 800,000 in a replay)."""
    spotty = policy.with_changes(spot={"max_share": 1.0, "share_of": "fleet", "preemption_rate_per_hour": 0.05},
                                 limits={"max_step_per_cycle": step, "max_nodes": 100_000})
    assert spot_buffer(spot_nodes, spotty, lead_time_min(spotty, Memory(), "spot")) >= step
    result = decide(spotty, flat_forecast([(0, 50.0)]), view_with(spot_ready=spot_nodes), load=50.0)
    fleet = sum(d.desired for d in result.decisions)
    assert fleet == spot_nodes - step and desired(result, "spot") == spot_nodes - step
    assert f"limit: {spot_nodes - step}" in result.reason


def test_the_spot_buffer_stays_within_max_nodes(policy):
    """A fleet at max_nodes takes no preemption buffer above it (max_nodes is the most the policy pays for): 10
    spot nodes at a chance of 1 an hour over 15 minutes asked for 3 more."""
    capped = policy.with_changes(spot={"max_share": 1.0, "share_of": "fleet", "preemption_rate_per_hour": 1.0},
                                 limits={"max_nodes": 10})
    result = decide(capped, flat_forecast([(0, 500.0)]), view_with(spot_ready=10), load=500.0)
    assert sum(d.desired for d in result.decisions) == 10 == desired(result, "spot")
    roomy = decide(capped.with_changes(limits={"max_nodes": 20}), flat_forecast([(0, 100.0)]), view_with(spot_ready=10),
                   load=100.0)
    assert desired(roomy, "spot") == 13 and "+3 spot for preemption risk" in roomy.decisions[1].reason


def test_known_events_raise_the_plan(policy):
    evented = policy.with_changes(events=[{"name": "launch", "start": "2024-05-01T12:10:00",
                                           "end": "2024-05-01T13:00:00", "multiplier": 3.0}])
    mult = event_multipliers(evented, NOW, 20)
    assert mult[:10].tolist() == [1.0] * 10 and mult[10:].tolist() == [3.0] * 10
    need = plan_need(flat_forecast([(0, 20.0)]).rps, evented, 10.0, NOW)
    assert need[0] == 2 and need[15] == 6


def test_an_event_without_an_offset_is_on_the_users_clock_where_the_policy_names_it(policy):
    """With ``signals.timezone``, "09:00" in the policy is 09:00 where the users are (14:00 UTC in New
    York's winter), as a CronJob's timeZone reads its schedule; one with an offset stays that instant."""
    events = [{"name": "launch", "start": "2024-05-01T08:10:00", "end": "2024-05-01T08:20:00", "multiplier": 2.0},
              {"name": "utc", "start": "2024-05-01T12:25:00Z", "end": "2024-05-01T12:27:00Z", "multiplier": 3.0}]
    on_users_clock = policy.with_changes(events=events, signals={"timezone": "America/New_York"})
    mult = event_multipliers(on_users_clock, NOW, 30)  # NOW is 12:00 UTC, 08:00 in New York's summer
    assert np.flatnonzero(mult == 2.0).tolist() == list(range(10, 20))
    assert np.flatnonzero(mult == 3.0).tolist() == [25, 26]
    assert not (event_multipliers(policy.with_changes(events=events), NOW, 30) == 2.0).any()  # 08:10 UTC


def test_known_events_are_read_in_utc_whatever_the_machines_zone(policy, monkeypatch):
    """An event written with an offset is at that instant on every machine; it was moved by the local
    offset on one outside UTC (five hours, replaying on a laptop in New York)."""
    import time

    evented = policy.with_changes(events=[
        {"name": "launch", "start": "2024-05-01T12:10:00Z", "end": "2024-05-01T12:20:00Z", "multiplier": 2.0},
        {"name": "berlin", "start": "2024-05-01T14:25:00+02:00", "end": "2024-05-01T14:27:00+02:00",
         "multiplier": 3.0}])
    monkeypatch.setenv("TZ", "America/New_York")
    time.tzset()
    try:
        mult = event_multipliers(evented, NOW, 30)
    finally:
        monkeypatch.undo()
        time.tzset()
    assert np.flatnonzero(mult == 2.0).tolist() == list(range(10, 20))
    assert np.flatnonzero(mult == 3.0).tolist() == [25, 26]


def test_lead_times_are_learned_as_p95_of_measured_starts(policy):
    memory = Memory()
    memory.learn([Start("on_demand", float(m)) for m in range(1, 21)])  # 20 samples: 1..20 minutes
    assert lead_time_min(policy, memory, "on_demand") == 20  # ceil(p95 = 19.05)
    assert lead_time_min(policy, memory, "spot") == 16  # still the policy's guess: 10 + 2 x 3
    memory.learn([Start("on_demand", 40.0)] * 20)  # slower starts since: the plan follows them at once
    assert lead_time_min(policy, memory, "on_demand") == 40


def test_a_wait_for_spot_that_could_not_be_had_is_not_learned_as_a_lead_time(policy):
    """Spot pods that waited out a spot outage turn ready hours after they were asked for (on Kubernetes,
    where the clock runs from the pod's creation); learned, one outage made spot's p95 hours long, so the
    cycle prewarmed spot hours ahead and judged it unavailable only after hours of waiting."""
    memory = Memory()
    memory.learn([Start("spot", 12.0, 2.0)] * 19)
    view = view_with(on_demand_ready=1)
    view.lead_samples = [Start("spot", 185.0, 175.0), Start("spot", 40.0, 30.0), Start("on_demand", 95.0, 90.0)]
    decide(policy, flat_forecast([(0, 5.0)]), view, load=5.0, memory=memory)
    # 30 minutes unscheduled is within twice spot's lead (16): a guess too short still corrects itself.
    assert memory.lead_samples["spot"] == [12.0] * 19 + [40.0]
    # On-demand has no stand-in: the time it waits for a node is how long it takes to get one.
    assert memory.lead_samples["on_demand"] == [95.0]
    assert lead_time_min(policy, memory, "spot") == 14  # ceil(p95 of 19 x 12 and 40: 13.4), not 185


def test_blend_reserved_first_then_spot_share_with_buffer_then_on_demand():
    policy = load_policy(ROOT / "configs" / "policy.yaml").with_changes(
        spot={"max_share": 0.5, "preemption_rate_per_hour": 0.6})
    split, notes = blend(10, 2, policy, view_with(), spot_lead_min=10)
    # spot: floor(0.5 * 10) = 5, plus ceil(5 * 0.6 * 10/60) = 1 for preemption risk
    assert split == {"reserved": 2, "spot": 6, "on_demand": 3}
    assert spot_buffer(5, policy, 10) == 1 and "+1 spot for preemption risk" in notes["spot"][0]
    assert notes["on_demand"] == []  # each class's decision says what moved its own count


def test_blend_spot_share_is_of_the_expected_load_and_the_margin_above_it_is_spot():
    policy = load_policy(ROOT / "configs" / "policy.yaml").with_changes(
        spot={"max_share": 0.5, "preemption_rate_per_hour": 0.0})
    assert policy.spot.share_of == "expected"  # the default
    # 10 nodes, 2 reserved, 6 of them for the expected load: half of those 6 on spot, and the 4 of margin
    split, notes = blend(10, 2, policy, view_with(), 10, expected=6)
    assert split == {"reserved": 2, "spot": 7, "on_demand": 1}
    assert any("margin above the 6 nodes the expected load needs on spot" in n for n in notes["spot"])
    assert not any("margin" in n for n in notes["on_demand"])
    # a wave that takes every spot node leaves reserved + on-demand = 3 = half the expected load's nodes
    assert split["reserved"] + split["on_demand"] >= (1 - 0.5) * 6
    # no margin (the plan is at or below the expected load), or no expectation: a share of the fleet
    assert blend(10, 2, policy, view_with(), 10, expected=12)[0]["spot"] == 5
    assert blend(10, 2, policy, view_with(), 10)[0]["spot"] == 5
    # share_of: fleet keeps the margin's share on-demand too
    fleet = policy.with_changes(spot={"share_of": "fleet"})
    assert blend(10, 2, fleet, view_with(), 10, expected=6)[0] == {"reserved": 2, "spot": 5, "on_demand": 3}
    # max_share 0 is no spot at all, margin included
    none = policy.with_changes(spot={"max_share": 0.0})
    assert blend(10, 2, none, view_with(), 10, expected=6)[0] == {"reserved": 2, "spot": 0, "on_demand": 8}


def test_cycle_puts_the_band_above_q50_on_spot():
    policy = load_policy(ROOT / "configs" / "policy.yaml").with_changes(
        capacity={"peak_nodes": None, "rps_per_node": 10.0}, reserved={"count": 0},
        spot={"max_share": 0.5, "preemption_rate_per_hour": 0.0}, planning={"headroom": 0.0})
    # q50 40 req/s (4 nodes), q90 80 req/s (8 nodes): 2 of the 4 expected nodes and the 4 of margin on spot
    rps = np.tile([40.0, 80.0, 100.0], (60, 1))
    result = decide(policy, MinuteForecast(NOW, rps), view_with(), load=40.0)
    assert result.target == 8 and desired(result, "spot") == 6 and desired(result) == 2
    fleet = decide(policy.with_changes(spot={"share_of": "fleet"}), MinuteForecast(NOW, rps), view_with(), load=40.0)
    assert desired(fleet, "spot") == 4 and desired(fleet) == 4


def test_spot_stuck_pending_is_not_counted_as_fleet_beside_its_on_demand_cover():
    policy = load_policy(ROOT / "configs" / "policy.yaml").with_changes(
        capacity={"peak_nodes": None, "rps_per_node": 10.0}, reserved={"count": 0},
        spot={"max_share": 0.5, "preemption_rate_per_hour": 0.0}, planning={"headroom": 0.0},
        limits={"max_step_per_cycle": 5, "scale_down_stabilization_min": 0})
    # Spot is out: 60 spot nodes wait pending and 60 on-demand stand in for them; the load needs 20.
    view = view_with(on_demand_ready=60, spot_available=False)
    view.counts["spot"]["pending"] = 60
    result = decide(policy, flat_forecast([(0, 200.0)]), view, load=200.0)
    # The fleet is the 60 that serve: it steps down 5 from there. Counted twice (120), the step limit
    # would hold 115, and the cover for that would grow the fleet again next cycle.
    assert result.target == 55


def test_blend_covers_unavailable_spot_with_on_demand_then_goes_back():
    policy = load_policy(ROOT / "configs" / "policy.yaml").with_changes(
        spot={"max_share": 0.5, "preemption_rate_per_hour": 0.0})
    out = view_with(spot_available=False)
    out.counts["spot"]["pending"] = 5
    split, notes = blend(10, 0, policy, out, 10)
    assert split == {"reserved": 0, "spot": 5, "on_demand": 10}  # 5 own + 5 standing in for spot
    assert "5 spot not to be had or not ready yet: covered by on-demand" in notes["on_demand"]
    assert "5 spot not to be had or not ready yet: covered by on-demand" in notes["spot"]
    # Spot is back and booting: the cover is held until the spot nodes are ready...
    back = view_with(on_demand_ready=10)
    back.counts["spot"]["booting"] = 5
    assert blend(10, 0, policy, back, 10)[0]["on_demand"] == 10
    # ...and released once they are.
    ready = view_with(on_demand_ready=10, spot_ready=5)
    assert blend(10, 0, policy, ready, 10)[0]["on_demand"] == 5


# -- following rises the forecast missed (controller/surprises.py) --------------------------------------
def drive(policy, loads, band=10.0, memory=None, start=NOW):
    """Run the cycle minute by minute under a flat forecast at ``band`` req/s; ``loads[i]`` is observed at
    minute i (the load of the minute before). Returns the memory and the last result."""
    memory = memory or Memory()
    result = None
    for i, load in enumerate(loads):
        now = start + np.timedelta64(i, "m")
        forecast = MinuteForecast(now, np.full((60, 3), band))
        result = control_cycle(Observation(now, load), forecast, view_with(4), policy, memory, 10.0, 0)
    return memory, result


def surges(minutes_up: int, count: int, high: float = 30.0, low: float = 5.0) -> list[float]:
    """``count`` surges to ``high`` req/s (the band is 10) lasting ``minutes_up`` each, an hour apart."""
    one = [low] * (60 - minutes_up) + [high] * minutes_up
    return one * count


def test_missed_surges_that_last_a_lead_time_open_the_gate_and_one_minute_spikes_do_not(policy):
    lead = lead_time_min(policy, Memory(), "on_demand")
    lasting, _ = drive(policy, surges(minutes_up=40, count=12))
    assert lead < 40 and len(lasting.surprises.scored) >= 10
    assert lasting.surprises.persistent_share == 1.0 and lasting.surprises.follow()
    spikes, _ = drive(policy, surges(minutes_up=1, count=12))
    assert spikes.surprises.persistent_share == 0.0 and not spikes.surprises.follow()
    few, _ = drive(policy, surges(minutes_up=40, count=3))  # too few scored yet to judge
    assert few.surprises.persistent_share is None and not few.surprises.follow()
    # A load at or under the band is no surprise, however it moves.
    calm, _ = drive(policy, [5.0, 10.0] * 300)
    assert len(calm.surprises.scored) == 0


def test_a_rise_above_the_band_is_planned_for_where_it_will_be_once_nodes_are_ready(policy):
    lead = lead_time_min(policy, Memory(), "on_demand")  # 12 min: mean 8 + 2 spreads
    learned, _ = drive(policy, surges(minutes_up=40, count=12))  # this service's surges last
    rise = [5.0] * 50 + [10.0] * 5 + [20.0] * 5 + [30.0]  # 30 req/s now, 20 more than 10 minutes ago
    at = NOW + np.timedelta64(12 * 60, "m")
    memory, result = drive(policy, rise, memory=learned, start=at)
    projected = 30.0 + 20.0 * lead / 10
    assert result.target == int(np.ceil(projected / 10.0))  # 54 req/s in 12 min: 6 nodes, not 3
    assert "above the forecast's q90 and rising" in result.reason and f"planning for {projected:.1f} req/s" in result.reason
    assert "100% of the last" in result.reason

    # Where surges do not last, and with follow_rises: never, the floor is the load observed now.
    spiky, _ = drive(policy, surges(minutes_up=1, count=12))
    _, plain = drive(policy, rise, memory=spiky, start=at)
    assert plain.target == 3 and "rising" not in plain.reason
    never = policy.with_changes(safety_net={"follow_rises": "never"})
    learned_again, _ = drive(never, surges(minutes_up=40, count=12))
    _, off = drive(never, rise, memory=learned_again, start=at)
    assert off.target == 3
    always = policy.with_changes(safety_net={"follow_rises": "always"})
    _, eager = drive(always, rise, start=at)  # nothing learned yet
    assert eager.target == 6


def test_the_surprise_record_survives_a_restart(policy):
    memory, _ = drive(policy, surges(minutes_up=40, count=12))
    again = Memory.from_json(json.loads(json.dumps(memory.to_json())))
    assert again.to_json() == memory.to_json() and again.surprises.follow()


def test_a_stale_observation_is_neither_recorded_nor_chased(policy):
    """While the signals are down the daemon holds the last load as a floor; it is not a measurement."""
    learned, _ = drive(policy, surges(minutes_up=40, count=12))
    before = learned.to_json()["surprises"]
    at = NOW + np.timedelta64(12 * 60, "m")
    result = control_cycle(Observation(at, 30.0, stale=True), MinuteForecast(at, np.full((60, 3), 10.0)),
                           view_with(4), policy, learned, 10.0, 0)
    after = learned.to_json()["surprises"]
    assert after["loads"] == before["loads"] and after["scored"] == before["scored"]
    assert result.target == 3 and "rising" not in result.reason  # the floor still holds, unprojected


def test_the_capacity_check_names_nodes_that_shed_under_the_policys_capacity():
    """Busy answers (1% or more) at under 80% of capacity.rps_per_node per ready node, in 10 of the last 15
    cycles: said, with the median load per node they shed at; cleared under 5 of 15. Shedding at or above
    that load (a fleet still coming up), finer busy shares, and cycles without a load or a ready node are no
    sign; a reloaded capacity starts the count again."""
    from controller.capacity_check import CapacityCheck

    check = CapacityCheck(10.0)
    assert [check.observe(60.0, 0.05, 10) for _ in range(9)] == [None] * 9  # 6 req/s per node: 60% of 10
    line = check.observe(60.0, 0.05, 10)
    assert line == ("capacity.rps_per_node 10 looks too high: the ready nodes answered busy at 6.0 req/s each (60% "
                    "of it) in 10 of the last 10 cycles, so every rise is planned short (measure a node: peakpilot "
                    "profile)")
    for load, busy, ready in ((90.0, 0.05, 10), (60.0, 0.005, 10), (None, 0.5, 10), (60.0, 0.5, 0)):
        assert CapacityCheck(10.0, flagged=False).observe(load, busy, ready) is None
    for _ in range(5):
        assert check.observe(90.0, 0.05, 10) is not None  # 9 req/s: full, so 10 of the last 15 still shed early
    assert check.observe(90.0, 0.0, 10) is not None and check.line().endswith("(measure a node: peakpilot profile)")
    for _ in range(5):
        check.observe(50.0, 0.0, 10)
    assert check.observe(50.0, 0.0, 10) is None  # 3 of the last 15
    check.set_capacity(20.0)
    assert check.rps_per_node == 20.0 and len(check.seen) == 0

