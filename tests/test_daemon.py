"""The daemon over many cycles with faults, restarts, policy reloads, leader election and SIGTERM."""

from __future__ import annotations

import json
import signal
import subprocess
import sys
import time
from pathlib import Path
from types import SimpleNamespace

import httpx
import numpy as np
import pytest

from controller.actuators import SimulatedActuator
from controller.daemon import Daemon
from controller.daemon_metrics import DaemonMetrics
from controller.service_controller import ServiceController
from controller.kube_client import api_client
from controller.kubernetes_actuator import KubernetesActuator, KubernetesTarget
from controller.lease import LeaseLock
from controller.replay import load_trace
from controller.shipped import DEFAULT_POLICY
from controller.signals import TraceSignals
from controller.state import Memory
from controller.store import Store
from tests.conftest import SAMPLE, free_port
from tests.kube_api import FakeKubeAPI

ROOT = Path(__file__).resolve().parent.parent
T0 = np.datetime64("2026-01-05T00:00", "m")


@pytest.fixture(scope="module")
def trace():
    return load_trace(SAMPLE)


def default_policy_text(**swaps: str) -> str:
    """The default policy with seasonal_naive as its model (the tests here are of the daemon, not of
    training one) and ``old=new`` swaps; each swap must apply (the default model's name changed once, and the
    swap of the old one had gone on silently, training the ensemble in every test)."""
    text = (ROOT / "configs" / "policy.yaml").read_text()
    for old, new in {"model: ensemble ": "model: seasonal_naive ", **swaps}.items():
        assert old in text, f"{old!r} is no longer in configs/policy.yaml"
        text = text.replace(old, new)
    return text


@pytest.fixture
def policy_file(tmp_path):
    path = tmp_path / "policy.yaml"
    path.write_text(default_policy_text(**{"count: auto": "count: 3"}))
    return path


class Clock:
    def __init__(self):
        self.now = T0

    def __call__(self):
        return self.now

    def tick(self, minutes=1):
        self.now = self.now + np.timedelta64(minutes, "m")


class FlakyActuator:
    """The simulated cluster, with API errors on demand."""

    def __init__(self, inner):
        self.inner, self.fail_apply, self.applied = inner, 0, []

    def view(self):
        return self.inner.view()

    def apply(self, decisions, placeholder=0):
        if self.fail_apply:
            self.fail_apply -= 1
            raise RuntimeError("injected: API server answered 503 five times")
        self.applied.append({d.cls: d.desired for d in decisions})
        return self.inner.apply(decisions, placeholder)

    def announce(self, warning, reason, note):
        self.inner.announce(warning, reason, note)


def make(policy_file, trace, store, clock, actuator, signals=None):
    metrics = DaemonMetrics()
    signals = signals or TraceSignals(trace, 8 * 1440, T0)
    service = ServiceController(policy_file, signals, actuator, store, metrics)
    return Daemon([service], metrics, interval_s=60, clock=clock), service, signals


def run_cycles(daemon, clock, n, retrain_at=()):
    for i in range(n):
        if i in retrain_at:
            daemon.retrain_all()
        daemon.cycle_all()
        clock.tick()


def test_nodes_that_answer_busy_under_the_policys_capacity_are_said_to_have_less(tmp_path, policy_file, trace, caplog):
    """Nodes shedding 5% of their answers while the load per ready node is under 80% of the policy's capacity,
    cycle after cycle: the capacity per node is said to be overstated, once in the log and with every cycle's
    record (``peakpilot status``'s ``!`` lines), with the load per node at which they shed; and no longer once
    the nodes stop shedding."""
    import sqlite3

    from controller.state import Observation

    class Shedding(TraceSignals):
        busy = 0.05

        def observe(self, now):
            seen = super().observe(now)
            return Observation(seen.now, seen.load_rps, self.busy, seen.stale)

    clock, signals = Clock(), Shedding(trace, 8 * 1440, T0)
    cluster = SimulatedActuator(load_policy_of(policy_file), reserved=3, seed=1)
    daemon, service, _ = make(policy_file, trace, Store(str(tmp_path / "c.db")), clock, cluster, signals)
    daemon.retrain_all()
    with caplog.at_level("INFO", logger="peakpilot.daemon"):
        run_cycles(daemon, clock, 45)  # (shedding while the fleet comes up is no sign: it is full)
        signals.busy = 0.0
        run_cycles(daemon, clock, 15)
    said = [r.getMessage() for r in caplog.records if "capacity" in r.getMessage() and "llm-chat: " in r.getMessage()]
    assert len(said) == 2, said
    capacity = service.rps_per_node
    assert said[0].startswith(f"llm-chat: capacity.rps_per_node {capacity:g} looks too high: the ready nodes "
                              f"answered busy at ") and "so every rise is planned short" in said[0]
    assert said[1] == "llm-chat: the nodes no longer answer busy under the policy's capacity"
    rows = sqlite3.connect(tmp_path / "c.db").execute("SELECT attention FROM timeline ORDER BY minute").fetchall()
    flagged = [i for i, (a,) in enumerate(rows) if a and "looks too high" in a]
    assert len(rows) == 60 and 20 < flagged[0] < 45 and flagged == list(range(flagged[0], flagged[-1] + 1))
    assert 45 < flagged[-1] < 59  # cleared once fewer than 5 of the last 15 cycles shed


def test_many_cycles_with_faults_and_a_restart_lose_nothing_and_repeat_nothing(tmp_path, policy_file, trace):
    # Reference: 180 undisturbed cycles.
    ref_clock = Clock()
    ref_cluster = FlakyActuator(SimulatedActuator(load_policy_of(policy_file), reserved=3, seed=1))
    ref, _, _ = make(policy_file, trace, Store(str(tmp_path / "ref.db")), ref_clock, ref_cluster)
    run_cycles(ref, ref_clock, 180, retrain_at=(0, 90))

    # The same, with Prometheus-like signal outages and API errors, killed and restarted at cycle 90.
    clock = Clock()
    cluster = FlakyActuator(SimulatedActuator(load_policy_of(policy_file), reserved=3, seed=1))
    store_path = str(tmp_path / "daemon.db")
    daemon, service, signals = make(policy_file, trace, Store(store_path), clock, cluster)
    run_cycles(daemon, clock, 90, retrain_at=(0,))
    memory_before = service.memory.to_json()
    # The process dies; the cluster (and the store) live on. A new daemon resumes from them.
    daemon2, service2, signals2 = make(policy_file, trace, Store(store_path), clock, cluster)
    assert service2.memory.to_json() == memory_before
    assert service2.run_id == service.run_id
    run_cycles(daemon2, clock, 90, retrain_at=(0,))
    assert cluster.applied == ref_cluster.applied  # nothing repeated or skipped by the restart

    # Faults after that: signals down for 5 cycles, the API failing for 3; the daemon carries on.
    signals2.fail_next = 5
    cluster.fail_apply = 3
    before = len(cluster.applied)
    run_cycles(daemon2, clock, 20)
    assert len(cluster.applied) == before + 20 - 3
    errors = {s.labels["kind"]: s.value for s in service2.metrics.errors.collect()[0].samples
              if s.name.endswith("_total")}
    assert errors["signals"] >= 5 and errors["actuator"] == 3
    assert all(v["ok"] for v in daemon2.last_cycle.values())

    with Store(store_path, readonly=True) as st:
        tl = st.timeline(service2.run_id)
        assert len(tl) == 200 and tl["minute"].is_monotonic_increasing and tl["minute"].diff().dropna().eq(1).all()
        assert tl["ready"].min() >= 3  # the floor held through the signal outage
        decisions = st.decisions(service2.run_id)
        assert decisions["minute"].nunique() == 200 and len(decisions) == 600  # three classes every cycle


def test_each_change_of_a_decided_size_is_one_log_line_with_its_reason(tmp_path, policy_file, trace, caplog):
    """What ``kubectl logs`` of the controller shows: one line per class when it starts, then one for each
    change of a class's decided size, with the decision's reason; a cycle that changes nothing is
    silent, and so is the scheduler (no "Running job" lines: ``peakpilot run`` quiets it)."""
    clock = Clock()
    store = Store(str(tmp_path / "log.db"))
    daemon, service, _ = make(policy_file, trace, store, clock,
                              SimulatedActuator(load_policy_of(policy_file), reserved=3, seed=1))
    daemon.retrain_all()
    with caplog.at_level("INFO", logger="peakpilot.daemon"):
        run_cycles(daemon, clock, 240)
    said = [r.getMessage() for r in caplog.records if r.name == "peakpilot.daemon" and " running): " in r.getMessage()]
    decided = store.decisions(service.run_id)
    expected = []
    for minute, rows in decided.groupby("minute", sort=True):
        for row in rows.itertuples():
            before = decided[(decided.cls == row.cls) & (decided.minute < minute)].desired
            nodes = "node" if row.desired == 1 else "nodes"
            if before.empty:
                expected.append(f"llm-chat: {row.cls} {row.desired} {nodes} ({row.current} running): {row.reason}")
            elif before.iloc[-1] != row.desired:
                expected.append(f"llm-chat: {row.cls} {before.iloc[-1]} -> {row.desired} {nodes} "
                                f"({row.current} running): {row.reason}")
    assert sorted(said) == sorted(expected)
    assert 3 + 2 <= len(said) < 240  # it scaled, and said so only when it did
    assert said[0].startswith("llm-chat: ") and "forecast needs" in said[0]


def test_a_shadow_or_follower_daemon_says_what_it_would_do_as_such(tmp_path, policy_file, trace, caplog):
    metrics = DaemonMetrics()
    cluster = SimulatedActuator(load_policy_of(policy_file), reserved=3, seed=1)
    shadow = ServiceController(policy_file, TraceSignals(trace, 8 * 1440, T0), cluster,
                               Store(str(tmp_path / "s.db")), metrics, shadow=True)
    follower = ServiceController(policy_file, TraceSignals(trace, 8 * 1440, T0), cluster,
                                 Store(str(tmp_path / "f.db")), DaemonMetrics(), acting=lambda: False)
    for service in (shadow, follower):
        service.retrain(T0)
    with caplog.at_level("INFO", logger="peakpilot.daemon"):
        shadow.cycle(T0)
        follower.cycle(T0)
    said = [(r.levelname, r.getMessage()) for r in caplog.records if " running): " in r.getMessage()]
    assert len(said) == 3 and all(m.startswith("llm-chat: shadow, not applied: ") for _, m in said)
    with caplog.at_level("DEBUG", logger="peakpilot.daemon"):
        follower.cycle(T0 + np.timedelta64(600, "m"))
    assert any(r.levelname == "DEBUG" and "follower, not applied: " in r.getMessage() for r in caplog.records)
    # and each store says whose decisions it holds (`peakpilot status` shows it)
    assert [(s.store.latest_cycles()[0]["role"]) for s in (shadow, follower)] == ["shadow", "follower"]


def test_an_auto_reserved_count_is_there_on_the_simulated_cluster(tmp_path, trace):
    """``peakpilot run`` on the embedded default (simulated cluster, ``reserved: auto``): the count the
    training recommends is started and ready one lead time on, as on Kubernetes, where the reserved
    Deployment is scaled to it. The simulated cluster was made with none (the count is not known before
    the training) and kept none, so the plan counted four reserved nodes that never came."""
    path = tmp_path / "auto.yaml"
    path.write_text(default_policy_text())
    clock = Clock()
    cluster = SimulatedActuator(load_policy_of(path), reserved=0, seed=1)
    store = Store(str(tmp_path / "a.db"))
    daemon, service, _ = make(path, trace, store, clock, cluster)
    run_cycles(daemon, clock, 40, retrain_at=(0,))
    assert service.reserved() >= 1  # recommended by the training
    view = cluster.view()
    assert view.ready("reserved") == service.reserved()
    last = store.latest_cycles()[0]
    assert last["ready"] >= sum(d["desired"] for d in last["decisions"]) - last["warming"]


