"""The alerting rules users load into their Prometheus (configs/prometheus/): valid for the real
promtool, each alert fires on the failure it names and stays quiet on a healthy (or merely busy)
controller, every metric they read is one peakpilot exports, and a real Prometheus scraping a real
daemon raises an alert from the daemon's own metrics. The Grafana dashboard (configs/grafana/): well
formed, reading only exported metrics, and every query of it answered by a real Prometheus scraping a
real daemon and an inference node's metrics."""

from __future__ import annotations

import copy
import re
import shutil
import subprocess
import time
from pathlib import Path

import numpy as np
import pytest
import requests
import yaml

from controller.actuators import SimulatedActuator
from controller.daemon import Daemon
from controller.daemon_metrics import DaemonMetrics
from controller.service_controller import ServiceController
from controller.policy import load_policy
from controller.replay import load_trace
from controller.signals import TraceSignals
from controller.store import Store
from inference_node.metrics import NodeMetrics
from tests.conftest import SAMPLE, free_port

ROOT = Path(__file__).resolve().parent.parent
CONFIG = ROOT / "configs" / "prometheus"
RULES = CONFIG / "peakpilot-rules.yml"
DASHBOARD = ROOT / "configs" / "grafana" / "peakpilot-dashboard.json"
T0 = np.datetime64("2026-01-05T00:00", "m")


def promtool(*args: str, cwd: Path) -> subprocess.CompletedProcess:
    binary = shutil.which("promtool")
    if not binary:
        pytest.fail("promtool is not installed: run `apt-get install prometheus` (.ci/run does this)")
    return subprocess.run([binary, *args], cwd=cwd, capture_output=True, text=True, timeout=120)


def alerts() -> list[dict]:
    return [rule for group in yaml.safe_load(RULES.read_text())["groups"] for rule in group["rules"]]


def test_the_config_and_its_rules_pass_promtool_check():
    out = promtool("check", "config", "prometheus.yml", cwd=CONFIG)
    assert out.returncode == 0, out.stdout + out.stderr
    assert "SUCCESS: 1 rule files found" in out.stdout and f"SUCCESS: {len(alerts())} rules found" in out.stdout


def test_every_alert_says_what_is_wrong_and_how_urgent():
    names = [rule["alert"] for rule in alerts()]
    assert len(names) == len(set(names)) and all(n.startswith("Peakpilot") for n in names)
    for rule in alerts():
        assert rule["labels"]["severity"] in ("critical", "warning", "info"), rule["alert"]
        assert rule["annotations"]["summary"] and len(rule["annotations"]["description"]) > 80, rule["alert"]


def cycled_daemon(tmp_path, clock=lambda: T0) -> tuple[Daemon, ServiceController, Path, str]:
    """A daemon running the default policy (on the seasonal naive model, quick to fit) on the simulated
    cluster, trained and one cycle in; its policy file and that file's text."""
    policy = tmp_path / "policy.yaml"
    text = (ROOT / "configs" / "policy.yaml").read_text().replace("model: ensemble ", "model: seasonal_naive ")
    policy.write_text(text)
    metrics = DaemonMetrics()
    service = ServiceController(policy, TraceSignals(load_trace(SAMPLE), 8 * 1440, T0),
                                SimulatedActuator(load_policy(policy), reserved=3), Store(str(tmp_path / "d.db")),
                                metrics)
    daemon = Daemon([service], metrics, clock=clock)
    daemon.retrain_all()
    daemon.cycle_all()
    return daemon, service, policy, text


def exported_metric_names(tmp_path, families: bool = False) -> set[str]:
    """What a daemon (after a cycle) and an inference node put on /metrics: the series' names, or with
    ``families`` the metrics' own (a counter's without ``_total``, a histogram's without ``_bucket``), those
    with no series yet included."""
    from prometheus_client import generate_latest
    from prometheus_client.parser import text_string_to_metric_families

    daemon, _, _, _ = cycled_daemon(tmp_path)
    names = set()
    for registry in (daemon.metrics.registry, NodeMetrics().registry):
        for family in text_string_to_metric_families(generate_latest(registry).decode()):
            names |= {family.name} if families else {s.name for s in family.samples}
    return names


