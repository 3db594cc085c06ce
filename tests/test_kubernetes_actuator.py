"""The Kubernetes actuator and the Lease against a local server speaking the API's paths and codes."""

from __future__ import annotations

from datetime import datetime, timedelta, timezone

import pytest
from kubernetes.client.exceptions import ApiException

from controller.kube_client import api_client
from controller.kubernetes_actuator import (DELETION_COST, DO_NOT_DISRUPT, FAILED_DELETION_COST, KubernetesActuator,
                                            KubernetesTarget)
from controller.lease import LeaseLock
from controller.state import Decision
from tests.kube_api import FakeKubeAPI

TARGET = KubernetesTarget("inference", {"reserved": "llm-reserved", "spot": "llm-spot", "on_demand": "llm-od"},
                          placeholder="llm-placeholder")


@pytest.fixture
def kube():
    with FakeKubeAPI("inference") as api:
        for name, replicas in (("llm-reserved", 2), ("llm-spot", 3), ("llm-od", 1), ("llm-placeholder", 0)):
            api.add_deployment(name, replicas)
        api.add_pod("r1", {"app": "llm-reserved"}, "ready")
        api.add_pod("r2", {"app": "llm-reserved"}, "ready")
        api.add_pod("s1", {"app": "llm-spot"}, "ready", created="2024-05-01T12:00:00Z", ready_at="2024-05-01T12:07:30Z")
        api.add_pod("s2", {"app": "llm-spot"}, "warming")
        api.add_pod("s3", {"app": "llm-spot"}, "draining")
        api.add_pod("o1", {"app": "llm-od"}, "pending")
        yield api


def actuator(kube, **kw):
    return KubernetesActuator(api_client(host=kube.url), TARGET, sleep=lambda s: None, **kw)


def test_view_reads_replicas_and_pod_states(kube):
    view = actuator(kube).view()
    assert view.counts["reserved"]["ready"] == 2
    assert view.counts["spot"] == {"pending": 1, "booting": 0, "warming": 1, "ready": 1, "draining": 1, "failed": 0}
    assert view.counts["on_demand"]["pending"] == 1
    # Pods ready when first seen started before this controller watched: not measured.
    assert view.lead_samples == []
    # Pod reads go through each Deployment's own selector: one list per class.
    assert len(kube.calls("GET", "/api/v1/namespaces/inference/pods")) == 3


def test_lead_times_are_measured_once_per_start_seen(kube):
    """Creation-to-ready minutes of each pod seen before it was ready, once, with the minutes it waited for
    a node. A restarted controller counted every ready pod again (its memory, in the store, had them), and
    a pod ready again after a crash counted the crash as a lead time."""
    act = actuator(kube)
    act.view()
    kube.add_pod("s2", {"app": "llm-spot"}, "ready", created="2024-05-01T12:00:00Z",
                 scheduled_at="2024-05-01T12:03:00Z", ready_at="2024-05-01T12:09:00Z")
    kube.add_pod("o1", {"app": "llm-od"}, "ready", created="2024-05-01T12:00:00Z", ready_at="2024-05-01T12:12:00Z")
    assert sorted(act.view().lead_samples) == [("on_demand", 12.0, 0.0), ("spot", 9.0, 3.0)]
    assert act.view().lead_samples == []
    # s2 crashes and turns ready again hours later: its start was measured already.
    kube.add_pod("s2", {"app": "llm-spot"}, "warming", created="2024-05-01T12:00:00Z")
    act.view()
    kube.add_pod("s2", {"app": "llm-spot"}, "ready", created="2024-05-01T12:00:00Z", ready_at="2024-05-01T18:00:00Z")
    assert act.view().lead_samples == []
    # A start that crash-loops first measures the crash: not counted.
    kube.add_pod("s7", {"app": "llm-spot"}, "warming", waiting="CrashLoopBackOff", restarts=3)
    act.view()
    kube.add_pod("s7", {"app": "llm-spot"}, "ready", ready_at="2024-05-01T14:00:00Z")
    assert act.view().lead_samples == []
    # A restarted controller finds them all ready and measures none again.
    fresh = actuator(kube)
    assert fresh.view().lead_samples == [] and fresh.view().lead_samples == []


def test_a_start_that_is_over_between_two_looks_is_measured_too(kube):
    """A pod on a warm node with its image cached is ready within one cycle: never seen warming, its start
    went unmeasured, and the learned p95 kept only the slow starts. A pod not there at the last whole
    look started under this controller's eyes; one that has restarted since dates its restart, and pods a
    restarted controller finds ready are still not its to measure."""
    act = actuator(kube)
    assert act.view().lead_samples == []
    kube.add_pod("r3", {"app": "llm-reserved"}, "ready", created="2024-05-01T13:00:00Z",
                 ready_at="2024-05-01T13:00:40Z")
    kube.add_pod("o2", {"app": "llm-od"}, "ready", created="2024-05-01T13:00:00Z",
                 ready_at="2024-05-01T13:00:50Z", restarts=1)
    assert act.view().lead_samples == [("reserved", 40 / 60, 0.0)]
    assert act.view().lead_samples == []
    kube.add_pod("s4", {"app": "llm-spot"}, "ready", created="2024-05-01T13:05:00Z", ready_at="2024-05-01T13:05:30Z")
    fresh = actuator(kube)
    assert fresh.view().lead_samples == []  # s4 too: it may have been there for hours, restarted or not
    assert fresh.view().lead_samples == []


