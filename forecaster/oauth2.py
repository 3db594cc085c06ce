"""OAuth2 client credentials (RFC 6749 section 4.4) for a Prometheus behind an OAuth2 gateway: Azure Monitor's
managed Prometheus, or a Mimir, Cortex or Thanos gateway behind an identity provider (Keycloak, Okta, Entra ID).

The settings are those of Prometheus's own ``oauth2`` HTTP client block (``client_id``, ``client_secret_file``,
``token_url``, ``scopes``, ``endpoint_params``). A token is asked for when there is none, or it is about to
expire, and shared by every source with the same settings (a daemon's many services ask the identity provider
once, not once each); the secret is read from its file at every request for a token, so a rotated Secret is
the next token's. The client authenticates with HTTP basic auth, as the RFC asks servers to accept, and where
the server refuses that as ``invalid_client``, in the request's body instead, remembered from then on (as
Go's ``oauth2`` package, and so Prometheus, detects it).

Instead of a secret, a client may prove itself with a signed assertion read from a file (RFC 7521/7523's
``client_assertion``): AKS's workload identity projects such a token into the pod, and Entra ID takes it for
the service principal's, so no secret is stored at all. The file is read at every request, as the kubelet
rotates it. Or the client's TLS certificate is its proof (RFC 8705's ``tls_client_auth``: Keycloak's "X509
certificate" client authenticator), where a certificate is given and neither a secret nor an assertion.

The token endpoint's TLS is its own, as in Prometheus's block: the system's CAs (or ``REQUESTS_CA_BUNDLE``)
unless ``ca_file`` names the private CA that signed it, and a client certificate where it asks for one.
"""

from __future__ import annotations

import threading
import time
from dataclasses import dataclass, field
from typing import Callable

from forecaster.errors import HistoryError
from forecaster.secret_file import check_tls_files, read_secret

TOKEN_TIMEOUT_S = 10.0  # a token endpoint silent this long is an error of the query that needed a token
EARLY_S = 60.0  # a token is renewed this long before it expires (at most a tenth of its life sooner)
BASIC, IN_BODY, ASSERTION, CERTIFICATE = "basic", "body", "assertion", "certificate"  # how the client proves itself


@dataclass(frozen=True)
class ClientCredentials:
    client_id: str
    client_secret_file: str | None  # None: the client proves itself with client_assertion_file or cert_file
    token_url: str
    scopes: tuple[str, ...] = ()
    endpoint_params: tuple[tuple[str, str], ...] = ()  # extra form fields (e.g. an audience or a resource)
    client_assertion_file: str | None = None  # a signed JWT (AKS workload identity's projected token)
    ca_file: str | None = None  # the CA bundle that signed the token endpoint's certificate (None: the system's)
    cert_file: str | None = None  # a client certificate for the token endpoint, and its key (mTLS)
    key_file: str | None = None
    clock: Callable[[], float] = field(default=time.monotonic, compare=False, repr=False)

    def __post_init__(self):
        if (self.cert_file is None) != (self.key_file is None):
            raise ValueError("a client certificate needs both its cert file and its key file")
        if not (self.client_secret_file or self.client_assertion_file or self.cert_file):
            raise ValueError("an OAuth2 client proves itself with a secret, an assertion or a client certificate")

    def token(self, where: str) -> str:
        """An access token for the next query: the one held while it has more than a little life left, else
        a new one. A token endpoint that cannot be reached or refuses is a HistoryError naming it."""
        return held_tokens.get(self, lambda: _request(self, where, _styles), self.clock)

    def forget(self) -> None:
        """Drop the token held (the server refused it: revoked, or its signing keys rotated)."""
        held_tokens.forget(self)


@dataclass
class _Held:
    token: str
    renew_at: float | None  # clock time to ask for the next one (None: the server gave no lifetime)


class TokenCache:
    """The tokens held, by the settings that ask for them (any hashable: an OAuth2 client, an Azure managed
    identity); one request at a time for each."""

    def __init__(self):
        self._held: dict[object, _Held] = {}
        self._lock = threading.Lock()

    def get(self, key, ask: Callable[[], tuple[str, float | None]], clock: Callable[[], float]) -> str:
        """The token held for ``key`` while it has more than a little life left, else ``ask()``'s (a token
        and its lifetime in seconds, None where not said), held from then on."""
        with self._lock:
            held = self._held.get(key)
            if held is not None and (held.renew_at is None or clock() < held.renew_at):
                return held.token
            asked_at = clock()
            token, lifetime = ask()
            renew_at = None if lifetime is None else asked_at + lifetime - min(EARLY_S, lifetime / 10)
            self._held[key] = _Held(token, renew_at)
            return token

    def forget(self, key) -> None:
        with self._lock:
            self._held.pop(key, None)


