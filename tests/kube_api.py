"""A local HTTP server that speaks the Kubernetes API's paths, verbs, bodies and status codes for what
peakpilot uses: Deployments and their scale subresource, Pods (list by label selector, patch),
coordination.k8s.io Leases with resourceVersion conflicts, autoscaling/v2 HorizontalPodAutoscalers
(listed), and events.k8s.io Events (created, and refused with 422 Invalid for the fields the real API
validates). As the real one, it refuses a patch whose media type does not fit its body (415) and a
MicroTime without six fractional digits (400). No API server can run on these machines.

Faults are injected per request: ``fail("PATCH", "/scale", 429, retry_after=0)`` answers the next matching
request with that status (a Kubernetes ``Status`` body). Every request is recorded for assertions.
"""

from __future__ import annotations

import copy
import json
import re
import threading
from datetime import datetime, timezone
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from urllib.parse import parse_qs, urlparse


# The patch media types the API server takes for a body of each JSON type (a JSON patch is a list).
PATCH_TYPES = {"dict": ("application/strategic-merge-patch+json", "application/merge-patch+json"),
               "list": ("application/json-patch+json",)}


def status_body(code: int, reason: str, message: str) -> dict:
    return {"kind": "Status", "apiVersion": "v1", "metadata": {}, "status": "Failure", "message": message,
            "reason": reason, "code": code}


REASONS = {400: "BadRequest", 403: "Forbidden", 404: "NotFound", 409: "Conflict", 415: "UnsupportedMediaType",
           422: "Invalid", 429: "TooManyRequests", 500: "InternalError", 503: "ServiceUnavailable"}


def merge(target: dict, patch: dict) -> dict:
    """JSON merge patch (RFC 7386): null deletes."""
    for k, v in patch.items():
        if v is None:
            target.pop(k, None)
        elif isinstance(v, dict) and isinstance(target.get(k), dict):
            merge(target[k], v)
        else:
            target[k] = copy.deepcopy(v)
    return target


