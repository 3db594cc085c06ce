"""The daemon: the control cycle of every service on a schedule (APScheduler), for months.

* Every ``interval`` seconds, each service (``controller/service_controller.py``) runs one cycle: reload
  its policy if the file changed (a broken new one is refused with a log line, the old one stays; a
  change of Prometheus, query or Deployments rebuilds what reads or acts, a change of what the model is
  trained on or for retrains it), read the live signals, forecast, decide, act (unless a follower of
  the Lease, or in shadow mode), record. A cycle's writes are one transaction; the controller's memory is in the store, so a restarted
  daemon continues. Policy folders are watched: a file that appears starts a service, one that goes
  stops it being run (``controller/policy_watch.py``).
* Training runs off the cycle, on one worker thread (``controller/trainer.py``): the cron's retrains, a new
  policy file's first training, a retrain a changed policy asks for, the retry of a failed one. A
  training never holds up a cycle; the first ones, at start, come before the first cycle.
* Cycles never overlap (``max_instances=1``); a late cycle runs once (``coalesce``). Errors are counted
  by kind and never end the daemon; SIGTERM shuts it down cleanly.
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
from datetime import datetime, timezone
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import numpy as np
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest

from controller.daemon_metrics import DaemonMetrics
from controller.service_controller import ServiceController
from controller.trainer import Trainer

log = logging.getLogger("peakpilot.daemon")


CYCLE_SECOND = 30
"""The second of the minute the cycles run at. The cycle reads the minute just ended; Prometheus appends a
scrape once it completes (a remote-write backend later still), so read at its very end that minute can
lack its last samples, every cycle, for a daemon whose start put its cycles there. Half a minute on, it
has settled (``signals.REREAD`` heals what comes later still)."""


def utc_now() -> np.datetime64:
    return np.datetime64(datetime.now(timezone.utc).replace(tzinfo=None), "m")


class Daemon:
    def __init__(self, services: list[ServiceController], metrics: DaemonMetrics, interval_s: float = 60,
                 retrain_cron: str = "0 */6 * * *", clock=utc_now, lease=None, startup_s: float = 1800,
                 monotonic=time.monotonic, wall=time.time, watch=None, make_service=None,
                 trainer: Trainer | None = None):
        self.services, self.metrics, self.interval_s = services, metrics, interval_s
        self.use_trainer(trainer)
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

    def use_trainer(self, trainer: Trainer | None) -> None:
        """Train off the cycle on ``trainer``; None (a daemon stepped by hand: --once, tests): in line."""
        self.trainer = trainer
        for service in self.services:
            service.trainer = trainer

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
            if not result["ok"]:
                self.last_cycle[service.service]["error"] = result.get("error")
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
            self.metrics.refused(path, True)
            log.error("new policy file refused, its service is not run: %s", reason)
        for path, policy in changes.added:
            try:
                service = self.make_service(path)
            except Exception as exc:
                self.watch.refuse(path)
                self.metrics.refused(path, True)
                log.error("new policy file %s: its service could not be set up: %s", path, exc)
                continue
            service.trainer = self.trainer
            if self.trainer is None:
                log.info("%s: new policy file %s; training, then cycling with the others", service.service, path)
                service.retrain(now)
            else:
                log.info("%s: new policy file %s; training in the background, acting once trained",
                         service.service, path)
                self.trainer.submit(service, now)
            self.metrics.last_ok_cycle.labels(service.service).set(self.wall())
            self.services = [*self.services, service]

    def _drop(self, gone: ServiceController, why: str) -> None:
        """Stop running a service: its nodes are left as they are, its record stays in the store."""
        gone.stopped = True
        if self.trainer is not None:
            self.trainer.cancel(gone)
        self.services = [s for s in self.services if s is not gone]  # a new list: retrain_all may be iterating
        self.last_cycle.pop(gone.service, None)
        self.metrics.forget(gone.service, gone.policy_path)
        log.warning("%s: %s; the service is no longer run here and its nodes are left as they are",
                    gone.service, why)

    def retrain_all(self) -> None:
        """Train every service now, one after the other (at start, before the first cycle)."""
        now = self.clock()
        for service in self.services:
            service.retrain(now)

    def queue_retrain_all(self) -> None:
        """The scheduled retrain: every service queued for the trainer (in line without one)."""
        if self.trainer is None:
            self.retrain_all()
            return
        now = self.clock()
        for service in self.services:
            self.trainer.submit(service, now, again_if_running=False)

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

    def cycle_trigger(self, now: datetime):
        """Every ``interval_s`` from ``CYCLE_SECOND`` past a minute (the first cycle runs at start)."""
        from apscheduler.triggers.interval import IntervalTrigger

        return IntervalTrigger(seconds=self.interval_s, timezone="UTC",
                               start_date=now.replace(second=CYCLE_SECOND, microsecond=0))

    def run(self) -> None:
        from apscheduler.schedulers.blocking import BlockingScheduler
        from apscheduler.triggers.cron import CronTrigger

        self.retrain_all()
        if self.trainer is None:
            self.use_trainer(Trainer())
        sched = self.scheduler = BlockingScheduler(
            timezone="UTC", job_defaults={"coalesce": True, "max_instances": 1,
                                          "misfire_grace_time": max(1, int(self.interval_s))})
        sched.add_job(self.cycle_all, self.cycle_trigger(datetime.now(timezone.utc)), id="cycle",
                      next_run_time=datetime.now(timezone.utc))
        sched.add_job(self.queue_retrain_all, CronTrigger.from_crontab(self.retrain_cron, timezone="UTC"),
                      id="retrain")

        def stop(signum, frame):
            log.info("signal %s: shutting down after the cycle in flight", signum)
            threading.Thread(target=sched.shutdown, kwargs={"wait": True}, daemon=True).start()

        signal.signal(signal.SIGTERM, stop)
        signal.signal(signal.SIGINT, stop)
        log.info("running %d service(s): a cycle every %g s, retraining on '%s'", len(self.services),
                 self.interval_s, self.retrain_cron)
        sched.start()
        self.trainer.stop()
