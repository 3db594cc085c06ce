"""The daemon: the control cycle of every service on a schedule (APScheduler), for months.

* Every ``interval`` seconds, each service runs one cycle: reload its policy if the file changed (a
  broken new one is refused with a log line, the old one stays; a change of Prometheus, query or
  Deployments rebuilds what reads or acts, a change of what the model is trained on or for retrains it),
  read the live signals, forecast, decide, act (unless a follower of the Lease, or in shadow mode),
  record. A cycle's writes are one transaction; the controller's memory is in the store, so a restarted
  daemon continues. Policy folders are watched: a file that appears starts a service, one that goes
  stops it being run (``controller/policy_watch.py``).
* Retraining runs on its own cron. Cycles never overlap (``max_instances=1``); a late cycle runs once
  (``coalesce``). Errors are counted by kind and never end the daemon; SIGTERM shuts it down cleanly.
* Its own ``/metrics`` and ``/health`` on ``--metrics-port``. ``/health`` answers 503 once no cycle has
  finished for ``stall_after_s`` (a cycle stuck on an API call that never returns), so the liveness
  probe restarts a controller that no longer controls; ``configs/prometheus/peakpilot-rules.yml``
  alerts on the same signals.
"""

from __future__ import annotations

import json
import logging
import signal
import threading
import time
from dataclasses import dataclass, field
from datetime import datetime, timezone
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import numpy as np
import pandas as pd
from prometheus_client import CONTENT_TYPE_LATEST, CollectorRegistry, Counter, Gauge, Histogram, generate_latest

from controller.cycle import control_cycle
from controller.policy import CLASSES, Policy, PolicyError, backend_problems, load_policy
from controller.planner import lead_time_min
from controller.shadow import ShadowEstimate
from controller.signals import SignalError
from controller.state import Memory, MinuteForecast, Observation
from controller.store import Store
from forecaster.models import fit_with_fallback, horizon_options

log = logging.getLogger("peakpilot.daemon")
MINUTE = np.timedelta64(1, "m")


def utc_now() -> np.datetime64:
    return np.datetime64(datetime.now(timezone.utc).replace(tzinfo=None), "m")


class DaemonMetrics:
    def __init__(self) -> None:
        r = self.registry = CollectorRegistry()
        self.cycle_seconds = Histogram("peakpilot_cycle_duration_seconds", "Control cycle duration", ["service"],
                                       buckets=(0.005, 0.01, 0.025, 0.05, 0.1, 0.2, 0.5, 1, 2, 5), registry=r)
        self.forecast = Gauge("peakpilot_forecast_rps", "Forecast load one lead time ahead", ["service", "quantile"],
                              registry=r)
        self.desired = Gauge("peakpilot_desired_nodes", "Nodes decided", ["service", "class"], registry=r)
        self.actual = Gauge("peakpilot_actual_nodes", "Nodes there", ["service", "class", "state"], registry=r)
        self.cost = Gauge("peakpilot_cost_per_hour", "Cost per hour of the nodes running", ["service"], registry=r)
        self.errors = Counter("peakpilot_errors", "Errors by kind", ["service", "kind"], registry=r)
        self.forecast_age = Gauge("peakpilot_forecast_age_seconds", "Age of the forecast in use", ["service"],
                                  registry=r)
        self.cycles = Counter("peakpilot_cycles", "Control cycles run", ["service", "mode"], registry=r)
        self.lasting = Gauge("peakpilot_missed_surges_lasting_share",
                             "Share of recent surges above the forecast band that lasted a lead time (rises are "
                             "followed at 1/3 or more with safety_net.follow_rises: auto); absent until 10 are scored",
                             ["service"], registry=r)
        # What the alerting rules (configs/prometheus/peakpilot-rules.yml) need to tell a controller that
        # controls from one that only runs: which replica holds the Lease, which applies its decisions,
        # when each service's loop last turned and last succeeded, and whether the forecast fell back.
        self.leader = Gauge("peakpilot_leader", "1 while this replica holds the Lease (always, without one)",
                            ["lease"], registry=r)
        self.acting = Gauge("peakpilot_acting", "1 while this replica applies its decisions (leader, not shadow)",
                            ["service"], registry=r)
        self.last_cycle = Gauge("peakpilot_last_cycle_timestamp_seconds", "Unix time the last cycle finished",
                                ["service"], registry=r)
        self.last_ok_cycle = Gauge("peakpilot_last_ok_cycle_timestamp_seconds",
                                   "Unix time the last cycle that read the cluster and decided finished",
                                   ["service"], registry=r)
        self.fallback = Gauge("peakpilot_forecast_fallback",
                              "1 while the model in use is not the policy's (it fell back, or none is trained)",
                              ["service"], registry=r)
        self.policy_refused = Gauge("peakpilot_policy_file_refused",
                                    "1 while a policy file on disk is refused (a changed one: the one before "
                                    "stays in force; a new one: its service is not run)", ["file"], registry=r)
        self._per_service = [(self.cycle_seconds, ("service",)), (self.forecast, ("service", "quantile")),
                             (self.desired, ("service", "class")), (self.actual, ("service", "class", "state")),
                             (self.cost, ("service",)), (self.errors, ("service", "kind")),
                             (self.forecast_age, ("service",)), (self.cycles, ("service", "mode")),
                             (self.lasting, ("service",)), (self.acting, ("service",)),
                             (self.last_cycle, ("service",)), (self.last_ok_cycle, ("service",)),
                             (self.fallback, ("service",))]

    def forget(self, service: str, policy_file: Path) -> None:
        """Drop every series of a service no longer run, so that no alert reads its last values for ever."""
        for metric, names in self._per_service:
            for key in _label_values(metric, names, "service", service):
                metric.remove(*key)
        self.forget_file(policy_file)

    def forget_file(self, policy_file: Path) -> None:
        for key in _label_values(self.policy_refused, ("file",), "file", str(policy_file)):
            self.policy_refused.remove(*key)


