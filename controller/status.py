"""What each service's controller last did, read from the store: ``peakpilot status``.

The operator's first question of any autoscaler (``kubectl get hpa``, ``sky serve status``): for each
service, when it last decided, on what (the load, the forecast), what it asked for against what is
ready, and why. It reads the store the daemon writes, so it works wherever the store is reachable
(``kubectl exec`` into the controller's pod, or any machine with the PostgreSQL store's URL), and it
says when a service's last cycle is old: a daemon that stopped, or a policy file that went.
"""

from __future__ import annotations

from datetime import datetime, timezone

from controller.policy import CLASSES
from controller.store import Store

STALE_MIN = 5  # a service whose last cycle is older than this is no longer being run


def service_status(store: Store, now: datetime | None = None) -> list[dict]:
    """One entry per service the daemon has run, from its last recorded cycle."""
    now = now or datetime.now(timezone.utc)
    order = {cls: i for i, cls in enumerate(CLASSES)}
    found = []
    for cycle in store.latest_cycles():
        at = datetime.fromisoformat(cycle["ts"]).replace(tzinfo=timezone.utc)
        written = datetime.fromtimestamp(cycle["written"], timezone.utc) if cycle.get("written") else at
        age = max(0.0, (now - written).total_seconds() / 60)
        decided = sorted(cycle["decisions"], key=lambda d: order.get(d["cls"], len(order)))
        found.append({
            "service": cycle["service"], "policy": cycle["policy"], "at": at.strftime("%Y-%m-%dT%H:%M"),
            "age_min": round(age, 1), "stale": age > STALE_MIN, "mode": cycle.get("mode"), "role": cycle.get("role"),
            "load_rps": cycle["load_rps"], "forecast_q50": cycle["forecast_q50"],
            "forecast_q90": cycle["forecast_q90"],
            "ready": {cls: _count(cycle[f"ready_{cls}"]) for cls in CLASSES},
            "warming": _count(cycle["warming"]), "draining": _count(cycle["draining"]),
            "cost_per_hour": cycle["cost_per_hour"],
            # what the cluster showed that needs a look (none recorded by a store older than the column)
            "attention": (cycle.get("attention") or "").splitlines(),
            "decisions": [{"cls": d["cls"], "desired": d["desired"], "current": d["current"],
                           "reason": d["reason"]} for d in decided]})
    return found


def _count(value) -> int | None:
    return None if value is None else int(round(value))


def render_status(services: list[dict]) -> str:
    """A table, one line per service, then each class's decision with its reason (``kubectl describe``'s
    shape) and what the cluster showed that needs a look (``!``), a line for each service no longer being
    run, and one where the decisions were not applied (a follower of the Lease, or shadow mode): this
    replica's store holds its own decisions."""
    header = ("SERVICE", "LAST CYCLE (UTC)", "ROLE", "MODE", "LOAD req/s", "FORECAST q90", "READY r/s/od", "WARMING",
              "DECIDED r/s/od", "COST/h")
    rows = [header]
    for s in services:
        decided = {d["cls"]: d["desired"] for d in s["decisions"]}
        rows.append((s["service"], f"{s['at']} ({_age(s['age_min'])} ago)", s["role"] or "-",
                     "stale" if s["stale"] else (s["mode"] or "-"), _number(s["load_rps"]),
                     _number(s["forecast_q90"]), "/".join(_number(s["ready"][c]) for c in CLASSES),
                     _number(s["warming"]), "/".join(_number(decided.get(c)) for c in CLASSES),
                     _number(s["cost_per_hour"], 2)))
    widths = [max(len(r[i]) for r in rows) for i in range(len(header))]
    lines = ["  ".join(cell.ljust(w) for cell, w in zip(r, widths)).rstrip() for r in rows]
    for s in services:
        lines.append("")
        if s["stale"]:
            lines.append(f"{s['service']}: no cycle recorded for {_age(s['age_min'])}: its daemon is not running, "
                         f"or no longer runs it (its policy file went, or it is another controller set's); "
                         f"what follows is its last cycle")
        else:
            lines.append(f"{s['service']} ({s['policy']}):" if s["policy"] else f"{s['service']}:")
        if s["role"] == "follower":
            lines.append("  (this replica follows the Lease: these decisions were not applied; the leader's were)")
        elif s["role"] == "shadow":
            lines.append("  (shadow mode: these decisions were not applied)")
        for d in s["decisions"]:
            nodes = "node" if d["desired"] == 1 else "nodes"
            lines.append(f"  {d['cls']}: {d['desired']} {nodes} ({d['current']} running): {d['reason']}")
        lines += [f"  ! {line}" for line in s["attention"]]
    return "\n".join(lines)


def _number(value, digits: int = 1) -> str:
    if value is None:
        return "-"
    return str(value) if isinstance(value, int) else f"{value:,.{digits}f}"


def _age(minutes: float) -> str:
    if minutes < 1:
        return f"{minutes * 60:.0f} s"
    if minutes < 120:
        return f"{minutes:.0f} min"
    if minutes < 48 * 60:
        return f"{minutes / 60:.0f} h"
    return f"{minutes / 1440:.0f} days"