def test_the_share_of_missed_surges_that_lasted_is_a_metric(tmp_path, policy_file, trace):
    """Operators see whether the safety net chases rises here (controller/surprises.py): absent until
    enough surges are scored, then their share."""
    clock = Clock()
    cluster = FlakyActuator(SimulatedActuator(load_policy_of(policy_file), reserved=3, seed=1))
    daemon, service, _ = make(policy_file, trace, Store(str(tmp_path / "s.db")), clock, cluster)
    gauge = "peakpilot_missed_surges_lasting_share"

    def value():
        return next((s.value for s in service.metrics.lasting.collect()[0].samples if s.name == gauge), None)

    run_cycles(daemon, clock, 1, retrain_at=(0,))
    assert value() is None
    service.memory.surprises.scored.extend([True] * 4 + [False] * 8)
    run_cycles(daemon, clock, 1)
    assert value() == pytest.approx(service.memory.surprises.persistent_share) and 0.25 <= value() <= 0.4


def test_a_postgresql_store_that_goes_down_costs_only_its_own_minutes(tmp_path, policy_file, trace):
    """The daemon on a real PostgreSQL: the database stops for five cycles and comes back. The
    cluster is still acted on every cycle, the store errors are counted, the minutes before and after
    are all there, and a restarted daemon resumes its memory from the database."""
    from tests.conftest import PostgresServer

    server = PostgresServer().start()
    try:
        clock = Clock()
        cluster = FlakyActuator(SimulatedActuator(load_policy_of(policy_file), reserved=3, seed=1))
        daemon, service, _ = make(policy_file, trace, Store(server.url), clock, cluster)
        run_cycles(daemon, clock, 20, retrain_at=(0,))
        server.stop()
        run_cycles(daemon, clock, 5)
        server.start()
        run_cycles(daemon, clock, 10)
        assert len(cluster.applied) == 35  # acting never waited for the store
        errors = {s.labels["kind"]: s.value for s in service.metrics.errors.collect()[0].samples
                  if s.name.endswith("_total")}
        assert errors["store"] == 5
        with Store(server.url, readonly=True) as st:
            minutes = st.timeline(service.run_id)["minute"] - int(T0.astype("int64"))
            assert list(minutes) == list(range(20)) + list(range(25, 35))
            assert st.decisions(service.run_id)["minute"].nunique() == 30
        memory = service.memory.to_json()
        _, resumed, _ = make(policy_file, trace, Store(server.url), clock, cluster)
        assert resumed.run_id == service.run_id and resumed.memory.to_json() == memory
    finally:
        server.close()


def load_policy_of(path):
    from controller.policy import load_policy

    return load_policy(path)


def test_a_changed_policy_is_reloaded_and_a_broken_one_refused(tmp_path, policy_file, trace, caplog):
    clock = Clock()
    daemon, service, _ = make(policy_file, trace, Store(str(tmp_path / "s.db")), clock,
                              SimulatedActuator(load_policy_of(policy_file), reserved=3))
    run_cycles(daemon, clock, 2, retrain_at=(0,))
    text = policy_file.read_text()
    policy_file.write_text(text.replace("headroom: 0.30", "headroom: 0.50"))
    bump(policy_file)
    run_cycles(daemon, clock, 1)
    assert service.policy.planning.headroom == 0.5
    policy_file.write_text(text.replace("quantile: q90", "quantile: q75"))
    bump(policy_file)
    run_cycles(daemon, clock, 3)
    assert service.policy.planning.headroom == 0.5  # the old one stays in force
    assert "refused the changed policy" in caplog.text and "planning.quantile" in caplog.text
    assert all(v["ok"] for v in daemon.last_cycle.values())


def bump(path):
    t = path.stat().st_mtime + 5
    import os

    os.utime(path, (t, t))


def test_two_replicas_only_the_lease_holder_acts(tmp_path, policy_file, trace):
    with FakeKubeAPI("inference") as kube:
        for name in ("llm-reserved", "llm-spot", "llm-on-demand", "llm-placeholder"):
            kube.add_deployment(name, 1)
        target = KubernetesTarget("inference", {"reserved": "llm-reserved", "spot": "llm-spot",
                                                "on_demand": "llm-on-demand"}, "llm-placeholder")
        api = api_client(host=kube.url)
        replicas = []
        for who in ("a", "b"):
            lease = LeaseLock(api, "inference", "peakpilot", f"replica-{who}", duration_s=60)
            actuator = KubernetesActuator(api, target, sleep=lambda s: None)
            metrics = DaemonMetrics()
            service = ServiceController(policy_file, TraceSignals(trace, 8 * 1440, T0), actuator,
                                        Store(str(tmp_path / f"{who}.db")), metrics, acting=lambda lease=lease: lease.is_leader)
            replicas.append((Daemon([service], metrics, clock=Clock(), lease=lease), service, lease))
        for daemon, _, _ in replicas:
            daemon.retrain_all()
            daemon.cycle_all()
        (a, _, lease_a), (b, _, lease_b) = replicas
        assert lease_a.is_leader and not lease_b.is_leader
        patches = kube.calls("PATCH", "/scale")
        assert patches and all(p[2]["spec"]["replicas"] >= 0 for p in patches)
        n = len(patches)
        b.cycle_all()  # the follower decides and records, but sends nothing
        assert len(kube.calls("PATCH", "/scale")) == n
        assert b.health()["leader"] is False and a.health()["leader"] is True


def test_an_hpa_on_a_pool_it_scales_is_said_once_and_exported(tmp_path, policy_file, trace, caplog):
    from prometheus_client import generate_latest

    with FakeKubeAPI("inference") as kube:
        for name in ("llm-reserved", "llm-spot", "llm-on-demand", "llm-placeholder"):
            kube.add_deployment(name, 1)
        kube.add_hpa("llm-spot", "llm-spot")
        target = KubernetesTarget("inference", {"reserved": "llm-reserved", "spot": "llm-spot",
                                                "on_demand": "llm-on-demand"}, "llm-placeholder")
        actuator = KubernetesActuator(api_client(host=kube.url), target, sleep=lambda s: None)
        clock = Clock()
        daemon, service, _ = make(policy_file, trace, Store(str(tmp_path / "h.db")), clock, actuator)
        daemon.retrain_all()
        with caplog.at_level("WARNING", logger="peakpilot.daemon"):
            run_cycles(daemon, clock, 3)
            said = [r.getMessage() for r in caplog.records if "another autoscaler" in r.getMessage()]
            assert len(said) == 1 and "HorizontalPodAutoscaler llm-spot scales Deployment llm-spot too" in said[0]
            assert 'peakpilot_conflicting_autoscalers{service="llm-chat"} 1.0' in \
                generate_latest(service.metrics.registry).decode()
            # Told once as a Warning Event on each pool too (kubectl get events --field-selector type=Warning).
            told = [(e["regarding"]["name"], e["type"], e["note"]) for e in kube.events
                    if e["reason"] == "ConflictingAutoscaler"]
            assert [t[:2] for t in told] == [("llm-reserved", "Warning"), ("llm-spot", "Warning"),
                                             ("llm-on-demand", "Warning")]
            assert told[0][2] == ("llm-chat: HorizontalPodAutoscaler llm-spot scales Deployment llm-spot too: "
                                  "each undoes the other's replicas; stop it setting them")
            del kube.hpas["llm-spot"]  # deleted, as the log says to
            run_cycles(daemon, clock, 1)
        assert 'peakpilot_conflicting_autoscalers{service="llm-chat"} 0.0' in \
            generate_latest(service.metrics.registry).decode()


def test_a_fall_back_to_reactive_and_back_is_told_once_as_kubernetes_events(tmp_path, policy_file, trace):
    """``kubectl get events --field-selector type=Warning`` shows when, and why, the controller lost its
    forecast and scales on observed load alone, once per fall (not once a minute), and a Normal Event
    when it plans on the forecast again; a follower of the Lease tells nothing."""

    class Broken:
        name = "ensemble"

        def predict(self, history, horizon_min):
            raise RuntimeError("injected: the model's file is corrupt")

    def told(kube):
        return [(e["reason"], e["type"], e["regarding"]["name"], e["note"]) for e in kube.events
                if e["reason"] != "SuccessfulRescale"]

    with FakeKubeAPI("inference") as kube:
        for name in ("llm-reserved", "llm-spot", "llm-on-demand", "llm-placeholder"):
            kube.add_deployment(name, 1)
        target = KubernetesTarget("inference", {"reserved": "llm-reserved", "spot": "llm-spot",
                                                "on_demand": "llm-on-demand"}, "llm-placeholder")
        clock = Clock()
        daemon, service, _ = make(policy_file, trace, Store(str(tmp_path / "e.db")), clock,
                                  KubernetesActuator(api_client(host=kube.url), target, sleep=lambda s: None))
        run_cycles(daemon, clock, 3)  # never trained: the safety net alone
        assert [t[:3] for t in told(kube)] == [("FallbackToReactive", "Warning", n)
                                               for n in ("llm-reserved", "llm-spot", "llm-on-demand")]
        assert told(kube)[0][3].startswith("llm-chat: the reactive safety net alone decides: no model yet")
        run_cycles(daemon, clock, 2, retrain_at=(0,))
        assert [t[:2] for t in told(kube)[3:]] == [("ForecastResumed", "Normal")] * 3
        model = service.model
        service.model = Broken()
        run_cycles(daemon, clock, 3)
        assert len(told(kube)) == 9 and all(t[0] == "FallbackToReactive" for t in told(kube)[6:])
        assert told(kube)[-1][3].endswith("forecast failed: injected: the model's file is corrupt")
        service.model = model
        service.acting = lambda: False  # another replica leads now: it tells, not this one
        run_cycles(daemon, clock, 2)
        service.model = Broken()
        run_cycles(daemon, clock, 2)
        assert len(told(kube)) == 9


def test_spot_not_to_be_had_on_a_cluster_is_covered_by_on_demand_and_told(tmp_path, policy_file, trace, caplog):
    """The live controller falls back to on-demand when spot cannot be had, as the replay's does: spot pods
    no node is found for past spot's lead time are covered by on-demand at once, a Warning Event and a
    log line say so once; when nodes are found for them, a Normal Event says spot is back. The lead time
    is the one the cycle plans with: once spot's starts are measured at 45 minutes, 40 is not too long."""
    from datetime import datetime, timedelta, timezone

    from controller.service_parts import ServiceParts

    long_ago = (datetime.now(timezone.utc) - timedelta(minutes=40)).strftime("%Y-%m-%dT%H:%M:%SZ")
    with FakeKubeAPI("inference") as kube:
        kube.add_deployment("llm-reserved", 3)
        kube.add_deployment("llm-spot", 6)
        kube.add_deployment("llm-on-demand", 0)
        kube.add_deployment("llm-placeholder", 0)
        for i in range(3):
            kube.add_pod(f"r{i}", {"app": "llm-reserved"}, "ready")
        for i in range(6):
            kube.add_pod(f"s{i}", {"app": "llm-spot"}, "pending", created=long_ago)
        parts = ServiceParts("kubernetes", Clock(), api=api_client(host=kube.url), trace=lambda: trace)
        actuator = parts.actuator(load_policy_of(policy_file))
        actuator.sleep = lambda s: None
        clock = Clock()
        daemon, service, _ = make(policy_file, trace, Store(str(tmp_path / "spot.db")), clock, actuator)
        daemon.retrain_all()
        service.memory.lead_samples["spot"] = [45.0] * 20
        with caplog.at_level("INFO", logger="peakpilot.daemon"):
            run_cycles(daemon, clock, 1)
            assert not [r for r in caplog.records if "spot cannot be had" in r.getMessage()]
            assert not [e for e in kube.events if "Spot" in e["reason"]]
            service.memory = Memory()  # no start measured: the policy's guess, 16 minutes
            run_cycles(daemon, clock, 3)
        decided = {cls: kube.deployments[name]["spec"]["replicas"] for cls, name in
                   (("spot", "llm-spot"), ("on_demand", "llm-on-demand"))}
        assert decided["spot"] >= 1 and decided["on_demand"] >= decided["spot"]  # every spot node covered
        said = [r.getMessage() for r in caplog.records if "spot cannot be had" in r.getMessage()]
        assert len(said) == 1 and "(spot pod s" in said[0] and " unscheduled for 4" in said[0]  # 40 or 41 min
        told = [(e["type"], e["reason"]) for e in kube.events if "Spot" in e["reason"]]
        assert told == [("Warning", "SpotUnavailable")] * 3
        looks = service.store.latest_cycles()[0]["attention"]  # what `peakpilot status` shows
        assert looks.startswith("spot cannot be had (spot pod s") and looks.endswith("stands in for the spot asked for")
        for pod in kube.pods.values():  # nodes found for them at last
            if pod["metadata"]["name"].startswith("s"):
                pod["status"]["conditions"][0]["status"] = "True"
                pod["status"]["phase"] = "Running"
        run_cycles(daemon, clock, 1)
        told = [(e["type"], e["reason"]) for e in kube.events if "Spot" in e["reason"]]
        assert told[3:] == [("Normal", "SpotAvailable")] * 3
        assert service.store.latest_cycles()[0]["attention"] is None