def test_a_pod_that_ran_to_its_end_is_no_node_of_the_class(kube):
    """An evicted pod (phase Failed) stays listed until it is garbage-collected, while its ReplicaSet has
    already started another in its place: it is neither capacity nor a failed node to replace. Counted
    failed, the class asked for a replacement beside the ReplicaSet's own, a second node paid for each."""
    for name, reason, message in (("s8", "Evicted", "The node was low on resource: ephemeral-storage."),
                                  ("s9", "Terminated", "Pod was terminated in response to imminent node shutdown.")):
        kube.add_pod(name, {"app": "llm-spot"}, "warming")
        kube.pods[name]["status"].update(phase="Failed", reason=reason, message=message)
    view = actuator(kube).view()
    assert view.counts["spot"] == {"pending": 1, "booting": 0, "warming": 1, "ready": 1, "draining": 1, "failed": 0}
    assert view.failures == []
    assert DO_NOT_DISRUPT not in kube.pods["s8"]["metadata"]["annotations"]


def test_a_selector_of_expressions_lists_only_its_own_pods(kube):
    """A Deployment may select its pods with ``matchExpressions`` (set-based); its pods are listed with
    them. Before, only ``matchLabels`` made the query, so a selector of expressions alone listed every
    pod of the namespace as the class's capacity (here: the other pools' six and a stranger's)."""
    kube.add_deployment("llm-reserved", 2, labels={"app": "llm", "pool": "reserved"},
                        selector={"matchExpressions": [{"key": "app", "operator": "In", "values": ["llm"]},
                                                       {"key": "pool", "operator": "In", "values": ["reserved"]},
                                                       {"key": "canary", "operator": "DoesNotExist"}]})
    for name in ("r1", "r2"):
        kube.pods[name]["metadata"]["labels"] = {"app": "llm", "pool": "reserved"}
    kube.add_pod("r3", {"app": "llm", "pool": "reserved", "canary": "yes"}, "ready")  # another Deployment's
    kube.add_pod("x1", {"app": "llm", "pool": "batch"}, "ready")
    view = actuator(kube).view()
    assert view.counts["reserved"] == {"pending": 0, "booting": 0, "warming": 0, "ready": 2, "draining": 0,
                                       "failed": 0}
    from kubernetes.client import V1LabelSelector, V1LabelSelectorRequirement

    from controller.kubernetes_actuator import label_selector

    assert label_selector(V1LabelSelector(match_labels={"app": "llm"}, match_expressions=[
        V1LabelSelectorRequirement(key="tier", operator="NotIn", values=["cpu", "tpu"]),
        V1LabelSelectorRequirement(key="gpu", operator="Exists")])) == "app=llm,tier notin (cpu,tpu),gpu"


def test_warming_pods_are_protected_until_ready(kube):
    act = actuator(kube)
    act.view()
    assert kube.pods["s2"]["metadata"]["annotations"][DO_NOT_DISRUPT] == "true"
    assert kube.pods["o1"]["metadata"]["annotations"][DO_NOT_DISRUPT] == "true"
    assert DO_NOT_DISRUPT not in kube.pods["s1"]["metadata"]["annotations"]
    kube.add_pod("s2", {"app": "llm-spot"}, "ready")  # it became ready (annotation set by us before)
    kube.pods["s2"]["metadata"]["annotations"] = {DO_NOT_DISRUPT: "true", "peakpilot.io/protected": "true"}
    act.view()
    assert DO_NOT_DISRUPT not in kube.pods["s2"]["metadata"]["annotations"]
    # A pod someone else protected keeps its annotation.
    kube.pods["r1"]["metadata"]["annotations"] = {DO_NOT_DISRUPT: "true"}
    act.view()
    assert kube.pods["r1"]["metadata"]["annotations"] == {DO_NOT_DISRUPT: "true"}