def test_every_metric_the_rules_read_is_one_peakpilot_exports(tmp_path):
    read = set(re.findall(r"\bpeakpilot_[a-z_]+", " ".join(rule["expr"] for rule in alerts())))
    exported = exported_metric_names(tmp_path)
    assert read and read <= exported, f"the rules read metrics nobody exports: {sorted(read - exported)}"


def test_every_metric_and_alert_the_docs_name_is_there(tmp_path):
    """What the README and the guides tell an operator to look at exists: each metric is exported (by a
    series' name or the metric's own), each alert is a rule."""
    text = " ".join(p.read_text() for p in [ROOT / "README.md", *(ROOT / "docs").glob("*.md")])
    named = set(re.findall(r"\bpeakpilot_[a-z_]+[a-z]", text))
    exported = exported_metric_names(tmp_path) | exported_metric_names(tmp_path, families=True)
    missing = sorted(n for n in named if n not in exported)
    assert len(named) > 10 and not missing, f"the docs name metrics nobody exports: {missing}"
    alerts_named = set(re.findall(r"\bPeakpilot[A-Z][A-Za-z]+", text))
    assert alerts_named and alerts_named <= {rule["alert"] for rule in alerts()}, alerts_named


# -- promtool unit tests: input series, and the alerts expected firing at a time ------------------
# Controller series carry what a scrape adds (instance); `a` is the replica that acts, `b` a follower.
C = 'service="chat",instance="a"'
CASES = [
    {"name": "no controller scraped at all, then one is",
     "series": {'up{job="other"}': "1x30"},
     "expect": {"PeakpilotControllerAbsent": {"5m": [], "11m": [{"severity": "critical"}]}}},
    {"name": "a controller without a Lease is present",
     "series": {'peakpilot_leader{lease="none",instance="a"}': "1x30"},
     "expect": {"PeakpilotControllerAbsent": {"11m": []}, "PeakpilotNoLeader": {"11m": []}}},
    {"name": "two replicas, neither holds the Lease",
     "series": {'peakpilot_leader{lease="peakpilot",instance="a"}': "0x20",
                'peakpilot_leader{lease="peakpilot",instance="b"}': "0x20"},
     "expect": {"PeakpilotNoLeader": {"4m": [], "6m": [{"lease": "peakpilot", "severity": "critical"}]}}},
    {"name": "two replicas both act on one Lease; two lease-less daemons are not a split brain",
     "series": {'peakpilot_leader{lease="peakpilot",instance="a"}': "1x20",
                'peakpilot_leader{lease="peakpilot",instance="b"}': "1x20",
                'peakpilot_leader{lease="none",instance="c"}': "1x20",
                'peakpilot_leader{lease="none",instance="d"}': "1x20"},
     "expect": {"PeakpilotSeveralLeaders": {"6m": [{"lease": "peakpilot", "severity": "warning"}]},
                "PeakpilotNoLeader": {"6m": []}}},
    {"name": "one leader and one follower: all is well",
     "series": {'peakpilot_leader{lease="peakpilot",instance="a"}': "1x20",
                'peakpilot_leader{lease="peakpilot",instance="b"}': "0x20"},
     "expect": {"PeakpilotNoLeader": {"10m": []}, "PeakpilotSeveralLeaders": {"10m": []}}},
    {"name": "a loop that stops turning after 6 minutes (replica a); b keeps turning",
     "series": {f"peakpilot_last_cycle_timestamp_seconds{{{C}}}": "60+60x5 360x30",
                'peakpilot_last_cycle_timestamp_seconds{service="chat",instance="b"}': "60+60x36"},
     "expect": {"PeakpilotCycleStalled": {"16m": [],
                                          "18m": [{"service": "chat", "instance": "a", "severity": "critical"}]}}},
    {"name": "no cycle reads the cluster: alerted for the replica that acts, not the follower",
     "series": {f"peakpilot_last_ok_cycle_timestamp_seconds{{{C}}}": "0x40", f"peakpilot_acting{{{C}}}": "1x40",
                'peakpilot_last_ok_cycle_timestamp_seconds{service="chat",instance="b"}': "0x40",
                'peakpilot_acting{service="chat",instance="b"}': "0x40"},
     "expect": {"PeakpilotNotInControl": {"14m": [],
                                          "22m": [{"service": "chat", "instance": "a", "severity": "critical"}]}}},
    {"name": "three actuator errors in a few minutes, then none for ten",
     "series": {f'peakpilot_errors_total{{{C},kind="actuator"}}': "0 0 0 1 2 3 3x30",
                f'peakpilot_errors_total{{{C},kind="store"}}': "0x36"},
     "expect": {"PeakpilotActuatorFailing": {"2m": [], "6m": [{"service": "chat", "instance": "a", "kind": "actuator",
                                                               "severity": "critical"}], "20m": []},
                "PeakpilotStoreFailing": {"6m": [], "20m": []}}},
    {"name": "Prometheus unreadable every cycle; the store is fine",
     "series": {f'peakpilot_errors_total{{{C},kind="signals"}}': "0+1x30",
                f'peakpilot_errors_total{{{C},kind="store"}}': "0x30"},
     "expect": {"PeakpilotSignalsFailing": {"10m": [{"service": "chat", "instance": "a", "kind": "signals",
                                                     "severity": "warning"}]},
                "PeakpilotStoreFailing": {"10m": []}}},
    {"name": "a policy file refused on both replicas for ten minutes, then mended: one alert, named by file",
     "series": {'peakpilot_policy_file_refused{file="/etc/peakpilot/chat.yaml",instance="a"}': "0 0 0 1x10 0x20",
                'peakpilot_policy_file_refused{file="/etc/peakpilot/chat.yaml",instance="b"}': "0 0 0 1x10 0x20",
                'peakpilot_policy_file_refused{file="/etc/peakpilot/search.yaml",instance="a"}': "0x30"},
     "expect": {"PeakpilotPolicyRejected": {"2m": [], "5m": [{"file": "/etc/peakpilot/chat.yaml",
                                                             "severity": "warning"}], "25m": []}}},
    {"name": "every cycle reactive, on the acting replica and on a follower",
     "series": {f'peakpilot_cycles_total{{{C},mode="reactive"}}': "0+1x40",
                f'peakpilot_cycles_total{{{C},mode="predictive"}}': "0x40", f"peakpilot_acting{{{C}}}": "1x40",
                'peakpilot_cycles_total{service="chat",instance="b",mode="reactive"}': "0+1x40",
                'peakpilot_acting{service="chat",instance="b"}': "0x40"},
     "expect": {"PeakpilotReactiveOnly": {"10m": [],
                                          "20m": [{"service": "chat", "instance": "a", "severity": "warning"}]}}},
    {"name": "every cycle predictive",
     "series": {f'peakpilot_cycles_total{{{C},mode="predictive"}}': "0+1x40", f"peakpilot_acting{{{C}}}": "1x40"},
     "expect": {"PeakpilotReactiveOnly": {"20m": []}}},
    {"name": "a fallback model for over an hour",
     "series": {f"peakpilot_forecast_fallback{{{C}}}": "1x90", f"peakpilot_acting{{{C}}}": "1x90"},
     "expect": {"PeakpilotForecastFallback": {"50m": [],
                                              "70m": [{"service": "chat", "instance": "a", "severity": "info"}]}}},
    {"name": "two failed spot nodes, seen by both replicas: one alert",
     "series": {f'peakpilot_actual_nodes{{{C},class="spot",state="failed"}}': "2x30",
                'peakpilot_actual_nodes{service="chat",instance="b",class="spot",state="failed"}': "2x30",
                f'peakpilot_actual_nodes{{{C},class="on_demand",state="failed"}}': "0x30"},
     "expect": {"PeakpilotFailedNodes": {"10m": [], "20m": [{"service": "chat", "class": "spot",
                                                             "severity": "warning"}]}}},
    {"name": "an HPA left on a pool, seen by both replicas: one alert; another service is clear",
     "series": {f"peakpilot_conflicting_autoscalers{{{C}}}": "0 0 1x30",
                'peakpilot_conflicting_autoscalers{service="chat",instance="b"}': "0 0 1x30",
                'peakpilot_conflicting_autoscalers{service="search",instance="a"}': "0x32"},
     "expect": {"PeakpilotConflictingAutoscaler": {"5m": [], "10m": [{"service": "chat", "severity": "warning"}]}}},
    {"name": "spot short of its plan for long; on-demand rising on a ramp, its nodes a lead time behind",
     "series": {f'peakpilot_desired_nodes{{{C},class="spot"}}': "6x60",
                f'peakpilot_actual_nodes{{{C},class="spot",state="ready"}}': "6x10 4x50",
                f'peakpilot_desired_nodes{{{C},class="on_demand"}}': "2+1x60",
                f'peakpilot_actual_nodes{{{C},class="on_demand",state="ready"}}': "2x10 3+1x49",
                f"peakpilot_acting{{{C}}}": "1x60",
                'peakpilot_desired_nodes{service="chat",instance="b",class="spot"}': "6x60",
                'peakpilot_actual_nodes{service="chat",instance="b",class="spot",state="ready"}': "4x60",
                'peakpilot_acting{service="chat",instance="b"}': "0x60"},
     "expect": {"PeakpilotClassShort": {"15m": [], "25m": [{"service": "chat", "class": "spot", "instance": "a",
                                                            "severity": "warning"}], "55m": [
         {"service": "chat", "class": "spot", "instance": "a", "severity": "warning"}]}}},
    {"name": "busy answers: 4.8% on one service, 0.5% on another",
     "series": {'peakpilot_requests_total{job="chat",instance="n1",outcome="ok"}': "0+1000x30",
                'peakpilot_requests_total{job="chat",instance="n1",outcome="busy"}': "0+50x30",
                'peakpilot_requests_total{job="quiet",instance="n2",outcome="ok"}': "0+1000x30",
                'peakpilot_requests_total{job="quiet",instance="n2",outcome="busy"}': "0+5x30"},
     "expect": {"PeakpilotBusyAnswers": {"3m": [], "10m": [{"job": "chat", "severity": "warning"}]}}},
    {"name": "late answers: 3% of those served on one service, 0.2% on another",
     "series": {'peakpilot_requests_total{job="chat",instance="n1",outcome="ok"}': "0+1000x30",
                'peakpilot_requests_over_slo_total{job="chat",instance="n1"}': "0+30x30",
                'peakpilot_requests_total{job="quiet",instance="n2",outcome="ok"}': "0+1000x30",
                'peakpilot_requests_over_slo_total{job="quiet",instance="n2"}': "0+2x30"},
     "expect": {"PeakpilotSlowAnswers": {"3m": [], "10m": [{"job": "chat", "severity": "warning"}]},
                "PeakpilotBusyAnswers": {"10m": []}}},
    {"name": "one node's batch halved for good, another's for 20 minutes, a third's never",
     "series": {'peakpilot_batch_limit{job="chat",instance="n1"}': "16x5 8x60",
                'peakpilot_batch_limit{job="chat",instance="n2"}': "16x5 8x20 16x40",
                'peakpilot_batch_limit{job="chat",instance="n3"}': "4x65"},
     "expect": {"PeakpilotNodeBatchNarrowed": {"30m": [], "40m": [{"job": "chat", "instance": "n1",
                                                                  "severity": "warning"}]}}},
]