def test_pods_not_created_are_said_once_and_so_is_their_return(caplog):
    """A quota refusing a pool's pods is news once, not every cycle; so is its end."""
    from controller.notices import Notices
    from controller.state import ClusterView

    notices = Notices("llm-chat")
    refused = ClusterView(uncreated=["llm-od: 2 pod(s) not created (FailedCreate: exceeded quota: gpus)"])
    with caplog.at_level("INFO", logger="peakpilot.daemon"):
        for view in (refused, refused, ClusterView(), ClusterView()):
            notices.cluster(view)
    assert [r.getMessage() for r in caplog.records] == [
        "llm-chat: pods asked for are not being created, so their nodes will not come: llm-od: 2 pod(s) not "
        "created (FailedCreate: exceeded quota: gpus) (counted as pending meanwhile)",
        "llm-chat: the pods asked for are created again"]


def test_an_outage_in_the_live_load_is_said_once_and_so_is_its_end(caplog):
    """Traffic that stops where the usual level predicts it is a gap, and the plan follows the forecast
    through it, holding nodes no request uses: the log says so once, and once when the load returns."""
    import pandas as pd

    from controller.notices import Notices
    from forecaster.history import History, mark_gaps

    index = pd.date_range("2024-05-01T00:00", periods=180, freq="1min", tz="UTC")
    load = pd.Series(600.0, index=index)
    load.iloc[120:] = 0.0  # the service went down at 02:00

    def live(minutes: int) -> History:
        counts = load.iloc[:minutes].copy()
        counts.index.freq = "1min"
        marked, gaps = mark_gaps(counts, "prometheus")
        return History(marked, "prometheus", gaps)

    back = load.copy()
    back.iloc[150:] = 600.0  # and came back at 02:30
    notices = Notices("llm-chat")
    with caplog.at_level("INFO", logger="peakpilot.daemon"):
        for minutes in (110, 124, 125, 140, 150):
            notices.live_gap(live(minutes))
        load = back
        for minutes in (151, 160):
            notices.live_gap(live(minutes))
    assert [r.getMessage() for r in caplog.records] == [
        "llm-chat: no traffic since 2024-05-01T02:00 (zeros where the usual level predicts traffic): read as an "
        "outage, not as no demand, so the plan follows the forecast until the load returns",
        "llm-chat: the load is back after the gap since 2024-05-01T02:00"]


def test_the_outage_the_load_is_in_is_recorded_for_status(tmp_path, policy_file, trace):
    """While the load is in a gap, each cycle's record says so beside the cluster's warnings (what
    ``peakpilot status`` prints under ``!``), and stops saying it once the load is back."""
    import pandas as pd

    gap = trace.history.gaps[4]  # 2000-01-13 06:00-07:10 of the sample trace
    minute = int((gap.start - trace.history.start) / pd.Timedelta(minutes=1))
    clock = Clock()
    store = Store(str(tmp_path / "g.db"))
    cluster = SimulatedActuator(load_policy_of(policy_file), reserved=3, seed=1)
    daemon, service, _ = make(policy_file, trace, store, clock, cluster, signals=TraceSignals(trace, minute - 20, T0))
    daemon.retrain_all()
    run_cycles(daemon, clock, 40)  # 20 minutes into the gap
    since = str(np.datetime64(T0 + np.timedelta64(20, "m"), "m"))
    assert store.latest_cycles()[0]["attention"] == (
        f"no traffic since {since} (zeros where the usual level predicts traffic): read as an outage, not as no "
        f"demand, so the plan follows the forecast until the load returns")
    run_cycles(daemon, clock, 70)  # 10 minutes after it, once a step after it is in
    assert store.latest_cycles()[0]["attention"] is None


def test_failed_pods_are_said_once_counted_and_not_held(tmp_path, policy_file, trace, caplog):
    """A spot pod whose container crash-loops: one warning naming it (not one a minute), the
    ``failed`` state in the node metric, and decisions that say it and do not keep it as warming."""
    from prometheus_client import generate_latest

    with FakeKubeAPI("inference") as kube:
        for name in ("llm-reserved", "llm-spot", "llm-on-demand", "llm-placeholder"):
            kube.add_deployment(name, 1)
        kube.add_pod("spot-1", {"app": "llm-spot"}, "warming", waiting="CrashLoopBackOff", restarts=7)
        target = KubernetesTarget("inference", {"reserved": "llm-reserved", "spot": "llm-spot",
                                                "on_demand": "llm-on-demand"}, "llm-placeholder")
        actuator = KubernetesActuator(api_client(host=kube.url), target, sleep=lambda s: None)
        store = Store(str(tmp_path / "k.db"))
        clock = Clock()
        daemon, service, _ = make(policy_file, trace, store, clock, actuator)
        daemon.retrain_all()
        with caplog.at_level("WARNING", logger="peakpilot.daemon"):
            run_cycles(daemon, clock, 3)
        said = [r.getMessage() for r in caplog.records if "will not turn ready" in r.getMessage()]
        assert said == ["llm-chat: 1 node(s) failed and will not turn ready by themselves: "
                        "spot-1: CrashLoopBackOff (restarts: 7)"]
        metrics = generate_latest(service.metrics.registry).decode()
        assert 'peakpilot_actual_nodes{class="spot",service="llm-chat",state="failed"} 1.0' in metrics
        spot = store.decisions(service.run_id).query("cls == 'spot'")
        assert spot.reason.str.contains("1 failed (not serving", regex=False).all()
        assert not spot.reason.str.contains("still warming", regex=False).any()


class BrokenView:
    """A cluster whose API cannot be read."""

    def view(self):
        raise RuntimeError("injected: the API server is unreachable")


class Seconds:
    """A monotonic clock the test moves."""

    def __init__(self):
        self.t = 1000.0

    def __call__(self):
        return self.t


def test_health_turns_503_when_cycles_stop_so_the_liveness_probe_restarts_it(tmp_path, policy_file, trace):
    """/health is what the kubelet's liveness probe reads: a daemon whose cycle hangs (an API call that
    never returns) still answers HTTP, so health must say stalled, not ok, once no cycle finishes."""
    metrics = DaemonMetrics()
    service = ServiceController(policy_file, TraceSignals(trace, 8 * 1440, T0),
                                SimulatedActuator(load_policy_of(policy_file), reserved=3),
                                Store(str(tmp_path / "h.db")), metrics)
    seconds = Seconds()
    daemon = Daemon([service], metrics, interval_s=60, clock=Clock(), startup_s=600, monotonic=seconds)
    port = free_port()
    server = daemon.serve_metrics(port)
    get = lambda: httpx.get(f"http://127.0.0.1:{port}/health", timeout=5)  # noqa: E731
    try:
        seconds.t += 590  # training before the first cycle: starting, and alive
        assert (get().status_code, get().json()["status"]) == (200, "starting")
        seconds.t += 20  # ... but not for ever
        assert (get().status_code, get().json()["status"]) == (503, "stalled")
        daemon.retrain_all()
        daemon.cycle_all()
        assert (get().status_code, get().json()["status"], get().json()["last_cycle_age_s"]) == (200, "ok", 0.0)
        seconds.t += daemon.stall_after_s  # five missed cycles (at least five minutes) are still tolerated
        assert get().status_code == 200
        seconds.t += 1
        answer = get()
        assert answer.status_code == 503 and answer.json()["status"] == "stalled"
        assert answer.json()["last_cycle_age_s"] == daemon.stall_after_s + 1
        daemon.cycle_all()  # the loop turns again: healthy again
        assert get().status_code == 200
    finally:
        server.shutdown()


def sample(registry, name, **labels):
    """A sample's value as /metrics shows it (None: no such series)."""
    from prometheus_client import generate_latest
    from prometheus_client.parser import text_string_to_metric_families

    for family in text_string_to_metric_families(generate_latest(registry).decode()):
        for s in family.samples:
            if s.name == name and all(s.labels.get(k) == v for k, v in labels.items()):
                return s.value
    return None


def test_metrics_say_who_acts_when_the_loop_last_turned_and_whether_the_forecast_fell_back(tmp_path, policy_file,
                                                                                          trace):
    clock = Clock()
    actuator = FlakyActuator(SimulatedActuator(load_policy_of(policy_file), reserved=3))
    daemon, service, _ = make(policy_file, trace, Store(str(tmp_path / "m.db")), clock, actuator)
    daemon.wall = lambda: 1_800_000_000.0
    r = service.metrics.registry
    # Before training: every error kind is a 0 series (so increase() sees the first error), and no model.
    assert sample(r, "peakpilot_errors_total", service="llm-chat", kind="actuator") == 0
    assert sample(r, "peakpilot_forecast_fallback", service="llm-chat") == 1
    daemon.retrain_all()
    assert sample(r, "peakpilot_forecast_fallback", service="llm-chat") == 0  # the policy's model
    run_cycles(daemon, clock, 2)
    assert sample(r, "peakpilot_leader", lease="none") == 1  # no Lease: this replica acts
    assert sample(r, "peakpilot_acting", service="llm-chat") == 1
    assert sample(r, "peakpilot_last_cycle_timestamp_seconds", service="llm-chat") == 1_800_000_000.0
    assert sample(r, "peakpilot_last_ok_cycle_timestamp_seconds", service="llm-chat") == 1_800_000_000.0
    # What a Grafana panel lays side by side: the load observed, the ready nodes' capacity, and the forecast
    # for 10 minutes after the cycle (so `offset 10m` of it is the forecast for the minute observed).
    cycled = clock.now - np.timedelta64(1, "m")
    observed = service.signals.observe(cycled).load_rps
    assert sample(r, "peakpilot_observed_rps", service="llm-chat") == pytest.approx(observed) and observed > 0
    ready = service.actuator.view().ready()
    assert sample(r, "peakpilot_capacity_rps", service="llm-chat") == pytest.approx(ready * service.rps_per_node)
    forecast, _ = service._forecast(cycled)
    ten_on = int((cycled - forecast.start) / np.timedelta64(1, "m")) + 10
    assert sample(r, "peakpilot_forecast_rps", service="llm-chat", quantile="q90") == \
        pytest.approx(forecast.rps[ten_on, 1])
    service.actuator = BrokenView()
    daemon.wall = lambda: 1_800_000_060.0
    run_cycles(daemon, clock, 1)  # the cycle ran, but could not read the cluster: not an ok one
    assert sample(r, "peakpilot_last_cycle_timestamp_seconds", service="llm-chat") == 1_800_000_060.0
    assert sample(r, "peakpilot_last_ok_cycle_timestamp_seconds", service="llm-chat") == 1_800_000_000.0
    assert sample(r, "peakpilot_errors_total", service="llm-chat", kind="actuator") == 1
    # A history too short for the policy's model (two days needed, one there): it falls back, and says so.
    service.signals = TraceSignals(trace, 1440, clock.now)
    daemon.retrain_all()
    assert service.model.name != service.policy.planning.model
    assert sample(r, "peakpilot_forecast_fallback", service="llm-chat") == 1