def test_pods_that_will_not_turn_ready_are_failed_unprotected_and_released_first(kube):
    kube.add_pod("s4", {"app": "llm-spot"}, "warming", waiting="CrashLoopBackOff", restarts=5)
    kube.add_pod("s5", {"app": "llm-spot"}, "pending", waiting="ImagePullBackOff")
    kube.add_pod("s6", {"app": "llm-spot"}, "warming", waiting="ContainerCreating")  # on its way: warming
    kube.pods["s4"]["metadata"]["annotations"] = {DO_NOT_DISRUPT: "true", "peakpilot.io/protected": "true"}
    act = actuator(kube)
    view = act.view()
    assert view.counts["spot"]["failed"] == 2 and view.counts["spot"]["warming"] == 2
    assert sorted(view.failures) == ["s4: CrashLoopBackOff (restarts: 5)", "s5: ImagePullBackOff (restarts: 0)"]
    for name in ("s4", "s5"):  # the lowest deletion cost: the ReplicaSet's next scale-down takes them first
        notes = kube.pods[name]["metadata"]["annotations"]
        assert notes[DELETION_COST] == FAILED_DELETION_COST and DO_NOT_DISRUPT not in notes
    assert kube.pods["s6"]["metadata"]["annotations"][DO_NOT_DISRUPT] == "true"
    patched = len(kube.calls("PATCH", "/pods/"))
    act.view()  # nothing to write twice
    assert len(kube.calls("PATCH", "/pods/")) == patched


def test_apply_patches_the_scale_subresource_exactly(kube):
    sent = actuator(kube).apply([Decision("spot", 5, 3, "forecast"), Decision("on_demand", 1, 1, "same"),
                                 Decision("reserved", 2, 2, "fixed")], placeholder=2)
    patches = kube.calls("PATCH", "/scale")
    assert [(p[1], p[2]) for p in patches] == [
        ("/apis/apps/v1/namespaces/inference/deployments/llm-spot/scale", {"spec": {"replicas": 5}}),
        ("/apis/apps/v1/namespaces/inference/deployments/llm-placeholder/scale", {"spec": {"replicas": 2}})]
    assert sent == ["PATCH deployments/llm-spot/scale replicas 3 -> 5",
                    "PATCH deployments/llm-placeholder/scale replicas 0 -> 2"]
    # Desired states, not deltas: the same decisions again send nothing.
    assert actuator(kube).apply([Decision("spot", 5, 5, "again")], placeholder=2) == []


def test_each_scale_sent_is_an_event_on_its_deployment_saying_why(kube):
    """As the HPA records its rescales: ``kubectl describe deployment llm-spot`` lists them (it finds an
    object's events by kind, name and uid), with the decision's reason; nothing sent, no event."""
    at = datetime(2026, 11, 27, 18, 0, 5, 123456, tzinfo=timezone.utc)
    act = actuator(kube, instance="peakpilot-7d9f-x2", clock=lambda: at)
    act.apply([Decision("spot", 5, 3, "forecast needs 8 by +12 min (q90, lead 16 min)"),
               Decision("on_demand", 1, 1, "same")], placeholder=2)
    assert [(e["regarding"]["name"], e["note"]) for e in kube.events] == [
        ("llm-spot", "replicas 3 -> 5; spot: forecast needs 8 by +12 min (q90, lead 16 min)"),
        ("llm-placeholder", "replicas 0 -> 2; placeholder: GPU nodes held warm for what the forecast needs "
                            "after the lead time")]
    event = kube.events[0]
    assert event["regarding"] == {"apiVersion": "apps/v1", "kind": "Deployment", "namespace": "inference",
                                  "name": "llm-spot", "uid": "uid-deployment-llm-spot"}
    assert (event["type"], event["reason"], event["action"]) == ("Normal", "SuccessfulRescale", "Scale")
    assert event["reportingController"] == "peakpilot.io/controller"
    assert event["reportingInstance"] == "peakpilot-7d9f-x2"
    assert event["eventTime"] == "2026-11-27T18:00:05.123456+00:00"
    assert event["metadata"]["name"].startswith("llm-spot.") and event["metadata"]["namespace"] == "inference"
    act.apply([Decision("spot", 5, 5, "again")], placeholder=2)
    assert len(kube.events) == 2
    # A reason longer than the API's 1 KiB limit on a note is cut, not refused.
    act.apply([Decision("spot", 6, 5, "x" * 3000)], placeholder=2)
    assert len(kube.events) == 3 and len(kube.events[2]["note"].encode()) <= 1024


def test_an_event_that_cannot_be_written_never_fails_the_scale_and_is_said_once(kube, caplog):
    act = actuator(kube)
    for _ in range(3):
        kube.fail("POST", "/events", 403)
    with caplog.at_level("WARNING", logger="controller.kubernetes_actuator"):
        for replicas in (4, 5, 6):
            act.apply([Decision("spot", replicas, replicas - 1, "forecast")])
    assert kube.deployments["llm-spot"]["spec"]["replicas"] == 6
    said = [r.getMessage() for r in caplog.records]
    assert len(said) == 1 and "403 Forbidden" in said[0] and "deploy/controller-rbac.yaml" in said[0]
    act.apply([Decision("spot", 7, 6, "forecast")])  # allowed again: written, and a later refusal said again
    assert kube.events[-1]["note"].startswith("replicas 6 -> 7")
    assert act._event_failure is None


