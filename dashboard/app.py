"""peakpilot dashboard: does the forecast follow reality, are nodes ready before the peaks, what did
we pay against the alternatives, are we inside the SLA, and why did the controller do what it did.

Run with ``peakpilot dashboard [--store URL]``; reads the store named by ``PEAKPILOT_STORE``. Read-only.
"""

from __future__ import annotations

import os
import sys
from pathlib import Path

import numpy as np
import pandas as pd
import plotly.graph_objects as go
import streamlit as st

ROOT = Path(__file__).resolve().parent.parent
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

from controller.policy import CLASSES, PolicyError  # noqa: E402
from controller.shipped import default_runs_dir, shipped_root  # noqa: E402
from controller.store import StoreError, sqlite_path, store_url  # noqa: E402
from dashboard import data  # noqa: E402

STORE = os.environ.get("PEAKPILOT_STORE", str(default_runs_dir() / "demo" / "peakpilot.db"))
TIME_AXIS = "UTC"  # the store's times, the daemon's and replay's clock
# A metric's line under its value that says more about it (not a change since before): grey, without the arrow
# Streamlit draws for a change (an "up" arrow beside "0 warming, 0 draining" read as a rise).
NOTE = {"delta_color": "off", "delta_arrow": "off"}
COLORS = {"reserved": "#4c78a8", "spot": "#54a24b", "on_demand": "#e45756", "load": "#222222"}

st.set_page_config(page_title="peakpilot", layout="wide")
st.title("peakpilot")


def store_version(url: str) -> float:
    """Changes when a SQLite store is written; a server database relies on the caches' 15 s TTL."""
    p = sqlite_path(url)
    if p is None:
        return 0.0
    wal = p.with_name(p.name + "-wal")
    return max((f.stat().st_mtime for f in (p, wal) if f.exists()), default=0.0)


@st.cache_data(ttl=15, show_spinner=False)
def cached_replay(path: str, run_id: int | None, version: float):
    return data.load_replay(path, run_id)


@st.cache_data(ttl=15, show_spinner=False)
def cached_runs(path: str, version: float):
    return data.list_runs(path)


@st.cache_data(ttl=15, show_spinner=False)
def cached_backtest(path: str, version: float):
    return data.load_backtest(path)


def read_or_stop(read, *args):
    """A store that cannot be read (a database down, a damaged file) is named on the page, not a traceback."""
    try:
        return read(*args)
    except StoreError as exc:
        st.error(f"Cannot read the store: {exc}")
        st.stop()


def empty_page(reason: str) -> None:
    st.info(f"{reason}\n\nThe controller (`peakpilot run --store {STORE_NAME}`) fills it from its first "
            f"cycle, after its first training. For a look at a replayed week instead:\n\n"
            f"```\npeakpilot replay --store {STORE_NAME}\n```\n\nor run `make demo`, then refresh this page.")


try:
    STORE_FILE = sqlite_path(STORE)
    STORE_NAME = str(STORE_FILE) if STORE_FILE else store_url(STORE).render_as_string(hide_password=True)
except StoreError as exc:
    st.error(str(exc))
    st.stop()
version = store_version(STORE)
if STORE_FILE is not None and not STORE_FILE.exists():
    empty_page(f"The store {STORE_FILE} does not exist yet.")
    st.stop()
runs = [r for r in read_or_stop(cached_runs, STORE, version) if r["kind"] in ("replay", "daemon")]
if not runs:
    empty_page(f"The store {STORE_NAME} holds no replay or controller run yet.")
    st.stop()

with st.sidebar:
    st.caption(f"store: {STORE_NAME}")
    labels = {r["id"]: f"#{r['id']} {r['kind']}: " + (Path(r["trace"]).name if r["trace"] else r["strategy"] or "")
              for r in runs}
    run_id = st.selectbox("run", list(labels)[::-1], format_func=labels.get, key="run")
    if st.button("refresh", key="refresh"):
        st.cache_data.clear()
        st.rerun()

view = read_or_stop(cached_replay, STORE, run_id, version)
summary, tl = view.summary, view.timeline
tabs = st.tabs(["Overview", "Forecast", "Cost", "SLA", "Decisions", "What-if"])

