"""The controller's commands: ``replay`` a trace through the control cycle, ``recommend-reserved``,
``check-policy``, ``run`` the daemon, and its ``status`` from the store."""

from __future__ import annotations

import json
import logging
import math
import re
from pathlib import Path
from typing import Optional

import typer

from controller.shipped import DEFAULT_POLICY
from controller.shipped import SAMPLE_TRACE as DEFAULT_TRACE
from peakpilot.cli.app import Command, app
from peakpilot.cli.common import (DAYS_MAX, above_zero, check_backend, fail, load_policy_or_exit, load_trace_or_exit,
                                  open_store, record_or_exit)
from peakpilot.cli.history_options import (CountColumn, End, PolicyHeaders, PolicyQuery, PolicyStep,
                                           PrometheusTokenFile, RateColumn, TimestampColumn, TimestampZone,
                                           columns_need_a_trace, csv_columns, load_history, prometheus_auth)


@app.command(cls=Command)
def replay(
    trace: Optional[Path] = typer.Option(None, "--trace", help="CSV trace to replay (default: the sample trace)."),
    timestamp_column: TimestampColumn = None,
    count_column: CountColumn = None,
    rate_column: RateColumn = None,
    timestamp_zone: TimestampZone = None,
    prometheus: Optional[str] = typer.Option(None, "--prometheus", help="Prometheus base URL: replay the history "
                                                                        "it holds (your own service's load) "
                                                                        "instead of a trace."),
    prometheus_header: PolicyHeaders = [],
    prometheus_token_file: PrometheusTokenFile = None,
    query: PolicyQuery = None,
    days: float = typer.Option(14, "--days", help="Days of history to read from Prometheus (the first half "
                                                  "trains, the rest is replayed)."),
    end: End = None,
    step: PolicyStep = None,
    policy: Path = typer.Option(DEFAULT_POLICY, "--policy", help="Policy YAML (default: configs/policy.yaml)."),
    strategies: str = typer.Option(",".join(("predictive", "reactive", "reactive_spot", "static", "oracle")),
                                   "--strategies", help="Comma-separated: predictive, reactive, reactive_spot, "
                                                        "static, oracle."),
    peak_nodes: Optional[int] = typer.Option(None, "--peak-nodes", min=1,
                                             help="Size capacity so the trace's busiest minute needs N nodes "
                                                  "(overrides the policy's capacity)."),
    store: Optional[str] = typer.Option(None, "--store", help="Write the timeline and decisions here "
                                                              "(sqlite:///path.db, a path, or postgresql://...)."),
    no_sweep: bool = typer.Option(False, "--no-sweep", help="Only the policy's own settings; no frontier sweep."),
    train_days: Optional[float] = typer.Option(None, "--train-days", help="Days of history before the replayed "
                                                                          "window (default: half the trace, 2.5-14)."),
    seed: int = typer.Option(0, "--seed", min=0, help="Seed of the simulated cluster and the forecaster."),
    as_json: bool = typer.Option(False, "--json", help="Print exactly one JSON object on stdout."),
) -> None:
    """Replay a trace through the real control cycle: cost and SLA against reactive, static and oracle."""
    from controller.replay import STRATEGIES
    from controller.replay import replay as run_replay

    names = [s.strip() for s in strategies.split(",") if s.strip()]
    unknown = [s for s in names if s not in STRATEGIES]
    if unknown or not names:
        fail(f"{'unknown strategy ' + ', '.join(unknown) if unknown else '--strategies names none'}; choose from "
             f"{', '.join(STRATEGIES)}")
    above_zero(("--train-days", train_days, DAYS_MAX), ("--days", days, DAYS_MAX))
    pol = load_policy_or_exit(policy)
    tr = history_as_trace(pol, trace, prometheus, prometheus_header, prometheus_token_file, query, days, step, end,
                          "replaying the sample trace; --prometheus {url} replays the history of {service}",
                          csv_columns(timestamp_column, count_column, rate_column, timestamp_zone))
    st = open_store(store) if store else None
    try:
        doc, chosen = run_replay(tr, pol, names, peak_nodes=peak_nodes, sweep=not no_sweep, train_days=train_days,
                                 seed=seed, policy_name=str(policy))
    except ValueError as exc:
        fail(str(exc))
    if st is not None:
        run = chosen.get("predictive") or next(iter(chosen.values()))
        if run.timeline is not None:
            with st:
                doc["store_run_id"] = record_or_exit(st.record_replay, doc, run,
                                                     tr.times[len(tr.times) - doc["minutes"]:])
    if as_json:
        typer.echo(json.dumps(doc, default=float))
        return
    typer.echo(f"{tr.name}: {doc['minutes']} minutes replayed after {doc['train_days']} days of training; "
               f"{doc['rps_per_node']:.2f} req/s per node, {doc['reserved']} reserved")
    if doc.get("forecast") and doc["forecast"]["status"] != "ok":
        typer.echo(f"forecaster: {doc['forecast']['model']} ({doc['forecast']['status']})")
        for later in doc["forecast"]["models"][1:]:
            typer.echo(f"  from {later['from']}: {later['model']} ({later['status']})")
    typer.echo(f"{'strategy':<15}{'knob':>7}{'cost $':>12}{'SLA':>10}{'busy':>9}{'late':>9}{'node-h':>9}"
               f"{'starts':>8}{'preempt':>8}")
    for name, r in doc["strategies"].items():
        typer.echo(f"{name:<15}{r['knob']:>7g}{r['cost_usd']:>12,.0f}{r['sla_compliance']:>10.4%}"
                   f"{r['busy_share']:>9.3%}{r['late_share']:>9.3%}{r['node_hours']:>9,.0f}{r['cold_starts']:>8}"
                   f"{r['preemptions']:>8}")
    held = doc["strategies"].get("predictive", {}).get("placeholder_node_hours")
    if held is not None:
        r = doc["strategies"]["predictive"]
        typer.echo(f"placeholders (kubernetes.placeholder): predictive's would hold {held:,.0f} node-hours warm on "
                   f"a cluster, {held / max(r['node_hours'], 1e-9):.1%} beyond its {r['node_hours']:,.0f}; "
                   f"not simulated, so neither their cost nor the shorter starts they buy is above")
    typer.echo("cost reaching each SLA level (no sweep: the one run at the policy's settings; - where it falls short):"
               if no_sweep else "cheapest cost reaching each SLA level:")
    for name, levels in doc["cost_at_sla"].items():
        cells = "  ".join(f"{k}: {'-' if v is None else f'${v:,.0f}'}" for k, v in levels.items())
        typer.echo(f"  {name:<15}{cells}")
    if st is not None and "store_run_id" in doc:
        typer.echo(f"timeline written to {st.name} (run {doc['store_run_id']})")


