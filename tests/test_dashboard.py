"""The dashboard: every page's elements and numbers against the store (AppTest), and a real browser."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import httpx
import pytest
from streamlit.testing.v1 import AppTest

from dashboard import data
from tests.conftest import free_port

ROOT = Path(__file__).resolve().parent.parent
APP = str(ROOT / "dashboard" / "app.py")
ARTIFACTS = ROOT / "artifacts"


@pytest.fixture(scope="module")
def store(tmp_path_factory):
    """A store filled by a real replay (two days of the sample trace, its columns under other names, as a
    user's export may have them) and a backtest."""
    folder = tmp_path_factory.mktemp("store")
    path, trace = folder / "peakpilot.db", folder / "export.csv"
    sample = (ROOT / "data" / "servegen_llm_m_small.csv").read_text()
    trace.write_text(sample.replace("timestamp,requests", "when,served", 1))
    for args in (["replay", "--trace", str(trace), "--timestamp-column", "when", "--count-column", "served",
                  "--train-days", "12", "--no-sweep", "--store", str(path)],
                 ["backtest", "--models", "seasonal_naive", "--test-days", "1", "--store", str(path)]):
        out = subprocess.run([sys.executable, "-m", "peakpilot.cli", *args], capture_output=True, text=True, timeout=600)
        assert out.returncode == 0, out.stderr
    return str(path)


@pytest.fixture
def app(monkeypatch):
    """The app over a store; the variable stays set for the reruns a test triggers."""
    def run(store: str) -> AppTest:
        monkeypatch.setenv("PEAKPILOT_STORE", store)
        return AppTest.from_file(APP, default_timeout=120).run()

    return run


def metric(at: AppTest, label: str) -> str:
    return next(m.value for m in at.metric if m.label == label)


def test_rates_are_shown_to_about_three_digits():
    assert [data.format_rps(x) for x in (561044.3, 1043.04, 97.66, 3.14159)] == \
        ["561,044 req/s", "1,043 req/s", "97.7 req/s", "3.14 req/s"]


def test_stretches_without_a_forecast_are_shaded_on_the_forecast_chart(app, tmp_path):
    """Minutes the controller decided on the safety net alone (mode reactive) are shaded, stretch by
    stretch, and the caption says how long: here a daemon run that lost its forecast twice."""
    import numpy as np

    from controller.state import Decision
    from controller.store import Store

    modes = ["predictive"] * 5 + ["reactive"] * 3 + ["predictive"] * 2 + ["reactive"] * 4
    t0 = np.datetime64("2026-11-27T10:00", "m")
    url = str(tmp_path / "d.db")
    with Store(url) as st:
        run_id = st.service_run("llm-chat")
        for i, mode in enumerate(modes):
            minute = t0 + np.timedelta64(i, "m")
            st.record_cycle(run_id, int(minute.astype("int64")), str(minute),
                            {"load_rps": 100.0, "forecast_q50": None if mode == "reactive" else 95.0, "mode": mode,
                             "ready": 4.0, "warming": 0.0, "draining": 0.0, "cost_per_hour": 10.0,
                             **{f"ready_{c}": 4.0 * (c == "reserved") for c in ("reserved", "spot", "on_demand")}},
                            [Decision("spot", 1, 1, mode)], {})
        spans = data.safety_net_spans(st.timeline(run_id))
    stamp = lambda i: (t0 + np.timedelta64(i, "m")).astype("datetime64[ns]")  # noqa: E731
    assert [(np.datetime64(a), np.datetime64(b)) for a, b in spans] == [(stamp(5), stamp(8)), (stamp(10), stamp(14))]
    at = app(url)
    assert not at.exception
    assert any(c.value.startswith("shaded: 7 minutes in 2 stretch(es) without a usable forecast") for c in at.caption)
    charts = [json.loads(c.proto.spec) for c in at.get("plotly_chart")]
    shaded = [len(c["layout"].get("shapes", [])) for c in charts if "load and the next hour" in json.dumps(c["layout"])
              or "forecast against actual" in json.dumps(c["layout"])]
    assert shaded == [2, 2]  # the Overview's last hours and the Forecast tab
    assert data.safety_net_spans(data.load_replay(url).timeline.assign(mode="predictive")) == []


def test_every_page_shows_the_store_numbers(app, store):
    at = app(store)
    assert not at.exception
    assert [t.label for t in at.tabs] == ["Overview", "Forecast", "Cost", "SLA", "Decisions", "What-if"]
    view = data.load_replay(store)
    o = data.overview(view)
    # Overview
    assert metric(at, "load now") == data.format_rps(o["load_rps"])
    assert metric(at, "predicted peak") == data.format_rps(o["peak"]["q50"])
    assert metric(at, "ready nodes") == str(sum(o["nodes"].values()))
    assert metric(at, "cost per hour") == f"${o['cost_per_hour']:,.2f}"
    assert metric(at, "SLA") == f"{o['sla']:.3%}"
    assert abs(o["sla"] - view.summary["strategies"]["predictive"]["sla_compliance"]) < 1e-6
    # the lines under these values say more about them, not a change: no rise or fall arrow beside them
    from streamlit.proto.Metric_pb2 import Metric
    noted = {m.label: m.proto for m in at.metric if m.label in ("predicted peak", "ready nodes", "SLA", "compliance")}
    assert noted["ready nodes"].delta == f"{o['warming']} warming, {o['draining']} draining"
    assert len(noted) == 4 and {m.direction for m in noted.values()} == {Metric.MetricDirection.NONE}
    # Cost: savings against the baselines replay ran
    mine = view.summary["strategies"]["predictive"]["cost_usd"]
    reactive = view.summary["strategies"]["reactive"]["cost_usd"]
    assert metric(at, "saving vs reactive") == f"${reactive - mine:,.0f}"
    costs = next(d.value for d in at.dataframe if "saving_pct" in d.value.columns)  # the SLA shown in percent
    assert costs.loc["predictive", "sla_compliance"] == pytest.approx(
        100 * view.summary["strategies"]["predictive"]["sla_compliance"])
    # SLA
    s = data.sla_status(view)
    assert metric(at, "compliance") == f"{s['compliance']:.4%}"
    assert metric(at, "busy share") == f"{s['busy_share']:.4%}"
    # Charts: each page drew its plotly figure with the store's data
    charts = {json.loads(c.proto.spec)["layout"]["title"]["text"]: json.loads(c.proto.spec)
              for c in at.get("plotly_chart")}
    assert {"load and the next hour", "forecast against actual", "spend by class",
            "cumulative cost against the baselines", "error budget burn rate", "decisions"} <= set(charts)
    fc = charts["load and the next hour"]["data"]
    assert len(fc[0]["x"]) == 360 and fc[0]["name"] == "load"
    cumulative = {t["name"]: t["y"][-1] for t in charts["cumulative cost against the baselines"]["data"]}
    assert cumulative["predictive"] == pytest.approx(mine, rel=1e-6)
    # Decisions: the table is the store's decisions, with their reasons
    decisions = next(d.value for d in at.dataframe if "reason" in d.value.columns)
    shown = view.decisions[view.decisions["cls"].isin(["spot", "on_demand"])]
    assert len(decisions) == len(shown) > 10
    assert list(decisions["reason"]) == list(shown["reason"])
    # Forecast page: the backtest metrics per model
    backtest = next(d.value for d in at.dataframe if "pinball_q90" in d.value.columns)
    assert list(backtest.index) == ["seasonal_naive"]


def test_decision_filter_and_forecast_range(app, store):
    at = app(store)
    at.text_input(key="decision_filter").set_value("safety net").run()
    assert not at.exception
    caption = next(c.value for c in at.caption if "decisions" in c.value)
    view = data.load_replay(store)
    chosen = view.decisions[view.decisions["cls"].isin(["spot", "on_demand"])]
    expected = chosen["reason"].str.contains("safety net", case=False, regex=False).sum()
    assert caption == f"{expected} of {len(view.decisions)} decisions"
    at.slider(key="forecast_days").set_value(1).run()
    spec = next(json.loads(c.proto.spec) for c in at.get("plotly_chart")
                if json.loads(c.proto.spec)["layout"]["title"]["text"] == "forecast against actual")
    assert len(spec["data"][2]["x"]) == 1440


def test_what_if_runs_a_replay_side_by_side(app, store):
    at = app(store)
    # The form starts from the run's policy (the default here), the rise-following setting included.
    assert at.slider(key="whatif_headroom").value == pytest.approx(0.3)
    assert at.selectbox(key="whatif_follow").value == "auto" and at.selectbox(key="whatif_quantile").value == "q90"
    assert at.selectbox(key="whatif_share_of").value == "expected"
    at.slider(key="whatif_headroom").set_value(0.0)
    next(b for b in at.button if b.label == "run replay").click()
    at.run(timeout=300)
    assert not at.exception
    table = next(d.value for d in at.dataframe if "what-if" in d.value.columns)
    assert list(table.columns) == ["current policy", "what-if"]
    # Less headroom costs less (and risks more): the table shows two real, different replays.
    assert table.loc["cost_usd", "what-if"] < table.loc["cost_usd", "current policy"]
    # On the run's own trace, over its window (its last 2 days, not the replay's default 7) and at its
    # capacity per node: the current policy's column is the shown run again.
    shown = data.load_replay(store).summary["strategies"]["predictive"]
    assert table.loc["cost_usd", "current policy"] == pytest.approx(shown["cost_usd"], rel=1e-6)
    assert table.loc["sla_compliance", "current policy"] == pytest.approx(shown["sla_compliance"], abs=1e-9)
    assert any("the current policy's column is that run again" in c.value for c in at.caption)
    # ... of one set of forecasts, kept for the next what-if on the trace, which is the shown run's own file,
    # read with its options (its columns under other names), not the sample it was copied from.
    trace, feeds = at.session_state["whatif_feeds"]
    assert trace == at.selectbox(key="whatif_trace").value and len(feeds) == 1
    assert trace.endswith("export.csv") and "the shown run's" in at.selectbox(key="whatif_trace").format_func(trace)


def test_a_what_if_takes_the_shown_runs_window_and_capacity_only_on_its_own_trace(tmp_path):
    from dashboard.whatif import available_traces, like_run

    a, b = tmp_path.resolve() / "a.csv", tmp_path.resolve() / "b.csv"  # (the what-if keys files by real path)
    for path in (a, b):
        path.write_text("x")
    run = {"trace": str(a), "train_days": 12.0, "rps_per_node": 3.25}
    assert like_run(run, str(a)) == {"train_days": 12.0, "rps_per_node": 3.25}
    assert like_run(run, str(b)) == {}  # another trace: the replay's own window, the policy's capacity
    assert like_run({"service": "llm-chat"}, str(a)) == {}  # a daemon's run: no trace, no window
    assert like_run({"trace": str(a), "train_days": 12.0}, str(a)) == {"train_days": 12.0}
    # A replay given a relative path and column options: its file by its absolute path, read with its options.
    read = {"trace": "a.csv", "trace_file": {"path": str(a), "options": {"count_column": "served"}}, "train_days": 2}
    assert like_run(read, str(a)) == {"train_days": 2, "columns": {"count_column": "served"}}
    assert next(iter(available_traces(ROOT, read).items())) == (str(a), "a.csv (the shown run's)")
    a.unlink()  # a file no longer there is not offered, nor taken for the run's
    assert str(a) not in available_traces(ROOT, read) and like_run(read, str(a)) == {}


def test_what_if_names_a_run_policy_that_no_longer_loads_and_starts_from_the_default(app, store, tmp_path):
    import shutil
    import sqlite3

    broken = tmp_path / "edited.yaml"
    broken.write_text("service: s\nplaning: {}\n")
    copy = tmp_path / "copy.db"
    shutil.copy(store, copy)
    with sqlite3.connect(copy) as db:
        for run_id, summary in db.execute("SELECT id, summary FROM runs").fetchall():
            doc = json.loads(summary)
            doc["policy"] = str(broken)
            db.execute("UPDATE runs SET summary = ?, policy = ? WHERE id = ?", (json.dumps(doc), str(broken), run_id))
    at = app(str(copy))
    assert not at.exception
    message = next(e.value for e in at.error if "what-if" in e.value)
    assert "edited.yaml" in message and "planing" in message
    assert at.selectbox(key="whatif_follow").value == "auto"  # the default policy's values


def test_empty_store_says_how_to_fill_it(app, tmp_path):
    at = app(str(tmp_path / "nothing.db"))
    assert not at.exception
    assert "make demo" in at.info[0].value and "peakpilot replay --store" in at.info[0].value


def test_a_store_that_cannot_be_read_is_named_on_the_page(app, tmp_path):
    damaged = tmp_path / "damaged.db"
    damaged.write_bytes(b"not a database, " * 512)
    at = app(str(damaged))
    assert not at.exception
    assert at.error and "Cannot read the store" in at.error[0].value and "damaged.db" in at.error[0].value


def test_a_real_browser_renders_the_charts(store):
    chromium = shutil.which("chromium")
    if not chromium:
        pytest.fail("chromium is not installed: run `apt-get install chromium` (.ci/run does this)")
    from playwright.sync_api import sync_playwright

    port = free_port()
    proc = subprocess.Popen([sys.executable, "-m", "peakpilot.cli", "dashboard", "--store", store, "--port", str(port)],
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        url = f"http://127.0.0.1:{port}"
        deadline = time.time() + 60
        while time.time() < deadline:
            try:
                if httpx.get(f"{url}/_stcore/health", timeout=1).text == "ok":
                    break
            except httpx.TransportError:
                time.sleep(0.3)
        args = ["--no-sandbox", "--disable-gpu", "--disable-quic", "--disable-background-networking",
                "--disable-component-update", "--disable-sync", "--no-first-run", "--disable-dev-shm-usage"]
        ARTIFACTS.mkdir(exist_ok=True)
        with sync_playwright() as p, tempfile.TemporaryDirectory() as profile:
            ctx = p.chromium.launch_persistent_context(profile, executable_path=chromium, headless=True, args=args,
                                                       viewport={"width": 1400, "height": 1000})
            page = ctx.new_page()
            page.goto(url)
            page.wait_for_selector("h1:has-text('peakpilot')", timeout=60000)
            page.wait_for_selector(".js-plotly-plot .main-svg", timeout=60000)
            page.wait_for_selector("[data-testid='stStatusWidget']", state="detached", timeout=60000)
            # The overview's load chart drew its lines: load, the forecast band and q99, the peak marker.
            assert page.locator(".js-plotly-plot").count() >= 2
            assert page.locator(".js-plotly-plot .scatterlayer .trace").count() >= 5
            assert page.locator("[data-testid='stMetric']").count() >= 5
            # a user's dashboard, not a developer's: no "Deploy" to Streamlit's cloud
            assert page.locator("[data-testid='stAppDeployButton']").count() == 0
            page.screenshot(path=str(ARTIFACTS / "dashboard.png"), full_page=True)
            ctx.close()
        assert (ARTIFACTS / "dashboard.png").stat().st_size > 10000
    finally:
        proc.terminate()
        proc.wait(10)


def test_stopping_the_dashboard_command_stops_its_server(store):
    """SIGTERM to `peakpilot dashboard` (a container stopping) must stop Streamlit too, not orphan it."""
    port = free_port()
    proc = subprocess.Popen([sys.executable, "-m", "peakpilot.cli", "dashboard", "--store", store, "--port", str(port)],
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    url = f"http://127.0.0.1:{port}/_stcore/health"
    deadline = time.time() + 60
    while time.time() < deadline:
        try:
            if httpx.get(url, timeout=1).text == "ok":
                break
        except httpx.TransportError:
            time.sleep(0.3)
    else:
        proc.kill()
        pytest.fail("the dashboard did not come up")
    proc.terminate()
    proc.wait(20)
    deadline = time.time() + 10
    while time.time() < deadline:
        try:
            httpx.get(url, timeout=1)
        except httpx.TransportError:
            return  # nothing serves on the port any more
        time.sleep(0.3)
    pytest.fail(f"Streamlit still serves on port {port} after its command was stopped")


def test_the_dashboard_command_reads_the_store_the_controller_is_given(tmp_path):
    """In the controller's pod the dashboard runs beside it with no --store: PEAKPILOT_STORE, the variable
    `peakpilot run` reads, names the store for both (deploy/controller.yaml)."""
    import os

    store = f"sqlite:///{tmp_path / 'controller.db'}"
    proc = subprocess.Popen([sys.executable, "-m", "peakpilot.cli", "dashboard", "--port", str(free_port())],
                            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True,
                            env={**os.environ, "PEAKPILOT_STORE": store})
    try:
        said = proc.stderr.readline()
    finally:
        proc.terminate()
        proc.wait(20)
    assert said.startswith("dashboard on http://127.0.0.1:") and f"(store {store})" in said


def test_a_daemon_run_is_shown_too(app, tmp_path):
    """The daemon's store (a live run: no modelled SLA, no baselines) renders every page."""
    store = tmp_path / "daemon.db"
    out = subprocess.run([sys.executable, "-m", "peakpilot.cli", "run", "--policy", str(ROOT / "configs" / "policy.yaml"),
                          "--once", "--store", str(store)], capture_output=True, text=True, timeout=300)
    assert out.returncode == 0, out.stderr
    at = app(str(store))
    assert not at.exception
    # A live run's SLA is an estimate from the observed load and the ready nodes, and says so.
    tl = data.load_replay(str(store)).timeline
    expected = tl["in_time"].sum() / (tl["load_rps"] * 60).sum()
    assert metric(at, "SLA (estimated)") == f"{expected:.3%}"
    assert any("estimated from the observed load" in c.value for c in at.caption)
    assert any("daemon" in str(o) for o in at.sidebar.selectbox[0].options)
    assert metric(at, "ready nodes") == str(int(data.load_replay(str(store)).timeline["ready"].iloc[-1]))