def test_daemon_process_serves_metrics_follows_its_policy_folder_and_stops_cleanly_on_sigterm(tmp_path, policy_file):
    port = free_port()
    folder = policy_folder(tmp_path, policy_file.read_text())
    proc = subprocess.Popen([sys.executable, "-m", "peakpilot.cli", "run", "--policy", str(folder),
                             "--store", str(tmp_path / "d.db"), "--interval-s", "0.5", "--metrics-port", str(port)],
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)

    def health_when(ready) -> dict | None:
        deadline = time.time() + 60
        health = None
        while time.time() < deadline:
            try:
                health = httpx.get(f"http://127.0.0.1:{port}/health", timeout=1).json()
                if ready(health):
                    break
            except (httpx.TransportError, json.JSONDecodeError):
                pass
            time.sleep(0.3)
        return health

    try:
        health = health_when(lambda h: h["services"])
        assert health and health["services"]["llm-chat"]["ok"] is True
        time.sleep(1.5)
        metrics = httpx.get(f"http://127.0.0.1:{port}/metrics").text
        assert 'peakpilot_cycles_total{mode="predictive",service="llm-chat"}' in metrics
        assert "peakpilot_cycle_duration_seconds_bucket" in metrics and "peakpilot_forecast_rps" in metrics
        # A policy file added to the folder is a service of the running daemon, no restart.
        (folder / "search.yaml").write_text(policy_file.read_text().replace("service: llm-chat", "service: llm-search"))
        # It trains on the daemon's worker (mode "training", deciding nothing), then cycles with the rest.
        health = health_when(lambda h: h["services"].get("llm-search", {}).get("mode") == "predictive")
        assert health["services"]["llm-search"]["ok"] is True, health
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(30) == 0
    finally:
        if proc.poll() is None:
            proc.kill()
    log = proc.stdout.read()
    # The log says what was decided (one line per class as each service starts), not the scheduler's
    # two lines a cycle.
    assert "llm-chat: spot " in log and "llm-search: spot " in log and "Running job" not in log, log
    with Store(str(tmp_path / "d.db"), readonly=True) as st:
        runs = st.runs()
        assert len(runs) == 2 and all(r["kind"] == "daemon" and len(st.timeline(r["id"])) >= 1 for r in runs)


def test_cycles_run_half_a_minute_into_the_minute_whenever_the_daemon_started(tmp_path, policy_file, trace):
    """A cycle reads the minute just ended; read at its very end (a daemon started on the minute), that
    minute can lack the scrape Prometheus is still appending, every cycle. The cycles run at :30."""
    from datetime import datetime, timedelta, timezone

    daemon, _, _ = make(policy_file, trace, Store(str(tmp_path / "t.db")), Clock(), SimulatedActuator(
        load_policy_of(policy_file)))
    for second in (0, 29, 31, 59):
        started = datetime(2026, 1, 5, 10, 0, second, 400000, tzinfo=timezone.utc)
        trigger = daemon.cycle_trigger(started)
        first = trigger.get_next_fire_time(None, started)
        second_fire = trigger.get_next_fire_time(first, first)
        assert first.second == 30 and first.microsecond == 0 and started <= first < started + timedelta(seconds=60)
        assert (second_fire - first).total_seconds() == 60


def test_dry_run_prints_the_events_it_would_record():
    import io

    from controller.actuators import DryRunActuator

    out = io.StringIO()
    act = DryRunActuator({"reserved": "llm-reserved", "spot": "llm-spot", "on_demand": "llm-od"}, "inference", out)
    act.announce(True, "FallbackToReactive", "llm-chat: the reactive safety net alone decides: no model yet")
    assert out.getvalue().splitlines() == [
        f"dry-run: POST /apis/events.k8s.io/v1/namespaces/inference/events (Warning FallbackToReactive on "
        f"deployments/{name})  # llm-chat: the reactive safety net alone decides: no model yet"
        for name in ("llm-reserved", "llm-spot", "llm-od")]


def test_run_once_and_a_broken_policy_at_start(tmp_path, policy_file):
    ok = subprocess.run([sys.executable, "-m", "peakpilot.cli", "run", "--policy", str(policy_file), "--once",
                         "--backend", "dry-run", "--store", str(tmp_path / "o.db")], capture_output=True, text=True,
                        timeout=300)
    assert ok.returncode == 0, ok.stderr
    assert "dry-run: PATCH /apis/apps/v1/namespaces/inference/deployments/llm-spot/scale" in ok.stdout
    # and, beside each scale, the Event a cluster would record for it
    assert ("dry-run: POST /apis/events.k8s.io/v1/namespaces/inference/events (Normal SuccessfulRescale on "
            "deployments/llm-spot)") in ok.stdout
    broken = tmp_path / "broken.yaml"
    broken.write_text(policy_file.read_text().replace("max_share: 0.6", "max_share: 1.6"))
    out = subprocess.run([sys.executable, "-m", "peakpilot.cli", "run", "--policy", str(broken), "--once"],
                         capture_output=True, text=True, timeout=300)
    assert out.returncode == 2 and "spot.max_share" in out.stderr and "Traceback" not in out.stderr
    (tmp_path / "empty").mkdir()
    out = subprocess.run([sys.executable, "-m", "peakpilot.cli", "run", "--policy", str(tmp_path / "empty"), "--once"],
                         capture_output=True, text=True, timeout=300)
    assert out.returncode == 2 and f"no policy files (*.yaml) in {tmp_path / 'empty'}" in out.stderr


def test_run_without_a_policy_runs_the_default_but_not_on_a_cluster(tmp_path):
    """`peakpilot run` alone runs the shipped default policy on the simulated (or dry-run) backend and says
    so, as every other command defaults to it; on Kubernetes, where a default service would scale
    Deployments nobody named, it asks for --policy (it was "Missing option" for every backend)."""
    out = subprocess.run([sys.executable, "-m", "peakpilot.cli", "run", "--once", "--backend", "dry-run", "--store",
                          str(tmp_path / "d.db")], capture_output=True, text=True, timeout=300, cwd=tmp_path)
    assert out.returncode == 0, out.stderr
    assert f"no --policy: running the default policy {DEFAULT_POLICY}" in out.stderr
    assert "llm-chat: ok (predictive)" in out.stdout
    assert "dry-run: PATCH /apis/apps/v1/namespaces/inference/deployments/llm-spot/scale" in out.stdout
    cluster = subprocess.run([sys.executable, "-m", "peakpilot.cli", "run", "--once", "--backend", "kubernetes",
                              "--store", str(tmp_path / "k.db")], capture_output=True, text=True, timeout=120)
    assert cluster.returncode == 2 and "Traceback" not in cluster.stderr
    assert "--backend kubernetes needs --policy" in cluster.stderr
    assert not (tmp_path / "k.db").exists()  # refused before anything is opened


def test_a_kubernetes_start_without_credentials_or_cluster_says_so(tmp_path, policy_file):
    """Not in a pod and no kubeconfig: exit 2 with what to give (it was a traceback); a kubeconfig that
    does not exist, the same; an API server that does not answer: ``--once`` fails naming it (it printed
    "FAILED (None) None")."""
    import os

    env = {k: v for k, v in os.environ.items() if k not in ("KUBECONFIG", "KUBERNETES_SERVICE_HOST")}
    env["HOME"] = str(tmp_path)  # no ~/.kube/config
    base = [sys.executable, "-m", "peakpilot.cli", "run", "--policy", str(policy_file), "--once", "--backend",
            "kubernetes", "--store", str(tmp_path / "k.db")]
    bare = subprocess.run(base, capture_output=True, text=True, timeout=120, env=env)
    assert bare.returncode == 2 and "Traceback" not in bare.stderr, bare.stderr
    assert "cannot reach the Kubernetes API: no in-cluster ServiceAccount (not in a pod) and no kubeconfig" in bare.stderr
    assert "give --kubeconfig" in bare.stderr
    missing = subprocess.run(base + ["--kubeconfig", str(tmp_path / "nope.yaml")], capture_output=True, text=True,
                             timeout=120, env=env)
    assert missing.returncode == 2 and f"the kubeconfig {tmp_path / 'nope.yaml'} does not exist" in missing.stderr
    with FakeKubeAPI("inference") as kube:
        url = kube.url
    down = run_once_on(SimpleNamespace(url=url), policy_file.parent, tmp_path, "down")  # nothing listens there now
    assert down.returncode == 1
    assert down.stdout.strip().startswith(f"llm-chat: FAILED: {url}: ") and "unreachable" in down.stdout


def kubeconfig_for(kube: FakeKubeAPI, tmp_path: Path) -> Path:
    """A kubeconfig naming the fake API server."""
    kubeconfig = tmp_path / "kubeconfig"
    kubeconfig.write_text(json.dumps({
        "apiVersion": "v1", "kind": "Config", "current-context": "fake",
        "clusters": [{"name": "fake", "cluster": {"server": kube.url}}],
        "users": [{"name": "peakpilot", "user": {"token": "t"}}],
        "contexts": [{"name": "fake", "context": {"cluster": "fake", "user": "peakpilot"}}]}))
    return kubeconfig


def run_once_on(kube: FakeKubeAPI, folder: Path, tmp_path: Path, store: str) -> subprocess.CompletedProcess:
    """`peakpilot run --once --backend kubernetes` on a policy folder, its kubeconfig naming the fake API server."""
    kubeconfig = kubeconfig_for(kube, tmp_path)
    return subprocess.run([sys.executable, "-m", "peakpilot.cli", "run", "--policy", str(folder), "--once",
                           "--backend", "kubernetes", "--kubeconfig", str(kubeconfig),
                           "--store", str(tmp_path / f"{store}.db")], capture_output=True, text=True, timeout=300)


def test_run_on_the_kubernetes_backend_from_a_kubeconfig_takes_the_lease_and_scales(tmp_path, policy_file):
    """The command as a cluster runs it (`peakpilot run --backend kubernetes`), end to end against the fake
    API server: the kubeconfig's server is used, the Lease taken, each class's Deployment scaled."""
    folder = policy_folder(tmp_path, policy_file.read_text())
    with FakeKubeAPI("inference") as kube:
        for name in ("llm-reserved", "llm-spot", "llm-on-demand", "llm-placeholder"):
            kube.add_deployment(name, 1)
        out = run_once_on(kube, folder, tmp_path, "k")
        assert out.returncode == 0, out.stderr
        assert "llm-chat: ok" in out.stdout
        assert kube.leases and kube.calls("POST", "/leases")
        assert {p[1].split("/")[-2] for p in kube.calls("PATCH", "/scale")} >= {"llm-reserved", "llm-spot"}
        # Why, where an operator looks: an Event on each Deployment it scaled, and a line of the log.
        scaled = {e["regarding"]["name"]: e["note"] for e in kube.events}
        assert scaled["llm-spot"].startswith("replicas 1 -> ") and "forecast needs" in scaled["llm-spot"]
        assert "llm-chat: spot 1 -> " not in out.stderr and "llm-chat: spot " in out.stderr


def test_a_start_on_a_cluster_says_which_permissions_the_account_lacks_and_how_to_grant_them(tmp_path,
                                                                                             policy_file):
    """Asked of the API server as SelfSubjectAccessReviews before the first cycle: with the deployed Role
    nothing is said; with one that forgot the Events rule, that is named at once, with the command that
    renders the Role (before, a 403 at the first rescale, which may come hours later)."""
    import yaml as _yaml

    role = next(d for d in _yaml.safe_load_all((ROOT / "deploy" / "controller-rbac.yaml").read_text())
                if d and d["kind"] == "Role")
    folder = policy_folder(tmp_path, policy_file.read_text())
    said = {}
    for case, rules in (("deployed", role["rules"]),
                        ("no events", [r for r in role["rules"] if r["resources"] != ["events"]])):
        with FakeKubeAPI("inference") as kube:
            for name in ("llm-reserved", "llm-spot", "llm-on-demand", "llm-placeholder"):
                kube.add_deployment(name, 1)
            kube.role = {**role, "rules": rules}
            out = run_once_on(kube, folder, tmp_path, case)
            assert out.returncode == 0, out.stderr
            said[case] = out.stderr
            assert len(kube.calls("POST", "/selfsubjectaccessreviews")) >= 10
    assert "may not" not in said["deployed"]
    line = next(ln for ln in said["no events"].splitlines() if "may not" in ln)
    assert "may not create events.k8s.io/events in inference;" in line
    assert f"peakpilot check-policy --backend kubernetes --rbac {folder} | kubectl apply -f -" in line


