"""Actuators apply decisions; they decide nothing. Live, dry-run, shadow and replay differ only here.

* :class:`SimulatedActuator` - the simulated cluster, advanced one minute per cycle (the embedded default).
* :class:`DryRunActuator` - prints the Kubernetes requests it would send (each scale's body exactly, and
  the Events beside them), and assumes they took.
* :class:`~controller.kubernetes_actuator.KubernetesActuator` - the real cluster (its own module).
"""

from __future__ import annotations

import json
import sys
from typing import Protocol

from controller.policy import CLASSES, Policy
from controller.kube_events import EVENT_REASON
from controller.simulator import SimulatedCluster
from controller.state import ClusterView, Decision


class Actuator(Protocol):
    def view(self) -> ClusterView: ...

    def apply(self, decisions: list[Decision], placeholder: int = 0) -> list[str]: ...

    # A change in how the controller decides, for the operator (a Kubernetes Event on a cluster).
    def announce(self, warning: bool, reason: str, note: str) -> None: ...


def scale_request(namespace: str, workload: str, replicas: int) -> str:
    """The request that sets a workload's replicas through the scale subresource."""
    body = json.dumps({"spec": {"replicas": replicas}})
    return f"PATCH /apis/apps/v1/namespaces/{namespace}/deployments/{workload}/scale {body}"


def event_request(namespace: str, workload: str, warning: bool, reason: str) -> str:
    """The request that records an Event about a workload (its body: ``kubernetes_actuator.event``)."""
    kind = "Warning" if warning else "Normal"
    return f"POST /apis/events.k8s.io/v1/namespaces/{namespace}/events ({kind} {reason} on deployments/{workload})"


class SimulatedActuator:
    def __init__(self, policy: Policy, reserved: int = 0, seed: int = 0):
        self.cluster = SimulatedCluster(policy, reserved=reserved, seed=seed)

    def use_policy(self, policy: Policy) -> None:
        """A reloaded policy: prices, lead times and billing follow it from now on; the nodes there stay,
        and the spot process keeps its seeded course."""
        self.cluster.policy = policy

    def view(self) -> ClusterView:
        return self.cluster.view()

    def apply(self, decisions: list[Decision], placeholder: int = 0) -> list[str]:
        self.cluster.apply(decisions)
        self.cluster.advance()
        return [f"simulated: {d.cls} {d.current} -> {d.desired}" for d in decisions if d.delta]

    def announce(self, warning: bool, reason: str, note: str) -> None:
        """The simulated cluster has no one to tell: the log says it."""

    def cost_per_hour(self) -> float:
        return sum(self.cluster.running_cost_by_class().values())


class DryRunActuator:
    """Prints what it would send; its view is what it last asked for, all of it ready."""

    def __init__(self, workloads: dict[str, str], namespace: str = "default", out=None, reserved: int = 0):
        self.workloads, self.namespace = workloads, namespace
        self.out = out or sys.stdout
        self.desired = dict.fromkeys(CLASSES, 0)
        self.desired["reserved"] = reserved

    def view(self) -> ClusterView:
        view = ClusterView()
        for cls in CLASSES:
            view.counts[cls]["ready"] = self.desired[cls]
        return view

    def apply(self, decisions: list[Decision], placeholder: int = 0) -> list[str]:
        sent = []
        for d in decisions:
            if d.desired != self.desired[d.cls]:
                line = scale_request(self.namespace, self.workloads[d.cls], d.desired)
                print(f"dry-run: {line}  # {d.reason}", file=self.out)
                print(f"dry-run: {event_request(self.namespace, self.workloads[d.cls], False, EVENT_REASON)}",
                      file=self.out)
                sent.append(line)
                self.desired[d.cls] = d.desired
        return sent

    def announce(self, warning: bool, reason: str, note: str) -> None:
        for workload in dict.fromkeys(self.workloads.values()):
            print(f"dry-run: {event_request(self.namespace, workload, warning, reason)}  # {note}", file=self.out)
