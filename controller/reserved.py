"""How many nodes to reserve: the count that makes the history's need cheapest under the policy's blend.

Reserved nodes are paid all the time; the rest of the need is split as the control cycle's ``blend``
splits it, with spot up to its share *of the whole fleet* (plus the preemption buffer), on-demand for the
remainder, and on-demand in place of spot while spot cannot be had. Because the spot share is a share of
the whole fleet, which layer a reserved node displaces depends on the count: the first reserved nodes
replace on-demand, and past the non-spot part of the fleet they start replacing spot, which is cheaper
than reserved. A per-layer "in use more than the price ratio" rule cannot see that (on a flat load of
five nodes with a 60% spot share it reserves all five; two is 22% cheaper), so every count from none to
the peak need is costed over the history and the cheapest is taken (ties: fewer).

The share is costed as one of the whole fleet even where the cycle puts all of the margin above the
expected load on spot (``spot.share_of: expected``, the default): the fleet the cycle runs (the band up to
the planning quantile, holds) stands further above the history's load than the headroom says. Costing
the margin as spot reserved one node fewer on five of six shared traces, and replays of those counts
came out mixed, a few percent either way (docs/performance-history.md, fourth November round).

Each class is paid in its own billing blocks: a block with a minute of use is paid whole, so with
hourly billing a node used ten minutes of every hour costs as much as one used all the time.
"""

from __future__ import annotations

import numpy as np

from controller.blend import split
from controller.planner import lead_time_min, nodes_needed
from controller.policy import Policy
from controller.state import Memory


def billed_node_hours(count: np.ndarray, block_min: int) -> float:
    """Node-hours paid for a per-minute node count billed in blocks of ``block_min`` minutes: each block is
    paid for the most nodes it held (a node started in a block is paid to its end)."""
    if block_min <= 1:
        return float(count.sum()) / 60.0
    pad = (-len(count)) % block_min
    blocks = np.concatenate([count, np.zeros(pad)]).reshape(-1, block_min).max(axis=1)
    return float(min(blocks.sum() * block_min, count.max(initial=0) * len(count))) / 60.0


def blended_cost(need: np.ndarray, reserved: int, policy: Policy) -> dict[str, float]:
    """USD per class for covering the per-minute node ``need`` with ``reserved`` nodes and the blend."""
    # the control cycle's own split, once per distinct fleet size
    sizes, minute_size = np.unique(np.maximum(need, reserved).astype(int), return_inverse=True)
    lead = lead_time_min(policy, Memory(), "spot")
    # (no expected load given: spot is a share of the whole fleet, as the module's docstring says why)
    by_size = np.array([split(int(n), reserved, policy, lead) for n in sizes], dtype=float).reshape(-1, 3)
    spot_nodes, buffer, on_demand = by_size[minute_size].T
    spot = spot_nodes + buffer
    avail = policy.spot.availability
    block = {c: getattr(policy.classes, c).billing_min for c in ("spot", "on_demand")}
    hours = len(need) / 60.0
    return {
        "reserved": reserved * hours * policy.price("reserved"),
        "spot": avail * billed_node_hours(spot, block["spot"]) * policy.price("spot"),
        "on_demand": (billed_node_hours(on_demand, block["on_demand"])
                      + (1 - avail) * billed_node_hours(spot, block["on_demand"])) * policy.price("on_demand"),
    }


def recommend_reserved(load_rps: np.ndarray, policy: Policy, rps_per_node: float) -> dict:
    """Reserved count for a history of per-minute load (NaN gaps are left out)."""
    load = load_rps[~np.isnan(load_rps)]
    if load.size == 0:
        raise ValueError("no observed load to recommend from")
    # as the cycle limits its fleet: never under min_nodes, never over max_nodes (nor is the count then)
    need = np.clip(nodes_needed(load, rps_per_node, policy.planning.headroom), policy.limits.min_nodes,
                   policy.limits.max_nodes)
    costs = [sum(blended_cost(need, r, policy).values()) for r in range(int(need.max()) + 1)]
    count = int(np.argmin(costs))  # the first of equal minima: fewer reserved nodes
    layers = np.arange(1, count + 4)
    return {"reserved": count,
            "layer_use": [round(float((need >= k).mean()), 4) for k in layers],
            "cost_usd_by_count": [round(c, 2) for c in costs[: count + 4]],
            "hours": round(len(load) / 60.0, 1), "cost_usd": round(costs[count], 2),
            "cost_usd_without": round(costs[0], 2), "rps_per_node": rps_per_node}