def _label_values(metric, names: tuple[str, ...], label: str, value: str) -> set[tuple[str, ...]]:
    """The label values of a metric's series whose ``label`` is ``value`` (a histogram's ``le`` aside)."""
    return {tuple(sample.labels[n] for n in names) for family in metric.collect()
            for sample in family.samples if sample.labels.get(label) == value}


# A service with no model yet (its first training failed: Prometheus down at start, say) tries again this
# often, not only at the next scheduled retrain hours later; meanwhile it runs on the reactive safety net.
UNTRAINED_RETRY_MIN = 5

# Error kinds the daemon counts; each starts at 0 so that an alert's increase() sees the first one.
ERROR_KINDS = ("signals", "forecast", "actuator", "store", "policy_reload", "cycle")


@dataclass
class ServiceController:
    """One service: its policy, signals, forecaster, memory, actuator and its run in the store."""

    policy_path: Path
    signals: object
    actuator: object
    store: Store
    metrics: DaemonMetrics
    seed: int = 0
    acting: callable = lambda: True  # False while a follower of the Lease
    shadow: bool = False
    keep_minutes: int | None = None
    parts: object = None  # builds signals and actuator from a policy (controller/service_parts.py)
    policy: Policy = field(init=False)
    memory: Memory = field(init=False)
    model: object = None
    model_status: str = "not trained"
    _failures: list = field(default_factory=list, init=False)  # the failed nodes last reported
    _trained_at_try: np.datetime64 | None = field(default=None, init=False)  # when training was last tried
    # Set when a changed policy's labels no longer match this daemon's --selector: the service is now
    # another daemon's, and this one stops running it (two controllers must never scale one service).
    released: str | None = field(default=None, init=False)
    _unreadable: bool = field(default=False, init=False)  # the policy file could not be read last cycle

    def __post_init__(self) -> None:
        self.policy = load_policy(self.policy_path)  # a broken policy at start is the caller's to report
        self._mtime = self.policy_path.stat().st_mtime
        if self.signals is None:
            self.signals = self.parts.signals(self.policy)
        if self.actuator is None:
            self.actuator = self.parts.actuator(self.policy)
        self.run_id = self.store.service_run(self.policy.service, str(self.policy_path))
        saved = self.store.load_memory(self.run_id)
        self.memory = Memory.from_json(saved) if saved else Memory()
        if saved:
            log.info("%s: resumed from the store (%d recommendations, lead samples %s)", self.policy.service,
                     len(self.memory.recent_targets), {k: len(v) for k, v in self.memory.lead_samples.items()})
        self.rps_per_node = self._capacity(self.policy)
        self.estimate = ShadowEstimate(self.rps_per_node, self.policy.capacity.queue_seconds,
                                       (saved or {}).get("shadow"))
        for kind in ERROR_KINDS:
            self.metrics.errors.labels(self.service, kind)
        self.metrics.fallback.labels(self.service).set(1)
        self.metrics.policy_refused.labels(str(self.policy_path)).set(0)

    @property
    def service(self) -> str:
        return self.policy.service

    def _capacity(self, policy: Policy, signals=None) -> float:
        if policy.capacity.rps_per_node:
            return policy.capacity.rps_per_node
        trace = getattr(signals or self.signals, "trace", None)
        if trace is None:
            raise PolicyError(f"{self.policy_path}: capacity.peak_nodes needs a trace; live services set "
                              f"capacity.rps_per_node (measure it with `peakpilot profile`)")
        return trace.peak_rps() / policy.capacity.peak_nodes

    def reserved(self) -> int:
        return self.policy.reserved.count if isinstance(self.policy.reserved.count, int) else \
            getattr(self, "_auto_reserved", 0)

    # -- scheduled jobs ---------------------------------------------------------------------------
    def reload_policy(self) -> bool:
        """Take the policy file's new version if it changed and is valid; True when the model must be
        retrained for it (another history, model or horizon, or an ``auto`` reserved count to redo)."""
        try:
            mtime = self.policy_path.stat().st_mtime
        except OSError as exc:
            if not self._unreadable:  # said once, and exported until the file is back
                self._unreadable = True
                self.metrics.policy_refused.labels(str(self.policy_path)).set(1)
                self._error("policy_reload", f"cannot read {self.policy_path}: {exc}; keeping the policy in force")
            return False
        if self._unreadable:
            self._unreadable = False
            self.metrics.policy_refused.labels(str(self.policy_path)).set(0)
        if mtime == self._mtime:
            return False
        self._mtime = mtime
        old = self.policy
        try:
            new = load_policy(self.policy_path)
            problems = backend_problems(self.policy_path, new, self.parts.backend) if self.parts else []
            if new.service != old.service:
                problems.append(f"{self.policy_path}: service renamed from {old.service!r} to {new.service!r}; its "
                                f"record in the store is under the old name, so a renamed service goes in a "
                                f"new file")
            if problems:
                raise PolicyError("; ".join(problems))
            if self.parts and not self.parts.selects(new):
                self.released = f"its labels {new.labels} no longer match --selector {self.parts.selector}"
                log.warning("%s: %s; it is another daemon's now, and this one stops running it", self.service,
                            self.released)
                return False
            signals = self.parts.signals(new) if self.parts and new.signals != old.signals else self.signals
            rps_per_node = self._capacity(new, signals)
            actuator = self.parts.actuator_after_change(self.actuator, old, new) if self.parts else self.actuator
        except (PolicyError, ValueError, OSError) as exc:
            self.metrics.policy_refused.labels(str(self.policy_path)).set(1)
            self._error("policy_reload", f"refused the changed policy, keeping the one in force: {exc}")
            return False
        self.policy, self.signals, self.actuator, self.rps_per_node = new, signals, actuator, rps_per_node
        self.metrics.policy_refused.labels(str(self.policy_path)).set(0)
        self.estimate.set_capacity(self.rps_per_node, new.capacity.queue_seconds)
        log.info("%s: policy reloaded from %s", self.service, self.policy_path)
        auto_inputs = lambda p: (p.reserved, p.classes, p.capacity, p.spot)  # noqa: E731
        return (new.signals != old.signals or new.planning.model != old.planning.model
                or new.planning.horizon_min != old.planning.horizon_min
                or (new.reserved.count == "auto" and auto_inputs(new) != auto_inputs(old)))

    def retrain(self, now: np.datetime64) -> None:
        self._trained_at_try = np.datetime64(now, "m")
        try:
            history = self.signals.history(now)
        except SignalError as exc:
            self._error("signals", f"no history to retrain on: {exc}; the last model stays")
            return
        try:
            model, status = fit_with_fallback(self.policy.planning.model, history, seed=self.seed,
                                              options=horizon_options(self.policy.planning.horizon_min))
        except Exception as exc:
            self._error("forecast", f"retrain failed: {exc}; the last model stays")
            return
        self.model, self.model_status = model, status
        self.metrics.fallback.labels(self.service).set(int(model.name != self.policy.planning.model))
        if self.policy.reserved.count == "auto":
            from controller.reserved import recommend_reserved

            load = history.counts.to_numpy() / history.step.total_seconds()
            self._auto_reserved = recommend_reserved(load, self.policy, self.rps_per_node)["reserved"]
        log.info("%s: trained %s (%s) in %.1f s", self.service, model.name, status, model.fit_seconds)

    def cycle(self, now: np.datetime64) -> dict:
        started = time.perf_counter()
        retrain = self.reload_policy()
        if self.released:
            return {"ok": True, "mode": "released", "reason": self.released, "acting": False}
        if retrain:
            log.info("%s: the changed policy moves what the model learns or predicts; retraining", self.service)
            self.retrain(now)
        elif (self.model is None and self._trained_at_try is not None
              and now - self._trained_at_try >= UNTRAINED_RETRY_MIN * MINUTE):
            log.info("%s: no model yet (the last training failed); trying again", self.service)
            self.retrain(now)
        policy = self.policy
        observed: float | None = None
        try:
            obs = self.signals.observe(now)
            observed = obs.load_rps
            if obs.load_rps is not None:
                self.memory.last_load_rps = obs.load_rps
        except SignalError as exc:
            self._error("signals", f"{exc}; keeping the last plan")
            obs = Observation(now, self.memory.last_load_rps, stale=True)  # the last load stays the floor
        forecast = self._forecast(now)
        try:
            view = self.actuator.view()
        except Exception as exc:
            self._error("actuator", f"cannot read the cluster: {exc}")
            return {"ok": False, "error": str(exc)}
        failures = sorted(view.failures)
        if failures != self._failures:  # said once when the set changes, not every minute
            if failures:
                log.warning("%s: %d node(s) failed and will not turn ready by themselves: %s", self.service,
                            len(failures), "; ".join(failures))
            self._failures = failures
        result = control_cycle(obs, forecast, view, policy, self.memory, self.rps_per_node, self.reserved())
        acting = self.acting() and not self.shadow
        sent: list[str] = []
        if acting:
            try:
                sent = self.actuator.apply(result.decisions, result.placeholder)
            except Exception as exc:
                self._error("actuator", f"apply failed: {exc}")
        cost = sum(view.active(c) * policy.price(c) for c in CLASSES)
        row = {"load_rps": observed, "forecast_q50": None, "forecast_q90": None,
               "ready": view.ready(), "warming": sum(view.warming(c) + view.counts[c]["pending"] for c in CLASSES),
               "draining": sum(view.counts[c]["draining"] for c in CLASSES), "cost_per_hour": cost,
               **{f"ready_{c}": view.ready(c) for c in CLASSES},
               **{f"cost_{c}": view.active(c) * policy.price(c) for c in CLASSES},
               # What peakpilot decided, next to what the cluster has: in shadow mode the two differ,
               # and the dashboard compares their cost (and capacity against the observed load).
               "plan_nodes": sum(d.desired for d in result.decisions),
               "plan_cost_per_hour": sum(d.desired * policy.price(d.cls) for d in result.decisions)}
        if forecast is not None:
            row["forecast_q50"], row["forecast_q90"] = (float(forecast.rps[0, 0]), float(forecast.rps[0, 1]))
        minute = int(np.datetime64(now, "m").astype("int64"))
        # The SLA of the cluster as it is, and of the plan had it been followed (see controller/shadow.py).
        plan_ready = self.estimate.plan_ready(minute, {d.cls: d.desired for d in result.decisions},
                                              {c: lead_time_min(policy, self.memory, c) for c in CLASSES},
                                              {c: view.ready(c) for c in CLASSES})
        row.update(self.estimate.serve(minute, observed, view.ready(), plan_ready))
        try:
            self.store.record_cycle(self.run_id, minute, str(np.datetime64(now, "m")), row, result.decisions,
                                    {**self.memory.to_json(), "shadow": self.estimate.to_json()}, self.keep_minutes)
        except Exception as exc:
            self._error("store", f"could not record the cycle: {exc}")
        m = self.metrics
        m.cycle_seconds.labels(self.service).observe(time.perf_counter() - started)
        m.cycles.labels(self.service, result.mode).inc()
        m.acting.labels(self.service).set(int(acting))
        m.cost.labels(self.service).set(cost)
        for d in result.decisions:
            m.desired.labels(self.service, d.cls).set(d.desired)
            for state, n in view.counts[d.cls].items():
                m.actual.labels(self.service, d.cls, state).set(n)
        if self.memory.surprises.persistent_share is not None:
            m.lasting.labels(self.service).set(self.memory.surprises.persistent_share)
        if forecast is not None:
            m.forecast_age.labels(self.service).set(float((now - forecast.start) / MINUTE) * 60)
            for k, q in enumerate(("q50", "q90", "q99")):
                m.forecast.labels(self.service, q).set(float(forecast.rps[min(len(forecast.rps) - 1, 10), k]))
        return {"ok": True, "mode": result.mode, "target": result.target, "reason": result.reason, "sent": sent,
                "acting": acting, "decisions": result.decisions}

    def _forecast(self, now: np.datetime64) -> MinuteForecast | None:
        if self.model is None:
            return None
        try:
            history = self.signals.history(now)
            fc = self.model.predict(history, self.policy.planning.horizon_min)
        except SignalError as exc:
            self._error("signals", f"no history for the forecast: {exc}")
            return None
        except Exception as exc:
            self._error("forecast", f"forecast failed: {exc}")
            return None
        return minute_forecast(fc, self.model_status)

    def _error(self, kind: str, message: str) -> None:
        self.metrics.errors.labels(self.service, kind).inc()
        log.error("%s: %s: %s", self.service, kind, message)


