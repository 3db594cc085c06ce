"""Every manifest in deploy/ is a valid Kubernetes object for the official client's models, the
RBAC grants no more than the controller uses, and the image the manifests run (Dockerfile) holds
what they need and accepts their arguments."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
import tomllib
from pathlib import Path

import pytest
import typer
import yaml
from kubernetes import client

from controller.policy import Policy
from tests.kube_api import role_allows

DEPLOY = Path(__file__).resolve().parent.parent / "deploy"
MODELS = {"Deployment": "V1Deployment", "ServiceAccount": "V1ServiceAccount", "Role": "V1Role",
          "RoleBinding": "V1RoleBinding", "ConfigMap": "V1ConfigMap", "PriorityClass": "V1PriorityClass",
          "Namespace": "V1Namespace", "Service": "V1Service", "PodDisruptionBudget": "V1PodDisruptionBudget"}


def documents():
    for path in sorted(DEPLOY.glob("*.yaml")):
        for doc in yaml.safe_load_all(path.read_text()):
            if doc:
                yield path.name, doc


def strip_empty(value):
    if isinstance(value, dict):
        return {k: strip_empty(v) for k, v in value.items() if v not in (None, {}, [])}
    if isinstance(value, list):
        return [strip_empty(v) for v in value]
    return value


@pytest.mark.parametrize("name,doc", list(documents()), ids=lambda x: x if isinstance(x, str) else x["kind"])
def test_manifest_is_a_valid_object_with_no_unknown_fields(name, doc):
    api = client.ApiClient()
    model = api.deserialize(json.dumps(doc), MODELS[doc["kind"]], "application/json")  # validates required fields
    back = strip_empty(api.sanitize_for_serialization(model))
    # Anything the model does not know (a typo) is dropped on the way in: the round trip shows it.
    assert back == strip_empty(doc)


def all_docs():
    return {(d["kind"], d["metadata"]["name"]): d for _, d in documents()}


def test_kubectl_apply_of_the_folder_creates_what_each_object_needs_first():
    """`kubectl apply -f deploy/` applies the files in name order: an object in the `inference` namespace
    before the Namespace (or a pod template naming a PriorityClass before it) fails on a first install."""
    created: set[tuple[str, str]] = set()
    for _, doc in documents():  # in the order kubectl reads them
        namespace = doc["metadata"].get("namespace")
        if namespace:
            assert ("Namespace", namespace) in created, f"{doc['kind']}/{doc['metadata']['name']} before its namespace"
        if doc["kind"] == "Deployment":
            priority = doc["spec"]["template"]["spec"].get("priorityClassName")
            if priority:
                assert ("PriorityClass", priority) in created, f"{doc['metadata']['name']} before its PriorityClass"
        created.add((doc["kind"], doc["metadata"]["name"]))


def test_rbac_is_least_privilege_and_names_the_policy_workloads():
    docs = all_docs()
    role = docs[("Role", "peakpilot")]
    for rule in role["rules"]:
        assert "*" not in rule["verbs"] and "*" not in rule["resources"]
    scale = next(r for r in role["rules"] if r["resources"] == ["deployments/scale"])
    assert scale["verbs"] == ["get", "patch"]
    policy = Policy.model_validate(yaml.safe_load(docs[("ConfigMap", "peakpilot-policy")]["data"]["llm-chat.yaml"]))
    names = set(policy.kubernetes.workloads.values()) | {policy.kubernetes.placeholder}
    assert set(scale["resourceNames"]) == names
    for name in names:  # every workload the policy scales exists
        assert ("Deployment", name) in docs
    lease = next(r for r in role["rules"] if r.get("resourceNames") == ["peakpilot"])
    assert lease["resources"] == ["leases"] and set(lease["verbs"]) == {"get", "update"}
    binding = docs[("RoleBinding", "peakpilot")]
    assert binding["subjects"][0]["name"] == docs[("Deployment", "peakpilot-controller")]["spec"]["template"]["spec"]["serviceAccountName"]


def api_request(method: str, path: str) -> tuple[str, str, str, str | None]:
    """(API group, resource, verb, name) of a request path, as the API server's authorizer sees it."""
    parts = path.strip("/").split("/")
    group = "" if parts[0] == "api" else parts[1]
    rest = parts[parts.index("namespaces") + 2:]  # resource, name, subresource
    resource = rest[0] + (f"/{rest[2]}" if len(rest) > 2 else "")
    name = rest[1] if len(rest) > 1 else None
    verb = {"GET": "get" if name else "list", "POST": "create", "PUT": "update", "PATCH": "patch"}[method]
    return group, resource, verb, name