held_tokens = TokenCache()
_styles: dict[tuple[str, str], str] = {}  # (token_url, client_id) -> how the server takes the secret (held's lock)


def _request(creds: ClientCredentials, where: str, styles: dict) -> tuple[str, float | None]:
    """Ask the token endpoint for a token; its access token and lifetime in seconds (None where not said)."""
    import requests

    form = {"grant_type": "client_credentials", **dict(creds.endpoint_params)}
    if creds.scopes:
        form["scope"] = " ".join(creds.scopes)
    if creds.client_assertion_file is not None:  # no secret: the assertion is the client's proof, in the form
        secret, known = "", ASSERTION
        assertion = read_secret(creds.client_assertion_file, "OAuth2 client assertion", where)
        form.update(client_id=creds.client_id, client_assertion=assertion,
                    client_assertion_type="urn:ietf:params:oauth:client-assertion-type:jwt-bearer")
    elif creds.client_secret_file is None:  # the client certificate is the proof; the form names the client
        secret, known = "", CERTIFICATE
        form.update(client_id=creds.client_id)
    else:
        secret = read_secret(creds.client_secret_file, "OAuth2 client secret", where)
        known = styles.get((creds.token_url, creds.client_id))
    check_tls_files(where, creds.ca_file, creds.cert_file, creds.key_file, of="OAuth2 token endpoint's ")
    tls = {"verify": creds.ca_file or True, "cert": (creds.cert_file, creds.key_file) if creds.cert_file else None}
    for style in ([known] if known else [BASIC, IN_BODY]):
        body = dict(form, client_id=creds.client_id, client_secret=secret) if style == IN_BODY else form
        try:
            answer = requests.post(creds.token_url, data=body, timeout=TOKEN_TIMEOUT_S, headers={
                "Accept": "application/json"}, auth=(creds.client_id, secret) if style == BASIC else None, **tls)
        except requests.exceptions.RequestException as exc:
            raise HistoryError(where, f"the OAuth2 token endpoint {creds.token_url} {_failure(exc)}") from None
        error = _error_of(answer)
        if answer.status_code in (400, 401) and error.startswith("invalid_client") and style == BASIC and not known:
            continue  # perhaps it takes the secret in the body only: try that
        if answer.status_code != 200 or error:
            raise HistoryError(where, f"the OAuth2 token endpoint {creds.token_url} refused client "
                                      f"{creds.client_id!r}: HTTP {answer.status_code} "
                                      f"{error or answer.text[:200].strip()}")
        try:
            doc = answer.json()
            token = doc["access_token"]
        except (ValueError, KeyError, TypeError):
            raise HistoryError(where, f"the OAuth2 token endpoint {creds.token_url} answered no access_token: "
                                      f"{answer.text[:200].strip()!r}") from None
        kind = str(doc.get("token_type", "bearer"))
        if kind.lower() != "bearer":
            raise HistoryError(where, f"the OAuth2 token endpoint {creds.token_url} gave a {kind!r} token; only "
                                      f"bearer tokens are sent to Prometheus")
        if style in (BASIC, IN_BODY):
            styles[(creds.token_url, creds.client_id)] = style  # how this server takes the secret, from now on
        lifetime = doc.get("expires_in")
        try:
            return str(token), None if lifetime is None else max(0.0, float(lifetime))
        except (TypeError, ValueError):
            return str(token), None
    raise AssertionError("unreachable: the body style is always tried last")


def _error_of(answer) -> str:
    """The OAuth2 error of an answer (``invalid_client: why``), or empty where it names none."""
    try:
        doc = answer.json()
    except ValueError:
        return ""
    if not isinstance(doc, dict) or "error" not in doc:
        return ""
    why = doc.get("error_description")
    return f"{doc['error']}: {why}" if why else str(doc["error"])


def _failure(exc) -> str:
    """Why a request to the token endpoint failed, and for TLS the setting that mends it."""
    import requests

    text = str(exc).upper()
    if "CERTIFICATE_VERIFY_FAILED" in text:
        return ("has a TLS certificate that is not trusted (for a private CA, name its bundle in "
                "signals.prometheus_auth.oauth2.tls.ca_file)")
    if any(alert in text for alert in ("CERTIFICATE_REQUIRED", "ALERT_BAD_CERTIFICATE", "ALERT_UNKNOWN_CA")):
        return ("did not take the client certificate, or asks for one and none was given "
                "(signals.prometheus_auth.oauth2.tls: cert_file and key_file)")
    if isinstance(exc, requests.exceptions.SSLError):  # often a server that hangs up on a client without one
        why = "EOF in the handshake" if "EOF" in text else type(exc).__name__
        return (f"broke off TLS ({why}); where it asks for a client certificate, give one in "
                f"signals.prometheus_auth.oauth2.tls: cert_file and key_file")
    return f"could not be reached: {type(exc).__name__}"
