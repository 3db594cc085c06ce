"""Surges the forecast missed: does this service's kind last long enough to chase?

A *surprise* is a minute whose load came in above the band the plan had for it (the planning quantile
of the forecast in use then). Nodes started when one begins are ready a lead time later, so chasing
it pays only if it is still there by then. Services differ here: an LLM service's bursts (a client's
batch job, a launch) hold for tens of minutes, while a web server's spikes and 1-minute noise are gone
in one step. Rather than a per-service setting to guess, the controller learns it: each surprise is
scored once its lead time has passed (did the load stay at least halfway up from the band to where
the surprise began?), and once enough have been scored, a service whose surprises persist often
enough gets its rises followed: the safety net plans for where a rise will be when new nodes are
ready, not where it is now (``project``).

Replaying the real traces with the default policy, 0.48-0.54 of the last 50 surprises had persisted at
the end of the ServeGen LLM weeks, 0.04-0.18 on the web traces (AWS ELB, NASA), and the gate never opened
on the web traces: hence ``PERSISTENT_SHARE`` between them. (README, "Performance", and
docs/performance-history.md for what it costs and saves.)
"""

from __future__ import annotations

from collections import deque
from dataclasses import dataclass, field

import numpy as np

MINUTE = np.timedelta64(1, "m")
RISE_WINDOW_MIN = 10  # a rise is the load now against the load this many minutes ago
PERSISTED_FRACTION = 0.5  # still at least this far up from the band to the surprise's start
PERSISTENT_SHARE = 1 / 3  # follow rises once this share of the scored surprises persisted
MIN_SCORED = 10  # ... of at least this many
KEEP_SCORED = 50  # the most recent ones count (a service's traffic changes)


@dataclass
class Surprises:
    """The record of missed surges (part of the controller's memory, so a restart keeps it)."""

    loads: deque = field(default_factory=lambda: deque(maxlen=RISE_WINDOW_MIN + 1))  # (minute, req/s)
    band: tuple | None = None  # (minute, band the plan has for it): the next minute to be observed
    open: list = field(default_factory=list)  # (minute, load, band) of surprises not yet scored
    scored: deque = field(default_factory=lambda: deque(maxlen=KEEP_SCORED))  # persisted or not
    in_surprise: bool = False

    def observe(self, now: np.datetime64, load_rps: float | None, band_now: float | None, lead_min: int) -> bool:
        """Record this cycle: the load observed (that of the minute before ``now``) and the band the plan
        has for ``now``. Returns whether the observed minute is a surprise."""
        observed_at = now - MINUTE
        band = self.band[1] if self.band is not None and self.band[0] == observed_at else None
        self.band = None if band_now is None else (now, band_now)
        if load_rps is None:
            return False
        self.loads.append((observed_at, load_rps))
        still = []
        for start, load, start_band in self.open:
            if (observed_at - start) / MINUTE >= lead_min:
                self.scored.append(bool(load_rps >= start_band + PERSISTED_FRACTION * (load - start_band)))
            else:
                still.append((start, load, start_band))
        self.open = still
        surprise = band is not None and load_rps > band * (1 + 1e-6)
        if surprise and not self.in_surprise:
            self.open.append((observed_at, load_rps, band))
        self.in_surprise = surprise
        return surprise

    @property
    def persistent_share(self) -> float | None:
        return float(np.mean(self.scored)) if len(self.scored) >= MIN_SCORED else None

    def follow(self) -> bool:
        share = self.persistent_share
        return share is not None and share >= PERSISTENT_SHARE

    def rise(self) -> float:
        """req/s the load gained over the last ``RISE_WINDOW_MIN`` minutes (0 without that much record)."""
        if len(self.loads) < 2:
            return 0.0
        (then, first), (now, last) = self.loads[0], self.loads[-1]
        if (now - then) / MINUTE < RISE_WINDOW_MIN:
            return 0.0
        return max(0.0, last - first)

    def project(self, load_rps: float, lead_min: int) -> float:
        """The load a rise reaches by the time nodes started now are ready, if it keeps its pace."""
        return load_rps + self.rise() * lead_min / RISE_WINDOW_MIN

    def to_json(self) -> dict:
        band = None if self.band is None else [str(self.band[0]), self.band[1]]
        return {"loads": [[str(t), v] for t, v in self.loads], "band": band,
                "open": [[str(t), v, b] for t, v, b in self.open], "scored": list(self.scored),
                "in_surprise": self.in_surprise}

    @classmethod
    def from_json(cls, data: dict) -> Surprises:
        out = cls()
        out.loads.extend((np.datetime64(t, "m"), v) for t, v in data.get("loads", []))
        if data.get("band"):
            out.band = (np.datetime64(data["band"][0], "m"), data["band"][1])
        out.open = [(np.datetime64(t, "m"), v, b) for t, v, b in data.get("open", [])]
        out.scored.extend(bool(x) for x in data.get("scored", []))
        out.in_surprise = bool(data.get("in_surprise", False))
        return out
