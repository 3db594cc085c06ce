"""The least-privilege RBAC a controller needs for its policies: what ``deploy/controller-rbac.yaml`` holds
for the deployed policy (``make manifests`` renders it), and what ``peakpilot check-policy --backend
kubernetes --rbac`` prints for yours, so that a Deployment renamed or a pool in another namespace is
granted before the controller meets a 403.

A ServiceAccount in the namespace of the first policy (where the daemon holds its Lease), and in every
namespace that holds pools a Role and a RoleBinding to it: read and scale only the named Deployments,
read and annotate pods, write an Event on a rescaled Deployment, list the HPAs (one left on a pool would
fight the controller); the Lease's namespace also creates and renews the Lease. ``tests/test_deploy.py``
runs a leader's requests against the rendered Role.
"""

from __future__ import annotations

from collections.abc import Iterable

import yaml

from controller.policy import CLASSES, Policy

SERVICE_ACCOUNT = "peakpilot"

HEADER = """\
# Least privilege for the peakpilot controller, generated from the policies it runs:
#   {how}
# Render it again when a policy names other Deployments, another namespace or another Lease. The
# controller may read and scale only the named Deployments, read pods (and annotate them: do-not-disrupt
# while they warm, a deletion cost before a scale-down), write an Event on a Deployment it rescaled,
# saying why (as the HPA does), list the HPAs of the namespace (one left on a pool it scales would fight
# it), and hold its Lease. Nothing else.
"""


def pools(policies: Iterable[Policy]) -> dict[str, list[str]]:
    """Namespace -> the Deployments the policies scale there (each class's, then the placeholder)."""
    found: dict[str, list[str]] = {}
    for policy in policies:
        k8s = policy.kubernetes
        names = found.setdefault(k8s.namespace, [])
        for name in [k8s.workloads[c] for c in CLASSES if k8s.workloads.get(c)] + [k8s.placeholder]:
            if name and name not in names:
                names.append(name)
    return found


def rbac_documents(policies: list[Policy], lease_name: str = "peakpilot") -> list[dict]:
    """The ServiceAccount, then a Role and a RoleBinding per namespace (the Lease's first)."""
    if not policies:
        raise ValueError("no policies to grant anything for")
    home = policies[0].kubernetes.namespace  # where `peakpilot run` holds its Lease
    scaled = pools(policies)
    docs: list[dict] = [{"apiVersion": "v1", "kind": "ServiceAccount",
                         "metadata": {"name": SERVICE_ACCOUNT, "namespace": home}}]
    for namespace in [home] + sorted(set(scaled) - {home}):
        rules = []
        names = scaled.get(namespace)
        if names:
            rules += [
                {"apiGroups": ["apps"], "resources": ["deployments"], "resourceNames": list(names), "verbs": ["get"]},
                {"apiGroups": ["apps"], "resources": ["deployments/scale"], "resourceNames": list(names),
                 "verbs": ["get", "patch"]},
                {"apiGroups": [""], "resources": ["pods"], "verbs": ["get", "list", "watch", "patch"]},
                {"apiGroups": ["events.k8s.io"], "resources": ["events"], "verbs": ["create"]},
                {"apiGroups": ["autoscaling"], "resources": ["horizontalpodautoscalers"], "verbs": ["list"]},
            ]
        if namespace == home:
            rules += [
                {"apiGroups": ["coordination.k8s.io"], "resources": ["leases"], "verbs": ["create"]},
                {"apiGroups": ["coordination.k8s.io"], "resources": ["leases"], "resourceNames": [lease_name],
                 "verbs": ["get", "update"]},
            ]
        meta = {"name": SERVICE_ACCOUNT, "namespace": namespace}
        docs.append({"apiVersion": "rbac.authorization.k8s.io/v1", "kind": "Role", "metadata": meta,
                     "rules": rules})
        docs.append({"apiVersion": "rbac.authorization.k8s.io/v1", "kind": "RoleBinding", "metadata": dict(meta),
                     "roleRef": {"apiGroup": "rbac.authorization.k8s.io", "kind": "Role", "name": SERVICE_ACCOUNT},
                     "subjects": [{"kind": "ServiceAccount", "name": SERVICE_ACCOUNT, "namespace": home}]})
    return docs


def needed(policies: list[Policy], lease_name: str = "peakpilot",
           shadow: bool = False) -> list[tuple[str, str, str, str, str | None]]:
    """Each permission the controller will use, as (namespace, API group, resource, verb, name): what the
    rendered Roles grant, one by one (in shadow mode only the reads)."""
    out = []
    for doc in rbac_documents(policies, lease_name):
        if doc["kind"] != "Role":
            continue
        for rule in doc["rules"]:
            for resource in rule["resources"]:
                for verb in rule["verbs"]:
                    if shadow and verb not in ("get", "list", "watch"):
                        continue
                    for name in rule.get("resourceNames") or [None]:
                        out.append((doc["metadata"]["namespace"], rule["apiGroups"][0], resource, verb, name))
    return out


def rbac_command(lease_name: str, given: Iterable) -> str:
    """The command that renders the RBAC for these policy files and this Lease."""
    return " ".join(["peakpilot check-policy --backend kubernetes --rbac"]
                    + ([f"--lease-name {lease_name}"] if lease_name != "peakpilot" else []) + [str(g) for g in given])


def render_rbac(policies: list[Policy], lease_name: str = "peakpilot",
                how: str = "peakpilot check-policy --backend kubernetes --rbac POLICY_FILES") -> str:
    """The documents as one YAML stream, lists of names on one line; ``how`` names the command that made it."""
    body = "---\n".join(yaml.safe_dump(doc, sort_keys=False, default_flow_style=None, width=110)
                        for doc in rbac_documents(policies, lease_name))
    return HEADER.format(how=how) + body
