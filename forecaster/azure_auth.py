"""Azure Monitor's managed service for Prometheus, read with Entra ID tokens for the identity the controller
runs as, so that a policy says only ``azure: {}``, as ``google: {}`` and ``sigv4: {}`` say it for the other
clouds:

- in an AKS pod with workload identity, what AKS's webhook injects into the pod (``AZURE_CLIENT_ID``,
  ``AZURE_TENANT_ID``, ``AZURE_FEDERATED_TOKEN_FILE``, ``AZURE_AUTHORITY_HOST``): Entra ID's
  client-credentials grant with the projected token as the client's assertion (forecaster/oauth2.py does
  the asking, renewing and sharing);
- elsewhere on Azure (a VM, a scale set, an AKS node's own identity), the managed identity of the machine,
  from its Instance Metadata Service (IMDS), with no secret and no token file: the one identity the machine
  has, or the user-assigned one ``client_id`` (or ``AZURE_CLIENT_ID``) names.

``identity: auto`` takes workload identity where the pod has its token file, else the managed identity, as
azure-identity's DefaultAzureCredential orders them; ``workload`` or ``managed`` says which.
"""

from __future__ import annotations

import os
import time
from dataclasses import dataclass, field
from typing import Callable

from forecaster.errors import HistoryError
from forecaster.oauth2 import TOKEN_TIMEOUT_S, ClientCredentials, held_tokens

PROMETHEUS_SCOPE = "https://prometheus.monitor.azure.com/.default"
AUTHORITY = "https://login.microsoftonline.com/"  # Azure's public cloud; the webhook names the pod's own
IMDS = "http://169.254.169.254"  # AZURE_POD_IDENTITY_AUTHORITY_HOST replaces it, as in azure-identity
IMDS_PATH = "/metadata/identity/oauth2/token"
IMDS_API_VERSION = "2018-02-01"
IMDS_CONNECT_S = 2.0  # off Azure the address does not answer at all: say so soon, not after TOKEN_TIMEOUT_S
IMDS_TRIES = 3  # IMDS asks to be retried on 404 (identity not yet assigned), 410 (updating), 429 and 5xx
IMDS_RETRY = frozenset({404, 410, 429}) | frozenset(range(500, 600))
WORKLOAD, MANAGED, AUTO = "workload", "managed", "auto"


@dataclass(frozen=True)
class AzureSettings:
    client_id: str | None = None  # None: the pod's AZURE_CLIENT_ID (managed: the machine's one identity)
    tenant_id: str | None = None  # None: the pod's AZURE_TENANT_ID
    scope: str = PROMETHEUS_SCOPE
    identity: str = AUTO  # workload, managed, or auto: workload where AZURE_FEDERATED_TOKEN_FILE is set

    def managed(self) -> bool:
        """Whether the machine's managed identity is the one used (else the pod's workload identity)."""
        token_file = os.environ.get("AZURE_FEDERATED_TOKEN_FILE")
        return self.identity == MANAGED or (self.identity == AUTO and not token_file)

    def client(self, where: str) -> ClientCredentials | ManagedIdentity:
        """The token source of the identity, from the environment now (the same settings give the same
        source, and so the token it holds); a HistoryError naming what the pod lacks."""
        token_file = os.environ.get("AZURE_FEDERATED_TOKEN_FILE")
        if self.managed():
            host = os.environ.get("AZURE_POD_IDENTITY_AUTHORITY_HOST") or IMDS
            return ManagedIdentity(self.scope.removesuffix("/.default"), self.client_id or os.environ.get(
                "AZURE_CLIENT_ID"), host.rstrip("/"), workload_tried=self.identity == AUTO)
        client_id = self.client_id or os.environ.get("AZURE_CLIENT_ID")
        tenant = self.tenant_id or os.environ.get("AZURE_TENANT_ID")
        missing = [name for name, value in (("AZURE_CLIENT_ID", client_id), ("AZURE_TENANT_ID", tenant),
                                            ("AZURE_FEDERATED_TOKEN_FILE", token_file)) if not value]
        if missing:
            raise HistoryError(where, f"Azure workload identity: no {', '.join(missing)} in the environment (AKS's "
                                      f"webhook sets them in a pod labelled azure.workload.identity/use: \"true\" "
                                      f"whose ServiceAccount is annotated azure.workload.identity/client-id)")
        authority = (os.environ.get("AZURE_AUTHORITY_HOST") or AUTHORITY).rstrip("/")
        return ClientCredentials(client_id, None, f"{authority}/{tenant}/oauth2/v2.0/token", (self.scope,),
                                 client_assertion_file=token_file)