def history_as_trace(pol, trace: Optional[Path], prometheus: Optional[str], headers: list[str],
                     token_file: Optional[Path], query: Optional[str], days: float, step: Optional[str],
                     end: Optional[str], hint: str, columns: Optional[dict] = None):
    """The history a command replays or sizes from: read from Prometheus (with the policy's query, step and
    credentials where it is the policy's own), else the trace (the sample's by default; ``hint`` says how to
    read the service's own load where the policy names its Prometheus; ``columns``: ``csv_columns``)."""
    from controller.replay import trace_from_history

    auth = prometheus_auth(prometheus, headers, token_file, pol)
    if prometheus:
        # The service's own load as the daemon reads it: the policy names the query when it is not the default.
        history = load_history(trace, prometheus, query or pol.signals.query, days, step or pol.signals.step, end,
                               auth, columns)
        try:
            return trace_from_history(history, history.source)
        except ValueError as exc:
            fail(str(exc))
    if query or step or end:
        fail("--query, --step and --end read Prometheus: give --prometheus URL too")
    columns_need_a_trace(columns, trace, prometheus)
    if trace is None and pol.signals.prometheus:  # the policy names where its own load is
        typer.echo(hint.format(url=pol.signals.prometheus, service=pol.service), err=True)
    return load_trace_or_exit(trace or DEFAULT_TRACE, columns)


def lease_name_for(selector: str | None) -> str:
    """The Lease of the daemons that run one selector's services: ``peakpilot-team-chat`` for team=chat, in
    the letters a Lease's name may have (lowercase, digits, ``-``, ``.``; at most 253)."""
    if not selector:
        return "peakpilot"
    return re.sub(r"-+", "-", re.sub(r"[^a-z0-9.]", "-", f"peakpilot-{selector.lower()}"))[:253].strip("-.")


