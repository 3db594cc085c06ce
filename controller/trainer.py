"""Training off the cycle: one worker thread trains the daemon's services, one at a time.

A training reads weeks of history and fits the model: seconds to a minute each. Done inside the cycle (a
policy file added to the folder, a policy change that moves what the model learns, a retry of a failed
first training), it held up the cycle of every other service, and a ConfigMap that adds five services at
once skipped cycles for minutes. Here a training is queued instead and the cycles go on: the service
runs on the safety net until its new model is in (``ServiceController.cycle``). One worker, since
trainings compete for the same cores as the cycles; a service asked for again while queued is trained
once, and one asked for while in training is trained again after it (its policy may have changed),
unless the scheduled retrain asked.
"""

from __future__ import annotations

import logging
import queue
import threading

import numpy as np

log = logging.getLogger("peakpilot.daemon")


class Trainer:
    """One worker thread training the daemon's services one at a time, in the order they were asked for."""

    def __init__(self) -> None:
        self._queue: queue.Queue = queue.Queue()
        self._asked: dict[int, np.datetime64] = {}  # id(service) -> the latest time it was asked for
        self._running: object | None = None
        self._lock = threading.Lock()
        self._idle = threading.Condition(self._lock)
        self._thread = threading.Thread(target=self._work, name="peakpilot-trainer", daemon=True)
        self._thread.start()

    def submit(self, service, now: np.datetime64, again_if_running: bool = True) -> bool:
        """Queue a training of ``service`` on the history up to ``now``; False if one is queued already,
        or (``again_if_running`` False: a scheduled retrain, nothing changed) one is running."""
        with self._lock:
            if not again_if_running and self._running is service:
                return False
            queued = id(service) in self._asked
            self._asked[id(service)] = now
            if not queued:
                self._queue.put(service)
            return not queued

    def cancel(self, service) -> None:
        """Drop a queued training of ``service`` (no longer run); one under way runs to its end."""
        with self._idle:
            self._asked.pop(id(service), None)
            self._idle.notify_all()

    def pending(self, service) -> bool:
        """A training of ``service`` is queued or running."""
        with self._lock:
            return id(service) in self._asked or self._running is service

    def wait_idle(self, timeout: float | None = None) -> bool:
        """Until nothing is queued or running (tests, and a clean stop); False on timeout."""
        with self._idle:
            return self._idle.wait_for(lambda: not self._asked and self._running is None, timeout)

    def stop(self) -> None:
        self._queue.put(None)

    def _work(self) -> None:
        while True:
            service = self._queue.get()
            if service is None:
                return
            with self._lock:
                now = self._asked.pop(id(service), None)  # a request from here on trains it again, after this
                if now is None:  # cancelled while queued
                    continue
                self._running = service
            try:
                service.retrain(now)
            except Exception as exc:  # retrain reports its own failures; this is the last resort
                log.error("%s: training failed: %s: %s", getattr(service, "service", service), type(exc).__name__, exc)
            finally:
                with self._idle:
                    self._running = None
                    self._idle.notify_all()