@dataclass(frozen=True)
class ManagedIdentity:
    """The machine's managed identity, its tokens from IMDS (held and renewed as OAuth2's are)."""
    resource: str  # what the token is for (IMDS takes a resource, not a scope)
    client_id: str | None  # a user-assigned identity; None: the machine's only one
    host: str = IMDS
    workload_tried: bool = False  # (chosen because the pod had no workload identity: an error says so)
    clock: Callable[[], float] = field(default=time.monotonic, compare=False, repr=False)

    @property
    def token_url(self) -> str:
        return f"{self.host}{IMDS_PATH}"

    def token(self, where: str) -> str:
        return held_tokens.get(self, lambda: self._ask(where), self.clock)

    def forget(self) -> None:
        held_tokens.forget(self)

    def _ask(self, where: str) -> tuple[str, float | None]:
        import requests

        params = {"api-version": IMDS_API_VERSION, "resource": self.resource}
        if self.client_id:
            params["client_id"] = self.client_id
        session = requests.Session()
        session.trust_env = False  # IMDS is the machine's own link-local address: never through a proxy
        deadline = time.monotonic() + TOKEN_TIMEOUT_S
        for attempt in range(IMDS_TRIES):
            try:
                answer = session.get(self.token_url, params=params, headers={"Metadata": "true"},
                                     timeout=(IMDS_CONNECT_S, TOKEN_TIMEOUT_S))
            except requests.exceptions.RequestException as exc:
                raise HistoryError(where, f"{self._who()} could not be reached at {self.host} "
                                          f"({type(exc).__name__}): not an Azure VM or node, or a network policy "
                                          f"blocks 169.254.169.254{self._other_way()}") from None
            wait = _retry_after(answer, attempt)
            if answer.status_code in IMDS_RETRY and attempt + 1 < IMDS_TRIES and time.monotonic() + wait < deadline:
                time.sleep(wait)
                continue
            return self._token_of(answer, where)
        raise AssertionError("unreachable: the last try returns or raises")

    def _token_of(self, answer, where: str) -> tuple[str, float | None]:
        try:
            doc = answer.json()
        except ValueError:
            doc = None
        if answer.status_code != 200 or not isinstance(doc, dict) or not doc.get("access_token"):
            why = f"{doc.get('error')}: {doc.get('error_description', '')}" if isinstance(doc, dict) and \
                doc.get("error") else answer.text[:200].strip()
            hint = ""
            if "multiple" in why.lower() and not self.client_id:
                hint = " (name the one to use: signals.prometheus_auth.azure.client_id)"
            elif "identity not found" in why.lower():
                hint = (" (assign it to this VM, scale set or node pool)" if self.client_id else
                        " (assign a managed identity to this VM, scale set or node pool)")
            raise HistoryError(where, f"{self._who()} at {self.host} gave no token for {self.resource}: HTTP "
                                      f"{answer.status_code} {why}{hint}{self._other_way()}")
        kind = str(doc.get("token_type", "Bearer"))
        if kind.lower() != "bearer":
            raise HistoryError(where, f"{self._who()} gave a {kind!r} token; only bearer tokens are sent to "
                                      f"Prometheus")
        for key, since in (("expires_in", 0.0), ("expires_on", time.time())):  # (IMDS writes numbers as strings)
            try:
                return str(doc["access_token"]), max(0.0, float(doc[key]) - since)
            except (KeyError, TypeError, ValueError):
                continue
        return str(doc["access_token"]), None

    def _who(self) -> str:
        named = f" {self.client_id}" if self.client_id else ""
        return f"the Azure managed identity{named}'s token endpoint (IMDS)"

    def _other_way(self) -> str:
        return ("; in an AKS pod, workload identity sets AZURE_FEDERATED_TOKEN_FILE (the pod labelled "
                "azure.workload.identity/use: \"true\")" if self.workload_tried else "")


def _retry_after(answer, attempt: int) -> float:
    """Seconds before the next try: the answer's Retry-After where it gives one, else 0.5 s, doubling."""
    try:
        return max(0.0, float(answer.headers.get("Retry-After", "")))
    except ValueError:
        return 0.5 * 2 ** attempt