def check_lease_name(name: str) -> None:
    """--lease-name as the API server takes a Lease's name, or exit 2: one it refuses, no daemon ever leads."""
    from controller.policy import kubernetes_name_problem

    if problem := kubernetes_name_problem(name, "Lease"):
        fail(f"--lease-name: {problem}")


def check_cron(text: str) -> None:
    """--retrain-cron as the scheduler will read it, at start rather than when the scheduler takes it."""
    from apscheduler.triggers.cron import CronTrigger

    try:
        CronTrigger.from_crontab(text, timezone="UTC")
    except ValueError as exc:
        fail(f"--retrain-cron {text!r}: {exc} (five fields: minute hour day month weekday, e.g. '0 */6 * * *')")


@app.command("recommend-reserved", cls=Command)
def recommend_reserved_cmd(
    trace: Optional[Path] = typer.Option(None, "--trace", help="CSV trace of the history (default: the sample "
                                                               "trace)."),
    timestamp_column: TimestampColumn = None,
    count_column: CountColumn = None,
    rate_column: RateColumn = None,
    timestamp_zone: TimestampZone = None,
    prometheus: Optional[str] = typer.Option(None, "--prometheus", help="Prometheus base URL: recommend from the "
                                                                        "history it holds (your own service's "
                                                                        "load) instead of a trace."),
    prometheus_header: PolicyHeaders = [],
    prometheus_token_file: PrometheusTokenFile = None,
    query: PolicyQuery = None,
    days: float = typer.Option(14, "--days", help="Days of history to read from Prometheus (as many as it "
                                                  "keeps: a reservation is for months)."),
    end: End = None,
    step: PolicyStep = None,
    policy: Path = typer.Option(DEFAULT_POLICY, "--policy", help="Policy YAML (prices, capacity, spot share)."),
    peak_nodes: Optional[int] = typer.Option(None, "--peak-nodes", min=1,
                                             help="Size capacity so the trace's busiest minute needs N nodes."),
    as_json: bool = typer.Option(False, "--json", help="Print one JSON object: the count, the costs of each "
                                                       "count, the layers' use."),
) -> None:
    """Recommend how many nodes to reserve, from the history's need and the prices."""
    from controller.replay import rps_per_node_for
    from controller.reserved import recommend_reserved

    above_zero(("--days", days, DAYS_MAX))
    pol = load_policy_or_exit(policy)
    tr = history_as_trace(pol, trace, prometheus, prometheus_header, prometheus_token_file, query, days, step, end,
                          "recommending from the sample trace; --prometheus {url} recommends from the history "
                          "of {service}", csv_columns(timestamp_column, count_column, rate_column, timestamp_zone))
    try:
        result = recommend_reserved(tr.arrivals / 60.0, pol, rps_per_node_for(pol, tr, peak_nodes))
    except ValueError as exc:
        fail(f"{tr.name}: {exc}")
    if as_json:
        typer.echo(json.dumps(result))
        return
    typer.echo(f"reserve {result['reserved']} nodes: the cheapest count for this history ({tr.name}) with spot "
               f"and on-demand blended as the policy says")
    typer.echo(f"over {result['hours']:,.0f} h of history: ${result['cost_usd']:,.0f} with them, "
               f"${result['cost_usd_without']:,.0f} without")


