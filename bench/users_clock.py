"""What reading the calendar on the users' clock (``signals.timezone``) buys; prints one JSON object.

A synthetic load that follows New York's day (weekday peaks at 10:00 and 15:00 local time, Poisson
noise) across each daylight-saving change of 2026: trained up to the day after the change, each model
forecasts the following week 60 minutes ahead from every 30 minutes, once on the history in UTC and
once on New York's clock (``History.in_timezone``). Reported: the WAPE of q50 on each clock. No real
trace here crosses a change with its users' zone known, so the load is synthetic; the real traces'
scores do not move (their clocks have no daylight saving: ``bench/forecast_targets.py``).

Usage: python bench/users_clock.py [--models seasonal_naive,lightgbm,torch,ensemble,prophet]
"""

from __future__ import annotations

import argparse
import json
import logging
import sys
import time
from pathlib import Path

import numpy as np
import pandas as pd

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from forecaster.history import History  # noqa: E402
from forecaster.models import make_model  # noqa: E402

ZONE = "America/New_York"
CHANGES = {"march": ("2026-02-01", "2026-03-17", "2026-03-09T05:00"),  # first day, end, the cut (UTC)
           "november": ("2026-09-27", "2026-11-10", "2026-11-02T05:00")}


def users_day(first: str, until: str, zone: str = ZONE, seed: int = 0) -> History:
    """Weekday peaks at 10:00 and 15:00 on ``zone``'s clock, half of them at weekends, over a floor; at
    5-minute steps, times in UTC (naive)."""
    rng = np.random.default_rng(seed)
    utc = pd.date_range(first, until, freq="5min", inclusive="left")
    local = utc.tz_localize("UTC").tz_convert(zone)
    hour = (local.hour + local.minute / 60).to_numpy()
    weekday = np.where(local.dayofweek.to_numpy() < 5, 1.0, 0.5)
    rate = 200 + weekday * (2000 * np.exp(-0.5 * ((hour - 10) / 1.5) ** 2)
                            + 1200 * np.exp(-0.5 * ((hour - 15) / 2) ** 2))
    return History(pd.Series(rng.poisson(rate * 5).astype(float), index=utc), f"users_day({zone})")


def week_after_wape(history: History, cut: int, name: str, **options) -> float:
    """WAPE of q50, 60 minutes ahead from every 30 minutes of the week from ``cut``, trained before it."""
    model = make_model(name, **options).fit(History(history.counts.iloc[:cut].copy(), history.source))
    counts = history.counts.to_numpy()
    at = np.arange(cut, min(len(history) - 12, cut + 7 * 288), 6)
    values = model.predict_many(history, list(history.counts.index[at]), 60)[..., 0]
    actual = np.stack([counts[p:p + 12] for p in at])
    return float(np.abs(values - actual).sum() / actual.sum())


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--models", default="seasonal_naive,lightgbm,torch,ensemble,prophet")
    args = parser.parse_args()
    logging.getLogger("cmdstanpy").setLevel(logging.WARNING)
    logging.getLogger("prophet").setLevel(logging.WARNING)
    started = time.perf_counter()
    result: dict = {"zone": ZONE, "horizon_min": 60, "metric": "wape_q50", "changes": {}}
    for change, (first, until, cut_at) in CHANGES.items():
        history = users_day(first, until)
        cut = int(history.counts.index.get_loc(pd.Timestamp(cut_at).tz_localize(None)))
        rows = {}
        for name in args.models.split(","):
            utc, local = (round(week_after_wape(h, cut, name), 4) for h in (history, history.in_timezone(ZONE)))
            rows[name] = {"utc": utc, "users_clock": local}
            print(f"{change} {name}: {utc:.4f} on UTC, {local:.4f} on {ZONE}", file=sys.stderr, flush=True)
        result["changes"][change] = {"trained_until": cut_at + "Z", "models": rows}
    result["seconds"] = round(time.perf_counter() - started, 1)
    print(json.dumps(result, indent=1))


if __name__ == "__main__":
    main()
