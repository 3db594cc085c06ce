"""The Kubernetes actuator, on the official ``kubernetes`` client.

* One Deployment per capacity class, scaled through its ``scale`` subresource (a desired state: sending
  the same replicas twice is harmless).
* Reads what is really there: replicas, and the class's pods (through the Deployment's selector) as
  pending / warming / ready / draining.
* Pods still warming get the usual do-not-disrupt annotation (``karpenter.sh/do-not-disrupt``) so no
  voluntary disruption takes them before they serve; it comes off once they are ready.
* Records each pod's creation-to-ready time, so the controller learns real lead times: once per pod, for
  pods it saw before they were ready or that were not there at its last look (not those a restarted
  controller finds ready), with the minutes the pod waited for a node, so that a wait for spot that could
  not be had is not learned as a lead time.
* A pod that will not turn ready by itself (its container crash-loops, its image cannot be pulled) is
  *failed*: not capacity on its way, not protected, and given the lowest deletion cost so a scale-down
  removes it first; the view says why each one failed.
* For classes billed in blocks (``billing_min`` > 1) it reports each ready pod's paid minutes left
  (counted from the pod's creation: one GPU node per pod), and before a scale-down sets
  ``controller.kubernetes.io/pod-deletion-cost`` to them, so the ReplicaSet removes the pod whose paid
  block ends soonest.
* An optional low-priority placeholder Deployment holds GPU nodes warm ahead of a predicted peak;
  real pods preempt it (its PriorityClass is in ``deploy/``).
* Every call goes through ``controller/kube_client.py`` (timeouts, retries, one-line errors); leader
  election is ``controller/lease.py``.
* Each scale it sends is also an ``events.k8s.io/v1`` Event on the Deployment, with the decision's reason,
  as the HPA records its rescales: ``kubectl describe deployment`` and ``kubectl get events`` say why.
  Events are best effort: one that cannot be written (RBAC without ``create`` on events) is said once
  in the log and never fails the scale. What an operator should look into is a Warning Event on the
  service's Deployments (``announce``): a fall back to the reactive safety net, another autoscaler on a pool;
  and a scale the API server refused (``FailedRescale``, as the HPA's), once per refusal.
* A HorizontalPodAutoscaler left on one of the workloads (say, from before peakpilot) would undo every
  scale and have its own undone: the view names it, and the daemon says so and exports it. In shadow
  mode, which runs beside the autoscaler it is compared with, that is expected and not looked for.
* Spot that cannot be had shows as spot pods the scheduler cannot place (the cluster autoscaler or
  Karpenter gets no spot node for them), or as spot pods not even created: the view names what has
  waited longest (``spot_wait``); past spot's lead time (``ClusterView.judge_spot``, with the lead time
  the cycle plans with) spot counts as unavailable, and the cycle covers the spot asked for with
  on-demand until spot pods are placed again, as on the simulated cluster.
* Pods a Deployment asks for and cannot create (a ResourceQuota on GPUs, an admission webhook: the
  Deployment's ``ReplicaFailure`` condition) are named in the view (``uncreated``), said once in the log,
  and still counted as pending.
* Shadow mode reads the cluster and acts on nothing.
"""

from __future__ import annotations

import logging
import socket
import time
from dataclasses import dataclass, field
from datetime import datetime, timedelta, timezone

from controller.kube_client import ApiUnreachable, with_retry
from controller.kube_events import FAILED_RESCALE, event, scale_event
from controller.policy import CLASSES
from controller.state import ClusterView, Decision, Start, paid_minutes_left

log = logging.getLogger(__name__)

DO_NOT_DISRUPT = "karpenter.sh/do-not-disrupt"
PROTECTED_BY_US = "peakpilot.io/protected"
DELETION_COST = "controller.kubernetes.io/pod-deletion-cost"
FAILED_DELETION_COST = "-2147483647"  # the lowest there is: a failed pod goes before any other


@dataclass
class KubernetesTarget:
    namespace: str
    workloads: dict[str, str]  # class -> Deployment name
    placeholder: str | None = None


