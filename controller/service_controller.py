"""One service under the daemon: its policy (reloaded when the file changes), signals, forecaster, memory
and actuator, and the control cycle that joins them each minute.

The daemon (``controller/daemon.py``) schedules these; everything one service does, and every error it
meets, stays inside it: a cycle that cannot read Prometheus or the cluster counts the error, keeps the
last plan and returns, and the daemon goes on with the next service.
"""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pandas as pd

from controller.capacity_check import CapacityCheck
from controller.cycle import control_cycle
from controller.daemon_metrics import DaemonMetrics
from controller.notices import Notices, attention, in_gap
from controller.planner import lead_time_min
from controller.policy import CLASSES, Policy, PolicyError, backend_problems, load_policy
from controller.shadow import ShadowEstimate
from controller.signals import SignalError
from controller.state import Memory, MinuteForecast, Observation, on_cycle_clock
from controller.store import Store
from forecaster.models import fit_with_fallback, horizon_options

log = logging.getLogger("peakpilot.daemon")
MINUTE = np.timedelta64(1, "m")


# A service with no model for its policy (its first training failed: Prometheus down at start, say; or
# the retrain a changed policy asked for failed) tries again this often, not only at the next scheduled
# retrain hours later; meanwhile it runs on the reactive safety net.
UNTRAINED_RETRY_MIN = 5

