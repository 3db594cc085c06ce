"""Forecasting models behind one interface (:class:`~forecaster.models.base.Forecaster`).

``PRODUCTION_ORDER`` is the fallback chain: when a model cannot run (too little history, a fit
error) the next one that can is used, and the forecast's status says so.
"""

from __future__ import annotations

import logging

from forecaster.errors import NotEnoughHistory
from forecaster.history import History
from forecaster.models.base import Forecast, Forecaster, load_model
from forecaster.models.prophet_model import ProphetForecaster
from forecaster.models.seasonal_naive import SeasonalNaive
from forecaster.models.statsforecast_peer import StatsforecastAutoETS
from forecaster.models.torch_model import TorchQuantileForecaster

log = logging.getLogger(__name__)

MODELS: dict[str, type[Forecaster]] = {
    m.name: m for m in (TorchQuantileForecaster, ProphetForecaster, SeasonalNaive, StatsforecastAutoETS)
}
PRODUCTION_ORDER = ("torch", "prophet", "seasonal_naive")
PEERS = ("statsforecast_autoets",)
DEFAULT_MODEL = "torch"


def make_model(name: str, **kwargs) -> Forecaster:
    try:
        return MODELS[name](**kwargs)
    except KeyError:
        raise ValueError(f"unknown model {name!r}; choose one of {', '.join(MODELS)}") from None


def fit_with_fallback(name: str, history: History, seed: int = 0,
                      options: dict[str, dict] | None = None) -> tuple[Forecaster, str]:
    """Fit ``name``; if it cannot run, fit the next model of the chain that can, and say why.

    ``options`` gives constructor arguments per model name (e.g. the torch model's horizon).

    Returns the fitted model and a status: ``ok``, or ``fallback: <why>; using <model>``.
    """
    chain = [name] + [m for m in PRODUCTION_ORDER if m != name and name not in PEERS]
    if name in PEERS:
        chain += list(PRODUCTION_ORDER)
    reasons: list[str] = []
    for candidate in chain:
        model = make_model(candidate, seed=seed, **(options or {}).get(candidate, {}))
        try:
            model.fit(history)
        except NotEnoughHistory as exc:
            reasons.append(str(exc))
            continue
        except Exception as exc:  # a model that breaks must not take the forecast down with it
            log.warning("model %s failed to fit: %s", candidate, exc)
            reasons.append(f"{candidate} failed to fit ({type(exc).__name__}: {exc})")
            continue
        status = "ok" if not reasons else f"fallback: {'; '.join(reasons)}; using {candidate}"
        return model, status
    raise NotEnoughHistory("; ".join(reasons))


__all__ = ["MODELS", "PRODUCTION_ORDER", "PEERS", "DEFAULT_MODEL", "Forecast", "Forecaster", "load_model",
           "make_model", "fit_with_fallback"]
