"""The reserved-count recommendation: the cheapest count under the blend, each class paid in its billing blocks."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from controller.policy import load_policy
from controller.reserved import billed_node_hours, blended_cost, recommend_reserved

ROOT = Path(__file__).resolve().parent.parent


def no_spot(billing_min: int):
    return load_policy(ROOT / "configs" / "policy.yaml").with_changes(
        capacity={"peak_nodes": None, "rps_per_node": 10.0}, spot={"max_share": 0.0}, planning={"headroom": 0.0},
        classes={"on_demand": {"price_per_hour": 4.0, "lead_time": {"mean_min": 8}, "billing_min": billing_min}})


def test_a_layer_used_ten_minutes_an_hour_is_worth_reserving_only_when_billed_by_the_hour():
    # Two nodes all day; a third for ten minutes of every hour. Reserved 2.50 vs on-demand 4.00: a
    # layer is worth reserving when it is paid more than 62.5% of the time.
    need_rps = np.tile(np.where(np.arange(60) < 10, 25.0, 15.0), 48)
    per_minute = recommend_reserved(need_rps, no_spot(1), 10.0)
    hourly = recommend_reserved(need_rps, no_spot(60), 10.0)
    assert per_minute["reserved"] == 2 and per_minute["layer_use"][:3] == [1.0, 1.0, round(10 / 60, 4)]
    # per minute, per hour: 2 reserved = 5.00 + 4.00 x 1/6; 3 reserved = 7.50
    assert per_minute["cost_usd_by_count"][2:4] == [round(48 * (5 + 4 / 6), 2), 48 * 7.5]
    assert hourly["reserved"] == 3  # the third node is paid the whole hour on-demand: 5.00 + 4.00 > 7.50
    assert hourly["cost_usd_by_count"][2:4] == [48 * 9.0, 48 * 7.5]
    assert hourly["cost_usd"] < hourly["cost_usd_without"]


def test_the_count_stays_within_the_fleets_limits():
    """A history needing 30 nodes under max_nodes 10: the fleet the cycle runs is at most 10, so no count above
    it is recommended (reserved nodes above max_nodes are paid for and never run)."""
    capped = no_spot(60).with_changes(limits={"max_nodes": 10})
    result = recommend_reserved(np.full(24 * 60, 300.0), capped, 10.0)
    assert result["reserved"] == 10 and len(result["cost_usd_by_count"]) == 11
    assert recommend_reserved(np.full(24 * 60, 300.0), no_spot(60), 10.0)["reserved"] == 30


def test_a_history_at_any_step_is_costed_minute_by_minute():
    """The daemon recommends from its Prometheus history at ``signals.step``; costed step by step as if
    each were a minute, a 5-minute history's hourly blocks were five hours long, and the same load gave
    another count than ``recommend-reserved`` on a 1-minute trace."""
    import pandas as pd

    from forecaster.history import History

    # Two nodes all the time, a third for one hour in five: paid by the hour on-demand, 4.00 / 5 an hour
    # against 2.50 reserved, so not worth reserving.
    need_rps = np.tile(np.where(np.arange(300) < 60, 25.0, 15.0), 10)
    minutes = pd.date_range("2024-05-01", periods=need_rps.size, freq="1min")
    five = History(pd.Series(need_rps * 60, index=minutes)).resample(pd.Timedelta(minutes=5))
    np.testing.assert_allclose(five.minute_rates(), need_rps)
    hourly = no_spot(60)
    assert recommend_reserved(need_rps, hourly, 10.0)["reserved"] == 2
    assert recommend_reserved(five.minute_rates(), hourly, 10.0)["reserved"] == 2
    assert recommend_reserved(five.counts.to_numpy() / 300, hourly, 10.0)["reserved"] == 3  # step by step
    seconds = History(pd.Series(np.repeat(need_rps, 2) * 30,
                                index=pd.date_range("2024-05-01", periods=2 * need_rps.size, freq="30s")))
    np.testing.assert_allclose(seconds.minute_rates(), need_rps)


def test_billing_blocks_pay_each_block_for_the_most_nodes_it_held():
    count = np.array([1, 3, 0, 0, 2, 2])
    assert billed_node_hours(count, 1) == 8 / 60
    assert billed_node_hours(count, 3) == (3 * 3 + 2 * 3) / 60
    assert billed_node_hours(np.ones(90), 60) == 1.5  # the trace ends inside the second hour


def test_reserved_nodes_cover_the_part_of_the_fleet_spot_may_not():
    # A flat need of 5 nodes, spot up to 60% of the fleet. Reserving is worth it for the two nodes that
    # would otherwise be on-demand (2.50 < 4.00), not for the three spot can take (2.50 > 1.60): a rule
    # that reserves every layer in use more than reserved / blended price would reserve all five.
    policy = load_policy(ROOT / "configs" / "policy.yaml").with_changes(
        capacity={"peak_nodes": None, "rps_per_node": 10.0}, planning={"headroom": 0.0},
        spot={"max_share": 0.6, "availability": 1.0, "preemption_rate_per_hour": 0.0})
    need_rps = np.full(24 * 60, 50.0)
    rec = recommend_reserved(need_rps, policy, 10.0)
    assert rec["reserved"] == 2
    per_hour = [c / 24 for c in rec["cost_usd_by_count"]]
    assert per_hour[:4] == pytest.approx([3 * 1.6 + 2 * 4.0, 2.5 + 3 * 1.6 + 4.0, 2 * 2.5 + 3 * 1.6, 3 * 2.5 + 2 * 1.6])
    # While spot cannot be had its share runs on-demand, which makes reserving more worth it.
    scarce = policy.with_changes(spot={"availability": 0.5})
    assert recommend_reserved(need_rps, scarce, 10.0)["reserved"] == 5
    assert blended_cost(np.full(60, 5), 2, scarce)["on_demand"] == 0.5 * 3 * 4.0


def test_recommend_reserved_command_prints_its_json():
    out = subprocess.run([sys.executable, "-m", "peakpilot.cli", "recommend-reserved", "--policy",
                          str(ROOT / "configs" / "chat-hourly-no-spot.yaml"), "--json"],
                         capture_output=True, text=True, timeout=300, cwd=ROOT)
    assert out.returncode == 0, out.stderr
    doc = json.loads(out.stdout)
    assert doc["reserved"] >= 1 and doc["cost_usd"] <= doc["cost_usd_without"]
