"""A regular per-step series of request counts, with the gaps in it marked.

Every source (CSV, request log, Prometheus) produces a :class:`History`. Counts are the number of
requests that arrived in the interval *starting* at each timestamp. Steps are whatever the source has
(1 s, 1 min, 5 min, 10 min); horizons elsewhere are given in minutes and converted with
:meth:`History.steps_for`.

Gaps. Real traces write a collection outage or a server shutdown as zeros. A forecaster that learns
those zeros as "a night of no demand" under-forecasts the next night, and a controller that trusts
them scales down right before the traffic comes back. So a run of zero intervals is marked as a
*gap* (missing data) when it lasts at least ``GAP_MIN_DURATION`` (5 minutes) and the traffic around
it (the mean of up to 6 hours before and after the run) would have sent at least
``GAP_MIN_EXPECTED`` (20) requests in it: even for Poisson arrivals the chance of seeing none is
then below e^-20. The duration floor keeps the natural lulls of bursty traffic (silent seconds in a
per-second trace, a quiet minute) as data; a quiet night at a few requests a minute never trips the
rule; a 10-minute window that normally carries a million requests does. Intervals a source could not read at all (Prometheus
returned no sample) are gaps too.

A partial outage (a few clients or collectors still logging) writes near-zeros instead, and split by
them the zero rule marks only pieces of it, leaving "demand" of 0.1% of the usual level between. So a
run of at least ``GAP_MIN_DURATION`` under ``NEAR_ZERO_SHARE`` (1%) of the level around it is a gap as
a whole when the traffic fell into it or came back from it within one step (``OUTAGE_EDGE_SHARE``):
demand does not drop or return 99% in an interval, while a quiet night ramps down and stays data.

Gaps are stored as NaN. :meth:`History.filled` replaces each missing value, for model inputs only,
with the value one day earlier, itself a fill if that was missing too (so a gap that recurs at the
same hour every day reads yesterday's fill, not last week's level); within the first day of a series
the last observed value stands in. A fill never uses data from after the gap. Metrics and training
losses skip gaps.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np
import pandas as pd

from forecaster.errors import HistoryError

GAP_MIN_EXPECTED = 20.0
"""Requests the surrounding traffic would have sent in a zero run for it to count as a gap."""

GAP_MIN_DURATION = pd.Timedelta(minutes=5)
"""Shortest zero run that can be a gap."""

LEVEL_WINDOW = pd.Timedelta(hours=6)
"""How far before and after a zero or near-zero run "the usual level" is measured."""

NEAR_ZERO_SHARE = 0.01
"""Intervals under this share of the usual level are an outage too, like zeros (a partial one: a few
requests still logged while the service or its collection was down) ..."""

OUTAGE_EDGE_SHARE = 0.1
"""... where the traffic fell into them, or came back from them, within one step: the interval just
before or just after carries at least this share of the usual level (a quiet night ramps down)."""


RUNNING_TOTAL_SPAN = pd.Timedelta(days=1)
"""A series that only grows for this long (and 60 steps or more) is a counter's running total, not load:
real traffic falls at least every night, and a counter summed without ``rate()`` never does. (A shorter
one may be a morning's ramp, or a test's.)"""

RUNNING_TOTAL_STEP_MAX = pd.Timedelta(hours=6)
"""... at a step that shows a night: counted by the day, a growing service may grow every day for months."""


def running_total_problem(counts: np.ndarray, step: pd.Timedelta) -> str | None:
    """Why the series reads as a running total (a counter's) rather than requests per step, or None: 99% of
    its steps (gaps left out) no lower than the one before, at least half of them higher, over a day."""
    values = np.asarray(counts, float)
    values = values[~np.isnan(values)]
    if len(values) < 60 or len(counts) * step < RUNNING_TOTAL_SPAN or step > RUNNING_TOTAL_STEP_MAX:
        return None
    diffs = np.diff(values)
    rising, growing = float((diffs >= 0).mean()), float((diffs > 0).mean())
    if rising < 0.99 or growing < 0.5:
        return None
    return (f"it only grows ({rising:.0%} of its {len(values)} steps are no lower than the one before, from "
            f"{values[0]:.4g} to {values[-1]:.4g}), as a counter's running total does")


STRAY_GAP_MIN = pd.Timedelta(days=1)
"""A stretch of a file's rows set apart from the rest by a gap at least this long, and longer than all
the rest spans, is no part of the history (a row of Unix time 0, a year mistyped): read, the series would
be years of gap with the data at one end (an array the size of that span, and a forecast of the fill)."""


def stray_stretch(times: np.ndarray) -> tuple[int, str] | None:
    """Where the longest gap between sorted times ``times`` (int64 ns) sets a stretch apart as
    ``STRAY_GAP_MIN`` says: ``(i, text)``, the gap after ``times[i]`` and what it sets apart; else None."""
    if len(times) < 2:
        return None
    diffs = np.diff(times)
    i = int(np.argmax(diffs))
    gap, before, after = int(diffs[i]), int(times[i] - times[0]), int(times[-1] - times[i + 1])
    if gap < STRAY_GAP_MIN.value or gap <= before + after:
        return None
    first, last = i + 1, len(times) - i - 1
    side, rows, span, where, others = (("first", first, before, "before", last) if first <= last else
                                       ("last", last, after, "after", first))
    apart = (f"the {side} row stands" if rows == 1 else f"the {side} {rows:,} rows, over {_span(span)}, stand") + \
        f" {_span(gap)} {where} the other {others:,}"
    return i, (f"{apart}: a stray row (Unix time 0, a mistyped year), or two stretches of history; peakpilot "
               f"reads one stretch, so cut the file to it")


def _span(ns: int) -> str:
    days = ns / pd.Timedelta(days=1).value
    return f"{days / 365.25:.1f} years" if days >= 365.25 else f"{days:.1f} days" if days >= 1 else \
        f"{ns / pd.Timedelta(hours=1).value:.1f} hours"


def prometheus_duration(step: pd.Timedelta) -> str:
    """A step as PromQL writes durations (and as ``--step`` takes them): 30s, 5m, 1h, 90s."""
    seconds = int(step.total_seconds())
    for unit, size in (("h", 3600), ("m", 60)):
        if seconds % size == 0:
            return f"{seconds // size}{unit}"
    return f"{seconds}s"


@dataclass(frozen=True)
class Gap:
    start: pd.Timestamp
    end: pd.Timestamp  # exclusive: the first observed interval after the gap
    reason: str

    def as_dict(self) -> dict:
        return {"start": self.start.isoformat(), "end": self.end.isoformat(), "reason": self.reason}


@dataclass
class History:
    """Request counts per step; NaN where the data is missing (a gap)."""

    counts: pd.Series
    source: str = ""
    gaps: list[Gap] = field(default_factory=list)

    def __post_init__(self) -> None:
        if not isinstance(self.counts.index, pd.DatetimeIndex):
            raise TypeError("History.counts needs a DatetimeIndex")
        if self.counts.index.freq is None:
            if len(self.counts) < 2:
                raise HistoryError(self.source or "history", "needs at least 2 intervals to know its step")
            self.counts = self.counts.asfreq(pd.infer_freq(self.counts.index) or self.counts.index[1] - self.counts.index[0])
        self.counts = self.counts.astype(float)

    # -- shape -----------------------------------------------------------------------------------
    @property
    def step(self) -> pd.Timedelta:
        return pd.Timedelta(self.counts.index.freq)

    @property
    def step_min(self) -> float:
        return self.step / pd.Timedelta(minutes=1)

    @property
    def start(self) -> pd.Timestamp:
        return self.counts.index[0]

    @property
    def end(self) -> pd.Timestamp:
        """The timestamp right after the last interval: where a forecast from this history starts."""
        return self.counts.index[-1] + self.step

    @property
    def span(self) -> pd.Timedelta:
        return self.end - self.start

    def __len__(self) -> int:
        return len(self.counts)

    def steps_for(self, minutes: float) -> int:
        """Number of steps that cover ``minutes`` (at least one)."""
        return max(1, int(np.ceil(minutes / self.step_min - 1e-9)))

    def steps_per(self, period: pd.Timedelta) -> int:
        return int(round(period / self.step))

    @property
    def observed(self) -> pd.Series:
        return self.counts.notna()

    def until(self, t: pd.Timestamp) -> History:
        """The history strictly before ``t`` (what a forecaster at time t may know)."""
        counts = self.counts[self.counts.index < t]
        return History(counts.copy(), self.source, [g for g in self.gaps if g.start < t])

    def tail(self, period: pd.Timedelta) -> History:
        counts = self.counts[self.counts.index >= self.end - period]
        return History(counts.copy(), self.source, [g for g in self.gaps if g.end > counts.index[0]])

    def in_timezone(self, zone: str | None) -> History:
        """The same counts, their times read on ``zone``'s clock (an IANA name; None: as they are). The
        instants do not move; the hour of day and day of week the models learn do: a service whose users
        follow New York's day peaks at 9:00 there all year, at 13:00 or 14:00 UTC by the season. Times
        without a zone are UTC, as everywhere in peakpilot."""
        if zone is None:
            return self

        def moved(t):
            return (t.tz_localize("UTC") if t.tzinfo is None else t).tz_convert(zone)

        counts = self.counts.copy()
        counts.index = moved(counts.index)
        return History(counts, self.source, [Gap(moved(g.start), moved(g.end), g.reason) for g in self.gaps])

    def minute_rates(self) -> np.ndarray:
        """Requests per second in each minute (NaN in gaps), whatever the step: the grain costs and node
        counts are reckoned in (billing blocks are minutes)."""
        rate = self.counts / self.step.total_seconds()
        if self.step <= pd.Timedelta(minutes=1):
            return rate.resample("1min").mean().to_numpy()
        grid = pd.date_range(self.start, self.end, freq="1min", inclusive="left")
        return rate.reindex(grid, method="ffill").to_numpy()

    def filled(self) -> pd.Series:
        """Counts with gaps filled by the documented rule (for model inputs, never for scoring)."""
        return fill_gaps(self.counts)

    def resample(self, step: pd.Timedelta) -> History:
        """Sum into a coarser step; an output interval is missing if any of its inputs is."""
        if step == self.step:
            return self
        if step < self.step or (step / self.step) % 1:
            raise ValueError(f"can only aggregate to a multiple of the step {self.step}, not {step}")
        counts = self.counts.resample(step, origin="start_day").sum(min_count=int(step / self.step))
        return History(counts, self.source, self.gaps)


def wall_clock_shift_at(stamps: pd.DatetimeIndex, period: pd.Timedelta, step: pd.Timedelta) -> np.ndarray:
    """Steps to add to each stamp's position before going ``period``'s steps back, to land on the same
    wall-clock time ``period`` earlier: 0 on a clock without daylight saving (UTC, a fixed offset); across
    a change an hour's steps, so that "yesterday at 9:00" stays 9:00 on the users' clock (``in_timezone``)."""
    if stamps.tz is None or not len(stamps):
        return np.zeros(len(stamps), dtype=np.int64)
    earlier = (stamps.tz_localize(None) - period).tz_localize(stamps.tz, ambiguous="NaT", nonexistent="NaT")
    shift = int(round(period / step)) - (stamps - earlier) / step
    return np.where(np.isnan(shift), 0, np.round(shift)).astype(np.int64)


def fill_gaps(counts: pd.Series) -> pd.Series:
    """Fill NaN with the value a day earlier (on the history's clock), filled first if it was missing
    (module docstring)."""
    if not counts.isna().any():
        return counts
    values = counts.to_numpy(dtype=float, copy=True)
    step = pd.Timedelta(counts.index.freq)
    day = int(round(pd.Timedelta(days=1) / step))
    missing = np.isnan(values)
    shift = np.zeros(len(values), dtype=np.int64)
    at = np.flatnonzero(missing)
    shift[at] = wall_clock_shift_at(counts.index[at], pd.Timedelta(days=1), step)
    # Chronologically and a day at a time (an hour less across a change, where a day back is 23 hours),
    # so every reference is observed or already filled (and ``values[start - 1]`` is never missing).
    span = day - max(0, int(shift.max()))
    for start, end in true_runs(missing):
        for t in range(start, end, span):
            stop = min(end, t + span)
            if t >= day:
                source = np.arange(t, stop) - day + shift[t:stop]
                ok = source >= 0
                values[t:stop][ok] = values[source[ok]]
                if start and not ok.all():
                    values[t:stop][~ok] = values[start - 1]
            elif start:  # the first day: no day before, the last observed value
                values[t:stop] = values[start - 1]
    out = pd.Series(values, index=counts.index, name=counts.name)
    if out.isna().any():  # a series that starts with a gap: its first observed value, the only exception
        out = out.bfill()
    return out.fillna(0.0)


def mark_gaps(counts: pd.Series, source: str) -> tuple[pd.Series, list[Gap]]:
    """Turn zero runs that the surrounding traffic makes implausible, and near-zero outages, into NaN gaps
    (see module doc)."""
    values = counts.to_numpy(dtype=float)
    step = pd.Timedelta(counts.index.freq)
    window = max(1, int(LEVEL_WINDOW / step))
    min_steps = max(1, int(np.ceil(GAP_MIN_DURATION / step)))
    seen = ~np.isnan(values)
    csum = np.concatenate([[0.0], np.cumsum(np.where(seen, values, 0.0))])
    cnt = np.concatenate([[0], np.cumsum(seen)])

    def level_around(a: int, b: int) -> float:
        """Mean count per step of up to LEVEL_WINDOW before and after [a, b), the run left out."""
        lo, hi = max(0, a - window), min(len(values), b + window)
        n = cnt[a] - cnt[lo] + cnt[hi] - cnt[b]
        return (csum[a] - csum[lo] + csum[hi] - csum[b]) / n if n else 0.0

    zero = values == 0
    # Near-zero candidates: counts far under the mean of the hours around them (that mean includes the
    # candidate; each run is then judged against the level around it, the run left out).
    idx = np.arange(len(values))
    lo, hi = np.maximum(0, idx - window), np.minimum(len(values), idx + window + 1)
    low = zero | (values < NEAR_ZERO_SHARE * (csum[hi] - csum[lo]) / np.maximum(cnt[hi] - cnt[lo], 1))
    out = values.copy()
    for a, b in true_runs(low):
        level = level_around(a, b)
        edges = [values[i] for i in (a - 1, b) if 0 <= i < len(values) and seen[i]]
        if b - a >= min_steps and level * (b - a) >= GAP_MIN_EXPECTED and values[a:b].max() < NEAR_ZERO_SHARE * level \
                and max(edges, default=0.0) >= OUTAGE_EDGE_SHARE * level:
            out[a:b] = np.nan  # an outage: the traffic fell into it, or came back from it, within one step
            continue
        for za, zb in true_runs(zero[a:b]):  # else its zero runs, by the zero rule
            za, zb = za + a, zb + a
            if zb - za >= min_steps and level_around(za, zb) * (zb - za) >= GAP_MIN_EXPECTED:
                out[za:zb] = np.nan
    marked = pd.Series(out, index=counts.index, name=counts.name)
    gaps: list[Gap] = []
    for a, b in _nan_runs(marked):
        reason = ("zeros where the usual level predicts traffic" if zero[a:b].all() else
                  "near zero where the usual level predicts traffic" if low[a:b].all() else "no data")
        gaps.append(Gap(counts.index[a], counts.index[b - 1] + step, reason))
    return marked, gaps


def true_runs(mask: np.ndarray) -> list[tuple[int, int]]:
    """[start, end) index pairs of the True runs in ``mask``."""
    if not mask.any():
        return []
    padded = np.concatenate([[False], mask, [False]]).astype(np.int8)
    edges = np.flatnonzero(np.diff(padded))
    return list(zip(edges[::2].tolist(), edges[1::2].tolist()))


def _nan_runs(counts: pd.Series) -> list[tuple[int, int]]:
    return true_runs(counts.isna().to_numpy())
