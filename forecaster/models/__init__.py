"""Forecasting models behind one interface (:class:`~forecaster.models.base.Forecaster`).

``FALLBACKS`` is the fallback chain: when a model cannot run (too little history, a fit error) the
next one of the chain that can is used, and the forecast's status says so. ``PRODUCTION_ORDER`` is
the default model and that chain.
"""

from __future__ import annotations

import importlib
import logging
from collections.abc import Iterator, Mapping

from forecaster.errors import NotEnoughHistory
from forecaster.history import History
from forecaster.models.base import Forecast, Forecaster, load_model

log = logging.getLogger(__name__)


class ModelRegistry(Mapping[str, type[Forecaster]]):
    """Model name -> class, each module imported when its class is first asked for: torch, LightGBM and
    scipy take seconds to import, and a service on seasonal_naive, or a command that stops at a bad
    argument, needs none of them."""

    def __init__(self, where: dict[str, str]):
        self._where = where  # name -> "module:Class"
        self._loaded: dict[str, type[Forecaster]] = {}

    def __getitem__(self, name: str) -> type[Forecaster]:
        if name not in self._loaded:
            module, cls = self._where[name].split(":")
            model = getattr(importlib.import_module(module), cls)
            assert model.name == name, (model.name, name)
            self._loaded[name] = model
        return self._loaded[name]

    def __contains__(self, name: object) -> bool:  # (Mapping's own would import the model to answer)
        return name in self._where

    def __iter__(self) -> Iterator[str]:
        return iter(self._where)

    def __len__(self) -> int:
        return len(self._where)


MODELS = ModelRegistry({
    "ensemble": "forecaster.models.ensemble:EnsembleForecaster",
    "torch": "forecaster.models.torch_model:TorchQuantileForecaster",
    "lightgbm": "forecaster.models.lightgbm_model:LightGBMQuantileForecaster",
    "prophet": "forecaster.models.prophet_model:ProphetForecaster",
    "seasonal_naive": "forecaster.models.seasonal_naive:SeasonalNaive",
    "recent_level": "forecaster.models.recent_level:RecentLevel",
    "statsforecast_autoets": "forecaster.models.statsforecast_peer:StatsforecastAutoETS",
})
FALLBACKS = ("torch", "prophet", "seasonal_naive", "recent_level")  # each needs less than the one before it
PRODUCTION_ORDER = ("ensemble", *FALLBACKS)
PEERS = ("statsforecast_autoets",)
DEFAULT_MODEL = "ensemble"
HORIZON_MODELS = ("ensemble", "torch", "lightgbm", "recent_level")  # trained for a fixed longest horizon


def make_model(name: str, **kwargs) -> Forecaster:
    # (the name is checked first: a KeyError from a model's own import or constructor is not "unknown model")
    if name not in MODELS:
        raise ValueError(f"unknown model {name!r}; choose one of {', '.join(MODELS)}")
    return MODELS[name](**kwargs)


def horizon_options(horizon_min: float) -> dict[str, dict]:
    """Constructor options that make every fixed-horizon model forecast ``horizon_min`` ahead."""
    return {name: {"max_horizon_min": horizon_min} for name in HORIZON_MODELS}


def fit_with_fallback(name: str, history: History, seed: int = 0,
                      options: dict[str, dict] | None = None) -> tuple[Forecaster, str]:
    """Fit ``name``; if it cannot run, fit the next model of the chain that can, and say why.

    ``options`` gives constructor arguments per model name (e.g. the torch model's horizon).

    Returns the fitted model and a status: ``ok``, or ``fallback: <why>; using <model>``.
    """
    chain = [name] + [m for m in FALLBACKS if m != name]
    reasons: list[str] = []
    for candidate in chain:
        try:  # (a model's module is imported here, when first asked for: a broken install falls back too)
            model = make_model(candidate, seed=seed, **(options or {}).get(candidate, {}))
        except ImportError as exc:
            log.warning("model %s cannot be imported: %s", candidate, exc)
            reasons.append(f"{candidate} cannot be imported ({type(exc).__name__}: {exc})")
            continue
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


__all__ = ["MODELS", "FALLBACKS", "PRODUCTION_ORDER", "PEERS", "DEFAULT_MODEL", "Forecast", "Forecaster", "load_model",
           "make_model", "fit_with_fallback", "horizon_options"]