def leader_requests(policy: Policy, lease_name: str = "peakpilot") -> set[tuple[str, str, str, str | None]]:
    """Every request a leader's cycles make for a policy, against the fake API server: read the Deployments,
    pods and HPAs, protect a warming pod, rank pods before a scale-down, scale, record the Event, take and
    renew the Lease (in the policy's namespace, as `peakpilot run` does)."""
    from datetime import datetime, timezone

    from controller.kube_client import api_client
    from controller.kubernetes_actuator import KubernetesActuator, KubernetesTarget
    from controller.lease import LeaseLock
    from controller.state import Decision
    from tests.kube_api import FakeKubeAPI

    k8s = policy.kubernetes
    with FakeKubeAPI(k8s.namespace) as kube:
        for cls, name in k8s.workloads.items():
            kube.add_deployment(name, 2)
            kube.add_pod(f"{name}-a", {"app": name}, "ready", created="2024-05-01T11:00:00Z")
            kube.add_pod(f"{name}-b", {"app": name}, "warming")
        kube.add_deployment(k8s.placeholder, 0)
        api = api_client(host=kube.url)
        actuator = KubernetesActuator(api, KubernetesTarget(k8s.namespace, dict(k8s.workloads), k8s.placeholder),
                                      billing_min={"on_demand": 60}, sleep=lambda s: None,
                                      clock=lambda: datetime(2024, 5, 1, 12, 30, tzinfo=timezone.utc))
        actuator.view()
        actuator.apply([Decision(cls, 3 if cls == "spot" else 1, 2, "test") for cls in k8s.workloads], placeholder=1)
        lease = LeaseLock(api, k8s.namespace, lease_name, "replica-a")
        assert lease.acquire_or_renew() and lease.acquire_or_renew()
        return {api_request(method, path) for method, path, _ in kube.requests}


def test_the_role_allows_every_request_the_controller_makes():
    """A request the Role forgot is a 403 in the cluster, the first time it is made."""
    docs = all_docs()
    role = docs[("Role", "peakpilot")]
    policy = Policy.model_validate(yaml.safe_load(docs[("ConfigMap", "peakpilot-policy")]["data"]["llm-chat.yaml"]))
    made = leader_requests(policy)
    assert {verb for _, _, verb, _ in made} >= {"get", "list", "patch", "create", "update"}
    assert ("events.k8s.io", "events", "create", None) in made
    refused = sorted(str(r) for r in made if not role_allows(role, *r))
    assert not refused, f"deploy/controller-rbac.yaml does not allow: {refused}"


def test_the_deployed_rbac_is_rendered_from_the_deployed_policy():
    module = render_module("render_rbac")
    assert (DEPLOY / "controller-rbac.yaml").read_text() == module.render(module.SOURCE.read_text()), \
        "deploy/controller-rbac.yaml is stale: run `make manifests`"


