"""How peakpilot talks to the Kubernetes API server, for the actuator and the Lease alike.

* Auth: in a pod its ServiceAccount, else the kubeconfig (``api_client``).
* Every call has a timeout (``REQUEST_TIMEOUT_S``: the client's default waits for ever), and 409, 429 and
  5xx answers are retried with exponential backoff and jitter (``Retry-After`` honoured; ``with_retry``).
* An API server that could not be reached is not asked again for ``RETRY_AFTER_FAILURE_S`` by any caller
  in the process: a daemon with many services waits for it once per cycle, not once per service.
* A refusal retrying cannot fix is raised on one line: the call, the object, the status and the API
  server's message (the client's own text spans lines of HTTP headers).
* ``micro_time``: a time the API server will decode as a MicroTime.
"""

from __future__ import annotations

import functools
import logging
import random
import time
from datetime import datetime, timezone
from pathlib import Path

log = logging.getLogger(__name__)

RETRY_STATUSES = (409, 429, 500, 502, 503, 504)


class KubeConfigError(RuntimeError):
    """No way to reach and authenticate to an API server: not in a pod, and no usable kubeconfig."""


def api_client(host: str | None = None, kubeconfig: str | None = None):
    """The kubeconfig named (``--kubeconfig``), else in-cluster auth when running in a pod, else the
    default kubeconfig (``KUBECONFIG``, ``~/.kube/config``); ``host`` for a plain endpoint (tests)."""
    from kubernetes import client, config
    from urllib3.util.retry import Retry

    if host:
        cfg = client.Configuration(host=host)
    else:
        if kubeconfig and not Path(kubeconfig).expanduser().is_file():
            raise KubeConfigError(f"cannot reach the Kubernetes API: the kubeconfig {kubeconfig} does not exist")
        try:
            if kubeconfig:
                config.load_kube_config(config_file=kubeconfig)
            else:
                try:
                    config.load_incluster_config()
                except config.ConfigException:
                    config.load_kube_config()
        except (config.ConfigException, OSError) as exc:
            where = f"the kubeconfig {kubeconfig}" if kubeconfig else (
                "no in-cluster ServiceAccount (not in a pod) and no kubeconfig (KUBECONFIG, ~/.kube/config)")
            raise KubeConfigError(f"cannot reach the Kubernetes API: {where}: {str(exc).rstrip('.')}; give "
                                  f"--kubeconfig, or run "
                                  f"in a pod with the ServiceAccount of deploy/controller-rbac.yaml") from None
        cfg = client.Configuration.get_default_copy()
    # urllib3's default tries a GET four times, each waiting its whole read timeout: a silent API server
    # would hold a cycle for minutes. Refused connections are still tried again, quickly.
    cfg.retries = Retry(total=3, read=1, backoff_factor=0.25)
    return client.ApiClient(cfg)


# (connect, read) seconds for every API call: the client's default is to wait for ever, and an API server
# that takes the connection and never answers would then hang the cycle, and every cycle after it.
REQUEST_TIMEOUT_S = (5.0, 20.0)
# An API server that could not be reached is not asked again this soon by any actuator of the process:
# a daemon with many services then waits for it once per cycle, not once per service.
RETRY_AFTER_FAILURE_S = 30.0
_unreachable: dict[str, tuple[float, str]] = {}  # API server URL -> (monotonic time it failed, how)


class ApiUnreachable(RuntimeError):
    """The API server refused the connection or did not answer in time."""


def _server_of(call) -> str:
    api = getattr(getattr(call, "__self__", None), "api_client", None)
    return getattr(getattr(api, "configuration", None), "host", None) or "the Kubernetes API"


def with_retry(call, *args, attempts: int = 5, base_s: float = 0.2, cap_s: float = 5.0, sleep=time.sleep, **kwargs):
    """Call the API, retrying conflicts, throttling and server errors with backoff and jitter."""
    from kubernetes.client.exceptions import ApiException
    from urllib3.exceptions import HTTPError

    server = _server_of(call)
    failed = _unreachable.get(server)
    if failed and time.monotonic() - failed[0] < RETRY_AFTER_FAILURE_S:
        raise ApiUnreachable(f"{server}: {failed[1]} {time.monotonic() - failed[0]:.0f} s ago; not asked again "
                             f"until {RETRY_AFTER_FAILURE_S:g} s have passed")
    kwargs.setdefault("_request_timeout", REQUEST_TIMEOUT_S)
    for attempt in range(attempts):
        try:
            result = call(*args, **kwargs)
            _unreachable.pop(server, None)
            return result
        except HTTPError as exc:  # urllib3: refused, reset, or timed out (after its own retries)
            how = (f"did not answer within {REQUEST_TIMEOUT_S[1]:g} s" if "timed out" in str(exc).lower()
                   else f"is unreachable ({type(getattr(exc, 'reason', exc) or exc).__name__})")
            _unreachable[server] = (time.monotonic(), how)
            raise ApiUnreachable(f"{server}: the API server {how}") from None
        except ApiException as exc:
            if exc.status not in RETRY_STATUSES or attempt == attempts - 1:
                raise _one_line(exc, call, args) from None
            after = (exc.headers or {}).get("Retry-After")
            delay = float(after) if after else min(cap_s, base_s * 2 ** attempt) * (0.5 + random.random())
            log.warning("kubernetes answered %s (%s); retry %d in %.2f s", exc.status, exc.reason, attempt + 1, delay)
            sleep(delay)


def _one_line(exc, call, args) -> Exception:
    """The API's refusal as the log should say it, on one line: the request (which call, on what), the
    status, and the API server's own message, where the client's text spans lines of HTTP headers. Still
    an ``ApiException`` with its ``status``, for the callers that tell a 404 or a 409 apart."""
    import json

    try:
        message = json.loads(exc.body or "{}").get("message") or exc.reason
    except (ValueError, AttributeError):
        message = exc.reason
    target = ", ".join(str(a) for a in args if isinstance(a, str))  # the object's name and namespace
    text = f"kubernetes {getattr(call, '__name__', 'call')}({target}): {exc.status} {exc.reason}: {message}"
    error = _api_error_class()(status=exc.status, reason=exc.reason)
    error.headers, error.body, error.text = exc.headers, exc.body, text
    return error


@functools.cache
def _api_error_class():
    from kubernetes.client.exceptions import ApiException

    class ApiError(ApiException):
        def __str__(self) -> str:
            return self.text

    return ApiError


def micro_time(t: datetime) -> datetime:
    """A time for a MicroTime field (a Lease's renewTime, an Event's eventTime), in UTC. The API server
    parses those with exactly six fractional digits, and the client writes a datetime with ``isoformat``,
    which leaves the fraction out at a whole second (one write in a million, refused with 400): such a
    time goes one microsecond later, which no reader of a Lease or an Event can tell apart."""
    t = t.astimezone(timezone.utc)
    return t.replace(microsecond=1) if t.microsecond == 0 else t
