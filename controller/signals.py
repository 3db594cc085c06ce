"""Where the daemon's load comes from: Prometheus (live), or a trace played on the daemon's clock
(the simulated default). Both give the request history for the forecaster and the last minute's
load and busy share for the cycle. Failures raise :class:`SignalError`; the daemon counts them,
keeps its last plan and recovers by itself when the source answers again.
"""

from __future__ import annotations

import logging
import math

import numpy as np
import pandas as pd

from controller.state import Observation, on_cycle_clock
from forecaster.errors import HistoryError
from forecaster.history import Gap, History

MINUTE = np.timedelta64(1, "m")
REREAD = pd.Timedelta(minutes=5)
"""The newest stretch of the live history read again each cycle (two steps at least). Prometheus appends
a scrape once it completes, and a remote-write backend (Mimir, Thanos Receive) later still, so a step read
the moment it ends may lack its last samples: a lower rate, or none (a window that held two holds one)."""
log = logging.getLogger("peakpilot.daemon")


def recent(step: pd.Timedelta) -> pd.Timedelta:
    """The newest stretch read again each cycle: ``REREAD``, and two steps at least."""
    return step * max(2, math.ceil(REREAD / step))


def share_answered(answer) -> tuple[float, str | None]:
    """The busy share an instant query answered, and what is wrong with the answer, if anything: one series
    (or a scalar) is the share; none is 0 (nothing answered busy); several are a failure, where the first
    would be one pod's share read as the service's."""
    if isinstance(answer, list) and len(answer) == 2 and not isinstance(answer[0], dict):
        return float(answer[1]), None  # a scalar: [time, "value"]
    if len(answer) > 1:
        return 0.0, (f"it answered {len(answer)} series, not one (one per pod?): aggregate it over the service, "
                     f"e.g. sum(rate(BUSY[5m])) / sum(rate(ALL[5m]))")
    return (float(answer[0]["value"][1]) if answer else 0.0), None


class SignalError(RuntimeError):
    pass


class TraceSignals:
    """A trace played in time: minute ``start_minute`` of the trace is the daemon's ``t0``."""

    def __init__(self, trace, start_minute: int, t0: np.datetime64):
        start_minute -= start_minute % trace.step_min  # on the trace's grid
        self.trace, self.start_minute, self.t0 = trace, start_minute, np.datetime64(t0, "m")
        # The trace's timestamps are moved onto the daemon's clock, so forecasts and cycles agree on "now".
        self.shift = pd.Timedelta(self.t0 - trace.times[start_minute])
        self.fail_next = 0  # fault injection for tests

    def minute(self, now: np.datetime64) -> int:
        m = self.start_minute + int((np.datetime64(now, "m") - self.t0) / MINUTE)
        return min(max(m, 1), len(self.trace.arrivals) - 1)

    def observe(self, now: np.datetime64) -> Observation:
        if self.fail_next:
            self.fail_next -= 1
            raise SignalError("injected: trace source unavailable")
        a = self.trace.arrivals[self.minute(now) - 1]
        return Observation(np.datetime64(now, "m"), None if np.isnan(a) else float(a) / 60.0)

    def history(self, now: np.datetime64) -> History:
        if self.fail_next:
            raise SignalError("injected: trace source unavailable")
        step = self.trace.step_min
        steps = self.minute(now) // step
        counts = self.trace.history.counts.iloc[:steps].copy()
        counts.index = self._moved(counts.index)
        counts.index.freq = self.trace.history.step
        # the trace's gaps up to now (one still open runs on past it), on the daemon's clock as the counts are
        gaps = [Gap(self._moved(g.start), self._moved(g.end), g.reason) for g in self.trace.history.gaps
                if self._moved(g.start) <= counts.index[-1]]
        return History(counts, self.trace.name, gaps)

    def _moved(self, t):
        """A time (or index) of the trace on the daemon's clock, shifted."""
        return on_cycle_clock(t) + self.shift


