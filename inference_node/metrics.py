"""The node's Prometheus metrics. ``peakpilot_requests_total`` (every request, by outcome) less
``peakpilot_retried_requests_total`` (those a client sent again: a busy answer retried is one request of
demand, not two) is the request history the forecaster reads back (forecaster.prometheus_source)."""

from __future__ import annotations

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram

LATENCY_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.0, 5.0, 10.0, 30.0)


class NodeMetrics:
    def __init__(self) -> None:
        self.registry = CollectorRegistry()
        r = self.registry
        self.requests = Counter("peakpilot_requests", "Completion requests by outcome", ["outcome"], registry=r)
        self.latency = Histogram("peakpilot_request_latency_seconds", "Latency of served completions",
                                 buckets=LATENCY_BUCKETS, registry=r)
        self.first_token = Histogram("peakpilot_time_to_first_token_seconds",
                                     "Time from a streamed completion's arrival to its first generated token",
                                     buckets=LATENCY_BUCKETS, registry=r)
        self.per_token = Histogram("peakpilot_time_per_output_token_seconds",
                                   "A streamed answer's mean time per token after its first",
                                   buckets=(0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0),
                                   registry=r)
        self.busy_latency = Histogram("peakpilot_busy_answer_seconds", "Time to answer 429 busy",
                                      buckets=(0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 1.0), registry=r)
        self.retried = Counter("peakpilot_retried_requests",
                               "Requests their client says repeat one it sent before (x-stainless-retry-count of "
                               "OpenAI's SDKs, x-envoy-attempt-count of Envoy and Istio)", registry=r)
        self.unauthorized = Counter("peakpilot_unauthorized_requests",
                                    "Requests refused 401 for want of a valid API key (not in "
                                    "peakpilot_requests_total: they are not the service's demand)", registry=r)
        self.in_flight = Gauge("peakpilot_requests_in_flight", "Completion requests being handled", registry=r)
        self.batch_limit = Gauge("peakpilot_batch_limit", "Most rows the node batches now: --max-batch, halved each "
                                 "time a batch runs out of the device's memory, doubled back after --oom-backoff-s",
                                 registry=r)
        self.queue_depth = Gauge("peakpilot_queue_depth", "Requests waiting for a row of the batch", registry=r)
        self.batch_size = Histogram("peakpilot_batch_size",
                                    "Requests generating together, as each group joins the batch",
                                    buckets=(1, 2, 4, 8, 16, 32, 64, 128), registry=r)
        self.tokens = Counter("peakpilot_generated_tokens",
                              "Tokens generated for answers, the end or stop token that ended one included "
                              "(as vLLM counts them)", registry=r)
        self.tokens_per_second = Gauge("peakpilot_tokens_per_second",
                                       "Generated tokens per second, over the last 5 s of answers",
                                       registry=r)
        self.warm = Gauge("peakpilot_warm", "1 once the model is loaded and warmed up", registry=r)
        self.ready = Gauge("peakpilot_ready", "1 while the node takes work", registry=r)
        self.start_seconds = Gauge("peakpilot_start_seconds", "Seconds each start phase took", ["phase"], registry=r)
        # The SLA as replay counts it, measured where it happens: answers slower than --slo-ms are late.
        self.over_slo = Counter("peakpilot_requests_over_slo", "Served completions slower than the node's --slo-ms",
                                registry=r)
        self.slo = Gauge("peakpilot_slo_seconds", "The node's latency target (--slo-ms); 0 without one",
                         registry=r)
        for outcome in ("ok", "busy", "error", "bad_request", "draining", "cancelled"):
            self.requests.labels(outcome)
