"""What-if: replay a trace under changed policy values next to the current policy."""

from __future__ import annotations

from pathlib import Path

import pandas as pd

from controller.policy import Policy, load_policy
from controller.replay import load_trace, replay
from controller.shipped import DEFAULT_POLICY


def available_traces(root: Path, summary: dict | None = None) -> dict[str, str]:
    """Traces a user can pick: the shown run's own (where it is a CSV file still there), the sample in data/
    and the shared real traces beside the checkout."""
    found = {}
    if (shown := shown_trace(summary or {})[0]) is not None:
        found[shown] = f"{Path(shown).name} (the shown run's)"
    for folder in (root / "data", root.parent / "shared" / "traces"):
        for path in sorted(folder.glob("*.csv")):
            found.setdefault(str(path.resolve()), f"{path.name} ({folder.name})")
    return found


def shown_trace(summary: dict) -> tuple[str | None, dict]:
    """The CSV file the shown replay read (its absolute path, where it is still there) and the options that read
    it (columns under other names, the zone of its times); ``(None, {})`` for a daemon's run, or a replay of
    Prometheus. A summary of before the file was recorded names the trace as it was given."""
    file = summary.get("trace_file") or ({"path": summary["trace"], "options": {}} if summary.get("trace") else None)
    if not file or not Path(file["path"]).is_file():
        return None, {}
    return str(Path(file["path"]).resolve()), dict(file.get("options") or {})


def current_policy(policy_path: str) -> Policy:
    """The policy the shown run used where its file is still there, else the default: the what-if's baseline
    (and its form's starting values, so that an unchanged form replays the same policy twice)."""
    return load_policy(policy_path if policy_path and Path(policy_path).exists() else DEFAULT_POLICY)


def like_run(summary: dict, trace_path: str) -> dict:
    """What the shown replay fixed beyond its policy, where the what-if replays the same trace: its window
    (``train_days``), its capacity per node (which ``--peak-nodes`` may have set) and the options that read its
    file (``columns``), so that the current policy's column is that run again. On another trace, or for a
    daemon's run: nothing (the replay's own window, the policy's capacity)."""
    shown, options = shown_trace(summary)
    if shown is None or shown != str(Path(trace_path).resolve()) or summary.get("train_days") is None:
        return {}
    like = {"train_days": summary["train_days"]}
    if options:
        like["columns"] = options
    if summary.get("rps_per_node"):  # (every replay's summary holds it; a hand-made one may not)
        like["rps_per_node"] = summary["rps_per_node"]
    return like


def run_whatif(trace_path: str, policy_path: str, changes: dict, on_progress=None,
               feeds: dict | None = None, like: dict | None = None) -> pd.DataFrame:
    """The current policy and the changed one, side by side (predictive and the best reactive peer), over
    the window and at the capacity per node ``like`` names (``like_run``).

    The form's settings do not change the forecasts, so both replays share one set (``feeds``, which the
    page keeps for the next what-if on the same trace): the forecaster trains once, not twice each time."""
    like = like or {}
    current = current_policy(policy_path)
    if like.get("rps_per_node"):
        current = current.with_changes(capacity={"rps_per_node": like["rps_per_node"], "peak_nodes": None})
    changed = current.with_changes(**changes)
    trace = load_trace(trace_path, **like.get("columns", {}))
    feeds = {} if feeds is None else feeds
    rows = {}
    for label, policy, lo, hi in (("current policy", current, 0.0, 0.5), ("what-if", changed, 0.5, 1.0)):
        doc, _ = replay(trace, policy, strategies=("predictive", "reactive_spot"), sweep=False, progress=False,
                        feeds=feeds, train_days=like.get("train_days"),
                        on_progress=None if on_progress is None else
                        (lambda share, what, lo=lo, hi=hi, label=label: on_progress(lo + (hi - lo) * share,
                                                                                   f"{label}: {what}")))
        p = doc["strategies"]["predictive"]
        rows[label] = {"cost_usd": p["cost_usd"], "sla_compliance": p["sla_compliance"], "busy_share": p["busy_share"],
                       "node_hours": p["node_hours"], "cold_starts": p["cold_starts"],
                       "reactive_spot_cost_usd": doc["strategies"]["reactive_spot"]["cost_usd"]}
    return pd.DataFrame(rows)
