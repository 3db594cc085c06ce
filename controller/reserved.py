"""How many nodes to reserve: from the history's need and the prices.

Think of the fleet as layers: layer k is the k-th node, in use whenever at least k nodes are needed.
Reserving layer k costs the reserved price all the time; leaving it to the elastic classes costs,
only while it is in use, the blended price of spot (up to its share) and on-demand. So layer k is
worth reserving exactly when the share of time it is in use exceeds reserved / blended price. This
rule is the optimum of that cost model; no solver is needed.

"While it is in use" is counted in each class's billing blocks: with hourly billing a layer used ten
minutes of every hour is paid every hour, so it is in use all the time for this rule.
"""

from __future__ import annotations

import numpy as np

from controller.planner import nodes_needed
from controller.policy import Policy


def elastic_weights(policy: Policy) -> dict[str, float]:
    """Each elastic class's part of the hourly price of a node that is not reserved: spot up to its
    share (while it can be had), on-demand for the rest."""
    share = policy.spot.max_share * policy.spot.availability
    return {"spot": share * policy.price("spot"), "on_demand": (1 - share) * policy.price("on_demand")}



def billed_share(used: np.ndarray, block_min: int) -> float:
    """Share of the time a layer is paid for when it is used at the minutes ``used`` (bool, per minute)
    and billed in blocks of ``block_min`` minutes: every block with a minute of use is paid whole."""
    if block_min <= 1:
        return float(used.mean())
    pad = (-len(used)) % block_min
    blocks = np.concatenate([used, np.zeros(pad, dtype=bool)]).reshape(-1, block_min).any(axis=1)
    return float(min(1.0, blocks.sum() * block_min / len(used)))


def recommend_reserved(load_rps: np.ndarray, policy: Policy, rps_per_node: float) -> dict:
    """Reserved count for a history of per-minute load (NaN gaps are left out)."""
    load = load_rps[~np.isnan(load_rps)]
    if load.size == 0:
        raise ValueError("no observed load to recommend from")
    need = nodes_needed(load, rps_per_node, policy.planning.headroom)
    weights = elastic_weights(policy)
    price = sum(weights.values())
    blocks = {c: getattr(policy.classes, c).billing_min for c in weights}
    breakeven = policy.price("reserved") / price
    layers = np.arange(1, int(need.max()) + 1)
    # Per layer: the elastic price actually paid for it, as a share of the elastic price all the time.
    in_use = np.array([sum(w * billed_share(need >= k, blocks[c]) for c, w in weights.items()) / price
                       for k in layers])
    count = int((in_use > breakeven).sum())
    hours = len(load) / 60.0
    def cost(r: int) -> float:
        elastic = sum(in_use[r:]) * hours * price
        return r * hours * policy.price("reserved") + elastic
    return {"reserved": count, "breakeven_share": round(float(breakeven), 4),
            "layer_use": [round(float(u), 4) for u in in_use[: count + 3]],
            "hours": round(hours, 1), "cost_usd": round(cost(count), 2), "cost_usd_without": round(cost(0), 2),
            "rps_per_node": rps_per_node}
