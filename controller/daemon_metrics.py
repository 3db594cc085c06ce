"""The daemon's own metrics: what ``/metrics`` exports and ``configs/prometheus/peakpilot-rules.yml`` reads.

One registry per daemon (tests run several side by side). Every series a service exports is removed when
the daemon stops running it, so no alert reads a departed service's last values for ever.
"""

from __future__ import annotations

from pathlib import Path

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram


class DaemonMetrics:
    def __init__(self) -> None:
        r = self.registry = CollectorRegistry()
        self._per_service: list = []  # (metric, its label names) of every series that names a service

        def metric(kind, name: str, doc: str, labels: list[str], **kwargs):
            made = kind(name, doc, labels, registry=r, **kwargs)
            if "service" in labels:
                self._per_service.append((made, tuple(labels)))
            return made

        self.cycle_seconds = metric(Histogram, "peakpilot_cycle_duration_seconds", "Control cycle duration", ["service"],
                                    buckets=(0.005, 0.01, 0.025, 0.05, 0.1, 0.2, 0.5, 1, 2, 5))
        self.forecast = metric(Gauge, "peakpilot_forecast_rps", "Forecast load 10 minutes after the cycle, "
                               "requests/s (so `offset 10m` is the forecast for now)", ["service", "quantile"])
        self.observed = metric(Gauge, "peakpilot_observed_rps", "Load the last cycle observed, requests/s",
                               ["service"])
        self.capacity = metric(Gauge, "peakpilot_capacity_rps", "Requests/s the ready nodes serve within the SLO "
                               "(ready nodes x capacity per node)", ["service"])
        self.desired = metric(Gauge, "peakpilot_desired_nodes", "Nodes decided", ["service", "class"])
        self.actual = metric(Gauge, "peakpilot_actual_nodes", "Nodes there", ["service", "class", "state"])
        self.cost = metric(Gauge, "peakpilot_cost_per_hour", "Cost per hour of the nodes running", ["service"])
        self.errors = metric(Counter, "peakpilot_errors", "Errors by kind", ["service", "kind"])
        self.forecast_age = metric(Gauge, "peakpilot_forecast_age_seconds", "Age of the forecast in use", ["service"])
        self.cycles = metric(Counter, "peakpilot_cycles", "Control cycles run", ["service", "mode"])
        self.lasting = metric(Gauge, "peakpilot_missed_surges_lasting_share",
                              "Share of recent surges above the forecast band that lasted a lead time (rises are "
                              "followed at 1/3 or more with safety_net.follow_rises: auto); absent until 10 are scored",
                              ["service"])
        # What the alerting rules (configs/prometheus/peakpilot-rules.yml) need to tell a controller that
        # controls from one that only runs: which replica holds the Lease, which applies its decisions,
        # when each service's loop last turned and last succeeded, and whether the forecast fell back.
        self.leader = metric(Gauge, "peakpilot_leader", "1 while this replica holds the Lease (always, without one)",
                             ["lease"])
        self.acting = metric(Gauge, "peakpilot_acting", "1 while this replica applies its decisions (leader, not shadow)",
                             ["service"])
        self.last_cycle = metric(Gauge, "peakpilot_last_cycle_timestamp_seconds", "Unix time the last cycle finished",
                                 ["service"])
        self.last_ok_cycle = metric(Gauge, "peakpilot_last_ok_cycle_timestamp_seconds",
                                    "Unix time the last cycle that read the cluster and decided finished", ["service"])
        self.fallback = metric(Gauge, "peakpilot_forecast_fallback",
                               "1 while the model in use is not the policy's (it fell back, or none is trained)",
                               ["service"])
        self.training_seconds = metric(Histogram, "peakpilot_training_duration_seconds",
                                       "Time a training took: reading the history and fitting (failed ones too)",
                                       ["service"], buckets=(1, 2, 5, 10, 30, 60, 120, 300, 600))
        self.last_trained = metric(Gauge, "peakpilot_last_training_timestamp_seconds",
                                   "Unix time the model in use was trained", ["service"])
        self.conflicts = metric(Gauge, "peakpilot_conflicting_autoscalers",
                                "Other autoscalers (HorizontalPodAutoscalers) that scale this service's workloads",
                                ["service"])
        self.policy_refused = metric(Gauge, "peakpilot_policy_file_refused",
                                     "1 while a policy file on disk is refused (a changed one: the one before "
                                     "stays in force; a new one: its service is not run)", ["file"])

    def refused(self, policy_file: Path, refused: bool) -> None:
        """Whether the policy file on disk is refused (or unreadable) now."""
        self.policy_refused.labels(str(policy_file)).set(int(refused))

    def forget(self, service: str, policy_file: Path) -> None:
        """Drop every series of a service no longer run, so that no alert reads its last values for ever."""
        for metric, names in self._per_service:
            for key in _label_values(metric, names, "service", service):
                metric.remove(*key)
        self.forget_file(policy_file)

    def forget_file(self, policy_file: Path) -> None:
        for key in _label_values(self.policy_refused, ("file",), "file", str(policy_file)):
            self.policy_refused.remove(*key)


def _label_values(metric, names: tuple[str, ...], label: str, value: str) -> set[tuple[str, ...]]:
    """The label values of a metric's series whose ``label`` is ``value`` (a histogram's ``le`` aside)."""
    return {tuple(sample.labels[n] for n in names) for family in metric.collect()
            for sample in family.samples if sample.labels.get(label) == value}