class FakeKubeAPI:
    def __init__(self, namespace: str = "inference"):
        self.ns = namespace
        self.deployments: dict[str, dict] = {}
        self.pods: dict[str, dict] = {}
        self.leases: dict[str, dict] = {}
        self.events: list[dict] = []
        self.hpas: dict[str, dict] = {}
        self.pdbs: dict[str, dict] = {}
        # The Role the caller holds, for SelfSubjectAccessReviews (None: every request allowed). Reviews
        # only: the other routes do not enforce it (tests/test_deploy.py checks requests against it).
        self.role: dict | None = None
        self.requests: list[tuple[str, str, dict | None]] = []
        self.faults: list[tuple[str, str, int, dict]] = []
        self.version = 100
        self.lock = threading.Lock()
        self.server = ThreadingHTTPServer(("127.0.0.1", 0), self._handler())
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}"
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)

    def __enter__(self) -> FakeKubeAPI:
        self.thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self.server.shutdown()
        self.server.server_close()

    # -- fixtures ---------------------------------------------------------------------------------
    def add_deployment(self, name: str, replicas: int, labels: dict | None = None,
                       selector: dict | None = None) -> None:
        """A Deployment whose pods carry ``labels``, selected by them (or by ``selector``, a LabelSelector)."""
        labels = labels or {"app": name}
        self.deployments[name] = {
            "apiVersion": "apps/v1", "kind": "Deployment",
            "metadata": {"name": name, "namespace": self.ns, "uid": f"uid-deployment-{name}",
                         "resourceVersion": self._rv()},
            "spec": {"replicas": replicas, "selector": selector or {"matchLabels": labels},
                     "template": {"metadata": {"labels": labels},
                                  "spec": {"containers": [{"name": "node", "image": "peakpilot/node"}]}}},
            "status": {"replicas": replicas}}

    def refuse_pods(self, deployment: str, message: str, since: str) -> None:
        """The Deployment's ReplicaSet cannot create its pods (a quota, a webhook): the condition the
        Deployment controller then sets on the Deployment."""
        self.deployments[deployment]["status"]["conditions"] = [
            {"type": "ReplicaFailure", "status": "True", "reason": "FailedCreate", "message": message,
             "lastTransitionTime": since, "lastUpdateTime": since}]

    def add_pod(self, name: str, labels: dict, state: str, created: str = "2024-05-01T12:00:00Z",
                ready_at: str | None = None, waiting: str | None = None, restarts: int = 0,
                scheduled_at: str | None = None) -> None:
        """A pod in ``state``; ``waiting`` gives its container a waiting reason (CrashLoopBackOff, ...)."""
        conditions = [{"type": "PodScheduled", "status": "False" if state == "pending" else "True",
                       "lastTransitionTime": created if state == "pending" else scheduled_at or created}]
        if state in ("ready", "draining"):
            conditions.append({"type": "Ready", "status": "True", "lastTransitionTime": ready_at or created})
        else:
            conditions.append({"type": "Ready", "status": "False", "lastTransitionTime": created})
        pod = {"apiVersion": "v1", "kind": "Pod",
               "metadata": {"name": name, "namespace": self.ns, "uid": f"uid-{name}", "labels": labels,
                            "creationTimestamp": created, "annotations": {}, "resourceVersion": self._rv()},
               "spec": {"containers": [{"name": "node", "image": "peakpilot/node"}]},
               "status": {"phase": "Pending" if state == "pending" else "Running", "conditions": conditions}}
        if waiting:
            pod["status"]["containerStatuses"] = [{
                "name": "node", "image": "peakpilot/node", "imageID": "", "ready": False, "restartCount": restarts,
                "state": {"waiting": {"reason": waiting, "message": f"{waiting}: see the pod's events"}}}]
        elif restarts:
            pod["status"]["containerStatuses"] = [{
                "name": "node", "image": "peakpilot/node", "imageID": "", "ready": state in ("ready", "draining"),
                "restartCount": restarts, "state": {"running": {"startedAt": ready_at or created}}}]
        if state == "draining":
            pod["metadata"]["deletionTimestamp"] = created
        self.pods[name] = pod

    def add_hpa(self, name: str, target: str, kind: str = "Deployment") -> None:
        """An autoscaling/v2 HorizontalPodAutoscaler on ``target`` (CPU utilization, as most are)."""
        self.hpas[name] = {
            "apiVersion": "autoscaling/v2", "kind": "HorizontalPodAutoscaler",
            "metadata": {"name": name, "namespace": self.ns, "resourceVersion": self._rv()},
            "spec": {"scaleTargetRef": {"apiVersion": "apps/v1", "kind": kind, "name": target},
                     "minReplicas": 1, "maxReplicas": 10,
                     "metrics": [{"type": "Resource", "resource": {"name": "cpu", "target": {
                         "type": "Utilization", "averageUtilization": 70}}}]}}

    def add_pdb(self, name: str, selector: dict, max_unavailable: int = 1) -> None:
        """A policy/v1 PodDisruptionBudget over the pods ``selector`` (a LabelSelector) picks."""
        self.pdbs[name] = {"apiVersion": "policy/v1", "kind": "PodDisruptionBudget",
                           "metadata": {"name": name, "namespace": self.ns, "resourceVersion": self._rv()},
                           "spec": {"maxUnavailable": max_unavailable, "selector": selector}}

    def fail(self, method: str, path_part: str, status: int, retry_after: float | None = None) -> None:
        headers = {"Retry-After": str(retry_after)} if retry_after is not None else {}
        self.faults.append((method, path_part, status, headers))

    def calls(self, method: str | None = None, path_part: str = "") -> list[tuple[str, str, dict | None]]:
        return [r for r in self.requests if (method is None or r[0] == method) and path_part in r[1]]

    def _rv(self) -> str:
        self.version += 1
        return str(self.version)

    # -- the API ----------------------------------------------------------------------------------
    def handle(self, method: str, path: str, query: dict, body: dict | None) -> tuple[int, dict, dict]:
        with self.lock:
            self.requests.append((method, path, body))
            for i, (m, part, status, headers) in enumerate(self.faults):
                if m == method and part in path:
                    del self.faults[i]
                    return status, status_body(status, REASONS.get(status, "Unknown"), "injected"), headers
            ns = self.ns
            m = re.fullmatch(rf"/apis/apps/v1/namespaces/{ns}/deployments/([^/]+)(/scale)?", path)
            if m:
                d = self.deployments.get(m.group(1))
                if d is None:
                    return 404, status_body(404, "NotFound", f'deployments.apps "{m.group(1)}" not found'), {}
                if m.group(2):
                    if method == "PATCH":
                        d["spec"]["replicas"] = body["spec"]["replicas"]
                        d["metadata"]["resourceVersion"] = self._rv()
                    return 200, {"apiVersion": "autoscaling/v1", "kind": "Scale",
                                 "metadata": {"name": m.group(1), "namespace": ns, "uid": d["metadata"]["uid"],
                                              "resourceVersion": d["metadata"]["resourceVersion"]},
                                 "spec": {"replicas": d["spec"]["replicas"]},
                                 "status": {"replicas": d["status"]["replicas"]}}, {}
                return 200, d, {}
            if path == f"/api/v1/namespaces/{ns}/pods" and method == "GET":
                try:
                    selects = parse_selector(query.get("labelSelector", [""])[0])
                except ValueError as exc:
                    return 400, status_body(400, "BadRequest", f"unable to parse requirement: {exc}"), {}
                items = [p for p in self.pods.values() if selects(p["metadata"].get("labels") or {})]
                return 200, {"apiVersion": "v1", "kind": "PodList", "metadata": {"resourceVersion": self._rv()},
                             "items": items}, {}
            m = re.fullmatch(rf"/api/v1/namespaces/{ns}/pods/([^/]+)", path)
            if m and method == "PATCH":
                pod = self.pods.get(m.group(1))
                if pod is None:
                    return 404, status_body(404, "NotFound", "pod not found"), {}
                merge(pod, body)
                return 200, pod, {}
            bad_time = micro_time_problem(body, ("spec", "acquireTime"), ("spec", "renewTime"), ("eventTime",))
            if method in ("POST", "PUT") and bad_time:
                kind = (body or {}).get("kind", "object")
                return 400, status_body(400, "BadRequest", f'{kind} in version "v1" cannot be handled as a '
                                                           f'{kind}: {bad_time}'), {}
            m = re.fullmatch(rf"/apis/coordination.k8s.io/v1/namespaces/{ns}/leases(?:/([^/]+))?", path)
            if m:
                name = m.group(1) or (body or {}).get("metadata", {}).get("name")
                lease = self.leases.get(name)
                if method == "GET":
                    if lease is None:
                        return 404, status_body(404, "NotFound", f'leases "{name}" not found'), {}
                    return 200, lease, {}
                if method == "POST":
                    if lease is not None:
                        return 409, status_body(409, "AlreadyExists", "lease exists"), {}
                    self.leases[name] = merge(body, {"metadata": {"resourceVersion": self._rv()}})
                    return 201, self.leases[name], {}
                if method == "PUT":
                    if lease is None:
                        return 404, status_body(404, "NotFound", "lease not found"), {}
                    if body["metadata"].get("resourceVersion") != lease["metadata"]["resourceVersion"]:
                        return 409, status_body(409, "Conflict", "the object has been modified"), {}
                    self.leases[name] = merge(body, {"metadata": {"resourceVersion": self._rv()}})
                    return 200, self.leases[name], {}
            if path == "/apis/authorization.k8s.io/v1/selfsubjectaccessreviews" and method == "POST":
                attrs = body["spec"]["resourceAttributes"]
                resource = attrs["resource"] + (f"/{attrs['subresource']}" if attrs.get("subresource") else "")
                allowed = self.role is None or (attrs.get("namespace") == ns and role_allows(
                    self.role, attrs.get("group", ""), resource, attrs["verb"], attrs.get("name")))
                return 201, {**body, "status": {"allowed": allowed}}, {}
            if path == f"/apis/autoscaling/v2/namespaces/{ns}/horizontalpodautoscalers" and method == "GET":
                return 200, {"apiVersion": "autoscaling/v2", "kind": "HorizontalPodAutoscalerList",
                             "metadata": {"resourceVersion": self._rv()}, "items": list(self.hpas.values())}, {}
            if path == f"/apis/policy/v1/namespaces/{ns}/poddisruptionbudgets" and method == "GET":
                return 200, {"apiVersion": "policy/v1", "kind": "PodDisruptionBudgetList",
                             "metadata": {"resourceVersion": self._rv()}, "items": list(self.pdbs.values())}, {}
            if path == f"/apis/events.k8s.io/v1/namespaces/{ns}/events" and method == "POST":
                problems = event_problems(body, ns)
                if problems:
                    return 422, status_body(422, "Invalid", f'Event "{body.get("metadata", {}).get("name")}" is '
                                                           f'invalid: {"; ".join(problems)}'), {}
                name = body["metadata"]["name"]
                if any(e["metadata"]["name"] == name for e in self.events):
                    return 409, status_body(409, "AlreadyExists", f'events.events.k8s.io "{name}" already exists'), {}
                event = merge(copy.deepcopy(body), {"metadata": {"resourceVersion": self._rv()}})
                self.events.append(event)
                return 201, event, {}
            return 404, status_body(404, "NotFound", f"no route {method} {path}"), {}

    def _handler(self):
        api = self

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, *args):  # quiet
                pass

            def _serve(self, method: str) -> None:
                url = urlparse(self.path)
                length = int(self.headers.get("Content-Length") or 0)
                body = json.loads(self.rfile.read(length)) if length else None
                kind = (self.headers.get("Content-Type") or "").split(";")[0]
                if method == "PATCH" and kind not in PATCH_TYPES.get(type(body).__name__, ()):
                    # As the API server: a patch names its kind, and an object is a merge patch.
                    status, doc, headers = 415, status_body(415, "UnsupportedMediaType",
                                                            f"the body of the request was in an unknown format "
                                                            f"- accepted media types include: {', '.join(PATCH_TYPES['dict'])}"), {}
                else:
                    status, doc, headers = api.handle(method, url.path, parse_qs(url.query), body)
                data = json.dumps(doc).encode()
                self.send_response(status)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(data)))
                for k, v in headers.items():
                    self.send_header(k, v)
                self.end_headers()
                self.wfile.write(data)

            def do_GET(self):
                self._serve("GET")

            def do_PATCH(self):
                self._serve("PATCH")

            def do_PUT(self):
                self._serve("PUT")

            def do_POST(self):
                self._serve("POST")

        return Handler


