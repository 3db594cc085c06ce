"""Forecast scores: WAPE, pinball loss, coverage, and peak recall / false alarms.

Peaks. What hurts an inference service is load well above anything it saw recently: a reactive
autoscaler sized on the recent past is caught short. So for a forecast issued at origin ``o``:

* the **recent max** is the highest observed load in the 30 minutes before ``o``;
* a **surge** happens when the load at some step of the horizon exceeds ``SURGE_RATIO`` (1.2) x
  the recent max; the **peak step** is the step of the horizon with the highest load;
* the forecast **predicts a surge** when its q90 exceeds that threshold at some step;
* a surge is **caught** when the q90 forecast at the peak step exceeds the threshold: the plan
  made a horizon earlier at q90 had room above the recent max where the surge came;
* **peak recall** = caught surges / surges; **false-alarm rate** = origins where a surge was
  predicted but none came / origins without a surge.

Steps with missing data (gaps) are left out of every score.
"""

from __future__ import annotations

import numpy as np

SURGE_RATIO = 1.2
RECENT_MINUTES = 30


def pinball(actual: np.ndarray, pred: np.ndarray, q: float) -> float:
    diff = actual - pred
    mask = ~np.isnan(diff)
    loss = np.maximum(q * diff[mask], (q - 1) * diff[mask])
    return float(loss.mean()) if loss.size else float("nan")


def score(actual: np.ndarray, forecast: np.ndarray, recent_max: np.ndarray) -> dict:
    """Scores of forecasts ``(origins, steps, 3)`` against ``actual (origins, steps)``."""
    mask = ~np.isnan(actual)
    y = actual[mask]
    q50, q90, q99 = (forecast[..., k][mask] for k in range(3))
    mean = float(y.mean()) if y.size else float("nan")
    out = {
        "wape": float(np.abs(y - q50).sum() / max(np.abs(y).sum(), 1e-12)),
        "pinball_q90": pinball(y, q90, 0.9),
        "pinball_q99": pinball(y, q99, 0.99),
        "coverage_q90": float((y <= q90).mean()),
        "coverage_q99": float((y <= q99).mean()),
    }
    out["pinball_q90_norm"] = out["pinball_q90"] / mean if mean else float("nan")
    out["pinball_q99_norm"] = out["pinball_q99"] / mean if mean else float("nan")
    out.update(peak_scores(actual, forecast[..., 1], recent_max))
    return out


def peak_scores(actual: np.ndarray, q90: np.ndarray, recent_max: np.ndarray) -> dict:
    usable = ~np.isnan(recent_max) & (~np.isnan(actual)).any(axis=1) & (recent_max > 0)
    actual, q90, recent_max = actual[usable], q90[usable], recent_max[usable]
    threshold = SURGE_RATIO * recent_max
    filled = np.where(np.isnan(actual), -np.inf, actual)
    peak_step = filled.argmax(axis=1)
    rows = np.arange(len(actual))
    surge = filled[rows, peak_step] > threshold
    predicted = (q90 > threshold[:, None]).any(axis=1)
    caught = surge & (q90[rows, peak_step] > threshold)
    return {
        "surges": int(surge.sum()),
        "peak_recall": float(caught.sum() / surge.sum()) if surge.any() else None,
        "false_alarm_rate": float((predicted & ~surge).sum() / (~surge).sum()) if (~surge).any() else None,
    }
