"""Input features the learned models share: the smoothed level, the per-window scale, the calendar.

One place so the torch net and the gradient-boosted trees see the same level and the same clock,
and a fix to one reaches both.
"""

from __future__ import annotations

import numpy as np
import pandas as pd

from forecaster.history import History, wall_clock_shift_at
from forecaster.models.base import windows

DAY = pd.Timedelta(days=1)
WEEK = pd.Timedelta(days=7)
FIXED_ALPHAS = (0.05, 0.2, 0.5)
ALPHA_GRID = (0.02, 0.05, 0.1, 0.2, 0.3, 0.5, 0.7, 0.9)


def smoothed_level(values: np.ndarray, alpha: float) -> np.ndarray:
    """Simple exponential smoothing: level[t] = alpha * values[t] + (1 - alpha) * level[t-1]."""
    values = np.asarray(values, dtype=float)
    if not len(values):
        return values
    from scipy.signal import lfilter  # here, not at the top: scipy.signal takes a second to import

    return lfilter([alpha], [1.0, alpha - 1.0], values, zi=np.array([(1 - alpha) * values[0]]))[0]


def best_alpha(observed: np.ndarray, filled: np.ndarray) -> float:
    """The smoothing constant whose level best predicts the next observed step (mean absolute error)."""
    errors = [np.nanmean(np.abs(observed[1:] - smoothed_level(filled, a)[:-1])) for a in ALPHA_GRID]
    return float(ALPHA_GRID[int(np.nanargmin(errors))])


def levels_at(values: np.ndarray, positions: np.ndarray, alphas: tuple[float, ...]) -> np.ndarray:
    """The smoothed levels known at each origin (through the step before it): (origins, alphas)."""
    last = np.clip(positions - 1, 0, len(values) - 1)
    return np.stack([smoothed_level(values, a)[last] for a in alphas], axis=1)


def window_scale(context: np.ndarray, global_scale: float) -> np.ndarray:
    """Each window's own recent mean, floored at 2% of the series mean: what its values are divided by,
    so one model serves traces whose volumes differ by orders of magnitude."""
    mean = np.nanmean(context, axis=1)
    scale = np.maximum(np.nan_to_num(mean, nan=global_scale), 0.02 * global_scale)
    return np.maximum(scale, 1e-6)


def stamps_at(history: History, positions: np.ndarray) -> pd.DatetimeIndex:
    """The timestamp of each position, extrapolated on the history's grid past its end."""
    index = history.counts.index
    times = np.where(positions < len(index), index.asi8[np.minimum(positions, len(index) - 1)],
                     index.asi8[-1] + (positions - len(index) + 1) * history.step.value)
    stamps = pd.DatetimeIndex(times.astype("datetime64[ns]"))
    if index.tz is not None:
        stamps = stamps.tz_localize("UTC").tz_convert(index.tz)
    return stamps


def wall_clock_shift(history: History, positions: np.ndarray, period: pd.Timedelta) -> np.ndarray:
    """``wall_clock_shift_at`` for positions of the history, and past its end: so that "yesterday at 9:00"
    and "last week at 9:00" stay 9:00 on the users' clock."""
    if history.counts.index.tz is None or not len(positions):
        return np.zeros(len(positions), dtype=np.int64)
    return wall_clock_shift_at(stamps_at(history, positions), period, history.step)


def lagged(values: np.ndarray, positions: np.ndarray, lag: int) -> np.ndarray:
    """values[p - lag] for each p, NaN outside the series."""
    return windows(values, positions, -lag, 1)[:, 0]
