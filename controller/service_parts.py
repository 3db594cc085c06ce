"""What a service's policy builds around it: where its load is read from and what its decisions act on.

The daemon asks here at start, when a changed policy moves either (another Prometheus or query, other
Deployments), and for a policy file that appears in a watched folder while it runs, so all three build
them the same way. Nothing here talks to the cluster or Prometheus: the parts connect when first used.
"""

from __future__ import annotations

from typing import Callable

import numpy as np

from controller.actuators import DryRunActuator, SimulatedActuator
from controller.policy import Policy, selected
from controller.signals import PrometheusSignals, TraceSignals


def prometheus_auth(policy: Policy):
    """The policy's ``signals.prometheus_auth`` as the Prometheus source takes it."""
    from forecaster.oauth2 import ClientCredentials
    from forecaster.prometheus_source import PrometheusAuth
    from forecaster.azure_auth import AzureSettings
    from forecaster.google_auth import GoogleSettings
    from forecaster.sigv4 import SigV4Settings

    spec = policy.signals.prometheus_auth
    basic, tls, oauth2, sigv4 = spec.basic_auth, spec.tls, spec.oauth2, spec.sigv4
    own_tls = None if oauth2 is None else oauth2.tls  # (the token endpoint's TLS, not Prometheus's)
    client = None if oauth2 is None else ClientCredentials(
        oauth2.client_id, oauth2.client_secret_file, oauth2.token_url, tuple(oauth2.scopes),
        tuple(sorted(oauth2.endpoint_params.items())), oauth2.client_assertion_file,
        *((own_tls.ca_file, own_tls.cert_file, own_tls.key_file) if own_tls else ()))
    signing = None if sigv4 is None else SigV4Settings(sigv4.region, sigv4.profile, sigv4.role_arn, sigv4.external_id)
    return PrometheusAuth(dict(spec.headers), spec.bearer_token_file, basic.username if basic else None,
                          basic.password_file if basic else None, tls.ca_file if tls else None,
                          tls.cert_file if tls else None, tls.key_file if tls else None, client, signing,
                          None if spec.google is None else GoogleSettings(spec.google.credentials_file),
                          None if spec.azure is None else AzureSettings(spec.azure.client_id, spec.azure.tenant_id,
                                                                        spec.azure.scope, spec.azure.identity))


class ServiceParts:
    """Builds signals and actuators for one backend (``simulated``, ``dry-run`` or ``kubernetes``).

    ``trace`` is called for the first service without ``signals.prometheus`` (the load it replays on the
    daemon's clock, from the trace's middle); ``api`` is the Kubernetes client of the kubernetes backend;
    ``selector`` (``key=value``) the policy labels of the services this daemon runs.
    """

    def __init__(self, backend: str, clock: Callable[[], np.datetime64], api=None, shadow: bool = False,
                 trace: Callable[[], object] | None = None, selector: str | None = None):
        self.backend, self.clock, self.api, self.shadow = backend, clock, api, shadow
        self._trace_loader, self._trace = trace, None
        self.selector = selector

    def selects(self, policy: Policy) -> bool:
        """Whether this daemon runs the policy's service (every service, without a selector)."""
        return selected(policy, self.selector)

    def trace(self):
        if self._trace is None:
            if self._trace_loader is None:
                raise ValueError("this policy has no signals.prometheus and the daemon was given no trace")
            self._trace = self._trace_loader()
        return self._trace

    def signals(self, policy: Policy):
        s = policy.signals
        if s.prometheus:
            return PrometheusSignals(s.prometheus, s.query, s.step, s.history_days, busy_query=s.busy_query,
                                     service=policy.service, auth=prometheus_auth(policy))
        trace = self.trace()
        return TraceSignals(trace, len(trace.arrivals) // 2, self.clock())

    def actuator(self, policy: Policy):
        if self.backend == "simulated":
            reserved = policy.reserved.count if isinstance(policy.reserved.count, int) else 0
            return SimulatedActuator(policy, reserved=reserved)
        if self.backend == "dry-run":
            return DryRunActuator(dict(policy.kubernetes.workloads), policy.kubernetes.namespace)
        from controller.kubernetes_actuator import KubernetesActuator, KubernetesTarget

        k = policy.kubernetes
        actuator = KubernetesActuator(self.api, KubernetesTarget(k.namespace, dict(k.workloads), k.placeholder),
                                      shadow=self.shadow)
        actuator.use_policy(policy)
        return actuator

    def actuator_after_change(self, actuator, old: Policy, new: Policy):
        """The actuator a changed policy needs: a new one where it names other Deployments (or another
        namespace or placeholder), the same one otherwise, taking the new policy's prices, lead times and
        billing (the simulated cluster keeps its nodes; the Kubernetes one what it has seen)."""
        if old.kubernetes != new.kubernetes and self.backend != "simulated":
            return self.actuator(new)
        if hasattr(actuator, "use_policy"):
            actuator.use_policy(new)
        return actuator
