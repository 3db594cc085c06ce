"""What the dashboard shows, computed from the store as plain data (tested without a browser)."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import pandas as pd

from controller.policy import CLASSES
from controller.store import Store


@dataclass
class ReplayView:
    run_id: int
    summary: dict
    timeline: pd.DataFrame
    decisions: pd.DataFrame


def format_rps(rps: float) -> str:
    """A request rate to about three significant digits, so the overview's metric fits its column on
    traces from a few req/s to a million."""
    if rps >= 100:
        return f"{rps:,.0f} req/s"
    return f"{rps:.1f} req/s" if rps >= 10 else f"{rps:.2f} req/s"


def list_runs(path: str) -> list[dict]:
    with Store(path, readonly=True) as st:
        return st.runs()


def load_replay(path: str, run_id: int | None = None) -> ReplayView | None:
    """A replay's or the daemon's run: its summary, per-minute timeline and decisions."""
    with Store(path, readonly=True) as st:
        run_id = run_id or st.latest("replay") or st.latest("daemon")
        if run_id is None:
            return None
        summary = st.summary(run_id)
        run = next(r for r in st.runs() if r["id"] == run_id)
        summary.setdefault("kind", run["kind"])
        if "slo" not in summary:  # a daemon run: the SLO and prices come from its policy file
            summary.update(_policy_facts(run.get("policy")))
        return ReplayView(run_id, summary, st.timeline(run_id), st.decisions(run_id))


def _policy_facts(policy_path: str | None) -> dict:
    from controller.policy import PolicyError, load_policy

    try:
        policy = load_policy(policy_path) if policy_path else None
    except PolicyError:
        policy = None
    if policy is None:
        return {"slo": {"compliance_target": 0.999, "latency_ms": None}, "prices": {}, "strategies": {}}
    return {"slo": {"compliance_target": policy.slo.compliance_target, "latency_ms": policy.slo.latency_ms},
            "prices": {c: policy.price(c) for c in CLASSES}, "strategies": {}}


def load_backtest(path: str) -> dict | None:
    with Store(path, readonly=True) as st:
        run_id = st.latest("backtest")
        return None if run_id is None else st.summary(run_id)


def overview(view: ReplayView) -> dict:
    """The page's headline numbers: now = the last minute of the timeline."""
    tl = view.timeline
    last = tl.iloc[-1]
    observed = tl["load_rps"].dropna()
    fc = view.summary.get("latest_forecast")
    peak = None
    if fc:
        i = int(np.argmax(fc["q50"]))
        peak = {"timestamp": pd.Timestamp(fc["start"]) + pd.Timedelta(minutes=i), "q50": fc["q50"][i],
                "q90": fc["q90"][i], "in_min": i}
    arrived = float(np.nansum(tl["load_rps"] * 60))
    served = tl["in_time"]
    sla = float(served.sum() / arrived) if arrived and served.notna().any() else None
    return {
        "now": last["ts"],
        "load_rps": float(observed.iloc[-1]) if len(observed) else None,
        "peak": peak,
        "nodes": {c: int(last[f"ready_{c}"]) for c in CLASSES},
        "warming": int(last["warming"]), "draining": int(last["draining"]),
        "cost_per_hour": float(last["cost_per_hour"]),
        "sla": sla, "sla_target": view.summary["slo"]["compliance_target"],
    }


def safety_net_spans(tl: pd.DataFrame) -> list[tuple[pd.Timestamp, pd.Timestamp]]:
    """The stretches (first minute, the minute after the last) the controller ran on the reactive safety
    net alone, for want of a usable forecast: shaded on the forecast chart. None in a run that does not
    record its mode (a baseline strategy's, or one from before the mode was recorded)."""
    if "mode" not in tl or tl.empty:
        return []
    reactive = (tl["mode"] == "reactive").to_numpy()
    edges = np.flatnonzero(np.diff(np.concatenate([[0], reactive.astype(int), [0]])))
    ts = tl["ts"].reset_index(drop=True)
    return [(ts[a], ts[b - 1] + pd.Timedelta(minutes=1)) for a, b in zip(edges[::2], edges[1::2])]


def sla_status(view: ReplayView, window_min: int = 60) -> dict:
    """Compliance, busy and late shares, the error budget and how fast it burns."""
    tl = view.timeline
    arrived = tl["load_rps"].fillna(0) * 60
    total = float(arrived.sum())
    if tl["in_time"].isna().all():  # a live run: service is measured by the nodes, not modelled here
        return None
    failed = arrived - tl["in_time"]
    target = view.summary["slo"]["compliance_target"]
    budget = (1 - target) * total
    used = float(failed.sum())
    # Burn rate: failures per window against what the budget allows per window (1.0 = on budget).
    allowed = (1 - target) * arrived.rolling(window_min, min_periods=1).sum()
    burn = failed.rolling(window_min, min_periods=1).sum() / allowed.replace(0, np.nan)
    return {
        "compliance": 1 - used / total if total else 1.0, "target": target,
        "busy_share": float(tl["busy"].sum() / total) if total else 0.0,
        "late_share": float(tl["late"].sum() / total) if total else 0.0,
        "budget_requests": budget, "used_requests": used,
        "budget_left_share": 1 - used / budget if budget else 0.0,
        "burn_rate": burn.fillna(0.0),
    }


def cost_comparison(view: ReplayView) -> dict:
    """Predictive against the baselines replay ran, in money and in %."""
    strategies = view.summary["strategies"]
    mine = strategies["predictive"]["cost_usd"] if "predictive" in strategies else None
    rows = []
    for name, r in strategies.items():
        saving = None if mine is None or name == "predictive" else r["cost_usd"] - mine
        rows.append({"strategy": name, "cost_usd": r["cost_usd"], "sla_compliance": r["sla_compliance"],
                     "saving_usd": saving, "saving_pct": None if saving is None or not r["cost_usd"]
                     else 100 * saving / r["cost_usd"]})
    if "static" in strategies:  # the same fixed fleet on on-demand prices: what "just buy peak" costs
        static = strategies["static"]
        on_demand = static["node_hours"] * view.summary["prices"]["on_demand"]
        saving = None if mine is None else on_demand - mine
        rows.append({"strategy": "all_on_demand_static", "cost_usd": round(on_demand, 2),
                     "sla_compliance": static["sla_compliance"], "saving_usd": saving,
                     "saving_pct": None if saving is None else 100 * saving / on_demand})
    return {"predictive": mine, "rows": rows}


def shadow_comparison(tl: pd.DataFrame) -> dict | None:
    """A daemon run's cluster next to peakpilot's plan: cost so far and estimated SLA of each (the
    plan side exists in shadow mode, where the plan is not followed; see controller/shadow.py)."""
    if "plan_in_time" not in tl or not tl["plan_in_time"].notna().any():
        return None
    scored = tl[tl["in_time"].notna() & tl["plan_in_time"].notna()]
    out = {}
    for side, prefix, cost in (("cluster", "", "cost_per_hour"), ("plan", "plan_", "plan_cost_per_hour")):
        arrived = float((scored[f"{prefix}in_time"] + scored[f"{prefix}late"] + scored[f"{prefix}busy"]).sum())
        out[side] = {"sla_compliance": float(scored[f"{prefix}in_time"].sum()) / arrived if arrived else 1.0,
                     "busy_share": float(scored[f"{prefix}busy"].sum()) / arrived if arrived else 0.0,
                     "cost_usd": float(tl[cost].fillna(0.0).sum()) / 60.0}
    return out