@app.command("check-policy", cls=Command)
def check_policy(
    paths: Optional[list[Path]] = typer.Argument(None, help="Policy files, or folders of them (as the daemon's "
                                                            "--policy). Default: configs/policy.yaml."),
    backend: str = typer.Option("simulated", "--backend", help="Also check what this backend needs "
                                                               "(kubernetes: a Deployment per class)."),
    as_json: bool = typer.Option(False, "--json", help="Print one JSON object: ok, every problem, and each "
                                                       "valid policy with its defaults filled in."),
    schema: bool = typer.Option(False, "--schema", help="Print the policy's JSON Schema (for editors) and exit."),
    rbac: bool = typer.Option(False, "--rbac", help="With --backend kubernetes: print the least-privilege "
                                                    "ServiceAccount, Roles and RoleBindings the controller needs "
                                                    "for these policies (kubectl apply -f -)."),
    lease_name: str = typer.Option("peakpilot", "--lease-name", help="With --rbac: the Lease the controller holds "
                                                                      "(`peakpilot run --lease-name`)."),
    connect: bool = typer.Option(False, "--connect", help="Also read each valid policy's Prometheus as the daemon "
                                 "will (its query, step, credentials, TLS): the history its first training gets "
                                 "and the last minutes' load; with --backend kubernetes, also ask the API server "
                                 "whether the account may do what the policies need and has their Deployments, "
                                 "and show their pools (warning of pods that will not turn ready, spot not to be "
                                 "had, an HPA left on a pool); exit 1 where something cannot be read or is "
                                 "missing."),
    kubeconfig: Optional[str] = typer.Option(None, "--kubeconfig", help="With --connect --backend kubernetes: this "
                                             "kubeconfig (default: the pod's ServiceAccount, else KUBECONFIG or "
                                             "~/.kube/config)."),
) -> None:
    """Validate policy files before the daemon loads them; exit 2 naming every key that is wrong.

    With --connect, also read each service's load from its Prometheus, and say what was found or why not."""
    from controller.policy import load_policies, policy_files, policy_schema

    if schema:
        typer.echo(json.dumps(policy_schema(), indent=2))
        return
    check_backend(backend)
    check_lease_name(lease_name)
    if rbac and backend != "kubernetes":
        fail("--rbac is what the kubernetes backend needs: add --backend kubernetes")
    files = policy_files(paths or [DEFAULT_POLICY])
    if not files:
        fail(f"no policy files (*.yaml) in {', '.join(map(str, paths))}")
    policies, problems = load_policies(files, backend)
    messages = [m for ms in problems.values() for m in ms]
    if rbac:
        from controller.rbac import rbac_command, render_rbac

        for message in messages:
            typer.echo(f"error  {message}", err=True)
        if problems:
            raise typer.Exit(2)
        how = rbac_command(lease_name, paths or [DEFAULT_POLICY])
        typer.echo(render_rbac(list(policies.values()), lease_name, how), nl=False)
        return
    valid = {path: pol for path, pol in policies.items() if path not in problems}
    reads = read_signals(valid) if connect else {}
    unread = [path for path, check in reads.items() if check is not None and not check.ok]
    cluster = (check_cluster(valid, kubeconfig, lease_name, paths or [DEFAULT_POLICY])
               if connect and backend == "kubernetes" and valid else None)
    if as_json:
        doc = {"ok": not problems and not unread and not (cluster and cluster["missing"]), "problems": messages,
               "policies": {str(p): pol.model_dump(mode="json") for p, pol in valid.items()}}
        if connect:
            doc["connections"] = {str(p): None if c is None else c.as_dict() for p, c in reads.items()}
        if cluster is not None:
            doc["cluster"] = cluster
        typer.echo(json.dumps(doc))
    else:
        for path, pol in valid.items():
            typer.echo(f"ok     {path}: service {pol.service}, SLO {pol.slo.compliance_target:g} within "
                       f"{pol.slo.latency_ms:g} ms, reserved {pol.reserved.count}, spot up to "
                       f"{pol.spot.max_share:.0%} of the "
                       f"{'expected load' if pol.spot.share_of == 'expected' and pol.spot.max_share else 'fleet'}, "
                       f"plan {pol.planning.quantile} +{pol.planning.headroom:.0%}, {len(pol.events)} events"
                       + (f", calendar on {pol.signals.timezone}" if pol.signals.timezone else ""))
            if path in reads:
                check = reads[path]
                if check is None:
                    typer.echo(f"read   {path}: no Prometheus (signals.prometheus is null: the daemon plays the "
                               f"sample trace on its clock)")
                elif check.ok:
                    typer.echo(f"read   {path}: {check.summary()}")
                    for warning in check.warnings:
                        typer.echo(f"warn   {path}: {warning}", err=True)
                else:
                    typer.echo(f"error  {path}: {check.summary()}", err=True)
        if cluster is not None and not cluster["missing"]:
            typer.echo(f"cluster {cluster['server']}: the account may do the {cluster['permissions']} things the "
                       f"policies need, and every Deployment they name is there")
        for path, pools in (cluster or {}).get("pools", {}).items():
            typer.echo(f"pools  {path}: " + "; ".join(
                f"{cls} " + (", ".join(f"{n} {state}" for state, n in states.items()) or "no nodes")
                for cls, states in pools["nodes"].items()))
            for warning in pools["warnings"]:
                typer.echo(f"warn   {path}: {warning}", err=True)
        for missing in (cluster or {}).get("missing", []):
            typer.echo(f"error  cluster: {missing}", err=True)
        for message in messages:
            typer.echo(f"error  {message}", err=True)
    if problems:
        raise typer.Exit(2)
    if unread or (cluster and cluster["missing"]):
        raise typer.Exit(1)