def test_check_policy_connect_asks_the_cluster_before_a_deploy(tmp_path, policy_file):
    """``check-policy --connect --backend kubernetes``, from where the controller will run: the permissions
    its policies need asked of the API server, and the Deployments they name looked up; what is refused or
    missing named on a line each, with the command that grants the permissions, exit 1. Where all is there,
    the pools as they are, and what the controller would have to work around said as warnings: a pod that
    will not turn ready, spot that cannot be had, pods not created, an HPA left on a pool."""
    import yaml as _yaml

    role = next(d for d in _yaml.safe_load_all((ROOT / "deploy" / "controller-rbac.yaml").read_text())
                if d and d["kind"] == "Role")
    folder = policy_folder(tmp_path, policy_file.read_text())
    cli = [sys.executable, "-m", "peakpilot.cli", "check-policy", "--connect", "--backend", "kubernetes"]
    with FakeKubeAPI("inference") as kube:
        for name in ("llm-reserved", "llm-spot", "llm-on-demand", "llm-placeholder"):
            kube.add_deployment(name, 1)
        kube.add_pdb("llm", {"matchExpressions": [{"key": "app", "operator": "In",
                                                   "values": ["llm-reserved", "llm-spot", "llm-on-demand"]}]})
        kube.role = role
        kubeconfig = kubeconfig_for(kube, tmp_path)
        ok = subprocess.run([*cli, "--kubeconfig", str(kubeconfig), str(folder)], capture_output=True, text=True,
                            timeout=120)
        assert ok.returncode == 0, ok.stderr
        assert f"cluster {kube.url}: the account may do the " in ok.stdout and "every Deployment" in ok.stdout
        asked = len(kube.calls("POST", "/selfsubjectaccessreviews"))
        assert asked >= 10 and f"may do the {asked} things" in ok.stdout
        policy = folder / "chat.yaml"
        assert f"pools  {policy}: reserved 1 pending; spot 1 pending; on_demand 1 pending" in ok.stdout
        assert "warn" not in ok.stderr

        kube.add_pod("llm-reserved-a", {"app": "llm-reserved"}, "ready")
        kube.add_pod("llm-spot-a", {"app": "llm-spot"}, "warming", waiting="CrashLoopBackOff", restarts=6)
        kube.add_pod("llm-spot-b", {"app": "llm-spot"}, "pending")  # unscheduled since 2024: no spot capacity
        kube.refuse_pods("llm-on-demand", 'pods "llm-on-demand-x" is forbidden: exceeded quota: gpus',
                         "2024-05-01T12:00:00Z")
        kube.add_hpa("llm-cpu", "llm-on-demand")
        kube.add_pdb("llm", {"matchLabels": {"app": "llm-reserved"}})  # (the other pools uncovered)
        out = subprocess.run([*cli, "--kubeconfig", str(kubeconfig), "--json", str(folder)], capture_output=True,
                             text=True, timeout=120)
        assert out.returncode == 0, out.stderr  # (warnings: the policy and the access are right)
        pools = json.loads(out.stdout)["cluster"]["pools"][str(policy)]
        assert pools["nodes"] == {"reserved": {"ready": 1}, "spot": {"pending": 1, "failed": 1},
                                  "on_demand": {"pending": 1}}
        failed, uncreated, spot, hpa, budget = pools["warnings"]
        assert failed.startswith("pod llm-spot-a: CrashLoopBackOff (restarts: 6): it will not turn ready by itself")
        assert uncreated == ("llm-on-demand: 1 pod(s) not created (FailedCreate: pods \"llm-on-demand-x\" is "
                             "forbidden: exceeded quota: gpus)")
        assert spot.startswith("spot cannot be had now (spot pod llm-spot-b unscheduled for ")
        assert hpa.startswith("HorizontalPodAutoscaler llm-cpu scales Deployment llm-on-demand too: delete it")
        assert budget.startswith("no PodDisruptionBudget covers the pods of llm-spot, llm-on-demand: a node drain")
        assert not kube.calls("PATCH")  # it reads; it changes nothing (not even a failed pod's deletion cost)
        kube.role = {**role, "rules": [r for r in role["rules"] if r["resources"] != ["events"]]}
        del kube.deployments["llm-spot"]
        out = subprocess.run([*cli, "--kubeconfig", str(kubeconfig), "--json", str(folder)], capture_output=True,
                             text=True, timeout=120)
    assert out.returncode == 1, out.stderr
    doc = json.loads(out.stdout)
    assert doc["ok"] is False and doc["cluster"]["server"] == kube.url
    refused, missing = doc["cluster"]["missing"]
    assert refused.startswith("the account may not create events.k8s.io/events in inference: ")
    assert refused.endswith(f"peakpilot check-policy --backend kubernetes --rbac {folder} | kubectl apply -f -")
    assert missing.endswith(": kubernetes.workloads.spot: no Deployment llm-spot in inference")
    down = subprocess.run([*cli, "--kubeconfig", str(kubeconfig), str(folder)], capture_output=True, text=True,
                          timeout=120)  # the fake API server is gone
    assert down.returncode == 1 and f"error  cluster: {kube.url}: the API server is unreachable" in down.stderr


def test_json_logs_for_a_log_pipeline(tmp_path, policy_file):
    """PEAKPILOT_LOG_FORMAT=json (as deploy/controller.yaml sets it): every stderr line one JSON object."""
    import os

    out = subprocess.run([sys.executable, "-m", "peakpilot.cli", "run", "--policy", str(policy_file), "--once",
                          "--backend", "dry-run", "--store", str(tmp_path / "j.db")], capture_output=True, text=True,
                         timeout=300, env={**os.environ, "PEAKPILOT_LOG_FORMAT": "json"})
    assert out.returncode == 0, out.stderr
    lines = [json.loads(line) for line in out.stderr.splitlines()]  # fails on any line that is not JSON
    trained = [x for x in lines if "trained" in x["message"]]
    assert trained and trained[0]["level"] == "info" and trained[0]["logger"] == "peakpilot.daemon"
    assert trained[0]["time"].endswith("+00:00")
    assert "dry-run: PATCH" in out.stdout  # what the command prints stays text


def test_shadow_mode_records_the_plan_next_to_the_cluster(tmp_path, policy_file, trace):
    with FakeKubeAPI("inference") as kube:
        for name in ("llm-reserved", "llm-spot", "llm-on-demand", "llm-placeholder"):
            kube.add_deployment(name, 1)  # the cluster as its own HPA left it: one node per class
        target = KubernetesTarget("inference", {"reserved": "llm-reserved", "spot": "llm-spot",
                                                "on_demand": "llm-on-demand"}, "llm-placeholder")
        actuator = KubernetesActuator(api_client(host=kube.url), target, shadow=True, sleep=lambda s: None)
        clock = Clock()
        metrics = DaemonMetrics()
        store = Store(str(tmp_path / "shadow.db"))
        service = ServiceController(policy_file, TraceSignals(trace, 8 * 1440, T0), actuator, store, metrics,
                                    shadow=True)
        daemon = Daemon([service], metrics, clock=clock)
        run_cycles(daemon, clock, 5, retrain_at=(0,))
        assert kube.calls("PATCH") == []  # nothing sent
        tl = store.timeline(service.run_id)
        # The actual side is the cluster's three replicas (pending: no pods yet), priced as they are.
        assert (tl["cost_per_hour"] == sum(c.price_per_hour for c in (load_policy_of(policy_file).classes.reserved,
                                                                       load_policy_of(policy_file).classes.spot,
                                                                       load_policy_of(policy_file).classes.on_demand))).all()
        assert (tl["plan_nodes"] > 3).all()  # peakpilot would run more than the cluster's three
        prices = load_policy_of(policy_file).classes
        assert tl["plan_cost_per_hour"].iloc[-1] > prices.on_demand.price_per_hour


def test_shadow_mode_estimates_the_sla_of_both_sides(tmp_path, policy_file, trace):
    """The cluster under its own HPA keeps one ready node per class; peakpilot's plan wants more.
    Once the plan is older than a lead time, its estimated SLA is better than the cluster's, and
    both are the service model's answer to the same observed load."""
    from dashboard.data import shadow_comparison

    with FakeKubeAPI("inference") as kube:
        for name in ("llm-reserved", "llm-spot", "llm-on-demand", "llm-placeholder"):
            kube.add_deployment(name, 1)
        for name in ("llm-reserved", "llm-spot", "llm-on-demand"):
            kube.add_pod(f"{name}-0", {"app": name}, "ready")
        target = KubernetesTarget("inference", {"reserved": "llm-reserved", "spot": "llm-spot",
                                                "on_demand": "llm-on-demand"}, "llm-placeholder")
        actuator = KubernetesActuator(api_client(host=kube.url), target, shadow=True, sleep=lambda s: None)
        clock = Clock()
        clock.tick(14 * 60)  # 14:00 on the sample trace: well above three nodes' worth of load
        metrics = DaemonMetrics()
        store = Store(str(tmp_path / "shadow.db"))
        service = ServiceController(policy_file, TraceSignals(trace, 8 * 1440, T0), actuator, store, metrics,
                                    shadow=True)
        run_cycles(Daemon([service], metrics, clock=clock), clock, 25, retrain_at=(0,))
        assert kube.calls("PATCH") == []
        tl = store.timeline(service.run_id)
        assert (tl["ready"] == 3).all()
        # Before a lead time has passed the plan has what the cluster has; after it, what it asked for.
        assert (tl["plan_ready"].iloc[:12] == 3).all()
        assert (tl["plan_ready"].iloc[-5:] > 3).all()
        late = tl.iloc[-5:]
        assert (late["plan_in_time"] > late["in_time"]).all()
        arrived = tl["load_rps"] * 60
        np.testing.assert_allclose(tl["in_time"] + tl["late"] + tl["busy"], arrived, rtol=0.02)
        shadow = shadow_comparison(tl)
        assert shadow["plan"]["sla_compliance"] > shadow["cluster"]["sla_compliance"]
        assert shadow["plan"]["cost_usd"] > shadow["cluster"]["cost_usd"]
        # The plan history is in the store: a restarted daemon continues the same estimate.
        restarted = ServiceController(policy_file, TraceSignals(trace, 8 * 1440, T0), actuator, store,
                                      DaemonMetrics(), shadow=True)
        assert restarted.estimate.history == service.estimate.history


def test_shadow_estimate_counts_plan_nodes_only_after_their_lead_time():
    from controller.shadow import ShadowEstimate

    est = ShadowEstimate(rps_per_node=10.0, queue_seconds=0.0)
    lead = {"reserved": 0, "spot": 5}
    cluster = {"reserved": 2, "spot": 1}
    ready = [est.plan_ready(m, {"reserved": 2, "spot": 4 if m >= 3 else 1}, lead, cluster) for m in range(12)]
    # spot asked to go from 1 to 4 at minute 3: ready at minute 8; reserved never waits.
    assert ready == [3, 3, 3, 3, 3, 3, 3, 3, 6, 6, 6, 6]
    # A drop is followed at once (nodes released), and a rise again waits its lead time.
    assert est.plan_ready(12, {"reserved": 2, "spot": 2}, lead, cluster) == 4
    assert est.plan_ready(13, {"reserved": 2, "spot": 4}, lead, cluster) == 4
    assert est.plan_ready(18, {"reserved": 2, "spot": 4}, lead, cluster) == 6
    # The service model on both sides: 6 nodes x 10 rps serve 50 rps in time; 3 nodes do not.
    row = est.serve(18, 50.0, cluster_ready=3, plan_ready=6)
    assert row["plan_in_time"] == 3000 and row["plan_busy"] == 0
    assert row["in_time"] == 1800 and row["busy"] == 1200
    assert est.serve(18, 50.0, 3, 6) is row  # a second cycle in the same minute scores nothing twice


