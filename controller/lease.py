"""Leader election on a ``coordination.k8s.io/v1`` Lease, so that of the controller's replicas only one acts."""

from __future__ import annotations

import logging
from datetime import datetime, timedelta, timezone

from controller.kube_client import micro_time, with_retry

log = logging.getLogger(__name__)


def lease_duration_s(interval_s: float) -> int:
    """How long the daemon's Lease is good for: three cycles (at least a minute). The leader renews it once
    a cycle, so a Lease of one cycle expires whenever a renewal comes a moment later than the one before,
    and a follower that looks in that moment takes it: leadership would change hands for nothing. A
    leader that stops is replaced at the follower's first look after three cycles."""
    return int(max(60, 3 * interval_s))


class LeaseLock:
    """Leader election on a Lease: hold it by renewing; take it only when free or expired.

    Writes carry the Lease's resourceVersion, so of two replicas racing for it one gets 409 and stays
    a follower (no call is retried: the next cycle asks again). An API server that could not be reached
    is not asked again for ``RETRY_AFTER_FAILURE_S``, by the Lease or any actuator (``with_retry``)."""

    def __init__(self, api, namespace: str, name: str, identity: str, duration_s: int = 60, now=None):
        from kubernetes import client

        self.coord = client.CoordinationV1Api(api)
        self.namespace, self.name, self.identity, self.duration_s = namespace, name, identity, duration_s
        self.now = now or (lambda: datetime.now(timezone.utc))
        self.is_leader = False

    def _body(self, version: str | None, acquired: datetime | None, transitions: int) -> dict:
        now = self.now()
        meta = {"name": self.name, "namespace": self.namespace}
        if version:
            meta["resourceVersion"] = version
        return {"apiVersion": "coordination.k8s.io/v1", "kind": "Lease", "metadata": meta,
                "spec": {"holderIdentity": self.identity, "leaseDurationSeconds": self.duration_s,
                         "acquireTime": micro_time(acquired or now), "renewTime": micro_time(now),
                         "leaseTransitions": transitions}}

    def acquire_or_renew(self) -> bool:
        from kubernetes.client.exceptions import ApiException

        try:
            lease = with_retry(self.coord.read_namespaced_lease, self.name, self.namespace, attempts=1)
        except ApiException as exc:
            if exc.status != 404:
                log.warning("lease %s: read failed (%s); not acting", self.name, exc.status)
                self.is_leader = False
                return False
            try:
                with_retry(self.coord.create_namespaced_lease, self.namespace, self._body(None, None, 0), attempts=1)
                self.is_leader = True
            except ApiException:
                self.is_leader = False
            return self.is_leader
        spec = lease.spec
        holder = spec.holder_identity
        renewed = spec.renew_time or spec.acquire_time
        expired = renewed is None or renewed + timedelta(seconds=spec.lease_duration_seconds or self.duration_s) < self.now()
        if holder != self.identity and not expired:
            if self.is_leader:
                log.warning("lease %s is held by %s: no longer the leader", self.name, holder)
            self.is_leader = False
            return False
        transitions = (spec.lease_transitions or 0) + (holder != self.identity)
        acquired = spec.acquire_time if holder == self.identity else None
        try:
            with_retry(self.coord.replace_namespaced_lease, self.name, self.namespace,
                       self._body(lease.metadata.resource_version, acquired, transitions), attempts=1)
            self.is_leader = True
        except ApiException as exc:
            log.warning("lease %s: lost the race (%s)", self.name, exc.status)
            self.is_leader = False
        return self.is_leader
