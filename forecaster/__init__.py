"""Learn the request history and forecast the load ahead, as quantiles.

Layers: history sources (CSV, Prometheus) -> :class:`~forecaster.history.History`
-> models (one small interface, see :mod:`forecaster.models`) -> backtest.
"""

from forecaster.errors import HistoryError
from forecaster.history import History

QUANTILES = (0.5, 0.9, 0.99)
QUANTILE_COLUMNS = ("q50", "q90", "q99")

__all__ = ["History", "HistoryError", "QUANTILES", "QUANTILE_COLUMNS"]
