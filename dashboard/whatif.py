"""What-if: replay a trace under changed policy values next to the current policy."""

from __future__ import annotations

from pathlib import Path

import pandas as pd

from controller.policy import Policy, load_policy
from controller.replay import load_trace, replay
from controller.shipped import DEFAULT_POLICY


def available_traces(root: Path) -> dict[str, str]:
    """Traces a user can pick: the sample in data/ and the shared real traces beside the checkout."""
    found = {}
    for folder in (root / "data", root.parent / "shared" / "traces"):
        for path in sorted(folder.glob("*.csv")):
            found[str(path)] = f"{path.name} ({folder.name})"
    return found


def current_policy(policy_path: str) -> Policy:
    """The policy the shown run used where its file is still there, else the default: the what-if's baseline
    (and its form's starting values, so that an unchanged form replays the same policy twice)."""
    return load_policy(policy_path if policy_path and Path(policy_path).exists() else DEFAULT_POLICY)


def like_run(summary: dict, trace_path: str) -> dict:
    """What the shown replay fixed beyond its policy, where the what-if replays the same trace: its window
    (``train_days``) and its capacity per node (which ``--peak-nodes`` may have set), so that the current
    policy's column is that run again. On another trace, or for a daemon's run: nothing (the replay's own
    window, the policy's capacity)."""
    if summary.get("trace") != trace_path or summary.get("train_days") is None:
        return {}
    like = {"train_days": summary["train_days"]}
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
    trace = load_trace(trace_path)
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
