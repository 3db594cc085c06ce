"""The service model's arithmetic and the simulated cluster's node lifecycle, billing and spot."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from controller.policy import load_policy
from controller.service_model import ServiceModel
from controller.simulator import Faults, SimulatedCluster
from controller.state import Decision, Start

ROOT = Path(__file__).resolve().parent.parent


def test_service_model_in_time_late_busy_by_hand():
    model = ServiceModel(rps_per_node=1.0, queue_seconds=10)
    # 2 nodes: 120 requests per minute in time, a queue of 20.
    assert model.serve_minute(100, 2) == (100, 0, 0)
    assert model.serve_minute(150, 2) == (120, 0, 10)  # 30 over: 20 queued (late), 10 busy
    assert model.serve_minute(100, 2) == (100, 20, 0)  # the queue is served first, late
    assert model.totals.arrived == 350 and model.totals.in_time == 320
    assert model.totals.sla_compliance == pytest.approx(320 / 350)
    assert model.totals.minutes_short == 1


def test_service_model_per_second_arrivals_see_the_burst():
    model = ServiceModel(rps_per_node=1.0, queue_seconds=0)
    burst = np.zeros(60)
    burst[0] = 60  # the whole minute's requests in its first second
    in_time, late, busy = model.serve_minute(burst, 1)
    assert (in_time, late, busy) == (1, 0, 59)  # evenly spread the same count would all be in time
    assert ServiceModel(1.0, 0).serve_minute(60.0, 1) == (60, 0, 0)


def test_service_model_queue_shrinks_when_nodes_leave():
    model = ServiceModel(rps_per_node=1.0, queue_seconds=30)
    model.serve_minute(200, 2)  # 120 in time, 60 queued, 20 busy
    assert model.backlog == 60
    in_time, late, busy = model.serve_minute(0, 0)  # every node gone: the queue is refused
    assert (in_time, late) == (0, 0) and model.totals.busy == 80


@pytest.fixture
def policy():
    return load_policy(ROOT / "configs" / "policy.yaml").with_changes(
        classes={"reserved": {"price_per_hour": 2.0, "lead_time": {"mean_min": 5}, "billing_min": 60},
                 "spot": {"price_per_hour": 1.0, "lead_time": {"mean_min": 6}, "billing_min": 1},
                 "on_demand": {"price_per_hour": 3.0, "lead_time": {"mean_min": 4}, "billing_min": 60}},
        spot={"preemption_rate_per_hour": 0.0, "availability": 1.0})


def run(cluster, minutes):
    for _ in range(minutes):
        cluster.advance()


def test_nodes_go_through_their_states_and_report_lead_times(policy):
    cluster = SimulatedCluster(policy, seed=1)
    cluster.apply([Decision("on_demand", 2, 0, "test")])
    states = []
    for _ in range(6):
        cluster.advance()
        states.append(cluster.view().counts["on_demand"])
    assert states[0]["booting"] == 2
    assert any(s["warming"] == 2 for s in states)
    assert states[-1]["ready"] == 2
    cluster.apply([Decision("on_demand", 2, 2, "test")])
    cluster.advance()
    assert cluster.ready_nodes() == 2


def test_billing_rounds_up_to_the_class_granularity(policy):
    cluster = SimulatedCluster(policy, reserved=1, seed=0)
    cluster.apply([Decision("on_demand", 1, 0, "start"), Decision("spot", 1, 0, "start")])
    run(cluster, 10)
    cluster.apply([Decision("on_demand", 0, 1, "stop"), Decision("spot", 0, 1, "stop")])
    run(cluster, 5)
    billed = cluster.finish()
    assert billed["on_demand"] == 60  # 11 minutes, billed by the hour
    assert billed["spot"] == 11  # started at minute 0, gone at minute 11 (1-minute drain)
    assert billed["reserved"] == 60  # 15 minutes of a committed node, hourly


def test_hourly_nodes_report_their_paid_time_and_the_one_whose_hour_ends_goes_first(policy):
    cluster = SimulatedCluster(policy, seed=0)
    cluster.apply([Decision("on_demand", 1, 0, "first")])
    run(cluster, 30)
    cluster.apply([Decision("on_demand", 2, 1, "second")])
    run(cluster, 25)  # minute 55: the first has 5 minutes of its hour left, the second 35
    assert sorted(cluster.view().paid_left["on_demand"]) == [5, 35]
    cluster.apply([Decision("on_demand", 1, 2, "release one")])
    run(cluster, 2)
    assert cluster.view().paid_left["on_demand"] == [33]  # the one with 35 minutes paid stayed
    run(cluster, 68)
    billed = cluster.finish()
    # The first went within its hour (60 min billed); the second ran on to the end (125 - 30 = 95 -> 120).
    assert billed["on_demand"] == 60 + 120
    assert "spot" not in cluster.view().paid_left  # per-minute billing: nothing to wait for


def test_spot_preemption_wave_and_unavailability(policy):
    faults = Faults(preemption_wave=((10, 1.0),), spot_unavailable=((20, 40),))
    cluster = SimulatedCluster(policy, seed=0, faults=faults)
    cluster.apply([Decision("spot", 4, 0, "start")])
    run(cluster, 10)
    assert cluster.ready_nodes() == 4
    cluster.advance()  # minute 10: every spot node preempted
    assert cluster.preemptions == 4 and cluster.ready_nodes() == 0
    run(cluster, 10)  # to minute 21: spot is out
    cluster.apply([Decision("spot", 4, 0, "replace")])
    run(cluster, 10)
    assert cluster.view().counts["spot"]["pending"] == 4  # nothing to be had
    run(cluster, 20)  # spot back at minute 40
    assert cluster.view().counts["spot"]["ready"] == 4


def test_lead_time_fault_doubles_the_wait(policy):
    slow = SimulatedCluster(policy.with_changes(classes={"on_demand": {"price_per_hour": 3.0,
                                                                       "lead_time": {"mean_min": 5}}}),
                            seed=0, faults=Faults(lead_time_factor=2.0))
    slow.apply([Decision("on_demand", 1, 0, "start")])
    run(slow, 9)
    assert slow.ready_nodes() == 0
    run(slow, 2)
    assert slow.ready_nodes() == 1
    assert slow.view().lead_samples == [Start("on_demand", 10.0)]