# -- Overview -----------------------------------------------------------------------------------
with tabs[0]:
    o = data.overview(view)
    c = st.columns(5)
    c[0].metric("load now", data.format_rps(o["load_rps"]) if o["load_rps"] is not None else "no data")
    if o["peak"]:
        c[1].metric("predicted peak", data.format_rps(o["peak"]["q50"]),
                    f"in {o['peak']['in_min']} min, q90 {data.format_rps(o['peak']['q90'])}", **NOTE)
    c[2].metric("ready nodes", sum(o["nodes"].values()), f"{o['warming']} warming, {o['draining']} draining", **NOTE)
    c[3].metric("cost per hour", f"${o['cost_per_hour']:,.2f}")
    # A replay's SLA is its service model's; a daemon's is estimated from the observed load and ready
    # nodes with the same model (the nodes' own peakpilot_requests_total by outcome is the measurement).
    label = "SLA (estimated)" if summary.get("kind") == "daemon" else "SLA"
    if o["sla"] is None:
        c[4].metric(label, "live", f"target {o['sla_target']:.1%}", **NOTE)
    else:
        ok = o["sla"] >= o["sla_target"]
        c[4].metric(label, f"{o['sla']:.3%}", f"target {o['sla_target']:.1%}", delta_arrow="off",
                    delta_color="normal" if ok else "inverse")
    recent = tl.tail(6 * 60)
    fig = go.Figure()
    fig.add_trace(go.Scatter(x=recent["ts"], y=recent["load_rps"], name="load", line={"color": COLORS["load"]}))
    fc = summary.get("latest_forecast")
    if fc:
        t = pd.Timestamp(fc["start"]) + pd.to_timedelta(np.arange(len(fc["q50"])), "min")
        fig.add_trace(go.Scatter(x=t, y=fc["q90"], name="forecast q90", line={"width": 0}, showlegend=False))
        fig.add_trace(go.Scatter(x=t, y=fc["q50"], name="forecast q50 (band to q90)", fill="tonexty",
                                 line={"color": "#f58518"}))
        fig.add_trace(go.Scatter(x=t, y=fc["q99"], name="forecast q99", line={"color": "#f58518", "dash": "dot"}))
        if o["peak"]:
            fig.add_trace(go.Scatter(x=[o["peak"]["timestamp"]], y=[o["peak"]["q50"]], mode="markers+text",
                                     text=["peak"], textposition="top center", name="predicted peak",
                                     marker={"size": 10, "color": "#f58518"}))
    for x0, x1 in data.safety_net_spans(recent):  # no usable forecast: the safety net alone decided
        fig.add_vrect(x0=x0, x1=x1, fillcolor="#d62728", opacity=0.12, line_width=0)
    fig.update_layout(height=360, margin={"t": 30}, yaxis_title="req/s", title="load and the next hour",
                      xaxis_title=TIME_AXIS)
    st.plotly_chart(fig, key="overview_load")
    nodes = go.Figure([go.Bar(x=list(o["nodes"]), y=list(o["nodes"].values()), marker_color=[COLORS[k] for k in o["nodes"]],
                              name="ready")])
    nodes.update_layout(height=260, margin={"t": 30}, title="ready nodes by class")
    st.plotly_chart(nodes, key="overview_nodes")

# -- Forecast -----------------------------------------------------------------------------------
with tabs[1]:
    days = max(1, int(np.ceil(len(tl) / 1440)))
    shown = st.slider("days to show (most recent)", 1, days, min(2, days), key="forecast_days") if days > 1 else 1
    part = tl.tail(shown * 1440)
    fig = go.Figure()
    fig.add_trace(go.Scatter(x=part["ts"], y=part["forecast_q90"], name="forecast q90", line={"color": "#f58518", "dash": "dot"}))
    fig.add_trace(go.Scatter(x=part["ts"], y=part["forecast_q50"], name="forecast q50", line={"color": "#f58518"}))
    fig.add_trace(go.Scatter(x=part["ts"], y=part["load_rps"], name="actual", line={"color": COLORS["load"]}))
    spans = data.safety_net_spans(part)
    for x0, x1 in spans:  # no usable forecast: the safety net alone decided
        fig.add_vrect(x0=x0, x1=x1, fillcolor="#d62728", opacity=0.12, line_width=0)
    fig.update_layout(height=380, margin={"t": 30}, yaxis_title="req/s", title="forecast against actual",
                      xaxis_title=TIME_AXIS)
    st.plotly_chart(fig, key="forecast_vs_actual")
    if spans:
        minutes = sum((b - a) / pd.Timedelta(minutes=1) for a, b in spans)
        st.caption(f"shaded: {minutes:,.0f} minutes in {len(spans)} stretch(es) without a usable forecast, "
                   "when the reactive safety net alone decided (the Decisions tab says why)")
    f = summary.get("forecast") or {}
    st.caption(f"model: {f.get('model')} ({f.get('status')}); forecasts issued from complete intervals only")
    backtest = read_or_stop(cached_backtest, STORE, version)
    if backtest:
        st.subheader("backtest")
        st.dataframe(pd.DataFrame(backtest["models"]).T, key="backtest_table")
    else:
        st.caption("no backtest in the store: `peakpilot backtest --store ...` adds one")

