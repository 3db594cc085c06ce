"""Google Cloud Managed Service for Prometheus, read directly: its query API
(``https://monitoring.googleapis.com/v1/projects/PROJECT/location/global/prometheus``) takes a Google OAuth2
access token with the ``monitoring.read`` scope.

The token is google-auth's (the ``gcp`` extra): from the credentials file the policy names (a service
account's key, or an external account's configuration: Workload Identity Federation, where a pod in EKS or
AKS trades its own cloud's token for Google's, with no key stored), else Application Default Credentials,
which in a GKE pod with Workload Identity are the metadata server's. It is refreshed when google-auth says it
is no longer valid (a few minutes before it expires), and shared by every source with the same settings, so
a daemon's services ask once.
"""

from __future__ import annotations

import json
import os
import threading
from dataclasses import dataclass

from forecaster.errors import HistoryError
from forecaster.oauth2 import TOKEN_TIMEOUT_S  # (google-auth waits 120 s by default: two control cycles)

SCOPE = "https://www.googleapis.com/auth/monitoring.read"


@dataclass(frozen=True)
class GoogleSettings:
    credentials_file: str | None = None  # a key or external account (JSON); None: Application Default Credentials


_held: dict[GoogleSettings, object] = {}  # google-auth credentials, by settings
_lock = threading.Lock()


def google_token(settings: GoogleSettings, where: str) -> str:
    """A valid access token for the next query; a HistoryError naming what is missing or refused."""
    try:
        import google.auth
        from google.auth.exceptions import GoogleAuthError
        from google.auth.transport.requests import Request
    except ImportError:
        raise HistoryError(where, "reading Google Cloud Managed Prometheus (signals.prometheus_auth.google) needs "
                                  "google-auth: pip install 'peakpilot[gcp]'") from None
    with _lock:
        try:
            creds = _held.get(settings)
            if creds is None:
                named = settings.credentials_file or os.environ.get("GOOGLE_APPLICATION_CREDENTIALS")
                if named:  # (the file Application Default Credentials would read first)
                    creds = _from_file(named, where)
                else:
                    creds, _ = google.auth.default(scopes=[SCOPE])
                _held[settings] = creds
            if not creds.valid:
                creds.refresh(_timed(Request()))
            return creds.token
        except HistoryError:
            raise
        except (GoogleAuthError, ValueError) as exc:
            source = (f"the credentials file {settings.credentials_file}" if settings.credentials_file else
                      "Application Default Credentials (GOOGLE_APPLICATION_CREDENTIALS, or Workload Identity's "
                      "metadata server)")
            raise HistoryError(where, f"no Google access token from {source}: {str(exc).splitlines()[0][:300]}"
                               ) from None


def _from_file(path: str, where: str):
    """The credentials of a file: a service account's key, an external account (the kinds of Workload Identity
    Federation, chosen as google-auth chooses them: AWS's, an executable's, else a token file's or URL's), or
    another kind google-auth reads. An external account is built here rather than by google-auth's loader,
    which would first ask Cloud Resource Manager for the pool's project (a call the token's monitoring.read
    scope may not make, and nothing here needs)."""
    import google.auth
    from google.oauth2 import service_account

    try:
        with open(path, encoding="utf-8") as f:
            info = json.load(f)
    except OSError as exc:
        raise HistoryError(where, f"cannot read the Google credentials file {path}: {exc.strerror or exc}") from None
    except ValueError as exc:
        raise HistoryError(where, f"the Google credentials file {path} is not JSON: {exc}") from None
    kind = info.get("type") if isinstance(info, dict) else None
    if kind == "service_account":
        return service_account.Credentials.from_service_account_info(info, scopes=[SCOPE])
    if kind == "external_account":
        if info.get("subject_token_type") == "urn:ietf:params:aws:token-type:aws4_request":
            from google.auth import aws as federated
        elif (info.get("credential_source") or {}).get("executable") is not None:
            from google.auth import pluggable as federated
        else:
            from google.auth import identity_pool as federated
        return federated.Credentials.from_info(info, scopes=[SCOPE])
    return google.auth.load_credentials_from_file(path, scopes=[SCOPE])[0]


def _timed(request):
    """google-auth's transport, giving up after TOKEN_TIMEOUT_S where the caller sets no shorter wait."""
    def call(url, method="GET", body=None, headers=None, timeout=None, **kwargs):
        wait = TOKEN_TIMEOUT_S if timeout is None else min(timeout, TOKEN_TIMEOUT_S)
        return request(url, method=method, body=body, headers=headers, timeout=wait, **kwargs)

    return call


def forget(settings: GoogleSettings) -> None:
    """Drop the credentials held (the server refused their token): the next query gets new ones."""
    with _lock:
        _held.pop(settings, None)