def test_an_announcement_is_a_warning_event_on_each_of_the_services_deployments(kube):
    """What needs an operator's look (the forecast lost, another autoscaler) is a Warning Event on every
    pool of the service, so that ``kubectl describe`` of any of them and ``kubectl get events
    --field-selector type=Warning`` show it; not on the placeholder, and nothing in shadow mode. Two
    Events in the same microsecond (a fixed clock here) get distinct names: the API server refuses a
    second Event of the same name (409 AlreadyExists)."""
    at = datetime(2026, 11, 27, 18, 0, 5, tzinfo=timezone.utc)
    act = actuator(kube, instance="peakpilot-7d9f-x2", clock=lambda: at)
    act.view()
    act.announce(True, "FallbackToReactive", "llm-chat: the reactive safety net alone decides: forecast failed")
    act.apply([Decision("spot", 5, 3, "reactive")])
    assert [(e["regarding"]["name"], e["type"], e["reason"]) for e in kube.events] == [
        ("llm-reserved", "Warning", "FallbackToReactive"), ("llm-spot", "Warning", "FallbackToReactive"),
        ("llm-od", "Warning", "FallbackToReactive"), ("llm-spot", "Normal", "SuccessfulRescale")]
    assert kube.events[1]["regarding"]["uid"] == "uid-deployment-llm-spot"  # as the view read it
    assert kube.events[1]["note"].endswith("forecast failed") and kube.events[1]["action"] == "Decide"
    assert len({e["metadata"]["name"] for e in kube.events}) == 4 and act._event_failure is None
    actuator(kube, shadow=True).announce(True, "ConflictingAutoscaler", "x")
    assert len(kube.events) == 4


@pytest.mark.parametrize("status", [409, 429, 500, 503])
def test_conflicts_throttling_and_server_errors_are_retried(kube, status):
    kube.fail("PATCH", "/llm-spot/scale", status, retry_after=0 if status == 429 else None)
    kube.fail("PATCH", "/llm-spot/scale", status, retry_after=0 if status == 429 else None)
    actuator(kube).apply([Decision("spot", 4, 3, "x")])
    attempts = kube.calls("PATCH", "/llm-spot/scale")
    assert len(attempts) == 3 and kube.deployments["llm-spot"]["spec"]["replicas"] == 4


def test_retries_back_off_with_jitter_and_honour_retry_after(kube):
    waits = []
    kube.fail("PATCH", "/llm-spot/scale", 503)
    kube.fail("PATCH", "/llm-spot/scale", 503)
    kube.fail("PATCH", "/llm-spot/scale", 429, retry_after=3)
    KubernetesActuator(api_client(host=kube.url), TARGET, sleep=waits.append).apply([Decision("spot", 4, 3, "x")])
    assert 0.1 <= waits[0] <= 0.3 and 0.2 <= waits[1] <= 0.6 and waits[2] == 3.0


def test_errors_that_retrying_cannot_fix_are_raised(kube):
    kube.fail("PATCH", "/llm-spot/scale", 403)
    with pytest.raises(ApiException) as err:
        actuator(kube).apply([Decision("spot", 4, 3, "x")])
    assert err.value.status == 403
    for _ in range(5):
        kube.fail("PATCH", "/llm-spot/scale", 500)
    with pytest.raises(ApiException):
        actuator(kube).apply([Decision("spot", 4, 3, "x")])
    assert len(kube.calls("PATCH", "/llm-spot/scale")) == 6


def test_a_refused_scale_is_a_warning_event_once_per_refusal(kube):
    """As the HPA's FailedRescale: ``kubectl describe deployment`` says the scale was refused and why
    (here an admission webhook's 422), once while the same refusal repeats each cycle, again when it
    changes; the error still reaches the cycle."""
    act = actuator(kube)
    for status in (422, 422, 403):
        kube.fail("PATCH", "/llm-spot/scale", status)
        with pytest.raises(ApiException):
            act.apply([Decision("spot", 6, 3, "forecast needs 9")])
    act.apply([Decision("spot", 6, 3, "forecast needs 9")])  # accepted at last
    told = [(e["type"], e["reason"], e["regarding"]["name"], e["note"]) for e in kube.events]
    assert [t[:3] for t in told] == [("Warning", "FailedRescale", "llm-spot")] * 2 + \
        [("Normal", "SuccessfulRescale", "llm-spot")]
    assert told[0][3].startswith("replicas 3 -> 6 refused: kubernetes patch_namespaced_deployment_scale(llm-spot, "
                                 "inference): 422") and told[0][3].endswith("; spot: forecast needs 9")
    assert "403" in told[1][3]


