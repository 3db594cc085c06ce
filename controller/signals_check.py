"""Before the daemon starts: can it read each service's load? ``peakpilot check-policy --connect`` reads a
policy's Prometheus as the daemon will (its query, step, credentials, TLS and proxy): the history the first
training gets, then the last minutes' load and busy share, and says what it found, or why it failed, in a
line an operator can act on. A query that answers nothing now is said too: the daemon would hold the fleet
where it cannot see the load, and a wrong metric name or label looks just like that.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass, field

import numpy as np
import pandas as pd

from controller.signals import PrometheusSignals, SignalError, recent


@dataclass
class SignalsCheck:
    """What reading one service's Prometheus found: ``ok`` where the history could be read."""

    prometheus: str
    ok: bool
    error: str | None = None
    sent: str = "no credentials"  # what the queries carried (headers, a token, a signature)
    history_days: float = 0.0  # the span of the history read, its first step to its last
    step: str | None = None
    last_step: str | None = None  # the last step the history holds (UTC)
    last_step_rps: float | None = None
    gaps: int = 0
    load_rps: float | None = None  # the last minutes' load, as a cycle reads it; None: nothing in them
    busy_share: float | None = None
    warnings: list[str] = field(default_factory=list)

    def as_dict(self) -> dict:
        return asdict(self)

    def summary(self) -> str:
        """One line: where it read, and what (or why not)."""
        if not self.ok:  # (an error that names the URL first, as the daemon logs it, is not given it twice)
            error = self.error or ""
            return f"Prometheus {error}" if error.startswith(self.prometheus) else \
                f"Prometheus {self.prometheus}: {error}"
        span = f"{self.history_days:.1f} days" if self.history_days >= 1 else f"{self.history_days * 24:.1f} h"
        last = "no load" if self.last_step_rps is None else f"{self.last_step_rps:,.2f} req/s"
        now = "nothing" if self.load_rps is None else f"{self.load_rps:,.2f} req/s, busy {self.busy_share:.2%}"
        gaps = "no gaps" if not self.gaps else "1 gap" if self.gaps == 1 else f"{self.gaps} gaps"
        return (f"Prometheus {self.prometheus} (sent {self.sent}): {span} of history at {self.step}, {gaps}, to "
                f"{self.last_step} ({last}); the last minutes: {now}")


def check_signals(signals: PrometheusSignals, now: np.datetime64) -> SignalsCheck:
    """Read ``signals`` as the daemon's first cycle at ``now`` would (its history, then the load observed)."""
    sent = signals.source.auth.sent(signals.source.endpoint)
    check = SignalsCheck(signals.source.url, ok=False, step=signals.step, sent=", ".join(sent) or "no credentials")
    try:
        history = signals.history(now)
    except SignalError as exc:
        check.error = str(exc)
        return check
    counts = history.counts
    check.ok, check.gaps = True, len(history.gaps)
    check.history_days = (counts.index[-1] - counts.index[0] + history.step) / pd.Timedelta(days=1)
    check.last_step = counts.index[-1].strftime("%Y-%m-%d %H:%M UTC")
    seen = counts.dropna()
    if len(seen) and seen.index[-1] == counts.index[-1]:
        check.last_step_rps = float(seen.iloc[-1]) / history.step.total_seconds()
    try:
        observed = signals.observe(now)
    except SignalError as exc:
        check.warnings.append(f"the last minutes' load could not be read: {exc}")
        return check
    check.load_rps = observed.load_rps
    check.busy_share = observed.busy_share if observed.load_rps is not None else None
    if observed.load_rps is None:
        window = recent(signals.source.step)
        check.warnings.append(f"the query answers nothing for the last {window.total_seconds() / 60:g} min: is the "
                              f"service scraped, and are the query's metric and labels its own? (the daemon "
                              f"holds the fleet while it cannot see the load)")
    elif signals.busy_failure:
        check.warnings.append(f"the busy share's query failed ({signals.busy_failure}): counted as no busy answers")
    if check.load_rps is not None and not math.isfinite(check.load_rps):
        check.warnings.append(f"the load read is {check.load_rps}: the query divides by zero somewhere")
    return check
