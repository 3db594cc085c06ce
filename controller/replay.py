"""Replay: the real control cycle over a real trace, against reactive, static and oracle strategies.

Every simulated minute runs the same ``control_cycle`` the daemon runs live; only the actuator (the
simulated cluster) and the clock differ. The forecaster is trained on the history before the replayed
window and retrained every ``planning.retrain_hours`` on the history up to then; forecasts are
issued at the trace's own step from the complete intervals before each cycle. Forecasts do not
depend on any strategy's knob, so they are computed once and shared by the whole sweep.

Gaps in the trace (outages written as zeros) reach the forecaster as missing data, never as zero
demand; during a gap nothing is scored, and when the traffic comes back it is scored like any other
minute.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pandas as pd

from controller.blend import spot_nodes
from controller.policy import CLASSES, Policy
from controller.service_model import ServiceModel
from controller.simulator import Faults, SimulatedCluster
from controller.state import MinuteForecast, Observation, on_cycle_clock
from controller.store import TIMELINE_COLUMNS as TIMELINE
from controller.strategies import HPADecider, PredictiveDecider, StaticDecider
from forecaster.csv_source import load_csv
from forecaster.history import History
from forecaster.models import fit_with_fallback, horizon_options
from forecaster.progress import progress as show_progress

STRATEGIES = ("predictive", "reactive", "reactive_spot", "static", "oracle")

SLA_LEVELS = (0.99, 0.995, 0.999)
MINUTE = pd.Timedelta(minutes=1)

KNOBS = {
    # Headroom over the planning quantile; below zero plans under it (the safety net still holds the
    # observed load), so the frontier reaches down to the cheapest setting at each SLA level.
    "predictive": [-0.5, -0.4, -0.3, -0.25, -0.2, -0.15, -0.1, -0.05, 0.0, 0.05, 0.1, 0.15, 0.2, 0.25, 0.3, 0.4, 0.5, 0.6, 0.7, 0.8],
    "oracle": [-0.5, -0.4, -0.3, -0.25, -0.2, -0.15, -0.1, -0.05, 0.0, 0.05, 0.1, 0.15, 0.2, 0.25, 0.3, 0.4, 0.5],
    # Target utilization, as HPA's; as finely spaced as the others' knobs, so every strategy's
    # cheapest setting at each SLA level is found to the same precision.
    "reactive": [0.95, 0.9, 0.85, 0.8, 0.75, 0.7, 0.65, 0.6, 0.5, 0.4, 0.3, 0.2, 0.1],
    "reactive_spot": [0.95, 0.9, 0.85, 0.8, 0.75, 0.7, 0.65, 0.6, 0.5, 0.4, 0.3, 0.2, 0.1],
}


# -- the trace, per minute ----------------------------------------------------------------------
@dataclass
class Trace:
    """A trace as replay needs it: arrivals per minute (NaN in gaps), within the minute where the trace
    knows them, and the history at the forecaster's step (the trace's own, or one minute for a step
    under a minute)."""

    name: str
    history: History
    times: np.ndarray  # datetime64[m], one per minute (wall clock of the trace)
    arrivals: np.ndarray  # requests per minute, NaN in gaps
    # (minutes, k): each minute's arrivals in the trace's own intervals where they are under a minute
    # (k = 60 for a per-second trace, 2 at a 30-s step); None at a step of a minute or more
    sub_minute: np.ndarray | None = None
    # The CSV file it was read from (absolute) and load_csv's options that read it, for a what-if to read it
    # again; None where the history came from Prometheus
    file: dict | None = None

    @property
    def step_min(self) -> int:
        return int(round(self.history.step_min))

    def peak_rps(self) -> float:
        return float(np.nanmax(self.arrivals)) / 60.0


def load_trace(path: str | Path, **columns: str) -> Trace:
    """A CSV trace as replay needs it; ``columns``: ``load_csv``'s names of columns under other names (and
    the zone of its times)."""
    return trace_from_history(load_csv(path, **columns), str(path),
                              file={"path": str(Path(path).expanduser().resolve()), "options": dict(columns)})


def trace_from_history(history: History, name: str, file: dict | None = None) -> Trace:
    """A history (from a CSV, or read from Prometheus) as replay needs it; ``file``: ``Trace.file``."""
    sub_minute = None
    if history.step < MINUTE:
        # Each minute's arrivals in the trace's own intervals (sub-steps of the service model): 60 for a
        # per-second trace, 2 at a 30-s step. A step that does not divide a minute is spread evenly over
        # its seconds. (A 30-s count placed in its first second would be a burst the traffic never had.)
        step_s = history.step.total_seconds()
        if step_s % 1:
            raise ValueError(f"{name}: step {history.step} is not a whole number of seconds")
        counts = history.counts
        size = int(step_s) if 60 % step_s == 0 else 1
        values = np.repeat(counts.to_numpy() / (step_s / size), int(step_s / size))
        sub = pd.Series(values, index=pd.date_range(counts.index[0], periods=len(values), freq=f"{size}s"))
        history = history.resample(MINUTE)
        grid = sub.reindex(pd.date_range(history.start, history.end - pd.Timedelta(seconds=size), freq=f"{size}s"))
        sub_minute = grid.fillna(0).to_numpy().reshape(-1, 60 // size)
    if (history.step / MINUTE) % 1:
        raise ValueError(f"{name}: step {history.step} is not a whole number of minutes")
    step_min = int(history.step / MINUTE)
    arrivals = np.repeat(history.counts.to_numpy() / step_min, step_min)
    index = history.counts.index
    # A trace written with an offset is read at its instants: the policy's events fall where they would live.
    start = on_cycle_clock(index[0]).to_datetime64()
    times = np.datetime64(start, "m") + np.arange(len(arrivals)) * np.timedelta64(1, "m")
    return Trace(name, history, times, arrivals, sub_minute, file)


# -- forecasts, computed once per replay ----------------------------------------------------------
class ForecastFeed:
    """The forecast each cycle sees: the latest one issued from complete intervals before it."""

    def __init__(self, trace: Trace, policy: Policy, first_minute: int, last_minute: int, seed: int = 0,
                 progress: bool = True):
        self.trace = trace
        self.step = trace.step_min
        history = trace.history.in_timezone(policy.signals.timezone)  # the users' calendar, for the models
        self.horizon_steps = history.steps_for(policy.planning.horizon_min)
        first = first_minute // self.step
        last = last_minute // self.step + 1
        self.first = first
        self.values = np.zeros((last - first, self.horizon_steps, 3))
        retrain = max(1, history.steps_per(pd.Timedelta(hours=policy.planning.retrain_hours)))
        model = None
        status = "ok"
        self.switches: list[tuple[int, str, str]] = []  # (first position, model, status) as the chain moves
        self.fit_seconds: list[float] = []
        blocks = list(range(first, last, retrain))
        for b in show_progress(blocks, enabled=progress, desc="forecast", unit="retrain"):
            past = history.until(history.counts.index[b]) if b < len(history) else history
            if model is None or status != "ok":  # as the daemon does: a fallback is retried at every retrain
                model, status = fit_with_fallback(policy.planning.model, past, seed=seed,
                                                  options=horizon_options(policy.planning.horizon_min))
                if not self.switches or self.switches[-1][1] != model.name:
                    self.switches.append((b, model.name, status))
            else:
                model.update(past)
            self.fit_seconds.append(model.fit_seconds)
            positions = list(range(b, min(b + retrain, last)))
            starts = [history.counts.index[p] if p < len(history) else history.end + (p - len(history)) * history.step
                      for p in positions]
            self.values[b - first:b - first + len(positions)] = model.predict_many(
                history, starts, policy.planning.horizon_min)
        self.rps = np.repeat(self.values / (self.step * 60.0), self.step, axis=1)  # per minute

    @property
    def model_name(self) -> str:
        """The model the replay started with (``switches`` lists any later one)."""
        return self.switches[0][1]

    @property
    def status(self) -> str:
        return self.switches[0][2]

    def at(self, minute: int) -> MinuteForecast:
        p = minute // self.step
        _, name, status = next(s for s in reversed(self.switches) if s[0] <= p)
        return MinuteForecast(self.trace.times[0] + np.timedelta64(p * self.step, "m"), self.rps[p - self.first],
                              name, status, self.step)

    def switches_as_dicts(self) -> list[dict]:
        return [{"from": str(self.trace.times[0] + np.timedelta64(p * self.step, "m")), "model": name,
                 "status": status} for p, name, status in self.switches]


def forecast_key(trace: Trace, policy: Policy, first_minute: int, last_minute: int, seed: int = 0) -> tuple:
    """Everything a ``ForecastFeed`` reads, kept beside it: two replays with the same key have the same
    forecasts (``replay``'s ``feeds``)."""
    plan = policy.planning
    return (trace.name, len(trace.arrivals), first_minute, last_minute, seed, plan.model, plan.horizon_min,
            plan.retrain_hours, policy.signals.timezone)


class OracleFeed:
    """The true future load as a forecast (all quantiles equal): a perfect forecaster."""

    def __init__(self, trace: Trace, horizon_min: int):
        filled = np.repeat(trace.history.filled().to_numpy() / trace.step_min, trace.step_min) / 60.0
        self.rps = np.concatenate([filled, np.full(horizon_min, filled[-1])])
        self.horizon = horizon_min
        self.times = trace.times

    def at(self, minute: int) -> MinuteForecast:
        future = self.rps[minute:minute + self.horizon]
        return MinuteForecast(self.times[minute], np.repeat(future[:, None], 3, axis=1), "oracle")


# -- one run ----------------------------------------------------------------------------------------
@dataclass
class RunResult:
    strategy: str
    knob: float
    cost_by_class: dict[str, float]
    service: dict
    node_hours: float
    cold_starts: int
    preemptions: int
    timeline: dict | None = None
    decisions: list[dict] = field(default_factory=list)
    hourly_cost: list[float] = field(default_factory=list)  # cumulative cost at the end of each hour
    # Node-hours the Kubernetes placeholder pods (``kubernetes.placeholder``) would hold for this run's
    # decisions: not simulated, so neither in the cost nor in the shorter starts they buy; None where
    # the strategy or the policy has none.
    placeholder_node_hours: float | None = None

    @property
    def cost_usd(self) -> float:
        return sum(self.cost_by_class.values())

    @property
    def sla(self) -> float:
        return self.service["sla_compliance"]

    def as_dict(self) -> dict:
        return {"knob": self.knob, "cost_usd": round(self.cost_usd, 2),
                "cost_by_class": {k: round(v, 2) for k, v in self.cost_by_class.items()},
                "sla_compliance": self.service["sla_compliance"], "busy_share": self.service["busy_share"],
                "late_share": self.service["late_share"], "node_hours": round(self.node_hours, 1),
                "cold_starts": self.cold_starts, "preemptions": self.preemptions,
                "minutes_short": self.service["minutes_short"],
                "placeholder_node_hours": None if self.placeholder_node_hours is None
                else round(self.placeholder_node_hours, 1)}


def rps_per_node_for(policy: Policy, trace: Trace, peak_nodes: int | None = None) -> float:
    if peak_nodes:
        return trace.peak_rps() / peak_nodes
    if policy.capacity.rps_per_node:
        return policy.capacity.rps_per_node
    return trace.peak_rps() / policy.capacity.peak_nodes


def simulate(trace: Trace, policy: Policy, strategy: str, knob: float, window: tuple[int, int], rps_per_node: float,
             reserved: int, feed=None, seed: int = 0, faults: Faults | None = None, record: bool = False) -> RunResult:
    """Run one strategy at one knob setting over minutes [window[0], window[1]) of the trace."""
    if strategy == "static":
        cluster = SimulatedCluster(policy, reserved=int(knob), seed=seed, faults=faults)
        decider = StaticDecider()
    else:
        ours = strategy in ("predictive", "oracle")
        cluster = SimulatedCluster(policy, reserved=reserved if ours else 0, seed=seed, faults=faults,
                                   release_paid_out_first=ours)
        if ours:
            decider = PredictiveDecider(policy, rps_per_node, reserved, knob)
        else:
            decider = HPADecider(policy, rps_per_node, knob, use_spot=strategy == "reactive_spot")
    service = ServiceModel(rps_per_node, policy.capacity.queue_seconds)
    start, end = window
    n = end - start
    timeline = {k: np.zeros(n) for k in TIMELINE} if record else None
    if record:  # the control cycle's mode each minute (predictive, or reactive for want of a forecast)
        timeline["mode"] = np.full(n, None, dtype=object)
    if record:  # the shadow estimate's columns are the daemon's; a replay measures its plan directly
        for k in ("plan_ready", "plan_in_time", "plan_late", "plan_busy"):
            timeline[k][:] = np.nan
    hourly_cost = []
    decisions: list[dict] = []
    last_desired: dict[str, int] = {}
    busy_share = 0.0
    placeholders = strategy in ("predictive", "oracle") and bool(policy.kubernetes.placeholder)
    placeholder_minutes = 0
    # Warm start: the fleet the previous minutes needed is there at the start of the window.
    first_load = np.nanmean(trace.arrivals[max(0, start - 10):start]) / 60.0 if start else 0.0
    if strategy != "static" and np.isfinite(first_load):
        cluster.nodes += _initial_nodes(policy, strategy, first_load, rps_per_node, reserved)
    for i, minute in enumerate(range(start, end)):
        prev = trace.arrivals[minute - 1] if minute > 0 else np.nan
        obs = Observation(trace.times[minute], None if np.isnan(prev) else float(prev) / 60.0, busy_share)
        try:
            forecast = feed.at(minute) if feed is not None else None
        except Exception:  # a failing forecaster must not stop the controller: the cycle goes reactive
            forecast = None
        view = cluster.view()
        chosen = decider.decide(obs, forecast, view)
        if placeholders:
            placeholder_minutes += decider.last.placeholder
        cluster.apply(chosen)
        cluster.advance()
        ready = cluster.ready_nodes()
        a = trace.arrivals[minute]
        if np.isnan(a):
            service.skip_minute()
            in_time = late = busy = 0.0
            busy_share = 0.0
        else:
            arrivals = trace.sub_minute[minute] if trace.sub_minute is not None else a
            in_time, late, busy = service.serve_minute(arrivals, ready)
            busy_share = busy / a if a else 0.0
        if record:
            timeline["mode"][i] = getattr(getattr(decider, "last", None), "mode", None)
            timeline["plan_nodes"][i] = sum(d.desired for d in chosen) if chosen else np.nan
            timeline["plan_cost_per_hour"][i] = sum(d.desired * policy.price(d.cls) for d in chosen) if chosen else np.nan
            for d in chosen:
                if last_desired.get(d.cls) != d.desired:
                    decisions.append({"minute": i, "time": str(trace.times[minute]), "cls": d.cls, "desired": d.desired,
                                      "current": d.current, "reason": d.reason})
                    last_desired[d.cls] = d.desired
            _record(timeline, i, cluster, trace, minute, forecast, in_time, late, busy)
        if i % 60 == 59:
            hourly_cost.append(cluster.cost_so_far())
    billed = cluster.finish()
    cost = {c: billed[c] / 60.0 * policy.price(c) for c in CLASSES}
    result = RunResult(strategy, knob, cost, service.totals.as_dict(), sum(billed.values()) / 60.0,
                       cluster.cold_starts, cluster.preemptions, timeline, decisions)
    result.hourly_cost = hourly_cost + [result.cost_usd]
    if placeholders:
        result.placeholder_node_hours = placeholder_minutes / 60.0
    return result


def _initial_nodes(policy: Policy, strategy: str, load_rps: float, rps_per_node: float, reserved: int):
    from controller.simulator import Node

    total = min(policy.limits.max_nodes, max(policy.limits.min_nodes, math.ceil(load_rps * 1.2 / rps_per_node)))
    expected = math.ceil(load_rps / rps_per_node - 1e-9)
    if strategy in ("predictive", "oracle"):
        rest = max(0, total - reserved)
        spot = spot_nodes(total, rest, policy, expected)
        classes = ["spot"] * spot + ["on_demand"] * (rest - spot)
    elif strategy == "reactive_spot":
        spot = spot_nodes(total, total, policy, expected)
        classes = ["spot"] * spot + ["on_demand"] * (total - spot)
    else:
        classes = ["on_demand"] * total
    return [Node(c, 0, "ready", 0, 0) for c in classes]


def _record(timeline, i, cluster, trace, minute, forecast, in_time, late, busy) -> None:
    counts = {c: 0 for c in CLASSES}
    warming = draining = 0
    for node in cluster.nodes:
        if node.state == "ready":
            counts[node.cls] += 1
        elif node.state in ("booting", "warming", "pending"):
            warming += 1
        elif node.state == "draining":
            draining += 1
    a = trace.arrivals[minute]
    timeline["load_rps"][i] = np.nan if np.isnan(a) else a / 60.0
    if forecast is not None:
        offset = int((trace.times[minute] - forecast.start) / np.timedelta64(1, "m"))
        row = forecast.rps[min(offset, len(forecast.rps) - 1)]
        timeline["forecast_q50"][i], timeline["forecast_q90"][i] = row[0], row[1]
    else:
        timeline["forecast_q50"][i] = timeline["forecast_q90"][i] = np.nan
    timeline["ready"][i] = sum(counts.values())
    for c in CLASSES:
        timeline[f"ready_{c}"][i] = counts[c]
    timeline["warming"][i], timeline["draining"][i] = warming, draining
    by_class = cluster.running_cost_by_class()
    timeline["cost_per_hour"][i] = sum(by_class.values())
    for c in CLASSES:
        timeline[f"cost_{c}"][i] = by_class[c]
    timeline["in_time"][i], timeline["late"][i], timeline["busy"][i] = in_time, late, busy


# -- the whole comparison -------------------------------------------------------------------------
def frontier_cost_at(points: list[dict], level: float) -> float | None:
    ok = [p["cost_usd"] for p in points if p["sla_compliance"] >= level]
    return min(ok) if ok else None


def replay(trace: Trace, policy: Policy, strategies=STRATEGIES, peak_nodes: int | None = None, sweep: bool = True,
           train_days: float | None = None, seed: int = 0, progress: bool = True, faults: Faults | None = None,
           policy_name: str = "", on_progress=None, feeds: dict | None = None) -> tuple[dict, dict[str, RunResult]]:
    """Replay every strategy; returns the JSON document and the runs at the policy's own settings.

    ``on_progress(share_done, what)`` is called as the work goes on (the dashboard's progress bar).
    ``feeds`` keeps the forecasts computed for the trace, keyed by what they depend on (the window, the
    seed, the model, the horizon, the retraining period): a replay whose policy changes nothing of those
    (a what-if of headroom, quantile, spot share, ...) reuses them instead of training again."""
    from controller.reserved import recommend_reserved

    unknown = [s for s in strategies if s not in STRATEGIES]
    if unknown:
        raise ValueError(f"unknown strategy {', '.join(unknown)}; choose from {', '.join(STRATEGIES)}")
    total_min = len(trace.arrivals)
    span_days = total_min / 1440
    if train_days is None:  # 2.5 days lets the ensemble train; shorter traces train on half (recent_level)
        train_days = max(2.5, min(span_days / 2, 14.0)) if span_days >= 3 else span_days / 2
    start = int(round(train_days * 1440))
    start -= start % trace.step_min
    if start >= total_min - 60:
        training = f"{train_days:g} days" if train_days >= 1 else f"{train_days * 1440:.0f} minutes"
        raise ValueError(f"{trace.name}: {total_min} minutes is too short to train on {training} and "
                         f"replay more than an hour after them (--train-days sets the training)")
    window = (start, total_min)
    rps_per_node = rps_per_node_for(policy, trace, peak_nodes)
    if policy.reserved.count == "auto":
        reserved = recommend_reserved(trace.arrivals[:start] / 60.0, policy, rps_per_node)["reserved"]
    else:
        reserved = policy.reserved.count

    feed = None
    if "predictive" in strategies:
        key = forecast_key(trace, policy, start, total_min - 1, seed)
        feed = None if feeds is None else feeds.get(key)
        if on_progress:
            on_progress(0.0, "training the forecaster" if feed is None else "the same forecasts as before")
        if feed is None:
            feed = ForecastFeed(trace, policy, start, total_min - 1, seed, progress)
        if feeds is not None:
            feeds[key] = feed
    oracle = OracleFeed(trace, policy.planning.horizon_min) if "oracle" in strategies else None
    need = np.nan_to_num(trace.arrivals[start:]) / 60.0 / rps_per_node
    knobs = dict(KNOBS)
    peak = int(math.ceil(np.max(need)))
    knobs["static"] = sorted({max(1, int(round(peak * f))) for f in (0.4, 0.5, 0.6, 0.8, 0.9, 1.0, 1.1, 1.25, 1.5)})
    runs: list[tuple[str, float]] = []
    # Without a sweep each strategy runs once: the policy's own headroom, or a usual setting for the
    # baselines (HPA target utilization 0.6, a static fleet 10% above the replayed peak).
    default = {"predictive": policy.planning.headroom, "oracle": policy.planning.headroom, "reactive": 0.6,
               "reactive_spot": 0.6, "static": max(1, int(math.ceil(peak * 1.1)))}
    for s in strategies:
        own = default[s]
        values = knobs[s] if sweep else [own]
        if s in ("predictive", "oracle") and own not in values:
            values = sorted([*values, own])
        runs += [(s, k) for k in values]
    results: dict[tuple[str, float], RunResult] = {}
    bar = show_progress(runs, enabled=progress, desc="replay", unit="run")
    for done, (s, k) in enumerate(bar):
        if on_progress:
            on_progress(0.2 + 0.8 * done / len(runs), f"{s} at {k:g}")
        bar.set_postfix_str(f"{s} {k:g}")
        source = feed if s == "predictive" else oracle if s == "oracle" else None
        results[(s, k)] = simulate(trace, policy, s, k, window, rps_per_node, reserved, source, seed, faults,
                                   record=(s, k) == ("predictive", policy.planning.headroom))
    target = policy.slo.compliance_target
    chosen: dict[str, RunResult] = {}
    frontier: dict[str, list[dict]] = {}
    for s in strategies:
        mine = [r for (name, _), r in results.items() if name == s]
        frontier[s] = [{"knob": r.knob, "cost_usd": round(r.cost_usd, 2), "sla_compliance": r.sla} for r in mine]
        if s in ("predictive", "oracle"):
            chosen[s] = results[(s, policy.planning.headroom)]
        else:
            reaching = [r for r in mine if r.sla >= target]
            chosen[s] = min(reaching, key=lambda r: r.cost_usd) if reaching else max(mine, key=lambda r: r.sla)
    latest = feed.at(total_min - 1) if feed else None
    doc = {
        "trace": trace.name,
        "trace_file": trace.file,
        "policy": policy_name,
        "minutes": window[1] - window[0],
        "train_days": round(train_days, 2),
        "rps_per_node": rps_per_node,
        "reserved": reserved,
        "forecast": {"model": feed.model_name, "status": feed.status,
                     "fit_s_total": round(sum(feed.fit_seconds), 2), "models": feed.switches_as_dicts()}
        if feed else None,
        "strategies": {s: chosen[s].as_dict() for s in strategies},
        "frontier": frontier,
        "cost_at_sla": {s: {str(level): frontier_cost_at(frontier[s], level) for level in SLA_LEVELS}
                        for s in strategies},
        "slo": {"compliance_target": target, "latency_ms": policy.slo.latency_ms},
        "prices": {c: policy.price(c) for c in CLASSES},
        "hourly_cumulative_cost": {s: [round(x, 2) for x in chosen[s].hourly_cost] for s in strategies},
        "latest_forecast": None if latest is None else {
            "start": str(latest.start), "model": latest.model,
            **{q: [round(float(v), 4) for v in latest.rps[:, k]] for k, q in enumerate(("q50", "q90", "q99"))}},
    }
    return doc, chosen