def unit_tests(cases: list[dict]) -> dict:
    tests = []
    for case in cases:
        checks = [{"eval_time": at, "alertname": name, "exp_alerts": [{"exp_labels": labels} for labels in expected]}
                  for name, times in case["expect"].items() for at, expected in times.items()]
        tests.append({"name": case["name"], "interval": "1m",
                      "input_series": [{"series": s, "values": v} for s, v in case["series"].items()],
                      "alert_rule_test": checks})
    return {"rule_files": ["rules.yml"], "evaluation_interval": "1m", "tests": tests}


def write_unit_tests(tmp_path: Path, cases: list[dict]) -> None:
    # promtool compares annotations too; they are prose (checked above and by `promtool check`), so the
    # expressions, `for` and labels are tested on a copy without them.
    rules = yaml.safe_load(RULES.read_text())
    for group in rules["groups"]:
        for rule in group["rules"]:
            rule.pop("annotations", None)
    (tmp_path / "rules.yml").write_text(yaml.safe_dump(rules, sort_keys=False))
    (tmp_path / "tests.yml").write_text(yaml.safe_dump(unit_tests(cases), sort_keys=False))


def test_each_alert_fires_on_its_failure_and_not_on_a_healthy_or_busy_controller(tmp_path):
    assert {name for case in CASES for name in case["expect"]} == {rule["alert"] for rule in alerts()}
    write_unit_tests(tmp_path, CASES)
    out = promtool("test", "rules", "tests.yml", cwd=tmp_path)
    assert out.returncode == 0, out.stdout + out.stderr
    assert "SUCCESS" in out.stdout