def role_allows(role: dict, group: str, resource: str, verb: str, name: str | None) -> bool:
    """Kubernetes RBAC: some rule names the group, the resource and the verb, and either no names or
    this one (a create or a list has no name, so a rule with resourceNames never allows it)."""
    for rule in role["rules"]:
        names = rule.get("resourceNames")
        if (group in rule["apiGroups"] and resource in rule["resources"] and verb in rule["verbs"]
                and (not names or (name is not None and name in names))):
            return True
    return False


MICRO_TIME = re.compile(r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{6}(Z|[+-]\d\d:\d\d)")


def parse_selector(text: str):
    """A ``labelSelector`` as the API server parses it (apimachinery's labels.Parse): terms joined by
    commas, each ``k=v``, ``k==v``, ``k!=v``, ``k in (a,b)``, ``k notin (a,b)``, ``k`` or ``!k``; a
    predicate on a pod's labels."""
    terms, tests = re.findall(r"[^,(]+(?:\([^)]*\))?", text), []
    for term in (t.strip() for t in terms):
        if m := re.fullmatch(r"([\w./-]+)\s+(in|notin)\s+\(([^)]*)\)", term):
            key, op, values = m.group(1), m.group(2), {v.strip() for v in m.group(3).split(",")}
            tests.append(lambda labels, k=key, vs=values, o=op: (labels.get(k) in vs) == (o == "in"))
        elif m := re.fullmatch(r"([\w./-]+)\s*(==|=|!=)\s*([\w./-]*)", term):
            key, op, value = m.groups()
            tests.append(lambda labels, k=key, v=value, o=op: (labels.get(k) == v) == (o != "!="))
        elif m := re.fullmatch(r"(!?)([\w./-]+)", term):
            tests.append(lambda labels, k=m.group(2), no=m.group(1): (k in labels) != bool(no))
        else:
            raise ValueError(f"{term!r}")
    return lambda labels: all(t(labels) for t in tests)


def micro_time_problem(body: dict | None, *paths: tuple[str, ...]) -> str | None:
    """The API server decodes a MicroTime with Go's layout 2006-01-02T15:04:05.000000Z07:00: exactly six
    fractional digits, or the whole request is refused (400) before any validation."""
    for path in paths:
        value = body
        for key in path:
            value = value.get(key) if isinstance(value, dict) else None
        if value is not None and not MICRO_TIME.fullmatch(str(value)):
            return f'parsing time "{value}" as "2006-01-02T15:04:05.000000Z07:00": cannot parse'
    return None


QUALIFIED_NAME = re.compile(r"([a-z0-9]([-a-z0-9.]*[a-z0-9])?/)?[A-Za-z0-9]([-A-Za-z0-9_.]*[A-Za-z0-9])?")


def event_problems(event: dict, namespace: str) -> list[str]:
    """What the API server's validation of a new events.k8s.io/v1 Event refuses (apis/core/validation/
    events.go): required fields, their length limits, the type, and the regarding object's namespace."""
    problems = []
    if not event.get("metadata", {}).get("name"):
        problems.append("metadata.name: Required value")
    if not event.get("eventTime"):
        problems.append("eventTime: Required value")
    for key, limit in (("reportingInstance", 128), ("action", 128), ("reason", 128)):
        if not event.get(key):
            problems.append(f"{key}: Required value")
        elif len(event[key]) > limit:
            problems.append(f"{key}: Too long: may not be more than {limit} bytes")
    controller = event.get("reportingController") or ""
    if not QUALIFIED_NAME.fullmatch(controller) or len(controller) > 316:
        problems.append(f"reportingController: Invalid value: {controller!r}: must be a qualified name")
    if event.get("type") not in ("Normal", "Warning"):
        problems.append(f"type: Unsupported value: {event.get('type')!r}")
    if len((event.get("note") or "").encode()) > 1024:
        problems.append("note: Too long: may not be more than 1024 bytes")
    if (event.get("regarding") or {}).get("namespace") not in (None, "", namespace):
        problems.append("regarding.namespace: Invalid value: does not match event.namespace")
    return problems


def utc(text: str) -> datetime:
    return datetime.fromisoformat(text.replace("Z", "+00:00")).astimezone(timezone.utc)
