"""Azure Monitor's managed service for Prometheus, read from an AKS pod with workload identity, configured by
what AKS's webhook injects into the pod (``AZURE_CLIENT_ID``, ``AZURE_TENANT_ID``,
``AZURE_FEDERATED_TOKEN_FILE``, ``AZURE_AUTHORITY_HOST``): Entra ID's client-credentials grant with the
projected token as the client's assertion (forecaster/oauth2.py does the asking, renewing and sharing), for
the managed Prometheus's scope. So a policy says only ``azure: {}``, as ``google: {}`` and ``sigv4: {}``
say it for the other clouds; it may name a client or tenant of its own.
"""

from __future__ import annotations

import os
from dataclasses import dataclass

from forecaster.errors import HistoryError
from forecaster.oauth2 import ClientCredentials

PROMETHEUS_SCOPE = "https://prometheus.monitor.azure.com/.default"
AUTHORITY = "https://login.microsoftonline.com/"  # Azure's public cloud; the webhook names the pod's own


@dataclass(frozen=True)
class AzureSettings:
    client_id: str | None = None  # None: the pod's AZURE_CLIENT_ID
    tenant_id: str | None = None  # None: the pod's AZURE_TENANT_ID
    scope: str = PROMETHEUS_SCOPE

    def client(self, where: str) -> ClientCredentials:
        """The OAuth2 client of the pod's identity, from the environment now (the same settings give the
        same client, and so the token it holds); a HistoryError naming what the pod lacks."""
        client_id = self.client_id or os.environ.get("AZURE_CLIENT_ID")
        tenant = self.tenant_id or os.environ.get("AZURE_TENANT_ID")
        token_file = os.environ.get("AZURE_FEDERATED_TOKEN_FILE")
        missing = [name for name, value in (("AZURE_CLIENT_ID", client_id), ("AZURE_TENANT_ID", tenant),
                                            ("AZURE_FEDERATED_TOKEN_FILE", token_file)) if not value]
        if missing:
            raise HistoryError(where, f"Azure workload identity: no {', '.join(missing)} in the environment (AKS's "
                                      f"webhook sets them in a pod labelled azure.workload.identity/use: \"true\" "
                                      f"whose ServiceAccount is annotated azure.workload.identity/client-id)")
        authority = (os.environ.get("AZURE_AUTHORITY_HOST") or AUTHORITY).rstrip("/")
        return ClientCredentials(client_id, None, f"{authority}/{tenant}/oauth2/v2.0/token", (self.scope,),
                                 client_assertion_file=token_file)
