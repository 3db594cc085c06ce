"""The Kubernetes Events the controller writes, as bodies (``kubernetes_actuator`` sends them, the dry-run
actuator names them): a rescale, as the HPA records its own, and a change in how it decides."""

from __future__ import annotations

from datetime import datetime, timedelta, timezone

from controller.kube_client import micro_time

REPORTING_CONTROLLER = "peakpilot.io/controller"  # who wrote them
EVENT_REASON = "SuccessfulRescale"  # the HPA's reasons for the same acts, so filters written for it match
FAILED_RESCALE = "FailedRescale"
EVENT_NOTE_MAX = 1024  # the API's limit on a note, in bytes


def scale_event(namespace: str, deployment: str, uid: str | None, old: int, new: int, why: str, instance: str,
                now: datetime) -> dict:
    """The Event saying a Deployment was rescaled and why, as the HPA says it."""
    return event(namespace, deployment, uid, False, EVENT_REASON, "Scale", f"replicas {old} -> {new}; {why}",
                 instance, now)


def event(namespace: str, deployment: str, uid: str | None, warning: bool, reason: str, action: str, note: str,
          instance: str, now: datetime) -> dict:
    """An ``events.k8s.io/v1`` Event about a Deployment, named as client-go names its events (the object's
    name and the time in nanoseconds), its note cut to the API's limit."""
    regarding = {"apiVersion": "apps/v1", "kind": "Deployment", "namespace": namespace, "name": deployment}
    if uid:  # kubectl describe finds an object's events by its uid
        regarding["uid"] = uid
    if len(note.encode()) > EVENT_NOTE_MAX:
        note = note.encode()[: EVENT_NOTE_MAX - 3].decode(errors="ignore") + "..."
    return {"apiVersion": "events.k8s.io/v1", "kind": "Event",
            "metadata": {"name": f"{deployment}.{unix_nanos(now):x}", "namespace": namespace},
            "eventTime": micro_time(now), "type": "Warning" if warning else "Normal", "reason": reason,
            "action": action, "note": note, "regarding": regarding,
            "reportingController": REPORTING_CONTROLLER, "reportingInstance": instance[:128]}


def unix_nanos(t: datetime) -> int:
    """Nanoseconds since 1970, exact to the microsecond (a float's timestamp() is not, at today's dates)."""
    return (t - datetime(1970, 1, 1, tzinfo=timezone.utc)) // timedelta(microseconds=1) * 1000