def test_the_unit_tests_can_fail(tmp_path):
    """The same harness, expecting a stalled loop to stay quiet: promtool must say it fired."""
    case = copy.deepcopy(next(c for c in CASES if "PeakpilotCycleStalled" in c["expect"]))
    case["expect"]["PeakpilotCycleStalled"]["18m"] = []
    write_unit_tests(tmp_path, [case])
    out = promtool("test", "rules", "tests.yml", cwd=tmp_path)
    assert out.returncode != 0 and "PeakpilotCycleStalled" in out.stdout + out.stderr


def test_a_real_prometheus_scraping_the_daemon_alerts_on_a_refused_policy(tmp_path, prometheus_factory):
    """End to end: the daemon's /metrics scraped by Prometheus with the shipped rules; a policy edit the
    daemon refuses raises PeakpilotPolicyRejected for that file, and nothing else fires meanwhile."""
    now = [T0]
    daemon, service, policy, text = cycled_daemon(tmp_path, clock=lambda: now[0])
    port = free_port()
    server = daemon.serve_metrics(port)
    prom = prometheus_factory(scrape_targets=[f"127.0.0.1:{port}"], rule_files=[RULES])
    prom.start()
    try:
        def firing() -> dict[str, dict]:
            answer = requests.get(f"{prom.url}/api/v1/alerts", timeout=5).json()["data"]["alerts"]
            return {a["labels"]["alertname"]: a for a in answer if a["state"] == "firing"}

        def scraped(query: str) -> bool:
            return bool(requests.get(f"{prom.url}/api/v1/query", params={"query": query}, timeout=5)
                        .json()["data"]["result"])

        deadline = time.time() + 30
        while time.time() < deadline and not scraped('peakpilot_policy_file_refused == 0'):
            time.sleep(0.5)
        assert scraped('peakpilot_policy_file_refused == 0')
        time.sleep(1.5)
        assert firing() == {}
        policy.write_text(text.replace("max_share: 0.6", "max_share: 1.6"))
        stamp = policy.stat().st_mtime + 5
        import os

        os.utime(policy, (stamp, stamp))
        now[0] += np.timedelta64(1, "m")
        daemon.cycle_all()  # refused: the old policy stays in force
        assert service.policy.spot.max_share == 0.6
        deadline = time.time() + 30
        while time.time() < deadline and "PeakpilotPolicyRejected" not in firing():
            time.sleep(0.5)
        alert = firing().get("PeakpilotPolicyRejected")
        assert alert, requests.get(f"{prom.url}/api/v1/alerts", timeout=5).text
        assert alert["labels"]["file"] == str(policy) and alert["labels"]["severity"] == "warning"
        assert alert["annotations"]["summary"] == (f"{policy}: the policy file is refused; the controller does not "
                                                   f"run what it says")
        assert set(firing()) == {"PeakpilotPolicyRejected"}
    finally:
        server.shutdown()


