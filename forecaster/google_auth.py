"""Google Cloud Managed Service for Prometheus, read directly: its query API
(``https://monitoring.googleapis.com/v1/projects/PROJECT/location/global/prometheus``) takes a Google OAuth2
access token with the ``monitoring.read`` scope.

The token is google-auth's (the ``gcp`` extra): from a service account's key file where the policy names one,
else Application Default Credentials, which in a GKE pod with Workload Identity are the metadata server's. It
is refreshed when google-auth says it is no longer valid (a few minutes before it expires), and shared by
every source with the same settings, so a daemon's services ask once.
"""

from __future__ import annotations

import threading
from dataclasses import dataclass

from forecaster.errors import HistoryError
from forecaster.oauth2 import TOKEN_TIMEOUT_S  # (google-auth waits 120 s by default: two control cycles)

SCOPE = "https://www.googleapis.com/auth/monitoring.read"


@dataclass(frozen=True)
class GoogleSettings:
    credentials_file: str | None = None  # a service account's JSON key; None: Application Default Credentials


_held: dict[GoogleSettings, object] = {}  # google-auth credentials, by settings
_lock = threading.Lock()


def google_token(settings: GoogleSettings, where: str) -> str:
    """A valid access token for the next query; a HistoryError naming what is missing or refused."""
    try:
        import google.auth
        from google.auth.exceptions import GoogleAuthError
        from google.auth.transport.requests import Request
        from google.oauth2 import service_account
    except ImportError:
        raise HistoryError(where, "reading Google Cloud Managed Prometheus (signals.prometheus_auth.google) needs "
                                  "google-auth: pip install 'peakpilot[gcp]'") from None
    with _lock:
        try:
            creds = _held.get(settings)
            if creds is None:
                if settings.credentials_file:
                    creds = service_account.Credentials.from_service_account_file(settings.credentials_file,
                                                                                  scopes=[SCOPE])
                else:
                    creds, _ = google.auth.default(scopes=[SCOPE])
                _held[settings] = creds
            if not creds.valid:
                creds.refresh(_timed(Request()))
            return creds.token
        except FileNotFoundError:
            raise HistoryError(where, f"cannot read the Google service account key {settings.credentials_file}: "
                                      f"no such file") from None
        except (GoogleAuthError, ValueError) as exc:
            source = (f"the service account key {settings.credentials_file}" if settings.credentials_file else
                      "Application Default Credentials (GOOGLE_APPLICATION_CREDENTIALS, or Workload Identity's "
                      "metadata server)")
            raise HistoryError(where, f"no Google access token from {source}: {str(exc).splitlines()[0][:300]}"
                               ) from None


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
