"""Band calibration on held-out windows, shared by the learned models.

With spread w = q - q50 and standardised error r = (y - q50) / w, the pinball loss of q50 + c * w is
sum(w * pinball_q(r - c)), minimised at the w-weighted q-quantile of r. Scaling each band by that
factor keeps its coverage honest and its loss as low as one factor can make it.
"""

from __future__ import annotations

import numpy as np

LIMITS = (0.3, 5.0)


def weighted_quantile(values: np.ndarray, weights: np.ndarray, q: float) -> float:
    """The value below which a share ``q`` of the total weight lies."""
    order = np.argsort(values)
    cum = np.cumsum(weights[order])
    return float(values[order][min(np.searchsorted(cum, q * cum[-1]), len(values) - 1)])


def spread_factors(pred: np.ndarray, actual: np.ndarray, mask: np.ndarray,
                   quantiles: tuple[float, ...]) -> list[float]:
    """Pinball-optimal scale factors for the q90 and q99 spreads of ``pred`` (..., 3) against ``actual``."""
    factors = []
    for k, q in ((1, quantiles[1]), (2, quantiles[2])):
        width = np.maximum(pred[..., k] - pred[..., 0], 1e-6)[mask]
        ratio = (actual - pred[..., 0])[mask] / width
        factors.append(float(np.clip(weighted_quantile(ratio, width, q), *LIMITS)) if ratio.size >= 20 else 1.0)
    return factors


def apply_spreads(pred: np.ndarray, factors: list[float]) -> np.ndarray:
    """q50 unchanged, the q90 and q99 spreads around it scaled by ``factors``."""
    q50 = pred[..., 0]
    return np.stack([q50, q50 + factors[0] * (pred[..., 1] - q50), q50 + factors[1] * (pred[..., 2] - q50)], axis=-1)


def holdout_size(n_windows: int, day: int, horizon: int, fraction: float = 0.15) -> int:
    """How many of the most recent windows to hold out for calibration: a share, at most a day, at
    least ten horizons (or a fifth of what there is)."""
    n = int(min(n_windows * fraction, day))
    return max(n, min(n_windows // 5, horizon * 10))
