"""Split a total node count into reserved, spot and on-demand at the lowest cost that meets it.

Reserved first (paid anyway), then spot up to its share plus a buffer for the preemptions expected
while a replacement boots, then on-demand for the rest. The share bounds what a wave of preemptions can
take from the load the service is expected to carry: with ``spot.share_of: expected`` it is a share of
the nodes the expected load (the forecast's q50) needs, and the margin planned above that (the band up
to the planning quantile, the headroom, nodes held through stabilization) may all be spot, since losing
it leaves the expected load's reserved and on-demand part standing; with ``fleet`` it is a share of the
whole fleet.

A preempted spot node is replaced at once: by spot when spot can be had, and by on-demand while spot
cannot be had (spot requests stuck pending); the spot requests stay, so when spot returns its nodes
start and the on-demand cover is released.
"""

from __future__ import annotations

import math

from controller.policy import Policy
from controller.state import ClusterView


def spot_buffer(spot_nodes: int, policy: Policy, lead_min: float) -> int:
    """Extra spot nodes for the preemptions expected while a replacement boots."""
    expected = spot_nodes * policy.spot.preemption_rate_per_hour * lead_min / 60.0
    return math.ceil(expected - 1e-9) if spot_nodes else 0


def spot_nodes(total: int, rest: int, policy: Policy, expected: int | None = None) -> int:
    """Spot nodes among the ``rest`` of a ``total`` fleet that is not reserved: its share of the expected
    load's nodes (``expected``; None: the whole fleet is expected) and, with ``share_of: expected``, all
    of the margin above them."""
    if policy.spot.max_share <= 0:
        return 0  # no spot at all, margin included
    if policy.spot.share_of == "fleet" or expected is None:
        return min(rest, math.floor(policy.spot.max_share * total))
    base = min(total, max(expected, 0))
    return min(rest, math.floor(policy.spot.max_share * base) + total - base)


def split(total: int, reserved: int, policy: Policy, spot_lead_min: float,
          use_spot: bool = True, expected: int | None = None) -> tuple[int, int, int]:
    """``(spot, buffer, on_demand)`` for the part of ``total`` above ``reserved``: spot up to its share
    (``spot_nodes``), the preemption buffer on top of it, on-demand for the rest. The one rule that both
    the control cycle and the reserved-count recommendation use."""
    rest = max(0, total - reserved)
    spot = spot_nodes(total, rest, policy, expected) if use_spot else 0
    # (within max_nodes: the most nodes the policy pays for, its buffer included)
    buffer = min(spot_buffer(spot, policy, spot_lead_min), max(0, policy.limits.max_nodes - total))
    return spot, buffer, rest - spot


def blend(total: int, reserved: int, policy: Policy, view: ClusterView, spot_lead_min: float,
          use_spot: bool = True, expected: int | None = None) -> tuple[dict[str, int], dict[str, list[str]]]:
    """Desired count per class for ``total`` nodes (``expected`` of them for the expected load), with the
    reasons for the spot/on-demand split, per class: each class's decision says what moved its own count."""
    notes: dict[str, list[str]] = {"spot": [], "on_demand": []}
    spot, buffer, on_demand = split(total, reserved, policy, spot_lead_min, use_spot, expected)
    if expected is not None and policy.spot.share_of == "expected" and spot and total > expected:
        notes["spot"].append(f"margin above the {expected} nodes the expected load needs on spot")
    if buffer:
        notes["spot"].append(f"+{buffer} spot for preemption risk over {spot_lead_min:.0f} min")
    spot += buffer
    # Spot still asked for but not coming (unavailable: stuck pending) is covered by on-demand now;
    # the spot requests stay, so spot is taken again when it returns and the cover is then released.
    # Cover already running is held until the spot nodes it stands in for are ready.
    base = on_demand
    pending = max(0, spot - view.alive("spot")) if spot and not view.spot_available else 0
    held = min(max(0, spot - view.ready("spot")), max(0, view.active("on_demand") - base))
    cover = max(pending, held)
    if cover:
        on_demand += cover
        for cls in ("spot", "on_demand"):
            notes[cls].append(f"{cover} spot not to be had or not ready yet: covered by on-demand")
    return {"reserved": reserved, "spot": spot, "on_demand": on_demand}, notes
