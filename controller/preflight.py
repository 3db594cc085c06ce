"""Before the first cycle on a cluster: may the controller do what its policies need? Each permission of
``controller/rbac.py`` is asked of the API server as a SelfSubjectAccessReview (which every authenticated
account may create), and what is refused is said at once, in one line with the fix, instead of as a 403
at the first scale-up, which may come hours later. A check, not a gate: RBAC applied a moment later
works from the next cycle on.
"""

from __future__ import annotations

from controller.kube_client import with_retry


def missing_permissions(api, needed: list[tuple[str, str, str, str, str | None]]) -> list[str]:
    """The permissions the API server says this account lacks, as ``verb group/resource[/name] in ns``."""
    from kubernetes import client

    authz = client.AuthorizationV1Api(api)
    missing = []
    for namespace, group, resource, verb, name in needed:
        resource, _, subresource = resource.partition("/")
        review = {"apiVersion": "authorization.k8s.io/v1", "kind": "SelfSubjectAccessReview",
                  "spec": {"resourceAttributes": {"namespace": namespace, "group": group, "resource": resource,
                                                  "subresource": subresource or None, "verb": verb,
                                                  "name": name}}}
        answer = with_retry(authz.create_self_subject_access_review, review, attempts=2)
        if not answer.status.allowed:
            what = f"{group or 'core'}/{resource}" + (f"/{subresource}" if subresource else "")
            missing.append(f"{verb} {what}" + (f" {name}" if name else "") + f" in {namespace}")
    return missing


def missing_workloads(api, policy) -> list[str]:
    """The Deployments a policy names that the API server does not have (a typo in ``kubernetes.workloads``,
    or pools not applied yet), as ``KEY: no Deployment NAME in NAMESPACE``: the daemon would find each at
    its first rescale."""
    from kubernetes import client

    k = policy.kubernetes
    named = [(f"kubernetes.workloads.{cls}", name) for cls, name in k.workloads.items()]
    if k.placeholder:
        named.append(("kubernetes.placeholder", k.placeholder))
    apps, missing = client.AppsV1Api(api), []
    for key, name in named:
        try:
            with_retry(apps.read_namespaced_deployment_scale, name, k.namespace, attempts=2)
        except Exception as exc:
            if getattr(exc, "status", None) != 404:
                raise
            missing.append(f"{key}: no Deployment {name} in {k.namespace}")
    return missing