def test_check_policy_prints_the_rbac_for_pools_renamed_and_in_another_namespace(tmp_path):
    """A policy whose pools are named otherwise and live in another namespace than the Lease: the Role
    there names its Deployments and allows all its requests, the Lease's namespace holds the Lease rules,
    every RoleBinding binds the one ServiceAccount, and each object is a valid one."""
    from controller.policy import load_policy

    text = (ROOT / "configs" / "policy.yaml").read_text()
    home = tmp_path / "chat.yaml"
    home.write_text(text)
    batch = tmp_path / "batch.yaml"
    batch.write_text(text.replace("service: llm-chat", "service: llm-batch").replace("namespace: inference",
                                                                                     "namespace: batch")
                     .replace("llm-spot", "batch-spot").replace("llm-reserved", "batch-reserved"))
    out = subprocess.run([sys.executable, "-m", "peakpilot.cli", "check-policy", "--backend", "kubernetes", "--rbac",
                          "--lease-name", "peakpilot-team", str(home), str(batch)],
                         capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr
    docs = [d for d in yaml.safe_load_all(out.stdout) if d]
    api = client.ApiClient()
    for doc in docs:
        model = api.deserialize(json.dumps(doc), MODELS[doc["kind"]], "application/json")
        assert strip_empty(api.sanitize_for_serialization(model)) == strip_empty(doc)
    by = {(d["kind"], d["metadata"]["namespace"]): d for d in docs}
    assert set(by) == {("ServiceAccount", "inference"), ("Role", "inference"), ("RoleBinding", "inference"),
                       ("Role", "batch"), ("RoleBinding", "batch")}
    assert by[("RoleBinding", "batch")]["subjects"] == [{"kind": "ServiceAccount", "name": "peakpilot",
                                                         "namespace": "inference"}]
    role = by[("Role", "batch")]
    assert not any(r["resources"] == ["leases"] for r in role["rules"])
    pools = {r for r in leader_requests(load_policy(batch)) if r[1] != "leases"}  # the Lease is in inference
    assert pools and not [r for r in pools if not role_allows(role, *r)]
    assert ("apps", "deployments/scale", "patch", "batch-spot") in pools
    lease_role = by[("Role", "inference")]
    assert role_allows(lease_role, "coordination.k8s.io", "leases", "create", None)
    assert all(role_allows(lease_role, "coordination.k8s.io", "leases", verb, "peakpilot-team")
               for verb in ("get", "update"))
    assert not role_allows(lease_role, "coordination.k8s.io", "leases", "update", "peakpilot")
    assert "--lease-name peakpilot-team" in out.stdout.splitlines()[1]
    from controller.rbac import needed  # what the start asks the API server, one permission at a time

    asked = needed([load_policy(home), load_policy(batch)], "peakpilot-team")
    assert ("batch", "apps", "deployments/scale", "patch", "batch-spot") in asked
    assert ("inference", "coordination.k8s.io", "leases", "update", "peakpilot-team") in asked
    assert {verb for *_, verb, _ in needed([load_policy(home)], shadow=True)} == {"get", "list", "watch"}
    # Without the kubernetes backend it says what is missing.
    out = subprocess.run([sys.executable, "-m", "peakpilot.cli", "check-policy", "--rbac", str(home)],
                         capture_output=True, text=True, timeout=120)
    assert out.returncode == 2 and "--backend kubernetes" in out.stderr


def test_policy_configmap_is_the_default_policy_with_only_the_cluster_keys_changed():
    """The deployed policy cannot drift from configs/policy.yaml: it is rendered from it (`make configmap`)."""
    module = render_module("render_policy_configmap")
    SOURCE = module.SOURCE
    text = (DEPLOY / "policy-configmap.yaml").read_text()
    assert text == module.render(SOURCE.read_text()), "deploy/policy-configmap.yaml is stale: run `make configmap`"
    deployed = yaml.safe_load(yaml.safe_load(text)["data"]["llm-chat.yaml"])
    default = yaml.safe_load(SOURCE.read_text())
    assert deployed["capacity"].pop("rps_per_node") > 0 and default["capacity"].pop("peak_nodes") > 0
    assert deployed["signals"].pop("prometheus").startswith("http") and default["signals"].pop("prometheus") is None
    assert deployed == default


def render_module(name: str):
    sys.path.insert(0, str(DEPLOY))
    try:
        return __import__(name)
    finally:
        sys.path.remove(str(DEPLOY))


def monitoring_docs() -> list[dict]:
    return [d for path in sorted((DEPLOY / "monitoring").glob("*.yaml")) for d in yaml.safe_load_all(path.read_text())
            if d]


def test_the_prometheus_rule_is_the_shipped_alerting_rules():
    """For the Prometheus Operator: the same rules promtool checks (tests/test_monitoring.py), rendered."""
    module = render_module("render_prometheus_rule")
    text = (DEPLOY / "monitoring" / "prometheus-rule.yaml").read_text()
    assert text == module.render(module.SOURCE.read_text()), \
        "deploy/monitoring/prometheus-rule.yaml is stale: run `make manifests`"
    rule = yaml.safe_load(text)
    assert (rule["apiVersion"], rule["kind"]) == ("monitoring.coreos.com/v1", "PrometheusRule")
    assert rule["spec"]["groups"] == yaml.safe_load(module.SOURCE.read_text())["groups"]
    assert len([r for g in rule["spec"]["groups"] for r in g["rules"]]) >= 15


def test_the_grafana_dashboard_configmap_is_the_shipped_dashboard():
    """For Grafana's dashboard sidecar: the dashboard tests/test_monitoring.py checks, rendered as a
    ConfigMap with the label the sidecar looks for."""
    import json

    module = render_module("render_grafana_dashboard")
    text = (DEPLOY / "monitoring" / "grafana-dashboard.yaml").read_text()
    assert text == module.render(module.SOURCE.read_text()), \
        "deploy/monitoring/grafana-dashboard.yaml is stale: run `make manifests`"
    config_map = yaml.safe_load(text)
    assert (config_map["kind"], config_map["metadata"]["labels"]["grafana_dashboard"]) == ("ConfigMap", "1")
    assert json.loads(config_map["data"]["peakpilot.json"]) == json.loads(module.SOURCE.read_text())


def test_the_pod_monitors_scrape_the_controller_and_every_pool_by_a_port_they_serve():
    """Each PodMonitor selects pods that deploy/ runs, on a container port those pods name, and keeps the
    metrics' own labels (the rules group by `service`, which a clashing target label would rename)."""
    pods = [(d["metadata"]["name"], d["spec"]["template"]) for _, d in documents() if d["kind"] == "Deployment"]
    namespaces = {d["metadata"]["name"] for _, d in documents() if d["kind"] == "Namespace"}
    selected = set()
    monitors = [d for d in monitoring_docs() if d["kind"] == "PodMonitor"]
    for monitor in monitors:
        assert monitor["apiVersion"] == "monitoring.coreos.com/v1" and monitor["metadata"]["namespace"] in namespaces
        wanted = monitor["spec"]["selector"]["matchLabels"]
        matched = [(name, t) for name, t in pods if wanted.items() <= t["metadata"]["labels"].items()]
        assert matched, f"PodMonitor {monitor['metadata']['name']} selects no pod of deploy/"
        for endpoint in monitor["spec"]["podMetricsEndpoints"]:
            assert endpoint["honorLabels"] is True and endpoint["path"] == "/metrics"
            for name, template in matched:
                ports = {p["name"] for c in template["spec"]["containers"] for p in c.get("ports", [])}
                assert endpoint["port"] in ports, f"{name} has no port named {endpoint['port']}"
        selected |= {name for name, _ in matched}
    scraped = {name for name, t in pods if t["metadata"].get("annotations", {}).get("prometheus.io/scrape") == "true"}
    assert scraped and scraped <= selected  # every pod scraped by annotation is scraped by the operator too


def test_the_service_reaches_every_pool_that_serves_and_not_the_placeholders():
    docs = all_docs()
    service = docs[("Service", "llm")]
    selector = service["spec"]["selector"]
    reached = {name for (kind, name), doc in docs.items() if kind == "Deployment"
               and selector.items() <= doc["spec"]["template"]["metadata"]["labels"].items()}
    policy = Policy.model_validate(yaml.safe_load(docs[("ConfigMap", "peakpilot-policy")]["data"]["llm-chat.yaml"]))
    assert reached == set(policy.kubernetes.workloads.values())  # the three classes, not the placeholder
    for name in reached:
        container = docs[("Deployment", name)]["spec"]["template"]["spec"]["containers"][0]
        names = {p["name"] for p in container["ports"]}
        assert all(port["targetPort"] in names for port in service["spec"]["ports"]), name


def test_the_nodes_shed_and_count_late_answers_at_the_policys_latency_target():
    """`--slo-ms` is what a node sheds on (429 when the expected wait is over it) and what it counts as
    late (`peakpilot_requests_over_slo_total`): the policy's SLO, or the alerts measure another one."""
    from peakpilot.cli import app

    docs = all_docs()
    policy = Policy.model_validate(yaml.safe_load(docs[("ConfigMap", "peakpilot-policy")]["data"]["llm-chat.yaml"]))
    group = typer.main.get_command(app)
    for name in policy.kubernetes.workloads.values():
        args = docs[("Deployment", name)]["spec"]["template"]["spec"]["containers"][0]["args"]
        with group.make_context("peakpilot", list(args)) as ctx:
            params = group.get_command(ctx, args[0]).make_context(args[0], list(args[1:]), parent=ctx).params
        assert params["slo_ms"] == policy.slo.latency_ms, name


def test_spot_pool_selects_and_tolerates_spot_capacity_and_placeholder_is_lowest_priority():
    docs = all_docs()
    spot = docs[("Deployment", "llm-spot")]["spec"]["template"]["spec"]
    assert spot["nodeSelector"] == {"karpenter.sh/capacity-type": "spot"}
    assert spot["tolerations"][0]["value"] == "spot"
    placeholder = docs[("Deployment", "llm-placeholder")]["spec"]["template"]["spec"]
    pc = docs[("PriorityClass", placeholder["priorityClassName"])]
    assert pc["value"] < 0 and pc["preemptionPolicy"] == "Never"
    node = docs[("Deployment", "llm-on-demand")]["spec"]["template"]["spec"]["containers"][0]
    assert node["readinessProbe"]["httpGet"]["path"] == "/ready"


def test_a_placeholders_node_fits_the_pod_that_displaces_it():
    """The scheduler preempts a placeholder only for a pod that then fits on its node, and the autoscaler
    boots the cheapest node that fits the placeholder: a pause pod asking for a GPU alone got a node too
    small for a serving pod (4 CPUs, 16 GiB), and the node held warm served nobody. So the placeholder
    asks for what every pool it holds nodes for asks for, on nodes those pools may run on."""
    from kubernetes.utils import parse_quantity

    docs = all_docs()
    hold = docs[("Deployment", "llm-placeholder")]["spec"]["template"]["spec"]
    held = hold["containers"][0]["resources"]
    fits = []
    for name in ("llm-reserved", "llm-on-demand", "llm-spot"):
        pod = docs[("Deployment", name)]["spec"]["template"]["spec"]
        wants = pod["containers"][0]["resources"]
        selects = pod.get("nodeSelector") or {}
        if any((hold.get("nodeSelector") or {}).get(k) != v for k, v in selects.items()):
            continue  # not a pool the placeholders hold nodes for (spot: its nodes are the market's)
        for kind in ("requests", "limits"):
            for resource, quantity in wants.get(kind, {}).items():
                assert parse_quantity(held.get(kind, {}).get(resource, "0")) >= parse_quantity(quantity), \
                    (name, kind, resource)
        fits.append(name)
    assert fits == ["llm-reserved", "llm-on-demand"]


ROOT = DEPLOY.parent


def peakpilot_containers():
    for _, doc in documents():
        if doc["kind"] == "Deployment":
            for container in doc["spec"]["template"]["spec"]["containers"]:
                if container["image"].startswith("peakpilot/peakpilot:"):
                    yield doc["metadata"]["name"], container


def test_manifests_run_this_version_with_arguments_the_cli_accepts():
    from peakpilot.cli import app

    version = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["version"]
    group = typer.main.get_command(app)
    seen = set()
    for name, container in peakpilot_containers():
        assert container["image"] == f"peakpilot/peakpilot:{version}", name
        args = container["args"]
        with group.make_context("peakpilot", list(args)) as ctx:
            command = group.get_command(ctx, args[0])
            assert command is not None, f"{name}: no command {args[0]!r}"
            try:
                command.make_context(args[0], list(args[1:]), parent=ctx)
            except Exception as exc:  # typer's own (vendored) click raises its usage errors
                pytest.fail(f"{name}: peakpilot {' '.join(args)}: {exc}")
        seen.add(args[0])
    assert seen == {"run", "serve", "dashboard"}  # the controller, its dashboard, the three inference pools


def test_the_dashboard_beside_the_controller_shows_its_store_and_nothing_else_reaches_it():
    """The sidecar reads the store the controller writes (the same variable, the same volume), binds the
    pod's loopback (kubectl port-forward reaches it, no Service or other pod does), and no probe or
    Service points at it."""
    from peakpilot.cli import app

    pod = next(d for _, d in documents() if d["kind"] == "Deployment"
               and d["metadata"]["name"] == "peakpilot-controller")["spec"]["template"]["spec"]
    containers = {c["name"]: c for c in pod["containers"]}
    controller, dashboard = containers["controller"], containers["dashboard"]
    env = lambda c: {e["name"]: e.get("value") for e in c.get("env", [])}  # noqa: E731
    store = env(controller)["PEAKPILOT_STORE"]
    assert env(dashboard)["PEAKPILOT_STORE"] == store
    mounts = lambda c: {m["name"]: m["mountPath"] for m in c["volumeMounts"]}  # noqa: E731
    folder = str(Path(store.removeprefix("sqlite:///")).parent)
    assert mounts(dashboard)["state"] == mounts(controller)["state"] == folder
    group = typer.main.get_command(app)
    args = dashboard["args"]
    with group.make_context("peakpilot", list(args)) as ctx:
        params = group.get_command(ctx, args[0]).make_context(args[0], list(args[1:]), parent=ctx).params
    assert params["host"] == "127.0.0.1"
    template = next(d for _, d in documents() if d["kind"] == "Deployment"
                    and d["metadata"]["name"] == "peakpilot-controller")["spec"]["template"]
    # `kubectl logs deploy/peakpilot-controller` (docs/running-on-a-cluster.md) reads the controller's log, not
    # the dashboard's
    assert template["metadata"]["annotations"]["kubectl.kubernetes.io/default-container"] == "controller"
    assert not any(key in dashboard for key in ("readinessProbe", "livenessProbe", "startupProbe", "ports"))
    services = [d for _, d in documents() if d["kind"] == "Service"]
    assert all(p.get("targetPort") != params["port"] for s in services for p in s["spec"]["ports"])


def test_the_ports_probes_and_prometheus_reach_are_bound_beyond_loopback():
    """The kubelet probes a pod on its own IP and Prometheus scrapes it there: a server on 127.0.0.1
    (every command's default, for a laptop) would never turn ready, and be restarted for ever."""
    from peakpilot.cli import app

    group = typer.main.get_command(app)
    host_of = {"port": "host", "metrics_port": "metrics_host"}  # each command's port option and its address
    checked = 0
    for name, container in peakpilot_containers():
        args = container["args"]
        with group.make_context("peakpilot", list(args)) as ctx:
            params = group.get_command(ctx, args[0]).make_context(args[0], list(args[1:]), parent=ctx).params
        ports = {p["name"]: p["containerPort"] for p in container.get("ports", [])}
        reached = {probe["httpGet"]["port"] for key in ("readinessProbe", "livenessProbe", "startupProbe")
                   if (probe := container.get(key))}
        doc = next(d for _, d in documents() if d["kind"] == "Deployment" and d["metadata"]["name"] == name)
        scraped = doc["spec"]["template"]["metadata"].get("annotations", {}).get("prometheus.io/port")
        # The pod's scrape annotation names a port of one of its containers: that container's to serve.
        scraped_here = {int(scraped)} if scraped and int(scraped) in ports.values() else set()
        for port in {ports.get(p, p) for p in reached} | scraped_here:
            option = next((o for o in host_of if params.get(o) == port), None)
            assert option, f"{name}: port {port} is probed or scraped, but no option of `{args[0]}` serves it"
            assert params[host_of[option]] not in ("127.0.0.1", "localhost", "::1"), \
                f"{name}: port {port} is served on {params[host_of[option]]}: set --{host_of[option].replace('_', '-')} 0.0.0.0"
            checked += 1
    assert checked >= 4  # the controller's metrics port and each inference pool's
    for _, doc in documents():  # and a scraped port is some container's
        if doc["kind"] == "Deployment" and (port := doc["spec"]["template"]["metadata"].get(
                "annotations", {}).get("prometheus.io/port")):
            declared = {p["containerPort"] for c in doc["spec"]["template"]["spec"]["containers"]
                        for p in c.get("ports", [])}
            assert int(port) in declared, doc["metadata"]["name"]


def test_the_image_holds_every_package_and_the_defaults_beside_them():
    dockerfile = (ROOT / "Dockerfile").read_text()
    ignore = (ROOT / ".dockerignore").read_text().splitlines()
    include = tomllib.loads((ROOT / "pyproject.toml").read_text())["tool"]["setuptools"]["packages"]["find"]["include"]
    needed = [p.rstrip("*") for p in include] + ["configs", "data"]
    for directory in needed:
        assert (ROOT / directory).is_dir()
        assert f"COPY {directory}/ {directory}/" in dockerfile, f"the image lacks {directory}/"
        assert f"!{directory}/" in ignore, f".dockerignore leaves {directory}/ out of the build context"
    # the PostgreSQL store, transformers for serve --model hf:PATH, botocore and google-auth for the managed Prometheus
    assert "torch==2.13.0" in dockerfile and 'pip install -e ".[postgres,hf,aws,gcp]"' in dockerfile
    # the user the manifests run as
    user = next(line.split()[1] for line in dockerfile.splitlines() if line.startswith("USER "))
    controller = all_docs()[("Deployment", "peakpilot-controller")]["spec"]["template"]["spec"]
    assert str(controller["securityContext"]["runAsUser"]) == user


def test_the_dockerfile_passes_hadolint():
    hadolint = shutil.which("hadolint") or shutil.which("hadolint", path=str(Path(sys.executable).parent))
    if hadolint is None:
        pytest.skip("hadolint is not installed (the dev extra brings it on Linux x86_64)")
    result = subprocess.run([hadolint, "--no-color", str(ROOT / "Dockerfile")], capture_output=True, text=True)
    assert result.returncode == 0, result.stdout + result.stderr


def test_voluntary_disruptions_take_one_serving_node_at_a_time():
    """A drain or Karpenter's consolidation may take one serving node of the three pools at a time (each
    is a cold start of minutes), never a placeholder's, which exists to be displaced."""
    budgets = [d for _, d in documents() if d["kind"] == "PodDisruptionBudget"]
    assert len(budgets) == 1 and budgets[0]["spec"]["maxUnavailable"] == 1
    wanted = budgets[0]["spec"]["selector"]["matchLabels"]
    pools = {d["metadata"]["name"]: d for _, d in documents() if d["kind"] == "Deployment"
             and d["metadata"]["namespace"] == budgets[0]["metadata"]["namespace"]}
    held = {name for name, d in pools.items()
            if wanted.items() <= d["spec"]["template"]["metadata"]["labels"].items()}
    assert held == {"llm-reserved", "llm-spot", "llm-on-demand"}


def test_a_pool_node_serves_until_the_service_has_dropped_it_then_drains_within_its_grace():
    """Deleting a pod removes it from the Service's endpoints and sends it SIGTERM at the same moment; a
    node that stops taking work at SIGTERM answers 503 to what the proxies still send it, at every
    scale-down. Each serving pool's node waits in preStop first, and its grace period holds that wait
    and the node's drain."""
    for name in ("llm-reserved", "llm-spot", "llm-on-demand"):
        spec = next(d for _, d in documents() if d["kind"] == "Deployment" and d["metadata"]["name"] == name)
        pod = spec["spec"]["template"]["spec"]
        node = pod["containers"][0]
        command = node["lifecycle"]["preStop"]["exec"]["command"]
        assert command[0] == "sleep" and 3 <= float(command[1]) <= 15, name
        drain = float(node["args"][node["args"].index("--drain-seconds") + 1])
        assert pod["terminationGracePeriodSeconds"] >= float(command[1]) + drain + 5, name