def test_prometheus_down_keeps_the_last_plan_and_recovers(tmp_path, policy_file, trace, prometheus_factory):
    """Live signals from a Prometheus that answers, then is stopped, then comes back."""
    from controller.signals import PrometheusSignals

    class Switch:
        """The trace's load while Prometheus is up (the test's clock is not Prometheus's); the real
        PrometheusSignals against the stopped server while it is down."""

        def __init__(self, url):
            self.live = PrometheusSignals(url, step="1m", history_days=0.05)
            self.trace_signals = TraceSignals(trace, 8 * 1440, T0)
            self.trace = trace
            self.down = False

        def observe(self, now):
            if self.down:
                return self.live.observe(now)  # connection refused -> SignalError
            return self.trace_signals.observe(now)

        def history(self, now):
            return self.trace_signals.history(now)

    server = prometheus_factory().start()
    clock = Clock()
    metrics = DaemonMetrics()
    cluster = SimulatedActuator(load_policy_of(policy_file), reserved=3)
    switch = Switch(server.url)
    service = ServiceController(policy_file, switch, cluster, Store(str(tmp_path / "p.db")), metrics)
    daemon = Daemon([service], metrics, clock=clock)
    run_cycles(daemon, clock, 3, retrain_at=(0,))
    ready_before = service.store.timeline(service.run_id)["ready"].iloc[-1]
    server.stop()
    switch.down = True
    run_cycles(daemon, clock, 3)
    errors = [s.value for s in metrics.errors.collect()[0].samples
              if s.name.endswith("_total") and s.labels["kind"] == "signals"]
    assert errors and errors[0] == 3
    assert all(v["ok"] for v in daemon.last_cycle.values())
    tl = service.store.timeline(service.run_id)
    assert tl["ready"].iloc[-1] >= ready_before - 1 and tl["load_rps"].iloc[-3:].isna().all()
    switch.down = False
    run_cycles(daemon, clock, 2)
    assert service.store.timeline(service.run_id)["load_rps"].iloc[-1] > 0  # recovered by itself


def test_services_on_one_silent_prometheus_wait_for_it_once_not_once_each(silent_port, tmp_path, monkeypatch):
    """Fifty services on one Prometheus that stopped answering must not make a cycle fifty timeouts
    long (the health check would then call the daemon stalled): the first one waits, the rest are told."""
    import forecaster.prometheus_source as source
    from controller.signals import PrometheusSignals

    monkeypatch.setattr(source, "CLIENT_MARGIN_S", 0.5)
    monkeypatch.setattr(source, "_unreachable", {})
    text = (ROOT / "configs" / "policy.yaml").read_text().replace("peak_nodes: 20", "rps_per_node: 50")
    url = f"http://127.0.0.1:{silent_port}"
    metrics, services = DaemonMetrics(), []
    for k in range(3):
        path = tmp_path / f"s{k}.yaml"
        path.write_text(text.replace("service: llm-chat ", f"service: chat-{k} "))
        services.append(ServiceController(path, PrometheusSignals(url, timeout_s=1.0),
                                          SimulatedActuator(load_policy_of(path), reserved=1),
                                          Store(str(tmp_path / "s.db")), metrics))
    daemon = Daemon(services, metrics, clock=Clock())
    started = time.monotonic()
    daemon.retrain_all()  # the first service waits two tries of 1.5 s; the others are told at once
    assert time.monotonic() - started < 4.5
    started = time.monotonic()
    assert daemon.cycle_all() is True  # no load, no forecast: every service keeps its plan
    assert time.monotonic() - started < 1.5
    errors = {(s.labels["service"], s.labels["kind"]): s.value for s in metrics.errors.collect()[0].samples
              if s.name.endswith("_total") and s.value}
    # The retrain and the cycle of each: Prometheus's failures, counted as such (not as the forecaster's).
    assert errors == {(f"chat-{k}", "signals"): 2 for k in range(3)}


def test_a_forecast_under_a_minute_is_read_per_minute_at_its_busiest():
    """signals.step 30s gives forecasts in 30-s steps; the cycle reads one row a minute. Read as minutes,
    a surge 15.5 minutes ahead would have been planned for 31 minutes ahead: after it."""
    import pandas as pd

    from controller.service_controller import minute_forecast
    from forecaster.models.base import Forecast

    start = pd.Timestamp("2026-01-05T00:00", tz="UTC")
    values = np.full((120, 3), 30.0)  # an hour of 30-s steps at 1 request/s
    values[31] = 300.0  # 10 requests/s for the 30 s from +15.5 minutes
    minutes = minute_forecast(Forecast("x", start, pd.Timedelta(seconds=30), values), "ok")
    assert minutes.start == T0 and minutes.rps.shape == (60, 3)
    assert np.allclose(minutes.rps[15], 10.0) and np.allclose(np.delete(minutes.rps, 15, axis=0), 1.0)
    tens = minute_forecast(Forecast("x", start, pd.Timedelta(minutes=10), np.array([[600.0] * 3, [1200.0] * 3])), "ok")
    assert tens.rps.shape == (20, 3) and np.allclose(tens.rps[:10], 1.0) and np.allclose(tens.rps[10:], 2.0)
    assert (minutes.step_min, tens.step_min) == (1.0, 10.0)  # how old a fresh one may be (``cycle.decide``)


# -- policies that change what a service reads or acts on, and policy files that come and go ---------

def parts_for(backend, trace, clock, **kwargs):
    from controller.service_parts import ServiceParts

    return ServiceParts(backend, clock, trace=lambda: trace, **kwargs)


def simulated_service(policy_file, trace, db, clock):
    """One service on the simulated cluster, built from its policy as the daemon builds it (reloads
    rebuild its parts): the daemon, the service and their metrics."""
    metrics = DaemonMetrics()
    service = ServiceController(policy_file, None, None, Store(str(db)), metrics,
                                parts=parts_for("simulated", trace, clock))
    return Daemon([service], metrics, clock=clock), service, metrics


def watching_daemon(folder, store, metrics, clock, signals_for):
    """A daemon on a watched policy folder, training on its worker thread, its first service trained:
    each service on the simulated cluster, its signals from ``signals_for(path)``."""
    from controller.policy_watch import PolicyWatch
    from controller.trainer import Trainer

    def make_service(path):
        return ServiceController(path, signals_for(path), SimulatedActuator(load_policy_of(path), reserved=3, seed=1),
                                 store, metrics)

    trainer = Trainer()
    daemon = Daemon([make_service(folder / "chat.yaml")], metrics, clock=clock, trainer=trainer,
                    watch=PolicyWatch([folder], "simulated", lambda p: True), make_service=make_service)
    daemon.retrain_all()
    return daemon, trainer


def policy_folder(tmp_path, text: str) -> Path:
    """A folder of policy files, as the ConfigMap is mounted: ``chat.yaml`` holding ``text``."""
    folder = tmp_path / "policies"
    folder.mkdir()
    (folder / "chat.yaml").write_text(text)
    return folder


def test_a_changed_policy_rebuilds_what_it_moves_and_retrains_for_what_the_model_learns(tmp_path, policy_file,
                                                                                       trace, caplog):
    """A policy reload used to swap only the policy object: the Prometheus, query and Deployments built
    at start stayed in use (logged as reloaded, silently not applied), and a switch to `reserved: auto`
    held 0 reserved nodes until the next retrain, up to six hours later."""
    import logging

    from controller.signals import PrometheusSignals

    caplog.set_level(logging.INFO)
    clock = Clock()
    daemon, service, metrics = simulated_service(policy_file, trace, tmp_path / "s.db", clock)
    run_cycles(daemon, clock, 2, retrain_at=(0,))
    signals, actuator, trained = service.signals, service.actuator, service.model
    text = policy_file.read_text()

    # Prices only: the same signals, the same simulated cluster (now at the new price), the same model.
    policy_file.write_text(text.replace("price_per_hour: 1.60", "price_per_hour: 1.70"))
    bump(policy_file)
    run_cycles(daemon, clock, 1)
    assert service.signals is signals and service.actuator is actuator and service.model is trained
    assert actuator.cluster.policy.price("spot") == 1.70

    # Another history length: new signals, and the model retrained on them within the cycle.
    text = policy_file.read_text()
    policy_file.write_text(text.replace("history_days: 14", "history_days: 7"))
    bump(policy_file)
    run_cycles(daemon, clock, 1)
    assert service.signals is not signals and service.model is not trained
    assert "retraining" in caplog.text and daemon.last_cycle["llm-chat"]["ok"]

    # A reserved count of auto: recommended at once, not 0 until the next scheduled retrain.
    text = policy_file.read_text()
    policy_file.write_text(text.replace("count: 3", "count: auto"))
    bump(policy_file)
    run_cycles(daemon, clock, 1)
    assert service.reserved() > 0

    # Another Prometheus: the service reads from it (here nothing answers: the cycle goes on reactive).
    url = f"http://127.0.0.1:{free_port()}"
    text = policy_file.read_text()
    policy_file.write_text(text.replace("prometheus: null", f"prometheus: {url}")
                           .replace("peak_nodes: 20", "rps_per_node: 5"))
    bump(policy_file)
    run_cycles(daemon, clock, 1)
    assert isinstance(service.signals, PrometheusSignals) and service.signals.source.url == url
    assert sample(metrics.registry, "peakpilot_errors_total", service="llm-chat", kind="signals") >= 1
    assert "Prometheus is unreachable" in caplog.text and "req/s) stands in as the floor" in caplog.text


def test_a_policy_time_zone_puts_the_model_on_the_users_clock_and_the_plan_on_the_cycles(tmp_path, policy_file,
                                                                                        trace):
    """``signals.timezone``: the model learns and forecasts on the users' clock (its hour of day, its
    "same time yesterday"), the cycle still plans on its own (UTC); another zone retrains the model."""
    policy_file.write_text(policy_file.read_text().replace("timezone: null", "timezone: Asia/Kolkata"))
    clock = Clock()
    daemon, service, _ = simulated_service(policy_file, trace, tmp_path / "z.db", clock)
    run_cycles(daemon, clock, 3, retrain_at=(0,))
    trained = service.model
    assert str(trained.fitted_until.tz) == "Asia/Kolkata"

    seen = []

    class Spy:
        name = trained.name

        def predict(self, history, horizon_min):
            seen.append(history)
            return trained.predict(history, horizon_min)

    service.model = Spy()
    forecast, why = service._forecast(clock.now)
    utc = service.signals.history(clock.now)
    assert why is None and str(seen[0].counts.index.tz) == "Asia/Kolkata"
    assert seen[0].end == utc.end.tz_localize("UTC") and seen[0].end.hour == 5  # one instant, two clocks
    assert forecast.start == np.datetime64(utc.end, "m")  # 5:30 ahead on the users' clock, not on the cycle's
    service.model = trained

    policy_file.write_text(policy_file.read_text().replace("Asia/Kolkata", "America/Chicago"))
    bump(policy_file)
    run_cycles(daemon, clock, 1)
    assert service.model is not trained and str(service.model.fitted_until.tz) == "America/Chicago"
    assert daemon.last_cycle["llm-chat"]["ok"] and daemon.last_cycle["llm-chat"]["mode"] != "reactive"