def check_cluster(policies: dict, kubeconfig: str | None, lease_name: str, given: list[Path]) -> dict:
    """--connect --backend kubernetes: what the API server says the account may not do for these policies
    (with the command that grants it), and the Deployments they name that it does not have; where the
    account may do it all, each policy's pools as they are now (``pools``: nodes by class and state, and
    what needs a look)."""
    from controller.kube_client import KubeConfigError, api_client
    from controller.preflight import missing_permissions, missing_workloads, pool_health
    from controller.rbac import needed, rbac_command

    try:
        api = api_client(kubeconfig=kubeconfig)
    except KubeConfigError as exc:
        return {"server": None, "permissions": 0, "missing": [str(exc)]}
    wanted = needed(list(policies.values()), lease_name)
    pools = {}
    try:
        refused = missing_permissions(api, wanted)
        absent = {path: missing_workloads(api, pol) for path, pol in policies.items()}
        for path, pol in policies.items():
            if not refused and not absent[path]:
                nodes, warnings = pool_health(api, pol)
                pools[str(path)] = {"nodes": nodes, "warnings": warnings}
    except Exception as exc:  # unreachable, or a refusal of the review itself: one line, as the daemon says it
        return {"server": api.configuration.host, "permissions": len(wanted), "missing": [str(exc)]}
    missing = [f"{path}: {m}" for path, ms in absent.items() for m in ms]
    if refused:
        missing.insert(0, f"the account may not {'; '.join(refused)}: {rbac_command(lease_name, given)} | "
                          f"kubectl apply -f -")
    return {"server": api.configuration.host, "permissions": len(wanted), "missing": missing, "pools": pools}


def read_signals(policies: dict) -> dict:
    """--connect: each policy's Prometheus read as the daemon's first cycle would, by path (None where the
    policy names none). What the daemon would log of it (the busy share's failure) is said by the check."""
    from controller.daemon import utc_now
    from controller.service_parts import ServiceParts
    from controller.signals_check import check_signals

    parts, now = ServiceParts("simulated", utc_now), utc_now()
    logging.getLogger("peakpilot.daemon").setLevel(logging.ERROR)
    return {path: check_signals(parts.signals(pol), now) if pol.signals.prometheus else None
            for path, pol in policies.items()}


def say_missing_permissions(api, policies, lease_name: str, shadow: bool, given: list[Path],
                            only: str | None = None) -> None:
    """Ask the API server, before the first cycle, whether this account may do what the policies need;
    say what it may not, and how to grant it (controller/preflight.py)."""
    from controller.preflight import missing_permissions
    from controller.rbac import needed, rbac_command

    wanted = [p for p in needed(policies, lease_name, shadow) if only is None or (p[0] == only and p[2] != "leases")]
    try:
        missing = missing_permissions(api, wanted)
    except Exception as exc:  # the check must not stop a start; the cycles will say what fails
        logging.getLogger("peakpilot.daemon").warning("could not check the controller's permissions: %s", exc)
        return
    if missing:
        fix = f"{rbac_command(lease_name, given)} | kubectl apply -f -"
        logging.getLogger("peakpilot.daemon").error(
            "the controller's account may not %s; what needs it fails until it is granted: %s",
            "; ".join(missing), fix)