def test_a_refusal_is_said_on_one_line_naming_the_request_and_the_servers_message(kube):
    """The client's own text spans lines of HTTP headers, and the daemon logged it every cycle."""
    del kube.deployments["llm-od"]  # deleted by hand while the policy still names it
    with pytest.raises(ApiException) as err:
        actuator(kube).view()
    assert err.value.status == 404
    assert str(err.value) == ('kubernetes read_namespaced_deployment(llm-od, inference): 404 Not Found: '
                              'deployments.apps "llm-od" not found')


def test_replicas_something_else_sets_back_are_named(kube):
    """A GitOps sync of a manifest that sets replicas (Argo CD's self-heal, Flux) puts back each count the
    controller sets, as an HPA would, but lists as no autoscaler: the count found changed at the next look
    is named, cycle after cycle while it goes on. Only while the controller applies every cycle: a follower
    (or a leader again after following) would blame the leader's own changes, and a shadow sets nothing."""
    act = actuator(kube)
    act.view()
    act.apply([Decision("spot", 7, 3, "forecast needs 7")])
    assert act.view().conflicts == []  # as asked
    act.apply([Decision("spot", 7, 7, "forecast needs 7")])
    kube.deployments["llm-spot"]["spec"]["replicas"] = 3  # the manifest's count, synced back
    assert act.view().conflicts == [
        "Deployment llm-spot: replicas 3, where peakpilot set 7 last cycle: something else sets them too (a GitOps "
        "sync of a manifest that sets replicas: leave them out of it or let it ignore them; a kubectl scale)"]
    act.apply([Decision("spot", 7, 3, "forecast needs 7")])
    assert kube.deployments["llm-spot"]["spec"]["replicas"] == 7
    kube.deployments["llm-spot"]["spec"]["replicas"] = 3
    assert len(act.view().conflicts) == 1  # again, while it goes on
    # a cycle without apply (a follower's): the next leader's changes are not blamed on anyone
    act.view()
    kube.deployments["llm-spot"]["spec"]["replicas"] = 5
    assert act.view().conflicts == []
    shadow = actuator(kube, shadow=True)
    shadow.view()
    shadow.apply([Decision("spot", 9, 5, "forecast needs 9")])
    kube.deployments["llm-spot"]["spec"]["replicas"] = 4
    assert shadow.view().conflicts == []


def test_pools_whose_replicas_a_gitops_tool_syncs_are_named_before_peakpilot_acts(kube):
    """check-policy --connect: a pool whose spec.replicas Argo CD or Flux holds (its managedFields say so) would
    have each count set back at every sync; one whose manifest a person applied once (kubectl's client-side
    apply), or whose GitOps manifest leaves replicas out, is not named."""
    from kubernetes import client

    from controller.preflight import synced_replicas

    def entry(manager, fields):
        return {"manager": manager, "operation": "Apply" if "kubectl" not in manager else "Update",
                "apiVersion": "apps/v1", "time": "2024-05-01T12:00:00Z", "fieldsType": "FieldsV1", "fieldsV1": fields}

    kube.deployments["llm-spot"]["metadata"]["managedFields"] = [
        entry("argocd-controller", {"f:spec": {"f:replicas": {}, "f:template": {}}})]
    kube.deployments["llm-od"]["metadata"]["managedFields"] = [
        entry("kustomize-controller", {"f:spec": {"f:template": {}}}),
        entry("kubectl-client-side-apply", {"f:spec": {"f:replicas": {}}})]
    kube.deployments["llm-reserved"]["metadata"]["managedFields"] = [
        entry("kustomize-controller", {"f:metadata": {}, "f:spec": {"f:replicas": {}}})]
    apps = client.AppsV1Api(api_client(host=kube.url))
    deployments = [apps.read_namespaced_deployment(name, "inference") for name in ("llm-reserved", "llm-spot", "llm-od")]
    assert synced_replicas(deployments) == [
        "Deployment llm-reserved: its replicas are set by kustomize-controller (Flux): each sync would set back the "
        "count peakpilot sets; leave replicas out of the manifest it syncs",
        "Deployment llm-spot: its replicas are set by argocd-controller (Argo CD): each sync would set back the "
        "count peakpilot sets; leave replicas out of the manifest it syncs, or have Argo CD ignore them "
        "(ignoreDifferences on /spec/replicas)"]