def kubernetes_service(kube, policy_file, trace, tmp_path, clock, extra=()):
    """One service on the kubernetes backend against the fake API server, trained and one cycle in."""
    for name in ("llm-reserved", "llm-spot", "llm-on-demand", "llm-placeholder", *extra):
        kube.add_deployment(name, 1)
    metrics = DaemonMetrics()
    service = ServiceController(policy_file, None, None, Store(str(tmp_path / "k.db")), metrics,
                                parts=parts_for("kubernetes", trace, clock, api=api_client(host=kube.url)))
    daemon = Daemon([service], metrics, clock=clock)
    run_cycles(daemon, clock, 1, retrain_at=(0,))
    return daemon, service, metrics


def test_a_changed_policy_naming_other_deployments_scales_those(tmp_path, policy_file, trace):
    with FakeKubeAPI("inference") as kube:
        clock = Clock()
        daemon, service, metrics = kubernetes_service(kube, policy_file, trace, tmp_path, clock, extra=["llm-spot-b"])
        assert kube.calls("PATCH", "/deployments/llm-spot/scale")
        text = policy_file.read_text()
        policy_file.write_text(text.replace("spot: llm-spot", "spot: llm-spot-b"))
        bump(policy_file)
        before = len(kube.calls("PATCH", "/deployments/llm-spot/scale"))
        run_cycles(daemon, clock, 3)
        assert kube.calls("PATCH", "/deployments/llm-spot-b/scale")
        assert len(kube.calls("PATCH", "/deployments/llm-spot/scale")) == before
        assert daemon.last_cycle["llm-chat"]["ok"]


def test_a_reload_that_renames_the_service_or_drops_a_deployment_is_refused(tmp_path, policy_file, trace, caplog):
    with FakeKubeAPI("inference") as kube:
        clock = Clock()
        daemon, service, metrics = kubernetes_service(kube, policy_file, trace, tmp_path, clock)
        file = str(policy_file)
        assert sample(metrics.registry, "peakpilot_policy_file_refused", file=file) == 0
        text = policy_file.read_text()
        policy_file.write_text(text.replace("service: llm-chat", "service: llm-talk"))
        bump(policy_file)
        run_cycles(daemon, clock, 1)
        assert service.service == "llm-chat" and "service renamed from 'llm-chat' to 'llm-talk'" in caplog.text
        assert sample(metrics.registry, "peakpilot_policy_file_refused", file=file) == 1
        policy_file.write_text(text.replace("    on_demand: llm-on-demand\n", ""))
        bump(policy_file)
        run_cycles(daemon, clock, 1)
        assert "kubernetes.workloads has no Deployment for on_demand" in caplog.text
        assert service.policy.kubernetes.workloads["on_demand"] == "llm-on-demand"
        policy_file.write_text(text.replace("headroom: 0.30", "headroom: 0.40"))
        bump(policy_file)
        run_cycles(daemon, clock, 1)
        assert service.policy.planning.headroom == 0.4
        assert sample(metrics.registry, "peakpilot_policy_file_refused", file=file) == 0


def test_policy_files_that_appear_or_go_start_or_stop_their_services(tmp_path, policy_file, trace, caplog):
    """A daemon run on a folder (a mounted ConfigMap) follows it: a new file is a new service, trained
    and cycled at once; a broken one is refused once per version and exported; a deleted one stops
    being run (its nodes are left as they are, its record stays in the store)."""
    from controller.policy_watch import PolicyWatch

    text = policy_file.read_text()
    folder = policy_folder(tmp_path, text)
    clock = Clock()
    metrics = DaemonMetrics()
    store = Store(str(tmp_path / "f.db"))
    parts = parts_for("simulated", trace, clock)

    def make_service(path):
        return ServiceController(path, None, None, store, metrics, parts=parts)

    daemon = Daemon([make_service(folder / "chat.yaml")], metrics, clock=clock,
                    watch=PolicyWatch([folder], "simulated", parts.selects), make_service=make_service)
    run_cycles(daemon, clock, 1, retrain_at=(0,))
    assert [s.service for s in daemon.services] == ["llm-chat"]

    (folder / "search.yaml").write_text(text.replace("service: llm-chat", "service: llm-search"))
    (folder / "broken.yaml").write_text(text.replace("service: llm-chat", "service: llm-broken")
                                        .replace("max_share: 0.6", "max_share: 1.6"))
    (folder / "twin.yaml").write_text(text)  # the same service as chat.yaml
    (folder / "other-team.yaml").write_text(text.replace("service: llm-chat", "service: llm-other")
                                            .replace("labels: {}", "labels: {team: other}"))
    parts.selector = "team=chat"
    (folder / "chat.yaml").write_text(text.replace("labels: {}", "labels: {team: chat}"))
    (folder / "search.yaml").write_text(text.replace("service: llm-chat", "service: llm-search")
                                        .replace("labels: {}", "labels: {team: chat}"))
    (folder / "twin.yaml").write_text(text.replace("labels: {}", "labels: {team: chat}"))
    run_cycles(daemon, clock, 3)
    assert sorted(s.service for s in daemon.services) == ["llm-chat", "llm-search"]
    search = next(s for s in daemon.services if s.service == "llm-search")
    assert search.model is not None and daemon.last_cycle["llm-search"]["ok"]
    assert len(store.timeline(search.run_id)) == 3
    assert caplog.text.count("spot.max_share") == 1  # said once, not every cycle
    assert "service 'llm-chat' is also the service of" in caplog.text
    assert "llm-other" not in caplog.text  # another daemon's (its label does not match)
    r = metrics.registry
    assert sample(r, "peakpilot_policy_file_refused", file=str(folder / "broken.yaml")) == 1
    assert sample(r, "peakpilot_policy_file_refused", file=str(folder / "twin.yaml")) == 1

    # Mended: it starts at the next cycle.
    (folder / "broken.yaml").write_text(text.replace("service: llm-chat", "service: llm-broken")
                                        .replace("labels: {}", "labels: {team: chat}"))
    run_cycles(daemon, clock, 1)
    assert "llm-broken" in {s.service for s in daemon.services}
    assert sample(r, "peakpilot_policy_file_refused", file=str(folder / "broken.yaml")) == 0

    # Refused, then moved to another team: not refused any more, just not this daemon's.
    (folder / "broken.yaml").write_text(text.replace("service: llm-chat", "service: llm-broken")
                                        .replace("max_share: 0.6", "max_share: 1.6"))
    (folder / "other-team.yaml").write_text(text.replace("service: llm-chat", "service: llm-other")
                                            .replace("max_share: 0.6", "max_share: 1.6"))
    bump(folder / "broken.yaml")
    run_cycles(daemon, clock, 1)  # broken.yaml changed while running: the service keeps its policy
    assert sample(r, "peakpilot_policy_file_refused", file=str(folder / "other-team.yaml")) == 1
    (folder / "other-team.yaml").write_text(text.replace("service: llm-chat", "service: llm-other")
                                            .replace("labels: {}", "labels: {team: other}"))
    bump(folder / "other-team.yaml")
    run_cycles(daemon, clock, 1)
    assert sample(r, "peakpilot_policy_file_refused", file=str(folder / "other-team.yaml")) is None

    # Gone: no longer run, no series left for an alert to read, the record kept; the file refused for
    # naming the same service as chat.yaml starts once chat.yaml is gone.
    (folder / "search.yaml").unlink()
    (folder / "chat.yaml").unlink()
    run_cycles(daemon, clock, 1)
    assert sorted((s.service, s.policy_path.name) for s in daemon.services) == [("llm-broken", "broken.yaml"),
                                                                                ("llm-chat", "twin.yaml")]
    assert "llm-search" not in daemon.last_cycle and "no longer run" in caplog.text
    assert sample(r, "peakpilot_last_cycle_timestamp_seconds", service="llm-search") is None
    assert sample(r, "peakpilot_desired_nodes", service="llm-search") is None
    assert sample(r, "peakpilot_errors_total", service="llm-search") is None
    assert sample(r, "peakpilot_policy_file_refused", file=str(folder / "twin.yaml")) == 0
    assert sample(r, "peakpilot_policy_file_refused", file=str(folder / "chat.yaml")) is None
    assert sample(r, "peakpilot_last_cycle_timestamp_seconds", service="llm-chat") is not None
    assert len(store.timeline(search.run_id)) == 6


def test_a_first_training_that_fails_is_tried_again_within_minutes_not_hours(tmp_path, policy_file, trace):
    """Prometheus down when the daemon starts: the service runs reactive, and trains as soon as the
    history can be read again (it used to wait for the next scheduled retrain, six hours later)."""
    from controller.service_controller import UNTRAINED_RETRY_MIN

    clock = Clock()
    daemon, service, signals = make(policy_file, trace, Store(str(tmp_path / "u.db")), clock,
                                    SimulatedActuator(load_policy_of(policy_file), reserved=3))

    class DownAtStart:  # the history cannot be read for the first three minutes
        def __init__(self, inner):
            self.inner, self.trace = inner, inner.trace

        def observe(self, now):
            return self.inner.observe(now)

        def history(self, now):
            if now < T0 + np.timedelta64(3, "m"):
                from controller.signals import SignalError
                raise SignalError("injected: Prometheus is down")
            return self.inner.history(now)

    service.signals = DownAtStart(signals)
    daemon.retrain_all()
    assert service.model is None
    r = service.metrics.registry
    assert sample(r, "peakpilot_training_duration_seconds_count", service="llm-chat") == 1
    assert sample(r, "peakpilot_last_training_timestamp_seconds", service="llm-chat") is None  # none trained
    modes = []
    for _ in range(UNTRAINED_RETRY_MIN + 2):
        daemon.cycle_all()
        modes.append(daemon.last_cycle["llm-chat"]["mode"])
        clock.tick()
    assert service.model is not None
    assert modes[0] == "reactive" and modes[-1] == "predictive"
    assert modes.index("predictive") == UNTRAINED_RETRY_MIN  # retried once the pause was over, not every cycle
    # How long trainings take and when the model in use was trained, for an operator sizing the controller.
    assert sample(r, "peakpilot_training_duration_seconds_count", service="llm-chat") == 2
    assert abs(sample(r, "peakpilot_last_training_timestamp_seconds", service="llm-chat") - time.time()) < 60


def test_a_retrain_for_a_changed_horizon_that_fails_is_tried_again_within_minutes(tmp_path, policy_file, trace):
    """The model in use was trained for 60 minutes; the policy now plans 90 ahead and the retrain for it
    cannot read the history. Reactive meanwhile (not the old model, which cannot see that far), and
    tried again after the pause like a failed first training, not six hours later."""
    from controller.service_controller import UNTRAINED_RETRY_MIN

    clock = Clock()
    daemon, service, signals = make(policy_file, trace, Store(str(tmp_path / "r.db")), clock,
                                    SimulatedActuator(load_policy_of(policy_file), reserved=3))
    daemon.retrain_all()
    run_cycles(daemon, clock, 1)
    old = service.model
    policy_file.write_text(policy_file.read_text().replace("horizon_min: 60 ", "horizon_min: 90 "))
    bump(policy_file)
    signals.fail_next = 2  # the reload's retrain and the cycle's observation find the source down
    modes = []
    for _ in range(UNTRAINED_RETRY_MIN + 2):
        daemon.cycle_all()
        modes.append(daemon.last_cycle["llm-chat"]["mode"])
        clock.tick()
    assert modes[0] == "reactive" and service.model is not old and modes[-1] == "predictive"
    assert modes.index("predictive") == UNTRAINED_RETRY_MIN
    assert service.model.predict(signals.history(clock()), 90).values.shape[0] >= 90 // 10