# -- Cost ---------------------------------------------------------------------------------------
with tabs[2]:
    comp = data.cost_comparison(view)
    rows = pd.DataFrame(comp["rows"], columns=["strategy", "cost_usd", "sla_compliance", "saving_usd",
                                               "saving_pct"]).set_index("strategy")
    cols = st.columns(3)
    for col, name in zip(cols, ("reactive", "reactive_spot", "static")):
        if name in rows.index and comp["predictive"] is not None:
            r = rows.loc[name]
            col.metric(f"saving vs {name}", f"${r['saving_usd']:,.0f}", f"{r['saving_pct']:.1f}%")
    if "plan_cost_per_hour" in tl and tl["plan_cost_per_hour"].notna().any() and summary.get("kind") == "daemon":
        shadow = data.shadow_comparison(tl)
        c = st.columns(4)
        c[0].metric("cluster cost per hour now", f"${tl['cost_per_hour'].iloc[-1]:,.2f}")
        c[1].metric("peakpilot's plan per hour now", f"${tl['plan_cost_per_hour'].iloc[-1]:,.2f}",
                    "shadow mode: what peakpilot would run", **NOTE)
        if shadow:
            c[2].metric("cluster SLA (estimated)", f"{shadow['cluster']['sla_compliance']:.3%}",
                        f"${shadow['cluster']['cost_usd']:,.0f} so far", **NOTE)
            c[3].metric("plan SLA (estimated)", f"{shadow['plan']['sla_compliance']:.3%}",
                        f"${shadow['plan']['cost_usd']:,.0f} so far", **NOTE)
            st.caption("Both SLAs are estimated from the observed load with replay's service model; the plan's "
                       "nodes count as ready one (p95) lead time after it asked for them (controller/shadow.py).")
    hourly = tl.set_index("ts")[[f"cost_{c}" for c in CLASSES]].resample("1h").sum() / 60.0
    spend = go.Figure([go.Bar(x=hourly.index, y=hourly[f"cost_{c}"], name=c, marker_color=COLORS[c]) for c in CLASSES])
    spend.update_layout(barmode="stack", height=320, margin={"t": 30}, yaxis_title="USD per hour",
                        title="spend by class", xaxis_title=TIME_AXIS)
    st.plotly_chart(spend, key="cost_by_class")
    cum = go.Figure()
    start = tl["ts"].iloc[0]
    for name, values in summary.get("hourly_cumulative_cost", {}).items():
        cum.add_trace(go.Scatter(x=start + pd.to_timedelta(np.arange(1, len(values) + 1), "h"), y=values, name=name))
    cum.update_layout(height=320, margin={"t": 30}, yaxis_title="USD", title="cumulative cost against the baselines",
                      xaxis_title=TIME_AXIS)
    st.plotly_chart(cum, key="cost_cumulative")
    if len(rows):
        # the SLA in percent to three places: 99.995% and 99.999% are different promises
        st.dataframe(rows.assign(sla_compliance=rows["sla_compliance"] * 100), key="cost_table", column_config={
            "cost_usd": st.column_config.NumberColumn("cost", format="dollar"),
            "sla_compliance": st.column_config.NumberColumn("SLA", format="%.3f%%"),
            "saving_usd": st.column_config.NumberColumn("saving", format="dollar"),
            "saving_pct": st.column_config.NumberColumn("saving %", format="%.1f%%")})
    else:
        st.caption("no baselines for a live run: `peakpilot replay` compares strategies on a trace")

# -- SLA ----------------------------------------------------------------------------------------
def sla_page(s: dict) -> None:
    c = st.columns(4)
    c[0].metric("compliance", f"{s['compliance']:.4%}", f"target {s['target']:.2%}", delta_arrow="off",
                delta_color="normal" if s["compliance"] >= s["target"] else "inverse")
    c[1].metric("busy share", f"{s['busy_share']:.4%}")
    c[2].metric("late share", f"{s['late_share']:.4%}")
    c[3].metric("error budget left", f"{s['budget_left_share']:.1%}",
                f"{s['used_requests']:,.0f} of {s['budget_requests']:,.0f} requests", **NOTE)
    burn = go.Figure([go.Scatter(x=tl["ts"], y=s["burn_rate"], name="burn rate (1 h)")])
    burn.add_hline(y=1.0, line_dash="dash", annotation_text="on budget")
    burn.update_layout(height=320, margin={"t": 30}, title="error budget burn rate", xaxis_title=TIME_AXIS)
    st.plotly_chart(burn, key="sla_burn")


