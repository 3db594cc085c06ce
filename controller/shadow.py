"""Shadow estimate: the SLA of what the cluster did next to the SLA peakpilot's plan would have had.

In shadow mode peakpilot acts on nothing, so its plan never gets capacity to be measured against.
This estimates it from the same observed load with the same service model replay uses:

* **cluster**: the observed load against the nodes really ready this minute;
* **plan**: the observed load against the nodes the plan *would* have ready now. A node asked for
  at minute s is ready after the class's lead time L (the planner's own p95, so the estimate leans
  against peakpilot), and is released as soon as the plan no longer wants it. So the plan's ready
  nodes of a class at minute t are the minimum of its desired count over [t - L, t]: those asked
  for by t - L and wanted ever since.

Both sides keep their own queue backlog between minutes. The plan history is kept in the
controller's memory in the store, so a restarted daemon goes on with the same estimate; the
backlogs (a minute's worth at most) start empty again.
"""

from __future__ import annotations

from collections import deque

from controller.service_model import ServiceModel

SIDES = ("cluster", "plan")


class ShadowEstimate:
    def __init__(self, rps_per_node: float, queue_seconds: float, saved: dict | None = None):
        self.models = {side: ServiceModel(rps_per_node, queue_seconds) for side in SIDES}
        self.history: dict[str, deque] = {}
        self._last: tuple[int, dict] | None = None
        for cls, pairs in (saved or {}).get("plan_history", {}).items():
            self.history[cls] = deque((int(m), int(n)) for m, n in pairs)

    def set_capacity(self, rps_per_node: float, queue_seconds: float) -> None:
        for model in self.models.values():
            model.rps_per_node, model.queue_seconds = rps_per_node, queue_seconds

    def plan_ready(self, minute: int, desired: dict[str, int], lead_min: dict[str, int],
                   cluster_ready: dict[str, int]) -> int:
        """Record this minute's desired counts; return the nodes the plan would have ready now.
        Before the plan reaches back a lead time, the plan starts from the nodes the cluster had."""
        ready = 0
        for cls, n in desired.items():
            window = self.history.setdefault(cls, deque())
            while window and window[-1][0] >= minute:  # a cycle redone this minute replaces its entry
                window.pop()
            window.append((minute, int(n)))
            since = minute - max(0, int(lead_min.get(cls, 0)))
            while len(window) > 1 and window[1][0] <= since:  # keep the entry in force at t - L
                window.popleft()
            wanted = min(v for _, v in window)
            if window[0][0] > since:
                wanted = min(wanted, int(cluster_ready.get(cls, 0)))
            ready += wanted
        return ready

    def serve(self, minute: int, load_rps: float | None, cluster_ready: int, plan_ready: int) -> dict:
        """This minute's (in_time, late, busy) on both sides, as timeline columns; empty without load.
        Several cycles in one minute score it once (the first), so arrivals are not counted twice."""
        if self._last is not None and self._last[0] == minute:
            return self._last[1]
        row: dict = {"plan_ready": plan_ready}
        if load_rps is None:
            for model in self.models.values():
                model.skip_minute()
        else:
            arrivals = max(0.0, float(load_rps)) * 60.0
            for side, prefix, nodes in (("cluster", "", cluster_ready), ("plan", "plan_", plan_ready)):
                in_time, late, busy = self.models[side].serve_minute(arrivals, nodes)
                row.update({f"{prefix}in_time": in_time, f"{prefix}late": late, f"{prefix}busy": busy})
        self._last = (minute, row)
        return row

    def to_json(self) -> dict:
        return {"plan_history": {cls: [list(p) for p in w] for cls, w in self.history.items()}}