def test_an_hpa_left_on_a_pool_is_named_and_one_elsewhere_is_not(kube, caplog):
    """Migrating from HPA, one left on llm-spot would set its replicas back every 15 s. In shadow mode
    (run beside the HPA it is compared with) that is the point, and it is not looked for."""
    kube.add_hpa("llm-spot-cpu", "llm-spot")
    kube.add_hpa("other-team", "search-pool")
    kube.add_hpa("llm-rs", "llm-reserved", kind="ReplicaSet")
    assert actuator(kube).view().conflicts == ["HorizontalPodAutoscaler llm-spot-cpu scales Deployment llm-spot too"]
    before = len(kube.calls("GET", "/horizontalpodautoscalers"))
    assert actuator(kube, shadow=True).view().conflicts == []
    assert len(kube.calls("GET", "/horizontalpodautoscalers")) == before
    # A Role that may not list them: said once, and the view goes on.
    act = actuator(kube)
    for _ in range(2):
        kube.fail("GET", "/horizontalpodautoscalers", 403)
    with caplog.at_level("WARNING", logger="controller.kubernetes_actuator"):
        views = [act.view(), act.view()]
    assert [v.conflicts for v in views] == [[], []] and views[0].counts["spot"]["ready"] == 1
    said = [r.getMessage() for r in caplog.records]
    assert len(said) == 1 and "403" in said[0] and "deploy/controller-rbac.yaml" in said[0]


def test_spot_pods_left_unscheduled_past_spots_lead_time_mean_spot_cannot_be_had(kube):
    """On a cluster, spot that cannot be had is spot pods no node is found for: the view names the one
    waiting longest, and one waiting longer than spot's lead time makes it say so (and why), so the cycle
    covers the spot with on-demand; pods waiting less, or placed, do not."""
    now = datetime(2024, 5, 1, 12, 30, tzinfo=timezone.utc)
    act = actuator(kube, clock=lambda: now)

    def judged(lead_min=16):
        view = act.view()
        view.judge_spot(lead_min)
        return view

    view = judged()  # the fixture's pending pod is llm-od's, and s1-s3 are placed
    assert view.spot_available and view.spot_wait is None and view.spot_unavailable_why is None
    kube.add_pod("s4", {"app": "llm-spot"}, "pending", created="2024-05-01T12:20:00Z")  # 10 min: on its way
    view = judged()
    assert view.spot_available and view.spot_wait == ("spot pod s4 unscheduled", 10.0)
    kube.add_pod("s5", {"app": "llm-spot"}, "pending", created="2024-05-01T12:05:00Z")  # 25 min
    view = judged()
    assert not view.spot_available and view.counts["spot"]["pending"] == 2
    assert view.spot_wait == ("spot pod s5 unscheduled", 25.0)
    assert view.spot_unavailable_why == "spot pod s5 unscheduled for 25 min (spot's lead time is 16 min)"
    assert judged(lead_min=30).spot_available  # spot's nodes are known to take longer than that
    kube.pods["s5"]["status"]["conditions"][0]["status"] = "True"  # a node was found for it
    kube.pods["s5"]["status"]["phase"] = "Running"
    assert judged().spot_available


def test_pods_a_deployment_cannot_create_are_named_and_spot_ones_count_as_spot_not_to_be_had(kube):
    """A quota (or a webhook) refusing a pool's pods: the Deployment says ReplicaFailure, the view names the
    pool and why (the pods still count as pending); spot pods refused longer than spot's lead time make
    spot unavailable, so on-demand covers them."""
    now = datetime(2024, 5, 1, 12, 30, tzinfo=timezone.utc)
    act = actuator(kube, clock=lambda: now)
    quota = ('pods "llm-od-7d9f-x2" is forbidden: exceeded quota: gpus, requested: requests.nvidia.com/gpu=1, '
             'used: requests.nvidia.com/gpu=8, limited: requests.nvidia.com/gpu=8')
    kube.deployments["llm-od"]["spec"]["replicas"] = 3  # one pod (o1) exists
    kube.refuse_pods("llm-od", quota, since="2024-05-01T12:00:00Z")
    view = act.view()
    assert view.uncreated == [f"llm-od: 2 pod(s) not created (FailedCreate: {quota})"]
    assert view.counts["on_demand"]["pending"] == 3 and view.spot_wait is None  # on-demand: told, not judged
    kube.deployments["llm-spot"]["spec"]["replicas"] = 6  # s1 and s2 exist (s3 drains: not a replica)
    kube.refuse_pods("llm-spot", quota.replace("llm-od", "llm-spot"), since="2024-05-01T12:10:00Z")
    view = act.view()
    view.judge_spot(16)
    assert len(view.uncreated) == 2 and not view.spot_available
    assert view.spot_unavailable_why.startswith("4 spot pod(s) of llm-spot not created (FailedCreate: pods "
                                                '"llm-spot-7d9f-x2" is forbidden: exceeded quota: gpus')
    assert view.spot_unavailable_why.endswith(" for 20 min (spot's lead time is 16 min)")
    kube.deployments["llm-spot"]["status"]["conditions"] = []  # the quota was raised
    view = act.view()
    view.judge_spot(16)
    assert view.spot_available and view.uncreated == [f"llm-od: 2 pod(s) not created (FailedCreate: {quota})"]