def test_a_service_whose_labels_move_to_another_daemon_is_handed_over_not_run_twice(tmp_path, policy_file, trace,
                                                                                    caplog):
    """Two controller sets share one ConfigMap, split by --selector. A policy whose labels move from one
    set to the other: the new set starts it, and the old one stops running it at once (it used to keep
    it, so two controllers would scale the same Deployments)."""
    from controller.policy_watch import PolicyWatch

    folder = tmp_path / "policies"
    folder.mkdir()
    text = policy_file.read_text()
    chat = folder / "chat.yaml"
    chat.write_text(text.replace("labels: {}", "labels: {team: a}"))
    clock = Clock()
    daemons = {}
    for team in ("a", "b"):
        metrics = DaemonMetrics()
        store = Store(str(tmp_path / f"{team}.db"))
        parts = parts_for("simulated", trace, clock, selector=f"team={team}")

        def make_service(path, store=store, metrics=metrics, parts=parts):
            return ServiceController(path, None, None, store, metrics, parts=parts)

        daemons[team] = Daemon([], metrics, clock=clock, watch=PolicyWatch([folder], "simulated", parts.selects),
                               make_service=make_service)
    a, b = daemons["a"], daemons["b"]
    for _ in range(2):
        a.cycle_all(), b.cycle_all()
        clock.tick()
    assert [s.service for s in a.services] == ["llm-chat"] and b.services == []
    acted = FlakyActuator(a.services[0].actuator)
    a.services[0].actuator = acted
    a.cycle_all()
    assert len(acted.applied) == 1

    chat.write_text(text.replace("labels: {}", "labels: {team: b}"))
    bump(chat)
    for _ in range(2):
        a.cycle_all(), b.cycle_all()
        clock.tick()
    assert a.services == [] and [s.service for s in b.services] == ["llm-chat"]
    assert len(acted.applied) == 1  # a never acted on the new version
    assert "no longer match --selector team=a" in caplog.text
    for _ in range(2):  # and does not take it back
        a.cycle_all(), b.cycle_all()
        clock.tick()
    assert a.services == [] and b.last_cycle["llm-chat"]["ok"]


def test_a_policy_file_named_on_the_command_line_that_goes_missing_is_said_once_and_exported(tmp_path, policy_file,
                                                                                            trace, caplog):
    clock = Clock()
    daemon, service, _ = make(policy_file, trace, Store(str(tmp_path / "g.db")), clock,
                              SimulatedActuator(load_policy_of(policy_file), reserved=3))
    run_cycles(daemon, clock, 1, retrain_at=(0,))
    r, file = service.metrics.registry, str(policy_file)
    aside = policy_file.with_suffix(".moved")
    policy_file.rename(aside)
    run_cycles(daemon, clock, 3)
    assert caplog.text.count("cannot read") == 1 and daemon.last_cycle["llm-chat"]["ok"]
    assert sample(r, "peakpilot_policy_file_refused", file=file) == 1
    assert sample(r, "peakpilot_errors_total", service="llm-chat", kind="policy_reload") == 1
    aside.rename(policy_file)
    run_cycles(daemon, clock, 1)
    assert sample(r, "peakpilot_policy_file_refused", file=file) == 0


class GatedSignals(TraceSignals):
    """A trace whose history waits for ``gate`` while ``hold`` is set: a slow Prometheus, a long fit."""

    def __init__(self, *args, **kwargs):
        import threading

        super().__init__(*args, **kwargs)
        self.gate, self.hold = threading.Event(), False

    def history(self, now):
        if self.hold:
            assert self.gate.wait(60), "the test never opened the gate"
        return super().history(now)


def test_a_training_never_holds_up_the_cycles_of_the_other_services(tmp_path, policy_file, trace, caplog):
    """Before, a new policy file's service trained inside the cycle: every other service waited for it
    (a ConfigMap adding five services skipped minutes of cycles). Now it trains on the daemon's worker:
    the others' cycles go on while it trains, it decides nothing until its first training has had its
    try, and then it cycles with the rest."""
    text = policy_file.read_text()
    folder = policy_folder(tmp_path, text)
    clock = Clock()
    metrics = DaemonMetrics()
    store = Store(str(tmp_path / "t.db"))
    gated = GatedSignals(trace, 8 * 1440, T0)

    daemon, trainer = watching_daemon(
        folder, store, metrics, clock,
        lambda path: gated if "search" in path.name else TraceSignals(trace, 8 * 1440, T0))
    gated.hold = True
    (folder / "search.yaml").write_text(text.replace("service: llm-chat", "service: llm-search"))
    started = time.monotonic()
    run_cycles(daemon, clock, 3)  # the new service's training is stuck on its history all along
    assert time.monotonic() - started < 10  # not the 60 s the gate holds a training
    assert daemon.last_cycle["llm-chat"]["mode"] == "predictive" and daemon.last_cycle["llm-chat"]["ok"]
    search = next(s for s in daemon.services if s.service == "llm-search")
    assert daemon.last_cycle["llm-search"]["mode"] == "training" and search.model is None
    assert len(store.timeline(search.run_id)) == 0 and trainer.pending(search)
    gated.gate.set()
    assert trainer.wait_idle(60)
    run_cycles(daemon, clock, 2)
    assert search.model is not None and daemon.last_cycle["llm-search"]["mode"] == "predictive"
    assert len(store.timeline(search.run_id)) == 2
    trainer.stop()


def test_a_changed_policy_retrains_in_the_background_on_the_safety_net_meanwhile(tmp_path, policy_file, trace):
    """A longer horizon needs a model trained for it: until that one is in, the service runs reactive
    rather than forecasting with a model that cannot see that far; asked for twice, it trains once."""
    from controller.trainer import Trainer

    clock = Clock()
    gated = GatedSignals(trace, 8 * 1440, T0)
    daemon, service, _ = make(policy_file, trace, Store(str(tmp_path / "h.db")), clock,
                              SimulatedActuator(load_policy_of(policy_file), reserved=3, seed=1), signals=gated)
    trainer = Trainer()
    daemon.use_trainer(trainer)
    daemon.retrain_all()
    run_cycles(daemon, clock, 2)
    assert daemon.last_cycle["llm-chat"]["mode"] == "predictive"
    old = service.model
    gated.hold = True
    policy_file.write_text(policy_file.read_text().replace("horizon_min: 60 ", "horizon_min: 90 "))
    bump(policy_file)
    run_cycles(daemon, clock, 2)
    daemon.queue_retrain_all()  # the cron's retrain, while this one waits: the same training
    assert daemon.last_cycle["llm-chat"]["mode"] == "reactive" and service.model is old
    assert "no forecast" in daemon.last_cycle["llm-chat"]["reason"]
    gated.gate.set()
    assert trainer.wait_idle(60)
    assert service._tries == 2  # the one at start, and one for the change
    run_cycles(daemon, clock, 1)
    assert service.model is not old and daemon.last_cycle["llm-chat"]["mode"] == "predictive"
    trainer.stop()


def configmap_write(volume: Path, files: dict[str, str], version: int) -> None:
    """Update a ConfigMap volume as the kubelet's AtomicWriter does: every file written anew in a hidden
    timestamped folder, ``..data`` swapped to it in one rename, one visible symlink per key through
    ``..data`` (new keys get theirs after the swap, removed keys lose theirs), the old folder deleted."""
    import os
    import shutil

    stamp = volume / f"..2026_11_27_19_00_{version:02d}.000000001"
    stamp.mkdir()
    for name, text in files.items():
        (stamp / name).write_text(text)
        os.utime(stamp / name, (1_800_000_000 + version, 1_800_000_000 + version))
    (volume / "..data_tmp").symlink_to(stamp.name)
    os.replace(volume / "..data_tmp", volume / "..data")
    for name in files:
        if not (volume / name).is_symlink():
            (volume / name).symlink_to(f"..data/{name}")
    for entry in volume.iterdir():
        if entry.is_symlink() and not entry.name.startswith("..") and entry.name not in files:
            entry.unlink()
    for old in volume.glob("..2026_*"):
        if old != stamp:
            shutil.rmtree(old)


def test_a_configmap_volume_edited_as_the_kubelet_does_it(tmp_path, policy_file, trace, caplog):
    """The layout a pod sees (``deploy/controller.yaml`` mounts the policy ConfigMap): each key a symlink
    into ``..data``, which an edit swaps to a folder where every file is new. A changed key is reloaded,
    the keys rewritten as they were are not (no "reloaded" line for each service at every edit), a new
    key starts its service, a removed one stops it; nothing is refused or counted as an error."""
    from controller.policy import policy_files
    from controller.policy_watch import PolicyWatch

    text = policy_file.read_text()
    chat, search = text, text.replace("service: llm-chat", "service: llm-search")
    volume = tmp_path / "etc-peakpilot"
    volume.mkdir()
    configmap_write(volume, {"llm-chat.yaml": chat, "llm-search.yaml": search}, 1)
    clock = Clock()
    metrics = DaemonMetrics()
    store = Store(str(tmp_path / "cm.db"))
    parts = parts_for("simulated", trace, clock)

    def make_service(path):
        return ServiceController(path, None, None, store, metrics, parts=parts)

    daemon = Daemon([make_service(p) for p in policy_files([volume])], metrics, clock=clock,
                    watch=PolicyWatch([volume], "simulated", parts.selects), make_service=make_service)
    assert sorted(s.service for s in daemon.services) == ["llm-chat", "llm-search"]
    run_cycles(daemon, clock, 1, retrain_at=(0,))

    configmap_write(volume, {"llm-chat.yaml": chat.replace("headroom: 0.30", "headroom: 0.40"),
                             "llm-search.yaml": search,
                             "llm-batch.yaml": text.replace("service: llm-chat", "service: llm-batch")}, 2)
    with caplog.at_level("INFO", logger="peakpilot.daemon"):
        run_cycles(daemon, clock, 1)
    reloaded = [r.getMessage().split(":")[0] for r in caplog.records if "policy reloaded" in r.getMessage()]
    assert reloaded == ["llm-chat"]
    chat_service = next(s for s in daemon.services if s.service == "llm-chat")
    assert chat_service.policy.planning.headroom == 0.40
    assert sorted(s.service for s in daemon.services) == ["llm-batch", "llm-chat", "llm-search"]

    configmap_write(volume, {"llm-chat.yaml": chat.replace("headroom: 0.30", "headroom: 0.40"),
                             "llm-batch.yaml": text.replace("service: llm-chat", "service: llm-batch")}, 3)
    run_cycles(daemon, clock, 2)
    assert sorted(s.service for s in daemon.services) == ["llm-batch", "llm-chat"]
    assert all(v["ok"] for v in daemon.last_cycle.values())
    errors = sum(s.value for s in metrics.errors.collect()[0].samples if s.name.endswith("_total"))
    refused = [s for s in metrics.policy_refused.collect()[0].samples if s.value]
    assert errors == 0 and refused == []


def test_a_service_whose_file_goes_while_it_trains_leaves_no_metrics_behind(tmp_path, policy_file, trace):
    """Its training queued (cancelled) or under way (run to its end): either way nothing it does after
    the daemon stopped running it brings back the series the daemon removed (an alert would read them
    for ever)."""
    from prometheus_client import generate_latest

    text = policy_file.read_text()
    folder = policy_folder(tmp_path, text)
    clock = Clock()
    metrics = DaemonMetrics()
    store = Store(str(tmp_path / "g.db"))
    gates = {}

    def gate(path):
        signals = GatedSignals(trace, 8 * 1440, T0)
        signals.hold = path.name != "chat.yaml"
        gates[path.name] = signals
        return signals

    daemon, trainer = watching_daemon(folder, store, metrics, clock, gate)
    for name in ("running", "queued"):
        (folder / f"{name}.yaml").write_text(text.replace("service: llm-chat", f"service: llm-{name}"))
        run_cycles(daemon, clock, 1)
    running, queued = (next(s for s in daemon.services if s.service == f"llm-{n}") for n in ("running", "queued"))
    assert trainer.pending(running) and trainer.pending(queued)
    for name in ("running", "queued"):
        (folder / f"{name}.yaml").unlink()
    run_cycles(daemon, clock, 1)
    assert [s.service for s in daemon.services] == ["llm-chat"]
    gates["running.yaml"].gate.set()
    gates["queued.yaml"].gate.set()
    assert trainer.wait_idle(60)
    assert running._tries == 1 and queued._tries == 0  # the one under way ran to its end; the queued one never ran
    exported = generate_latest(metrics.registry).decode()
    assert 'service="llm-chat"' in exported and "llm-running" not in exported and "llm-queued" not in exported
    trainer.stop()