@app.command("run", cls=Command)
def run_daemon(
    policy: Optional[list[Path]] = typer.Option(None, "--policy", help="Policy YAML, or a folder of them; "
                                                                       "repeat for several services. Required "
                                                                       "with --backend kubernetes; otherwise the "
                                                                       "default is configs/policy.yaml."),
    backend: str = typer.Option("simulated", "--backend", help="simulated | kubernetes | dry-run"),
    store: str = typer.Option("sqlite:///runs/daemon/peakpilot.db", "--store", envvar="PEAKPILOT_STORE",
                              help="Where to record: sqlite:///path.db, a path, or postgresql://user:pw@host/db "
                                   "(a shared database lets a new leader resume where the old one stopped)."),
    once: bool = typer.Option(False, "--once", help="Run one cycle and exit (0, or 1 if it failed)."),
    interval_s: float = typer.Option(60, "--interval-s", min=0.1, max=86400, help="Seconds between control cycles."),
    retrain_cron: str = typer.Option("0 */6 * * *", "--retrain-cron", help="When to retrain (crontab, UTC)."),
    metrics_port: int = typer.Option(0, "--metrics-port", min=0, max=65535,
                                     help="Serve /metrics and /health here (0: off)."),
    metrics_host: str = typer.Option("127.0.0.1", "--metrics-host",
                                     help="Address for /metrics and /health (loopback by default; 0.0.0.0 in a pod, "
                                          "so that the kubelet's probes and Prometheus reach it)."),
    trace: Path = typer.Option(DEFAULT_TRACE, "--trace", help="Load for services without Prometheus: this trace, "
                                                             "played from its middle on the daemon's clock."),
    timestamp_column: TimestampColumn = None,
    count_column: CountColumn = None,
    rate_column: RateColumn = None,
    timestamp_zone: TimestampZone = None,
    selector: Optional[str] = typer.Option(None, "--selector", help="Only services whose policy labels match, "
                                                                    "e.g. team=chat (several: team=chat,tier=gold, "
                                                                    "all of them)."),
    shadow: bool = typer.Option(False, "--shadow", help="Read the cluster, record what would be done, act on nothing."),
    lease_name: Optional[str] = typer.Option(None, "--lease-name", help="Lease for leader election (kubernetes); "
                                                                        "default peakpilot[-selector]."),
    kubeconfig: Optional[str] = typer.Option(None, "--kubeconfig", help="kubernetes: this kubeconfig (default: "
                                                                        "the pod's ServiceAccount, else "
                                                                        "KUBECONFIG or ~/.kube/config)."),
    retention_days: float = typer.Option(30, "--retention-days", min=0, max=36500,
                                         help="Keep this much timeline in the store (0: all of it)."),
) -> None:
    """Run the controller as a daemon: every cycle forecast, plan, act and record, for every service."""
    import os
    import socket

    from controller.daemon import Daemon, utc_now
    from controller.daemon_metrics import DaemonMetrics
    from controller.service_controller import ServiceController
    from controller.policy import PolicyError, load_policies, parse_selector, policy_files, selected
    from controller.policy_watch import PolicyWatch
    from controller.replay import load_trace
    from controller.service_parts import ServiceParts
    check_backend(backend)
    check_cron(retrain_cron)
    if lease_name is not None:
        check_lease_name(lease_name)
    if not policy:
        if backend == "kubernetes":
            fail("--backend kubernetes needs --policy: the policy files (or a folder of them) of the services to "
                 "scale, as deploy/controller.yaml gives --policy /etc/peakpilot")
        policy = [DEFAULT_POLICY]
        typer.echo(f"no --policy: running the default policy {DEFAULT_POLICY} on the {backend} backend", err=True)
    paths = policy_files(policy)
    if not paths:
        fail(f"no policy files (*.yaml) in {', '.join(map(str, policy))}")
    policies, problems = load_policies(paths, backend)
    if problems:
        fail("; ".join(m for ms in problems.values() for m in ms))
    if selector:
        try:
            parse_selector(selector)
        except ValueError as exc:
            fail(f"--selector: {exc}")
        policies = {p: pol for p, pol in policies.items() if selected(pol, selector)}
        if not policies:
            fail(f"no policy has the label{'s' if ',' in selector else ''} {selector}")
    logging.getLogger().setLevel(logging.INFO)
    # Two lines a cycle ("Running job", "executed successfully") would bury the decisions; the scheduler's
    # warnings (a cycle skipped because the last one still runs, a misfire) still show.
    logging.getLogger("apscheduler").setLevel(logging.WARNING)
    metrics = DaemonMetrics()
    st = open_store(store)
    api = lease = None
    if backend == "kubernetes":
        from controller.kube_client import KubeConfigError, api_client
        from controller.lease import LeaseLock, lease_duration_s

        try:
            api = api_client(kubeconfig=kubeconfig)
        except KubeConfigError as exc:
            fail(str(exc))
        first = next(iter(policies.values()))
        name = lease_name or lease_name_for(selector)
        lease = LeaseLock(api, first.kubernetes.namespace, name, f"{socket.gethostname()}-{os.getpid()}",
                          duration_s=lease_duration_s(interval_s))
        say_missing_permissions(api, list(policies.values()), name, shadow, list(policy))
    # A trace the services at start need is read now (one that cannot be read ends the start, not a
    # cycle); a policy file added later that needs one reads it then.
    columns = csv_columns(timestamp_column, count_column, rate_column, timestamp_zone)
    loaded = load_trace_or_exit(trace, columns) if any(p.signals.prometheus is None for p in policies.values()) \
        else None
    parts = ServiceParts(backend, utc_now, api=api, shadow=shadow, selector=selector,
                         trace=(lambda: loaded) if loaded is not None else (lambda: load_trace(trace, **columns)))

    def make_service(path: Path) -> ServiceController:
        service = ServiceController(path, None, None, st, metrics, shadow=shadow, parts=parts,
                                    acting=(lambda: lease.is_leader) if lease else (lambda: True),
                                    keep_minutes=math.ceil(retention_days * 1440))  # (0: all)
        if api is not None and path not in policies:  # a file added while running: its pools' namespace
            say_missing_permissions(api, [next(iter(policies.values())), service.policy], lease.name, shadow,
                                    list(policy), only=service.policy.kubernetes.namespace)
        return service

    services = []
    for path in policies:
        try:
            services.append(make_service(path))
        except PolicyError as exc:
            fail(str(exc))
    daemon = Daemon(services, metrics, interval_s, retrain_cron, lease=lease,
                    watch=PolicyWatch(policy, backend, parts.selects), make_service=make_service)
    if metrics_port:
        try:
            daemon.serve_metrics(metrics_port, metrics_host)
        except OSError as exc:
            fail(f"--metrics-port {metrics_port}: cannot listen on {metrics_host}:{metrics_port} ({exc.strerror})")
    if once:
        daemon.retrain_all()
        ok = daemon.cycle_all()
        for name, last in daemon.last_cycle.items():
            typer.echo(f"{name}: ok ({last['mode']}) {last['reason']}" if last["ok"]
                       else f"{name}: FAILED: {last.get('error')}")
        raise typer.Exit(0 if ok else 1)
    daemon.run()