with tabs[3]:
    status = data.sla_status(view)
    if status is None:
        st.info("A live run: compliance is measured by the nodes themselves (peakpilot_requests_total by "
                "outcome, in Prometheus); the store holds the plan and the load.")
    else:
        if summary.get("kind") == "daemon":
            st.caption("A live run: compliance here is estimated from the observed load and the ready nodes with "
                       "replay's service model; the nodes measure it themselves (peakpilot_requests_total by outcome).")
        sla_page(status)

# -- Decisions ----------------------------------------------------------------------------------
with tabs[4]:
    dec = view.decisions
    pick = st.multiselect("classes", list(CLASSES), default=["spot", "on_demand"], key="decision_classes")
    text = st.text_input("reason contains", "", key="decision_filter")
    shown = dec[dec["cls"].isin(pick)]
    if text:
        shown = shown[shown["reason"].str.contains(text, case=False, regex=False)]
    fig = go.Figure([go.Scatter(x=pd.to_datetime(g["ts"]), y=g["desired"], mode="lines+markers", line_shape="hv",
                                name=c, marker_color=COLORS[c]) for c, g in shown.groupby("cls")])
    fig.update_layout(height=320, margin={"t": 30}, yaxis_title="desired nodes", title="decisions",
                      xaxis_title=TIME_AXIS)
    st.plotly_chart(fig, key="decisions_chart")
    st.caption(f"{len(shown)} of {len(dec)} decisions")
    st.dataframe(shown[["ts", "cls", "current", "desired", "reason"]], key="decisions_table", hide_index=True)

# -- What-if ------------------------------------------------------------------------------------
with tabs[5]:
    from dashboard.whatif import available_traces, current_policy, like_run, run_whatif, shown_trace

    traces = available_traces(shipped_root() or ROOT, summary)
    default_trace = shown_trace(summary)[0] or next(iter(traces))
    with st.form("whatif"):
        trace = st.selectbox("trace", list(traces), index=list(traces).index(default_trace), format_func=traces.get,
                             key="whatif_trace")
        policy_path = summary.get("policy") or ""
        try:
            base = current_policy(policy_path)  # its values start the form: unchanged, it replays the policy twice
        except PolicyError as exc:
            st.error(f"The run's policy cannot be loaded, so the what-if starts from the default policy: {exc}")
            policy_path, base = "", current_policy("")
        quantiles, follows, shares_of = ["q50", "q90", "q99"], ["auto", "always", "never"], ["expected", "fleet"]
        c = st.columns(6)
        headroom = c[0].slider("headroom", 0.0, 1.0, min(1.0, base.planning.headroom), 0.05, key="whatif_headroom")
        quantile = c[1].selectbox("planning quantile", quantiles, index=quantiles.index(base.planning.quantile),
                                  key="whatif_quantile")
        spot_share = c[2].slider("spot max share", 0.0, 1.0, base.spot.max_share, 0.05, key="whatif_spot")
        share_of = c[5].selectbox("spot share of", shares_of, index=shares_of.index(base.spot.share_of),
                                  key="whatif_share_of", help="expected: the margin above the expected load may all "
                                  "be spot; fleet: the share is of the whole fleet (spot.share_of)")
        keep = c[3].slider("keep minutes", 0, 60, min(60, int(base.planning.keep_min)), 5, key="whatif_keep")
        follow = c[4].selectbox("follow rises", follows, index=follows.index(base.safety_net.follow_rises),
                                key="whatif_follow", help="chase rises above the forecast's band (safety_net.follow_rises)")
        go_run = st.form_submit_button("run replay")
    if go_run:
        bar = st.progress(0.0, text="starting")
        changes = {"planning": {"headroom": headroom, "quantile": quantile, "keep_min": keep},
                   "spot": {"max_share": spot_share, "share_of": share_of}, "safety_net": {"follow_rises": follow}}
        # The forecasts of the last trace replayed: the next what-if on it skips the training.
        if st.session_state.get("whatif_feeds", (None,))[0] != trace:
            st.session_state["whatif_feeds"] = (trace, {})
        like = like_run(summary, trace)
        result = run_whatif(trace, policy_path, changes, lambda share, what: bar.progress(min(1.0, share), text=what),
                            feeds=st.session_state["whatif_feeds"][1], like=like)
        bar.progress(1.0, text="done")
        st.dataframe(result, key="whatif_table")
        if like:
            capacity = f" and capacity ({like['rps_per_node']:g} req/s per node)" if "rps_per_node" in like else ""
            st.caption(f"The shown run's window (after its first {like['train_days']:g} days, which train the "
                       f"forecaster){capacity}: the current policy's column is that run again.")
