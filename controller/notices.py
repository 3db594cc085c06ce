"""What the operator is told about one service: a line in the controller's log (``kubectl logs``), and
where the cluster keeps it, an Event on the service's Deployments (``kubectl get events``). Each is said
once when it changes, not once a minute: a class's decided size and why, a fall back to the reactive
safety net and the return from it, failed nodes, pods not created, another autoscaler on a pool, spot
not to be had, a gap in the live load (an outage) and its end.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field

from controller.state import on_cycle_clock
from forecaster.history import GAP_MIN_DURATION

log = logging.getLogger("peakpilot.daemon")


def spot_unavailable(view) -> str:
    """"spot cannot be had", with what showed it where the actuator can tell (the log, the Event and
    ``peakpilot status`` say it alike)."""
    return "spot cannot be had" + (f" ({view.spot_unavailable_why})" if view.spot_unavailable_why else "")


def in_gap(gap) -> str:
    """What a gap the live load is in means for the plan (the log and ``peakpilot status`` say it alike)."""
    what = ("no load samples" if gap.reason == "no data" else
            "almost no traffic" if gap.reason.startswith("near zero") else "no traffic")
    return (f"{what} since {_minute(gap.start)} ({gap.reason}): read as an outage, not as no demand, so the "
            f"plan follows the forecast until the load returns")


def attention(view) -> list[str]:
    """What the cluster's view shows that needs an operator's look, a line each: recorded with the cycle,
    so ``peakpilot status`` says why on-demand stands in or why nodes asked for do not come."""
    lines = []
    if not view.spot_available:
        lines.append(f"{spot_unavailable(view)}: on-demand stands in for the spot asked for")
    lines += [f"pods not created: {u}" for u in view.uncreated]
    lines += [f"failed node: {f}" for f in view.failures]
    lines += [f"another autoscaler: {c}" for c in view.conflicts]
    return lines


@dataclass
class Notices:
    service: str
    _said: dict = field(default_factory=dict)  # what the log said last: the mode, and nodes per class
    _announced: dict = field(default_factory=dict)  # what the Events said last: mode, autoscalers, spot
    # What the log said last of the cluster's view: failed nodes, pods not created, other autoscalers
    # (each as a sorted list, none at first), whether spot can be had (yes at first), and where the gap the
    # live load is in began (none at first).
    _reported: dict = field(default_factory=lambda: {"spot": True, "gap": None, "capacity": False})

    def _changed(self, what: str, now) -> bool:
        """Whether ``what`` differs from what the log said last (and it is noted as said)."""
        if now == self._reported.get(what, []):
            return False
        self._reported[what] = now
        return True

    def capacity(self, note: str | None) -> None:
        """The capacity check's finding (``controller/capacity_check.py``), in the log as it comes and goes."""
        if self._changed("capacity", note is not None):
            if note:
                log.warning("%s: %s", self.service, note)
            else:
                log.info("%s: the nodes no longer answer busy under the policy's capacity", self.service)

    def cluster(self, view) -> None:
        """What the cluster's view shows that needs a look, in the log (every replica reads it)."""
        failures = sorted(view.failures)
        if self._changed("failures", failures) and failures:
            log.warning("%s: %d node(s) failed and will not turn ready by themselves: %s", self.service,
                        len(failures), "; ".join(failures))
        uncreated = sorted(view.uncreated)
        if self._changed("uncreated", uncreated):
            if uncreated:
                log.warning("%s: pods asked for are not being created, so their nodes will not come: %s (counted as "
                            "pending meanwhile)", self.service, "; ".join(uncreated))
            else:
                log.info("%s: the pods asked for are created again", self.service)
        if self._changed("conflicts", list(view.conflicts)) and view.conflicts:
            log.warning("%s: another autoscaler scales the same workloads, and each will undo the other's "
                        "replicas: %s. Stop it setting them: delete an autoscaler (to compare peakpilot with it "
                        "first, run with --shadow)", self.service, "; ".join(view.conflicts))
        if self._changed("spot", view.spot_available):
            if not view.spot_available:
                log.warning("%s: %s; on-demand stands in for the spot asked for until it can", self.service,
                            spot_unavailable(view))
            else:
                log.info("%s: spot can be had again; the on-demand standing in goes once spot is ready", self.service)

    def live_gap(self, history):
        """The live load in a gap (no traffic where the usual level predicts some, or no samples), and its
        end: the plan then follows the forecast, not the zero load, and holds nodes nothing uses, which an
        operator should hear about once, with why. Returns the gap the load is in, or None. A gap of
        less than ``GAP_MIN_DURATION`` is not one yet: the newest samples may still be on their way
        (``signals.REREAD``), as a run of zeros that short is data."""
        last = history.gaps[-1] if history.gaps else None
        gap = last if last is not None and last.end >= history.end and last.end - last.start >= GAP_MIN_DURATION \
            else None
        was = self._reported["gap"]
        if self._changed("gap", gap.start if gap else None):
            if gap is not None:
                log.warning("%s: %s", self.service, in_gap(gap))
            else:
                log.info("%s: the load is back after the gap since %s", self.service, _minute(was))
        return gap

    def decided(self, result, acting: bool, shadow: bool) -> None:
        """A line when the mode or a class's decided size changes, with why. A follower of the Lease,
        which decides without acting, says it at debug level only."""
        level = logging.INFO if acting or shadow else logging.DEBUG
        prefix = "shadow, not applied: " if shadow else "" if acting else "follower, not applied: "
        mode, was = result.mode, self._said.get("mode")
        if mode != was and (was is not None or mode != "predictive"):
            why = result.reason if mode != "predictive" else "a fresh forecast again"
            log.log(logging.WARNING if mode == "reactive" and acting else level, "%s: %s%s mode: %s",
                    self.service, prefix, mode, why)
        self._said["mode"] = mode
        for d in result.decisions:
            before = self._said.get(d.cls)
            if d.desired != before:
                change = f"{d.desired}" if before is None else f"{before} -> {d.desired}"
                log.log(level, "%s: %s%s %s node%s (%d running): %s", self.service, prefix, d.cls, change,
                        "" if d.desired == 1 else "s", d.current, d.reason)
            self._said[d.cls] = d.desired

    def announce(self, result, view, actuator, no_forecast: str | None) -> None:
        """Events for what needs a look (by the replica that acts only): a fall back to the reactive safety
        net (``no_forecast``: why) and the return from it; spot not to be had, and back; another
        autoscaler on a pool. Never fails a cycle."""
        said = []
        mode, was = result.mode, self._announced.get("mode")
        if mode == "reactive" and was != "reactive":
            said.append((True, "FallbackToReactive", f"{self.service}: the reactive safety net alone decides: "
                                                     f"{no_forecast or result.reason}"))
        elif mode == "predictive" and was == "reactive":
            said.append((False, "ForecastResumed", f"{self.service}: planning on the forecast again"))
        spot, had = view.spot_available, self._announced.get("spot", True)
        if not spot and had:
            said.append((True, "SpotUnavailable", f"{self.service}: {spot_unavailable(view)}; on-demand stands in "
                                                  "for the spot asked for until it can"))
        elif spot and not had:
            said.append((False, "SpotAvailable", f"{self.service}: spot can be had again; the on-demand standing "
                                                 "in goes once spot is ready"))
        conflicts = view.conflicts
        if conflicts and conflicts != self._announced.get("conflicts"):
            said.append((True, "ConflictingAutoscaler", f"{self.service}: {'; '.join(conflicts)}: each undoes the "
                                                        "other's replicas; stop it setting them"))
        self._announced.update(mode=mode, conflicts=conflicts, spot=spot)
        for warning, reason, note in said:
            try:
                actuator.announce(warning, reason, note)
            except Exception as exc:  # a message about the cycle must not fail it
                log.warning("%s: could not announce %s: %s", self.service, reason, exc)


def _minute(t) -> str:
    return on_cycle_clock(t).strftime("%Y-%m-%dT%H:%M")