def test_shadow_mode_reads_but_never_writes(kube):
    act = actuator(kube, shadow=True)
    act.view()
    sent = act.apply([Decision("spot", 9, 3, "x")], placeholder=4)
    assert kube.calls("PATCH") == [] and kube.deployments["llm-spot"]["spec"]["replicas"] == 3
    assert sent[0] == "shadow (not sent): PATCH deployments/llm-spot/scale replicas 3 -> 9"


def test_lease_leader_election(kube):
    api = api_client(host=kube.url)
    clock = {"now": datetime(2024, 5, 1, 12, 0, tzinfo=timezone.utc)}
    a = LeaseLock(api, "inference", "peakpilot", "replica-a", duration_s=30, now=lambda: clock["now"])
    b = LeaseLock(api, "inference", "peakpilot", "replica-b", duration_s=30, now=lambda: clock["now"])
    assert a.acquire_or_renew() is True  # created
    assert b.acquire_or_renew() is False  # held and fresh
    clock["now"] += timedelta(seconds=20)
    assert a.acquire_or_renew() is True  # renewed
    assert kube.leases["peakpilot"]["spec"]["holderIdentity"] == "replica-a"
    clock["now"] += timedelta(seconds=45)  # a stopped renewing: expired
    assert b.acquire_or_renew() is True
    assert kube.leases["peakpilot"]["spec"]["holderIdentity"] == "replica-b"
    assert kube.leases["peakpilot"]["spec"]["leaseTransitions"] == 1
    assert a.acquire_or_renew() is False and a.is_leader is False  # a lost the lease


def test_a_leader_whose_cycles_run_a_little_late_keeps_the_lease_and_a_stopped_one_is_replaced(kube):
    """The daemon renews once a cycle, a little after the cycle's time (0 or 0.5 s here). With a Lease of
    one cycle, each renewal 0.5 s later than the one before leaves a gap in which the follower (looking
    0.3 s after the cycle's time) takes over for nothing; with the daemon's duration it does not."""
    from controller.lease import lease_duration_s

    api = api_client(host=kube.url)
    t0 = datetime(2024, 5, 1, 12, 0, tzinfo=timezone.utc)

    def run(duration: int, cycles: int = 12, leader_stops_after: int = 99) -> list[str]:
        kube.leases.clear()
        clock = {"now": t0}
        a = LeaseLock(api, "inference", "peakpilot", "replica-a", duration, now=lambda: clock["now"])
        b = LeaseLock(api, "inference", "peakpilot", "replica-b", duration, now=lambda: clock["now"])
        events = [(60 * k + 0.5 * (k % 2), a) for k in range(min(cycles, leader_stops_after + 1))]
        events += [(60 * k + 0.3, b) for k in range(1, cycles)]
        holders = []
        for at, replica in sorted(events, key=lambda e: e[0]):
            clock["now"] = t0 + timedelta(seconds=at)
            replica.acquire_or_renew()
            if replica is b:
                holders.append(kube.leases["peakpilot"]["spec"]["holderIdentity"])
        return holders  # who holds the Lease after each of b's looks (cycles 1, 2, ...)

    assert run(60)[0] == "replica-b"  # one cycle long: taken over at the first late renewal
    assert set(run(lease_duration_s(60))) == {"replica-a"}
    holders = run(lease_duration_s(60), leader_stops_after=3)  # a's last renewal at cycle 3
    assert holders[:6] == ["replica-a"] * 6 and holders[6] == "replica-b"  # b takes it at cycle 7


def test_lease_race_conflict_leaves_one_leader(kube):
    api = api_client(host=kube.url)
    now = datetime(2024, 5, 1, 12, 0, tzinfo=timezone.utc)
    a = LeaseLock(api, "inference", "peakpilot", "replica-a", 30, now=lambda: now)
    assert a.acquire_or_renew()
    kube.fail("PUT", "/leases/peakpilot", 409)  # another writer got in between our read and write
    assert a.acquire_or_renew() is False and a.is_leader is False
    assert a.acquire_or_renew() is True


def test_hourly_billed_pods_report_paid_time_and_the_one_paid_out_soonest_goes_first(kube):
    kube.add_pod("o2", {"app": "llm-od"}, "ready", created="2024-05-01T11:10:00Z")  # 50 min into its hour
    kube.add_pod("o3", {"app": "llm-od"}, "ready", created="2024-05-01T11:40:30Z")  # 19.5 min in
    now = datetime(2024, 5, 1, 12, 0, tzinfo=timezone.utc)
    act = actuator(kube, billing_min={"reserved": 60, "spot": 1, "on_demand": 60}, clock=lambda: now)
    view = act.view()
    assert sorted(view.paid_left["on_demand"]) == [10, 41]
    assert "spot" not in view.paid_left  # billed by the minute: nothing to wait for
    act.apply([Decision("on_demand", 3, 3, "hold")])  # no scale-down: no ranking written
    assert kube.calls("PATCH", "/pods/o2") == []
    act.apply([Decision("on_demand", 2, 3, "release one")])
    costs = {p: kube.pods[p]["metadata"]["annotations"].get("controller.kubernetes.io/pod-deletion-cost")
             for p in ("o2", "o3")}
    assert costs == {"o2": "10", "o3": "41"}  # the ReplicaSet deletes the lowest cost first
    act.view()
    act.apply([Decision("on_demand", 2, 3, "again")])  # unchanged costs are not written again
    assert len(kube.calls("PATCH", "/pods/o2")) == 1