# -- the Grafana dashboard -----------------------------------------------------------------------------
def dashboard() -> dict:
    import json

    return json.loads(DASHBOARD.read_text())


def dashboard_queries() -> list[tuple[str, str, str]]:
    """(row, panel, PromQL) of every query of the dashboard, in order."""
    queries, row = [], ""
    for panel in dashboard()["panels"]:
        if panel["type"] == "row":
            row = panel["title"]
            continue
        queries += [(row, panel["title"], target["expr"]) for target in panel["targets"]]
    return queries


def as_prometheus_reads(expr: str) -> str:
    """A query as Grafana sends it with every service and pool selected."""
    return expr.replace("$__rate_interval", "1m").replace("$service", ".*").replace("$job", ".*")


def test_the_dashboard_is_well_formed():
    """Unique panel ids, panels that neither overlap nor leave the 24 columns, every query on the chosen
    Prometheus, and no template variable a query reads that the dashboard does not define."""
    board = dashboard()
    panels = board["panels"]
    assert len({p["id"] for p in panels}) == len(panels)
    cells = set()
    for p in panels:
        g = p["gridPos"]
        assert 0 <= g["x"] and g["x"] + g["w"] <= 24, p["title"]
        mine = {(g["x"] + i, g["y"] + j) for i in range(g["w"]) for j in range(g["h"])}
        assert not mine & cells, f"{p['title']} overlaps another panel"
        cells |= mine
        if p["type"] != "row":
            assert p["datasource"]["uid"] == "${datasource}" and p["description"], p["title"]
            assert len({t["refId"] for t in p["targets"]}) == len(p["targets"]) > 0, p["title"]
    defined = {v["name"] for v in board["templating"]["list"]} | {"__rate_interval"}
    used = set(re.findall(r"\$(\w+)", " ".join(e for _, _, e in dashboard_queries())))
    assert used and used <= defined, used - defined