@app.command(cls=Command)
def status(
    store: str = typer.Option("sqlite:///runs/daemon/peakpilot.db", "--store", envvar="PEAKPILOT_STORE",
                              help="The store the daemon writes (as `run` reads it: the same variable and "
                                   "default); read-only."),
    service: Optional[str] = typer.Option(None, "--service", help="Only this service."),
    as_json: bool = typer.Option(False, "--json", help="One JSON object: {\"store\", \"services\": [...]}."),
) -> None:
    """What each service's controller last decided and why, from the store the daemon writes.

    Load, forecast, nodes ready against asked for, by class, each class's reason; flags an old last cycle."""
    from controller.status import render_status, service_status
    from controller.store import Store, StoreError

    try:
        with Store(store, readonly=True) as st:
            found = service_status(st)
            name = st.name
    except (StoreError, FileNotFoundError) as exc:
        fail(f"{exc} (`peakpilot run --store` writes it)")
    if service is not None:
        found = [s for s in found if s["service"] == service]
        if not found:
            fail(f"no service {service!r} in the store {name}")
    elif not found:
        fail(f"the store {name} holds no cycle of a daemon yet (`peakpilot run` records one a cycle)")
    if as_json:
        typer.echo(json.dumps({"store": name, "services": found}))
    else:
        typer.echo(render_status(found))