def minute_forecast(fc, status: str) -> MinuteForecast:
    """A forecast at the history's step as the cycle reads it: requests/s for each minute. A step over a
    minute holds for each of its minutes; steps under a minute (signals.step 30s) are taken at their
    busiest in each minute, since a minute's nodes must serve its busiest part."""
    seconds = fc.step.total_seconds()
    start = fc.start.tz_convert("UTC").tz_localize(None) if fc.start.tzinfo else fc.start
    rps = fc.values / seconds
    if seconds >= 60:
        rps = np.repeat(rps, int(round(seconds / 60)), axis=0)
    else:
        index = pd.date_range(start, periods=len(rps), freq=fc.step)
        rps = pd.DataFrame(rps, index=index).resample("1min").max().to_numpy()
    return MinuteForecast(np.datetime64(start, "m"), rps, fc.model, status)


class Daemon:
    def __init__(self, services: list[ServiceController], metrics: DaemonMetrics, interval_s: float = 60,
                 retrain_cron: str = "0 */6 * * *", clock=utc_now, lease=None, startup_s: float = 1800,
                 monotonic=time.monotonic, wall=time.time, watch=None, make_service=None):
        self.services, self.metrics, self.interval_s = services, metrics, interval_s
        # The policy folders (controller/policy_watch.py) and how a file found there becomes a service.
        self.watch, self.make_service = watch, make_service
        self.retrain_cron, self.clock, self.lease = retrain_cron, clock, lease
        self.last_cycle: dict = {}
        self.scheduler = None
        # /health turns 503 after this long without a finished cycle (startup_s before the first: the
        # first training of every service comes before it).
        self.stall_after_s = max(300.0, 5 * interval_s)
        self.startup_s, self.monotonic, self.wall = startup_s, monotonic, wall
        self.started_at = monotonic()
        self.last_cycle_at: float | None = None
        for service in services:  # "no ok cycle since" starts at the start, so that never is alerted on too
            metrics.last_ok_cycle.labels(service.service).set(wall())

    def cycle_all(self) -> bool:
        now = self.clock()
        if self.watch is not None:
            self.follow_policy_files(now)
        if self.lease is not None:
            try:
                self.lease.acquire_or_renew()
            except Exception as exc:
                log.error("lease: %s; acting as a follower", exc)
                self.lease.is_leader = False
            self.metrics.leader.labels(self.lease.name).set(int(self.lease.is_leader))
        else:
            self.metrics.leader.labels("none").set(1)
        ok = True
        for service in self.services:
            try:
                result = service.cycle(now)
            except Exception as exc:  # nothing a service does ends the daemon
                service._error("cycle", f"{type(exc).__name__}: {exc}")
                result = {"ok": False, "error": str(exc)}
            ok &= result["ok"]
            self.last_cycle[service.service] = {"at": str(now), "ok": result["ok"], "mode": result.get("mode"),
                                                "reason": result.get("reason")}
            stamp = self.wall()
            self.metrics.last_cycle.labels(service.service).set(stamp)
            if result["ok"]:
                self.metrics.last_ok_cycle.labels(service.service).set(stamp)
        for service in [s for s in self.services if s.released]:
            self._drop(service, service.released)
        self.last_cycle_at = self.monotonic()
        return ok

    def follow_policy_files(self, now: np.datetime64) -> None:
        """Start the services of new policy files (trained at once), stop running those whose file went."""
        changes = self.watch.scan({s.policy_path: s.service for s in self.services})
        for path in changes.removed:
            self._drop(next(s for s in self.services if s.policy_path == path), f"{path} is gone")
        for path in changes.forgotten:
            self.metrics.forget_file(path)
        for path, reason in changes.refused:
            self.metrics.policy_refused.labels(str(path)).set(1)
            log.error("new policy file refused, its service is not run: %s", reason)
        for path, policy in changes.added:
            try:
                service = self.make_service(path)
            except Exception as exc:
                self.watch.refuse(path)
                self.metrics.policy_refused.labels(str(path)).set(1)
                log.error("new policy file %s: its service could not be set up: %s", path, exc)
                continue
            log.info("%s: new policy file %s; training, then cycling with the others", service.service, path)
            service.retrain(now)
            self.metrics.last_ok_cycle.labels(service.service).set(self.wall())
            self.services = [*self.services, service]

    def _drop(self, gone: ServiceController, why: str) -> None:
        """Stop running a service: its nodes are left as they are, its record stays in the store."""
        self.services = [s for s in self.services if s is not gone]  # a new list: retrain_all may be iterating
        self.last_cycle.pop(gone.service, None)
        self.metrics.forget(gone.service, gone.policy_path)
        log.warning("%s: %s; the service is no longer run here and its nodes are left as they are",
                    gone.service, why)

    def retrain_all(self) -> None:
        now = self.clock()
        for service in self.services:
            service.retrain(now)

    def health(self) -> dict:
        """``status``: ok; starting (training before the first cycle, up to ``startup_s``); stalled (no
        cycle finished for ``stall_after_s``, or none within ``startup_s``: /health then answers 503)."""
        now = self.monotonic()
        if self.last_cycle_at is None:
            age = None
            status = "starting" if now - self.started_at <= self.startup_s else "stalled"
        else:
            age = round(now - self.last_cycle_at, 1)
            status = "ok" if age <= self.stall_after_s else "stalled"
        return {"status": status, "last_cycle_age_s": age,
                "leader": None if self.lease is None else self.lease.is_leader, "services": self.last_cycle}

    def serve_metrics(self, port: int, host: str = "127.0.0.1") -> ThreadingHTTPServer:
        daemon = self

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, *args):
                pass

            def do_GET(self):
                code = 200
                if self.path == "/metrics":
                    body, kind = generate_latest(daemon.metrics.registry), CONTENT_TYPE_LATEST
                elif self.path == "/health":
                    health = daemon.health()
                    body, kind = json.dumps(health).encode(), "application/json"
                    code = 503 if health["status"] == "stalled" else 200
                else:
                    self.send_error(404)
                    return
                self.send_response(code)
                self.send_header("Content-Type", kind)
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

        server = ThreadingHTTPServer((host, port), Handler)
        threading.Thread(target=server.serve_forever, daemon=True).start()
        return server

    def run(self) -> None:
        from apscheduler.schedulers.blocking import BlockingScheduler
        from apscheduler.triggers.cron import CronTrigger
        from apscheduler.triggers.interval import IntervalTrigger

        self.retrain_all()
        sched = self.scheduler = BlockingScheduler(
            timezone="UTC", job_defaults={"coalesce": True, "max_instances": 1,
                                          "misfire_grace_time": max(1, int(self.interval_s))})
        sched.add_job(self.cycle_all, IntervalTrigger(seconds=self.interval_s), id="cycle",
                      next_run_time=datetime.now(timezone.utc))
        sched.add_job(self.retrain_all, CronTrigger.from_crontab(self.retrain_cron, timezone="UTC"), id="retrain")

        def stop(signum, frame):
            log.info("signal %s: shutting down after the cycle in flight", signum)
            threading.Thread(target=sched.shutdown, kwargs={"wait": True}, daemon=True).start()

        signal.signal(signal.SIGTERM, stop)
        signal.signal(signal.SIGINT, stop)
        log.info("running %d service(s): a cycle every %g s, retraining on '%s'", len(self.services),
                 self.interval_s, self.retrain_cron)
        sched.start()