def test_every_metric_the_dashboard_reads_is_one_peakpilot_exports(tmp_path):
    read = set(re.findall(r"\bpeakpilot_[a-z_]+", " ".join(e for _, _, e in dashboard_queries())))
    exported = exported_metric_names(tmp_path) | exported_metric_names(tmp_path, families=True)  # (series to come)
    assert len(read) > 15 and read <= exported, f"the dashboard reads metrics nobody exports: {read - exported}"


def test_a_real_prometheus_answers_every_query_of_the_dashboard(tmp_path, prometheus_factory):
    """A daemon after a cycle and an inference node's metrics, scraped by a real Prometheus: every query is
    valid PromQL; the load, capacity and node panels, and the inference nodes' counts, have series (their
    metric and label names are the exported ones); the forecast 10 minutes before has none yet."""
    from prometheus_client import start_http_server

    daemon, _, _, _ = cycled_daemon(tmp_path)
    daemon_port, node_port = free_port(), free_port()
    server = daemon.serve_metrics(daemon_port)
    node = NodeMetrics()
    node.warm.set(1)
    node.ready.set(1)
    node_server, _ = start_http_server(node_port, addr="127.0.0.1", registry=node.registry)
    prom = prometheus_factory(scrape_targets=[f"127.0.0.1:{daemon_port}", f"127.0.0.1:{node_port}"])
    prom.start()

    def ask(expr: str) -> list:
        answer = requests.get(f"{prom.url}/api/v1/query", params={"query": as_prometheus_reads(expr)}, timeout=5)
        assert answer.status_code == 200 and answer.json()["status"] == "success", (expr, answer.text)
        return answer.json()["data"]["result"]

    try:
        deadline = time.time() + 30
        while time.time() < deadline and not (ask("count_over_time(peakpilot_observed_rps[1m]) > 2")
                                              and ask("count_over_time(peakpilot_warm[1m]) > 2")):
            time.sleep(0.5)
        answered = {(row, panel, expr): ask(expr) for row, panel, expr in dashboard_queries()}
    finally:
        server.shutdown()
        node_server.shutdown()
    for (row, panel, expr), result in answered.items():
        if "offset 10m" in expr:
            assert result == [], expr  # (the forecast made 10 minutes before: Prometheus has 30 s of data)
        elif row in ("Load and capacity", "Inference nodes") and "histogram_quantile" not in expr:
            assert result, f"{row} / {panel}: no series for {expr}"
    observed = answered[("Load and capacity", "Load, forecast and ready capacity",
                         'sum by (service) (peakpilot_observed_rps{service=~"$service"})')]
    assert observed[0]["metric"] == {"service": "llm-chat"} and float(observed[0]["value"][1]) > 0