def test_an_api_server_that_takes_the_connection_and_never_answers_times_out(silent_port, monkeypatch):
    """The client's default is no timeout at all: one silent API server would hang the cycle for ever.
    Reads, writes and the Lease all give up (the daemon counts an actuator error and goes on)."""
    import time

    import controller.kube_client as k8s

    monkeypatch.setattr(k8s, "REQUEST_TIMEOUT_S", (0.5, 0.5))
    monkeypatch.setattr(k8s, "RETRY_AFTER_FAILURE_S", 0.0)  # every call waits (the pause is tested below)
    api = api_client(host=f"http://127.0.0.1:{silent_port}")
    act = KubernetesActuator(api, TARGET, sleep=lambda s: None)
    for call in (act.view, lambda: act.apply([Decision("spot", 4, 3, "test")]),
                 LeaseLock(api, "inference", "peakpilot", "me").acquire_or_renew):
        started = time.monotonic()
        with pytest.raises(Exception, match="(?i)(timed? ?out|did not answer within 0.5 s)"):
            call()
        assert time.monotonic() - started < 1.8  # a read tried twice, not four times (0.5 s each)


def test_services_on_one_silent_api_server_wait_for_it_once(silent_port, monkeypatch):
    """One daemon, one API client, many services: after the first actuator waited for a silent API
    server, the others and the Lease are told at once for 30 s instead of each waiting its own timeouts."""
    import time

    import controller.kube_client as k8s

    monkeypatch.setattr(k8s, "REQUEST_TIMEOUT_S", (0.5, 0.5))
    monkeypatch.setattr(k8s, "_unreachable", {})
    url = f"http://127.0.0.1:{silent_port}"
    api = api_client(host=url)
    actuators = [KubernetesActuator(api, TARGET, sleep=lambda s: None) for _ in range(3)]
    started = time.monotonic()
    with pytest.raises(k8s.ApiUnreachable, match=f"{url}: the API server did not answer within 0.5 s"):
        actuators[0].view()
    assert time.monotonic() - started > 0.9
    lease = LeaseLock(api, "inference", "peakpilot", "me")
    for call in [act.view for act in actuators[1:]] + [lease.acquire_or_renew]:  # the Lease waits no more
        started = time.monotonic()
        with pytest.raises(k8s.ApiUnreachable, match=r"did not answer within 0.5 s \d+ s ago; not asked again"):
            call()
        assert time.monotonic() - started < 0.2
    with FakeKubeAPI("inference") as kube:  # another server is asked as usual
        for name in ("llm-reserved", "llm-spot", "llm-od", "llm-placeholder"):
            kube.add_deployment(name, 1)
        assert KubernetesActuator(api_client(host=kube.url), TARGET, sleep=lambda s: None).view().counts




@pytest.mark.parametrize("selector, picked", [
    ({"matchLabels": {"app": "llm"}}, {"llm-a"}),
    ({"matchExpressions": [{"key": "class", "operator": "In", "values": ["spot", "reserved"]}]}, {"llm-a", "llm-b"}),
    ({"matchExpressions": [{"key": "class", "operator": "NotIn", "values": ["spot"]}]}, {"llm-a", "other"}),
    ({"matchExpressions": [{"key": "canary", "operator": "Exists"}]}, {"llm-b"}),
    ({"matchLabels": {"app": "llm"}, "matchExpressions": [{"key": "canary", "operator": "DoesNotExist"}]}, {"llm-a"}),
    ({}, {"llm-a", "llm-b", "other"}),  # policy/v1: an empty selector picks every pod of the namespace
    (None, set()),
])
def test_a_disruption_budgets_selector_picks_pods_as_the_api_server_does(selector, picked):
    from kubernetes.client import V1LabelSelector, V1LabelSelectorRequirement

    from controller.preflight import selects

    pods = {"llm-a": {"app": "llm", "class": "reserved"}, "llm-b": {"app": "llm-x", "class": "spot", "canary": "1"},
            "other": {"app": "db"}}
    built = None if selector is None else V1LabelSelector(
        match_labels=selector.get("matchLabels"),
        match_expressions=[V1LabelSelectorRequirement(key=e["key"], operator=e["operator"], values=e.get("values"))
                           for e in selector.get("matchExpressions", [])] or None)
    assert {name for name, labels in pods.items() if selects(built, labels)} == picked