class PrometheusSignals:
    """Live load from Prometheus: the history at ``step`` and the last minute's rate and busy share.

    The busy share is a refinement of the load (the safety net's ``busy_share_trigger``): a query that
    fails or answers nothing counts as no busy answers, and a failing one is said once, not every cycle."""

    BUSY = 'sum(rate(peakpilot_requests_total{outcome="busy"}[{step}])) / sum(rate(peakpilot_requests_total[{step}]))'

    def __init__(self, url: str, query: str | None = None, step: str = "1m", history_days: float = 14,
                 timeout_s: float = 30.0, busy_query: str | None = None, service: str | None = None, auth=None):
        """``auth``: forecaster.prometheus_source.PrometheusAuth, for a Prometheus behind authentication."""
        from forecaster.prometheus_source import PrometheusSource

        self.service = service  # named in what is logged, where one daemon runs many
        self.source = PrometheusSource(url, query=query, step=step, timeout_s=timeout_s, auth=auth)
        self.step = self.source.step_text  # as PromQL writes it, for the busy share's window too
        self.busy_query = (busy_query or self.BUSY).replace("{step}", self.step)
        self.history_days = history_days
        self._counts: pd.Series | None = None  # the history's counts as read (unjudged: ``read``)
        self._history: History | None = None  # and judged
        self._busy_failure: str | None = None  # why the busy query failed last (said when it changes)

    @property
    def busy_failure(self) -> str | None:
        """Why the busy share's query failed at the last observation, or None where it answered."""
        return self._busy_failure

    def _read(self, start: pd.Timestamp, end: pd.Timestamp) -> pd.Series:
        try:
            return self.source.read(start, end)
        except HistoryError as exc:
            raise SignalError(str(exc)) from None

    def history(self, now: np.datetime64) -> History:
        """The history up to ``now``, read whole once and then extended by what is new (its last
        minutes read again: ``REREAD``)."""
        step = self.source.step
        end = pd.Timestamp(now, tz="UTC").floor(step)
        if self._counts is None or self._counts.index[-1] + step < end - pd.Timedelta(days=1):
            try:  # from where the data begins, if that is later than history_days ago
                self._counts = self.source.read_days(self.history_days, end=end)
            except HistoryError as exc:
                raise SignalError(str(exc)) from None
        elif self._counts.index[-1] + step < end:
            last = self._counts.index[-1] + step
            since = max(self._counts.index[0], last - recent(step))
            new = self._read(since, end)  # its newest steps again (REREAD), and what is new
            counts = pd.concat([self._counts[self._counts.index < since], new])
            counts = counts[counts.index >= end - pd.Timedelta(days=self.history_days)]
            counts.index.freq = step
            self._counts = counts
        else:
            return self._history
        # Judged whole, on the counts as read: zeros that came in a minute at a time are an outage only in
        # the light of the traffic around them (``mark_gaps``), as in a history read at once; judged a
        # minute at a time they stayed zeros, learned as a time of no demand.
        self._history = self.source.marked(self._counts)
        return self._history

    def observe(self, now: np.datetime64) -> Observation:
        """The last step's rate: read over the last 5 minutes, or two steps where a step is longer (the
        last observed one stands in for a missing latest)."""
        end = pd.Timestamp(now, tz="UTC").floor("1min")
        step = self.source.step
        last = self._read(end - recent(step), end).dropna()
        load = float(last.iloc[-1]) / step.total_seconds() if len(last) else None
        return Observation(np.datetime64(end.tz_localize(None), "m"), load, self._busy_share(end))

    def _busy_share(self, at: pd.Timestamp) -> float:
        """The busy share at ``at`` (the minute observed, not the wall clock's), 0 where there is none."""
        try:
            answer = self.source.client().custom_query(self.busy_query, params={"time": at.timestamp()})
            busy, failure = share_answered(answer)
        except Exception as exc:  # the load is what matters; this refines it
            busy, failure = 0.0, str(exc).splitlines()[0][:300] if str(exc) else type(exc).__name__
        if np.isfinite(busy) and busy > 1.0 + 1e-9:  # (read as a share, 5 for 5% would scale up as if all were busy)
            busy, failure = 0.0, (f"it answered {busy:g}, not a share from 0 to 1 (a percentage? divide it by 100; a "
                                  f"count? divide it by the requests)")
        if failure != self._busy_failure:
            who = f"{self.service}: " if self.service else ""
            if failure:
                log.warning("%sbusy share %s from %s failed: %s; counting no busy answers until it answers",
                            who, self.busy_query, self.source.url, failure)
            else:
                log.info("%sbusy share %s from %s answers again", who, self.busy_query, self.source.url)
            self._busy_failure = failure
        return min(1.0, max(0.0, busy)) if np.isfinite(busy) else 0.0