# peakpilot_forecast_rps is the forecast for this many minutes after the cycle, whatever the step the
# forecast started at: so `offset 10m` of it is the forecast for now, beside the load observed.
FORECAST_GAUGE_AHEAD_MIN = 10

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
    # Where a training asked for by a cycle goes (controller/trainer.py, the daemon's worker); None: the
    # cycle trains itself, in line (--once, and tests that step the daemon by hand).
    trainer: object = None
    policy: Policy = field(init=False)
    memory: Memory = field(init=False)
    model: object = None
    model_status: str = "not trained"
    _trained_at_try: np.datetime64 | None = field(default=None, init=False)  # when training was last tried
    _tries: int = field(default=0, init=False)  # trainings finished, failed or not
    _trained_for: tuple | None = field(default=None, init=False)  # what the model in use was trained on and for
    # Set when a changed policy's labels no longer match this daemon's --selector: the service is now
    # another daemon's, and this one stops running it (two controllers must never scale one service).
    released: str | None = field(default=None, init=False)
    _unreadable: bool = field(default=False, init=False)  # the policy file could not be read last cycle
    # No longer run by the daemon (its file went, or another daemon took it): a training still under way
    # on the trainer's thread must not bring back the metrics the daemon removed.
    stopped: bool = field(default=False, init=False)
    # What the operator is told (log lines, Kubernetes Events), each once per change.
    notices: Notices = field(init=False)
    _training_problem: str | None = field(default=None, init=False)  # why the last training failed
    _live_gap: object = field(default=None, init=False)  # the Gap the live load is in, as the last forecast read

    def __post_init__(self) -> None:
        self.policy = load_policy(self.policy_path)  # a broken policy at start is the caller's to report
        self._mtime = self.policy_path.stat().st_mtime
        self.notices = Notices(self.policy.service)
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
        self.capacity_check = CapacityCheck(self.rps_per_node)
        self.estimate = ShadowEstimate(self.rps_per_node, self.policy.capacity.queue_seconds,
                                       (saved or {}).get("shadow"))
        for kind in ERROR_KINDS:
            self.metrics.errors.labels(self.service, kind)
        self.metrics.fallback.labels(self.service).set(1)
        self.metrics.refused(self.policy_path, False)

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
                self.metrics.refused(self.policy_path, True)
                self._error("policy_reload", f"cannot read {self.policy_path}: {exc}; keeping the policy in force")
            return False
        if self._unreadable:
            self._unreadable = False
            self.metrics.refused(self.policy_path, False)
        if mtime == self._mtime:
            return False
        self._mtime = mtime
        old = self.policy
        try:
            new = load_policy(self.policy_path)
            if new == old:
                # Rewritten as it was: a ConfigMap edit rewrites every file of the volume, changed or not;
                # and a refused version put back to the one in force is no longer refused.
                self.metrics.refused(self.policy_path, False)
                return False
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
            self.metrics.refused(self.policy_path, True)
            self._error("policy_reload", f"refused the changed policy, keeping the one in force: {exc}")
            return False
        self.policy, self.signals, self.actuator, self.rps_per_node = new, signals, actuator, rps_per_node
        self.metrics.refused(self.policy_path, False)
        self.estimate.set_capacity(self.rps_per_node, new.capacity.queue_seconds)
        self.capacity_check.set_capacity(self.rps_per_node)
        log.info("%s: policy reloaded from %s", self.service, self.policy_path)
        auto_inputs = lambda p: (p.reserved, p.classes, p.capacity, p.spot)  # noqa: E731
        return (new.signals != old.signals or new.planning.model != old.planning.model
                or new.planning.horizon_min != old.planning.horizon_min
                or (new.reserved.count == "auto" and auto_inputs(new) != auto_inputs(old)))

    def retrain(self, now: np.datetime64) -> None:
        """Train on the history up to ``now`` (on the trainer's thread, or in line): the policy, signals
        and capacity are taken once at the start, so a reload meanwhile asks for another training."""
        self._trained_at_try = np.datetime64(now, "m")
        policy, signals, rps_per_node = self.policy, self.signals, self.rps_per_node
        started = time.perf_counter()
        try:
            try:
                history = signals.history(now)
            except SignalError as exc:
                self._training_problem = f"no history to train on: {exc}"
                self._error("signals", f"{self._training_problem}; the last model stays")
                return
            try:
                model, status = fit_with_fallback(policy.planning.model, history.in_timezone(policy.signals.timezone),
                                                  seed=self.seed,
                                                  options=horizon_options(policy.planning.horizon_min))
            except Exception as exc:
                self._training_problem = f"training failed: {exc}"
                self._error("forecast", f"retrain failed: {exc}; the last model stays")
                return
            if policy.reserved.count == "auto":
                from controller.reserved import recommend_reserved

                self._auto_reserved = recommend_reserved(history.minute_rates(), policy, rps_per_node)["reserved"]
            self.model, self.model_status, self._trained_for = model, status, trained_for(policy)
            self._training_problem = None
            if not self.stopped:
                self.metrics.fallback.labels(self.service).set(int(model.name != policy.planning.model))
                self.metrics.last_trained.labels(self.service).set(time.time())
            log.info("%s: trained %s (%s) in %.1f s", self.service, model.name, status, model.fit_seconds)
        finally:
            self._tries += 1
            if not self.stopped:
                self.metrics.training_seconds.labels(self.service).observe(time.perf_counter() - started)

    def _train(self, now: np.datetime64, why: str) -> None:
        """Train now, in line, or hand it to the daemon's trainer and go on with this cycle."""
        if self.trainer is None:
            log.info("%s: %s; retraining", self.service, why)
            self.retrain(now)
        elif self.trainer.submit(self, now):
            log.info("%s: %s; training in the background, on the safety net until the new model is in",
                     self.service, why)

    def cycle(self, now: np.datetime64) -> dict:
        started = time.perf_counter()
        retrain = self.reload_policy()
        if self.released:
            return {"ok": True, "mode": "released", "reason": self.released, "acting": False}
        training = self.trainer is not None and self.trainer.pending(self)
        if retrain:
            self._train(now, "the changed policy moves what the model learns or predicts")
        elif (not self._model_fits() and not training and self._trained_at_try is not None
              and now - self._trained_at_try >= UNTRAINED_RETRY_MIN * MINUTE):
            self._train(now, "no model for this policy yet (the last training failed); trying again")
        if self._tries == 0 and self.trainer is not None and self.trainer.pending(self):
            # A new service: nothing is decided for it before its first training has had its try.
            return {"ok": True, "mode": "training", "reason": "first training under way; it acts once that ends",
                    "acting": False}
        policy = self.policy
        observed: float | None = None
        try:
            obs = self.signals.observe(now)
            observed = obs.load_rps
            if obs.load_rps is not None:
                self.memory.last_load_rps = obs.load_rps
        except SignalError as exc:
            last = self.memory.last_load_rps
            self._error("signals", f"{exc}; " + ("no load observed yet: the forecast plans alone, else the fleet is "
                                                 "held" if last is None else
                                                 f"the last load observed ({last:.1f} req/s) stands in as the floor"))
            obs = Observation(now, self.memory.last_load_rps, stale=True)  # the last load stays the floor
        forecast, no_forecast = self._forecast(now)
        try:
            view = self.actuator.view()
        except Exception as exc:
            self._error("actuator", f"cannot read the cluster: {exc}")
            return {"ok": False, "error": str(exc)}
        view.judge_spot(lead_time_min(policy, self.memory, "spot"))
        self.notices.cluster(view)
        capacity = self.capacity_check.observe(None if obs.stale else obs.load_rps, obs.busy_share, view.ready())
        self.notices.capacity(capacity)
        self.metrics.conflicts.labels(self.service).set(len(view.conflicts))
        result = control_cycle(obs, forecast, view, policy, self.memory, self.rps_per_node, self.reserved())
        acting = self.acting() and not self.shadow
        sent: list[str] = []
        if acting:
            try:
                sent = self.actuator.apply(result.decisions, result.placeholder)
            except Exception as exc:
                self._error("actuator", f"apply failed: {exc}")
        self.notices.decided(result, acting, self.shadow)
        if acting:
            self.notices.announce(result, view, self.actuator, no_forecast)
        cost = sum(view.active(c) * policy.price(c) for c in CLASSES)
        looks = attention(view) + ([in_gap(self._live_gap)] if self._live_gap is not None else []) + \
            ([capacity] if capacity else [])
        row = {"load_rps": observed, "forecast_q50": None, "forecast_q90": None, "mode": result.mode,
               "role": "shadow" if self.shadow else "leader" if acting else "follower",
               "attention": "\n".join(looks) or None,
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
        m.capacity.labels(self.service).set(view.ready() * self.rps_per_node)
        if observed is not None:
            m.observed.labels(self.service).set(observed)
        for d in result.decisions:
            m.desired.labels(self.service, d.cls).set(d.desired)
            for state, n in view.counts[d.cls].items():
                m.actual.labels(self.service, d.cls, state).set(n)
        if self.memory.surprises.persistent_share is not None:
            m.lasting.labels(self.service).set(self.memory.surprises.persistent_share)
        if forecast is not None:
            m.forecast_age.labels(self.service).set(float((now - forecast.start) / MINUTE) * 60)
            ahead = max(0, int((now - forecast.start) / MINUTE)) + FORECAST_GAUGE_AHEAD_MIN
            for k, q in enumerate(("q50", "q90", "q99")):
                m.forecast.labels(self.service, q).set(float(forecast.rps[min(len(forecast.rps) - 1, ahead), k]))
        return {"ok": True, "mode": result.mode, "target": result.target, "reason": result.reason, "sent": sent,
                "acting": acting, "decisions": result.decisions}

    def _model_fits(self) -> bool:
        """A model is in, trained on the policy's series and for its horizon (another model name will do
        until its successor is in)."""
        return self.model is not None and self._trained_for in (None, trained_for(self.policy))

    def _forecast(self, now: np.datetime64) -> tuple[MinuteForecast | None, str | None]:
        """The forecast for this cycle, or None and why there is none (the safety net then decides alone)."""
        self._live_gap = None
        if not self._model_fits():  # until a model for this policy is trained
            why = ("no model yet" if self.model is None else
                   "the model in use was trained for another series or a shorter horizon") + \
                (f" ({self._training_problem}; tried again every {UNTRAINED_RETRY_MIN} min)" if self._training_problem
                 else " (a training is under way)")
            return None, why
        try:
            history = self.signals.history(now)
            self._live_gap = self.notices.live_gap(history)
            fc = self.model.predict(history.in_timezone(self.policy.signals.timezone), self.policy.planning.horizon_min)
        except SignalError as exc:
            why = f"no history for the forecast: {exc}"
            self._error("signals", why)
            return None, why
        except Exception as exc:
            why = f"forecast failed: {exc}"
            self._error("forecast", why)
            return None, why
        return minute_forecast(fc, self.model_status), None

    def _error(self, kind: str, message: str) -> None:
        if not self.stopped:
            self.metrics.errors.labels(self.service, kind).inc()
        log.error("%s: %s: %s", self.service, kind, message)


def trained_for(policy: Policy) -> tuple:
    """What a model depends on: the series it learns (the signals) and how far it predicts. A model trained
    for other ones is not used; one trained for another model name is, until its successor is in."""
    return policy.signals, policy.planning.horizon_min


def minute_forecast(fc, status: str) -> MinuteForecast:
    """A forecast at the history's step as the cycle reads it: requests/s for each minute. A step over a
    minute holds for each of its minutes; steps under a minute (signals.step 30s) are taken at their
    busiest in each minute, since a minute's nodes must serve its busiest part."""
    seconds = fc.step.total_seconds()
    start = on_cycle_clock(fc.start)
    rps = fc.values / seconds
    if seconds >= 60:
        rps = np.repeat(rps, int(round(seconds / 60)), axis=0)
    else:
        index = pd.date_range(start, periods=len(rps), freq=fc.step)
        rps = pd.DataFrame(rps, index=index).resample("1min").max().to_numpy()
    return MinuteForecast(np.datetime64(start, "m"), rps, fc.model, status, max(1.0, seconds / 60))