@dataclass
class KubernetesActuator:
    api: object  # kubernetes.client.ApiClient
    target: KubernetesTarget
    shadow: bool = False
    sleep: object = time.sleep
    last_requests: list = field(default_factory=list)
    billing_min: dict = field(default_factory=dict)  # class -> billing block in minutes (from the policy)
    clock: object = lambda: datetime.now(timezone.utc)
    instance: str = field(default_factory=socket.gethostname)  # the Events' reportingInstance: the pod's name
    _paid: dict = field(default_factory=dict)  # class -> [(pod name, paid minutes left, its deletion cost now)]
    _event_failure: str | None = field(default=None, init=False)  # why the last Event could not be written
    _hpa_failure: str | None = field(default=None, init=False)  # why autoscalers could not be listed last time
    # Deployment name -> the Deployment as the last view read it (its uid for Events; check-policy's checks)
    deployments: dict = field(default_factory=dict, init=False)
    _last_stamp: datetime | None = field(default=None, init=False)  # the last Event's time
    _scale_failures: dict = field(default_factory=dict, init=False)  # Deployment -> why its last scale was refused
    # Pod uid -> whether its start will measure a lead time: seen before it was ready and not yet measured,
    # never failed. A pod ready when first seen started before this controller watched (a restarted
    # controller would count every ready pod again), and one whose readiness comes back after a restart
    # or a crash loop measures the crash, not the start.
    _starting: dict = field(default_factory=dict, init=False)
    # Whether a whole view has been read: a pod then first seen ready was not there at the last look, so
    # its whole start (a warm node, a cached image: under a cycle) happened under this controller's eyes.
    # Left out, the fastest starts were never measured, and the learned p95 kept only the slow ones.
    _looked: bool = field(default=False, init=False)
    # Deployment -> the replicas this controller asked for at its last apply, kept only while it applies every
    # cycle (a follower's, or a leader's from before it followed, would blame the leader's own changes).
    _asked: dict = field(default_factory=dict, init=False)
    _applied: bool = field(default=False, init=False)  # whether apply ran since the last view

    def __post_init__(self) -> None:
        from kubernetes import client

        self.apps = client.AppsV1Api(self.api)
        self.core = client.CoreV1Api(self.api)
        self.events = client.EventsV1Api(self.api)
        self.autoscaling = client.AutoscalingV2Api(self.api)

    # -- reading ---------------------------------------------------------------------------------
    def view(self) -> ClusterView:
        view = ClusterView()
        ns = self.target.namespace
        now = self.clock()
        seen = set()
        asked = self._asked if self._applied else {}
        self._asked, self._applied = dict(asked), False
        overridden = []
        for cls in CLASSES:
            name = self.target.workloads.get(cls)
            if not name:
                continue
            deployment = with_retry(self.apps.read_namespaced_deployment, name, ns, sleep=self.sleep)
            self.deployments[name] = deployment
            selector = label_selector(deployment.spec.selector)
            pods = with_retry(self.core.list_namespaced_pod, ns, label_selector=selector, sleep=self.sleep).items
            counted = 0
            block = self.billing_min.get(cls, 1)
            self._paid[cls] = []
            for pod in pods:
                if terminated(pod):
                    continue
                state = pod_state(pod)
                view.counts[cls][state] += 1
                if cls == "spot" and state == "pending":
                    waited = unscheduled_minutes(pod, now)
                    if waited is not None:
                        view.waits_for_spot(f"spot pod {pod.metadata.name} unscheduled", waited)
                if state == "failed":
                    view.failures.append(f"{pod.metadata.name}: {failure(pod)}")
                    self._release_first(pod)
                if state == "ready" and block > 1 and pod.metadata.creation_timestamp is not None:
                    left = paid_minutes_left(int((now - pod.metadata.creation_timestamp).total_seconds() // 60), block)
                    view.paid_left.setdefault(cls, []).append(left)
                    self._paid[cls].append((pod.metadata.name, left, (pod.metadata.annotations or {}).get(DELETION_COST)))
                counted += state != "draining"
                self._protect(pod, state)
                seen.add(pod.metadata.uid)
                start = self._started(cls, pod, state)
                if start is not None:
                    view.lead_samples.append(start)
            replicas = deployment.spec.replicas or 0
            if name in asked and replicas != asked[name]:
                overridden.append(f"Deployment {name}: replicas {replicas}, where peakpilot set {asked[name]} last "
                                  f"cycle: something else sets them too (a GitOps sync of a manifest that sets "
                                  f"replicas: leave them out of it or let it ignore them; a kubectl scale)")
            if replicas > counted:  # asked for but no pod yet: pending
                view.counts[cls]["pending"] += replicas - counted
                refused = replica_failure(deployment)
                if refused is not None:
                    why, since = refused
                    view.uncreated.append(f"{name}: {replicas - counted} pod(s) not created ({why})")
                    if cls == "spot" and since is not None:
                        view.waits_for_spot(f"{replicas - counted} spot pod(s) of {name} not created ({why})",
                                            (now - since).total_seconds() / 60)
        self._starting = {uid: measure for uid, measure in self._starting.items() if uid in seen}
        self._looked = True
        if not self.shadow:
            view.conflicts = self.other_autoscalers() + overridden
        return view

    def _started(self, cls: str, pod, state: str) -> Start | None:
        """The pod's start, once, when it turns ready under this controller's eyes (``_starting``,
        ``_looked``)."""
        uid = pod.metadata.uid
        if state in ("pending", "warming"):
            self._starting.setdefault(uid, True)
        elif state in ("ready", "failed"):
            measure = self._starting.get(uid, self._looked and not restarted(pod))
            self._starting[uid] = False
            if state == "ready" and measure:
                return measured_start(cls, pod)
        return None

    def use_policy(self, policy) -> None:
        """A reloaded policy naming the same Deployments: its billing blocks."""
        self.billing_min = {c: getattr(policy.classes, c).billing_min for c in CLASSES}

    def other_autoscalers(self) -> list[str]:
        """HorizontalPodAutoscalers whose target is one of ours. Listing them is a check, not the cycle's
        work: a refusal (a Role without ``list`` on them) is said once and the view goes on without."""
        from kubernetes.client.exceptions import ApiException

        ours = set(self.target.workloads.values()) | ({self.target.placeholder} if self.target.placeholder else set())
        try:
            hpas = with_retry(self.autoscaling.list_namespaced_horizontal_pod_autoscaler, self.target.namespace,
                              attempts=1, sleep=self.sleep).items
        except (ApiException, ApiUnreachable) as exc:
            if str(exc) != self._hpa_failure:
                log.warning("could not look for other autoscalers on the workloads: %s (the controller's Role "
                            "needs list on autoscaling horizontalpodautoscalers: deploy/controller-rbac.yaml)", exc)
            self._hpa_failure = str(exc)
            return []
        self._hpa_failure = None
        return sorted(f"HorizontalPodAutoscaler {h.metadata.name} scales {h.spec.scale_target_ref.kind} "
                      f"{h.spec.scale_target_ref.name} too" for h in hpas
                      if h.spec.scale_target_ref.kind == "Deployment" and h.spec.scale_target_ref.name in ours)

    def _protect(self, pod, state: str) -> None:
        """Warming pods carry do-not-disrupt; ready ones lose it again (only where we set it)."""
        if self.shadow:
            return
        notes = pod.metadata.annotations or {}
        if state in ("warming", "pending") and DO_NOT_DISRUPT not in notes:
            body = {"metadata": {"annotations": {DO_NOT_DISRUPT: "true", PROTECTED_BY_US: "true"}}}
        elif state in ("ready", "failed") and notes.get(PROTECTED_BY_US) == "true":
            body = {"metadata": {"annotations": {DO_NOT_DISRUPT: None, PROTECTED_BY_US: None}}}
        else:
            return
        with_retry(self.core.patch_namespaced_pod, pod.metadata.name, self.target.namespace, body, sleep=self.sleep)

    def _release_first(self, pod) -> None:
        """A failed pod gets the lowest deletion cost, so the ReplicaSet's next scale-down removes it first."""
        if self.shadow or (pod.metadata.annotations or {}).get(DELETION_COST) == FAILED_DELETION_COST:
            return
        with_retry(self.core.patch_namespaced_pod, pod.metadata.name, self.target.namespace,
                   {"metadata": {"annotations": {DELETION_COST: FAILED_DELETION_COST}}}, sleep=self.sleep)

    # -- acting ----------------------------------------------------------------------------------
    def apply(self, decisions: list[Decision], placeholder: int = 0) -> list[str]:
        from kubernetes.client.exceptions import ApiException

        sent: list[str] = []
        self._applied = not self.shadow
        if not self.shadow:
            for d in decisions:
                if d.delta < 0:
                    self._rank_for_release(d.cls)
        wanted = [(self.target.workloads[d.cls], d.desired, f"{d.cls}: {d.reason}") for d in decisions
                  if self.target.workloads.get(d.cls)]
        if self.target.placeholder:
            wanted.append((self.target.placeholder, placeholder,
                           "placeholder: GPU nodes held warm for what the forecast needs after the lead time"))
        for name, replicas, why in wanted:
            scale = with_retry(self.apps.read_namespaced_deployment_scale, name, self.target.namespace,
                               sleep=self.sleep)
            current = scale.spec.replicas
            self._asked.pop(name, None)  # (kept below once the scale is as asked)
            if current == replicas:
                self._asked[name] = replicas
                continue
            line = f"PATCH deployments/{name}/scale replicas {current} -> {replicas}"
            if self.shadow:
                sent.append(f"shadow (not sent): {line}")
                continue
            try:
                with_retry(self.apps.patch_namespaced_deployment_scale, name, self.target.namespace,
                           {"spec": {"replicas": replicas}}, sleep=self.sleep)
            except ApiException as exc:  # refused (unreachable: no Event could be written either)
                if self._scale_failures.get(name) != str(exc):  # once per refusal, not once a cycle
                    self._record_event(name, event(self.target.namespace, name, scale.metadata.uid, True,
                                                   FAILED_RESCALE, "Scale", f"replicas {current} -> {replicas} "
                                                   f"refused: {exc}; {why}", self.instance, self._stamp()))
                self._scale_failures[name] = str(exc)
                raise
            self._scale_failures.pop(name, None)
            self._asked[name] = replicas
            sent.append(line)
            self._record_event(name, scale_event(self.target.namespace, name, scale.metadata.uid, current,
                                                 replicas, why, self.instance, self._stamp()))
        self.last_requests = sent
        return sent

    def announce(self, warning: bool, reason: str, note: str) -> None:
        """An Event on each of the service's Deployments (``kubectl describe`` of any pool shows it, and
        ``kubectl get events --field-selector type=Warning`` lists it): for what changed in how the
        controller decides, not for each scale. Best effort, as the rescale Events; nothing in shadow."""
        if self.shadow:
            return
        for name in dict.fromkeys(self.target.workloads.values()):
            read = self.deployments.get(name)
            self._record_event(name, event(self.target.namespace, name, read and read.metadata.uid, warning, reason,
                                           "Decide", note, self.instance, self._stamp()))

    def _stamp(self) -> datetime:
        """The time of a new Event, after the last one's: an Event is named by its object and its time,
        and a second one of the same name is refused (409 AlreadyExists)."""
        now = self.clock()
        if self._last_stamp is not None and now <= self._last_stamp:
            now = self._last_stamp + timedelta(microseconds=1)
        self._last_stamp = now
        return now

    def _record_event(self, deployment: str, body: dict) -> None:
        """An Event on a Deployment; a failure is logged once (until one succeeds again)."""
        from kubernetes.client.exceptions import ApiException

        try:
            with_retry(self.events.create_namespaced_event, self.target.namespace, body, attempts=1,
                       sleep=self.sleep)
        except (ApiException, ApiUnreachable) as exc:
            how = f"{exc.status} {exc.reason}" if isinstance(exc, ApiException) else str(exc)
            if how != self._event_failure:
                hint = " (the controller's Role needs create on events.k8s.io events: deploy/controller-rbac.yaml)" \
                    if getattr(exc, "status", None) == 403 else ""
                log.warning("could not record a Kubernetes Event (%s) on %s: %s%s; the controller goes on "
                            "without it", body["reason"], deployment, how, hint)
            self._event_failure = how
        else:
            self._event_failure = None

    def _rank_for_release(self, cls: str) -> None:
        """Lower deletion cost goes first: the pod whose paid billing block ends soonest."""
        for name, left, cost in self._paid.get(cls, []):
            if cost != str(left):
                with_retry(self.core.patch_namespaced_pod, name, self.target.namespace,
                           {"metadata": {"annotations": {DELETION_COST: str(left)}}}, sleep=self.sleep)


# Container states that do not end by themselves: the kubelet retries them with growing back-off, and the
# pod never turns ready until someone fixes the image, the config or the node.
STUCK_REASONS = frozenset({"CrashLoopBackOff", "ImagePullBackOff", "ErrImagePull", "InvalidImageName",
                           "CreateContainerConfigError", "CreateContainerError", "RunContainerError"})


def terminated(pod) -> bool:
    """A pod that ran to its end: phase Failed (evicted for a node's memory or disk, or its node shut
    down, as a preempted GKE spot VM's pods are) or Succeeded. Its ReplicaSet no longer counts it and has
    started another in its place, and it may stay listed until it is garbage-collected: it is no node of
    the class. (Counted failed, it was replaced a second time, a node paid for each.)"""
    return pod.status is not None and pod.status.phase in ("Failed", "Succeeded")


def failure(pod) -> str | None:
    """Why a pod that is not ready will not get there by itself, or None."""
    if pod.status is None:
        return None
    for cs in pod.status.container_statuses or []:
        waiting = cs.state.waiting if cs.state else None
        if waiting is not None and waiting.reason in STUCK_REASONS:
            return f"{waiting.reason} (restarts: {cs.restart_count or 0})"
    return None


def restarted(pod) -> bool:
    """A container of the pod has restarted: its readiness since then dates the restart, not the start."""
    return any(cs.restart_count for cs in (pod.status.container_statuses if pod.status else None) or [])


def pod_state(pod) -> str:
    if pod.metadata.deletion_timestamp is not None:
        return "draining"
    conditions = {c.type: c.status for c in (pod.status.conditions or [])} if pod.status else {}
    if conditions.get("Ready") == "True":
        return "ready"
    if failure(pod) is not None:
        return "failed"
    if pod.status is None or pod.status.phase == "Pending" and conditions.get("PodScheduled") != "True":
        return "pending"
    return "warming"


def label_selector(selector) -> str:
    """A Deployment's selector (a ``V1LabelSelector``) as the ``labelSelector`` query of a pod list, its
    ``matchExpressions`` included (left out, a selector of expressions alone listed every pod of the
    namespace as the class's capacity): ``app=x,tier in (gpu,spot),!canary``."""
    terms = [f"{k}={v}" for k, v in (selector.match_labels or {}).items()]
    for e in selector.match_expressions or []:
        if e.operator in ("In", "NotIn"):
            terms.append(f"{e.key} {e.operator.lower()} ({','.join(e.values or [])})")
        elif e.operator == "Exists":
            terms.append(e.key)
        elif e.operator == "DoesNotExist":
            terms.append(f"!{e.key}")
        else:
            raise ValueError(f"selector operator {e.operator!r} on {e.key!r} is not one of In, NotIn, Exists, "
                             f"DoesNotExist")
    return ",".join(terms)


def replica_failure(deployment) -> tuple[str, datetime | None] | None:
    """Why a Deployment cannot create the pods it asks for, and since when: its ``ReplicaFailure``
    condition, which the Deployment controller copies from its ReplicaSet's failed creates."""
    for c in (deployment.status.conditions if deployment.status else None) or []:
        if c.type == "ReplicaFailure" and c.status == "True":
            return f"{c.reason or 'FailedCreate'}: {c.message or 'no message'}", c.last_transition_time
    return None


def unscheduled_minutes(pod, now: datetime) -> float | None:
    """Minutes a pod the scheduler has not placed has waited (since its creation)."""
    conditions = {c.type: c for c in (pod.status.conditions or [])} if pod.status else {}
    scheduled = conditions.get("PodScheduled")
    if (scheduled is not None and scheduled.status == "True") or pod.metadata.creation_timestamp is None:
        return None
    return (now - pod.metadata.creation_timestamp).total_seconds() / 60


def measured_start(cls: str, pod) -> Start | None:
    """Minutes from the pod's creation to ready, and how many of them it waited for the scheduler (a node
    for it: the cluster autoscaler's boot, or capacity that could not be had)."""
    created = pod.metadata.creation_timestamp
    since = {c.type: c.last_transition_time for c in (pod.status.conditions or []) if c.status == "True"}
    ready, scheduled = since.get("Ready"), since.get("PodScheduled")
    if created is None or ready is None:
        return None
    unscheduled = 0.0 if scheduled is None else max(0.0, (scheduled - created).total_seconds() / 60.0)
    return Start(cls, max(0.0, (ready - created).total_seconds() / 60.0), unscheduled)
