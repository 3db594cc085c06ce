"""Before the first cycle on a cluster: may the controller do what its policies need? Each permission of
``controller/rbac.py`` is asked of the API server as a SelfSubjectAccessReview (which every authenticated
account may create), and what is refused is said at once, in one line with the fix, instead of as a 403
at the first scale-up, which may come hours later. A check, not a gate: RBAC applied a moment later
works from the next cycle on. Before a deploy (``check-policy --connect``), the Deployments the policies
name are looked up too, and what their pods show that the controller would have to work around.
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


def pool_health(api, policy) -> tuple[dict[str, dict[str, int]], list[str]]:
    """The nodes of a policy's pools by class and state, and what needs a look before the controller takes
    them over: pods that will not turn ready by themselves, pods the Deployments cannot create, spot not to
    be had, another autoscaler on them. Read as the controller's shadow view reads them: nothing changes."""
    from controller.kubernetes_actuator import KubernetesActuator, KubernetesTarget
    from controller.planner import lead_time_min
    from controller.state import Memory

    k = policy.kubernetes
    actuator = KubernetesActuator(api, KubernetesTarget(k.namespace, dict(k.workloads), k.placeholder), shadow=True)
    view = actuator.view()
    view.judge_spot(lead_time_min(policy, Memory(), "spot"))
    nodes = {cls: {state: n for state, n in view.counts[cls].items() if n} for cls in k.workloads}
    notes = [f"pod {failed}: it will not turn ready by itself (its image, its model or its node: kubectl -n "
             f"{k.namespace} describe pod {failed.split(':')[0]})" for failed in view.failures]
    notes += view.uncreated
    if not view.spot_available:
        notes.append(f"spot cannot be had now ({view.spot_unavailable_why}): on-demand will cover it")
    notes += [f"{other}: delete it before peakpilot acts (each would undo the other's replicas), or run "
              f"peakpilot with --shadow beside it" for other in actuator.other_autoscalers()]
    deployments = list(actuator.deployments.values())  # (as its view read them: not read again)
    notes += synced_replicas(deployments)
    notes += unguarded_pools(api, policy, deployments)
    return nodes, notes


GITOPS_MANAGERS = {"argocd": ("Argo CD", "or have Argo CD ignore them (ignoreDifferences on /spec/replicas)"),
                   "kustomize-controller": ("Flux", None), "helm-controller": ("Flux's Helm controller", None),
                   "fleet": ("Rancher Fleet", None)}
"""Field managers (by prefix) that apply a manifest again and again, and what else to do than leave replicas
out of it: where one holds a pool's replicas, each sync sets back the count the controller set."""


def synced_replicas(deployments) -> list[str]:
    """The pools whose ``spec.replicas`` a GitOps tool manages (their managedFields say which): it would set
    back every count peakpilot sets, as an HPA would, though it lists as no autoscaler."""
    notes = []
    for deployment in deployments:
        for entry in deployment.metadata.managed_fields or []:
            tool = next((t for prefix, t in GITOPS_MANAGERS.items() if (entry.manager or "").startswith(prefix)), None)
            if tool and "f:replicas" in (entry.fields_v1 or {}).get("f:spec", {}):
                name, advice = tool
                notes.append(f"Deployment {deployment.metadata.name}: its replicas are set by {entry.manager} "
                             f"({name}): each sync would set back the count peakpilot sets; leave replicas out of "
                             f"the manifest it syncs" + (f", {advice}" if advice else ""))
                break
    return notes


def unguarded_pools(api, policy, deployments) -> list[str]:
    """The pools whose pods no PodDisruptionBudget covers: a node drain or Karpenter's consolidation may
    then take several serving nodes at once, each a cold start. Not checked (nothing said) where the
    account may not list the budgets: the controller's own Role needs no such right."""
    from kubernetes import client
    from kubernetes.client.exceptions import ApiException

    k = policy.kubernetes
    try:
        budgets = with_retry(client.PolicyV1Api(api).list_namespaced_pod_disruption_budget, k.namespace,
                             attempts=2).items
    except ApiException as exc:
        if exc.status in (401, 403):
            return []
        raise
    unguarded = []
    for deployment in deployments:
        labels = deployment.spec.template.metadata.labels
        if not any(selects(b.spec.selector, labels or {}) for b in budgets):
            unguarded.append(deployment.metadata.name)
    if not unguarded:
        return []
    return [f"no PodDisruptionBudget covers the pods of {', '.join(unguarded)}: a node drain or Karpenter's "
            f"consolidation may take several serving nodes at once, each a cold start (deploy/inference-pools.yaml "
            f"has one over the pools, maxUnavailable 1)"]


def selects(selector, labels: dict) -> bool:
    """Whether a LabelSelector picks pods with ``labels``: an empty one picks every pod of the namespace (as
    a PodDisruptionBudget's does in policy/v1), a missing one none."""
    if selector is None:
        return False
    if any(labels.get(key) != value for key, value in (selector.match_labels or {}).items()):
        return False
    for e in selector.match_expressions or []:
        there, value = e.key in labels, labels.get(e.key)
        if not {"In": there and value in (e.values or []), "NotIn": not there or value not in (e.values or []),
                "Exists": there, "DoesNotExist": not there}.get(e.operator, False):
            return False
    return True
