"""How long the dashboard's what-if takes, with the forecasts shared and without; prints one JSON object.

The what-if replays a trace under the run's policy and under the changed one. None of its settings
changes the forecasts, so both replays share one set (``replay(..., feeds=)``), and a second what-if on
the same trace reuses it. Timed side by side on the sample trace (its last week replayed after a week of
training): the two replays each training the forecaster (as before), the what-if training once, and a
second what-if on the kept forecasts.

Usage: python bench/whatif.py
"""

from __future__ import annotations

import json
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))


def main() -> None:
    from controller.replay import load_trace, replay
    from controller.shipped import DEFAULT_POLICY, SAMPLE_TRACE
    from dashboard.whatif import current_policy, run_whatif

    changes = {"planning": {"headroom": 0.0}}
    trace, policy = load_trace(SAMPLE_TRACE), current_policy(str(DEFAULT_POLICY))
    started = time.perf_counter()
    for pol in (policy, policy.with_changes(**changes)):  # each replay trains its own forecaster
        replay(trace, pol, strategies=("predictive", "reactive_spot"), sweep=False, progress=False)
    apart = time.perf_counter() - started
    feeds: dict = {}
    started = time.perf_counter()
    first = run_whatif(str(SAMPLE_TRACE), str(DEFAULT_POLICY), changes, feeds=feeds)
    shared = time.perf_counter() - started
    started = time.perf_counter()
    again = run_whatif(str(SAMPLE_TRACE), str(DEFAULT_POLICY), changes, feeds=feeds)
    kept = time.perf_counter() - started
    print(json.dumps({
        "trace": Path(SAMPLE_TRACE).name,
        "two_replays_each_training_s": round(apart, 1),
        "whatif_training_once_s": round(shared, 1),
        "second_whatif_on_kept_forecasts_s": round(kept, 1),
        "speedup_first": round(apart / shared, 2),
        "speedup_second": round(apart / kept, 2),
        "same_result": bool(first.equals(again)),
    }))


if __name__ == "__main__":
    main()
