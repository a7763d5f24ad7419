"""Prometheus metrics of the gateway (GET /metrics): jobs by final state, job and stage durations, queue depth."""

from __future__ import annotations

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, generate_latest

from producer.gateway.jobs import Job

BUCKETS = (0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 120, 300, 600, 1800, 3600)
STAGES = ("fetch", "load", "segment", "write", "store", "total")


class GatewayTelemetry:
    def __init__(self, pending):
        self.registry = CollectorRegistry()
        self.jobs = Counter(
            "litemedsam_gateway_jobs_finished_total",
            "Jobs finished, by final state and mode",
            ["state", "mode"],
            registry=self.registry,
        )
        self.created = Counter("litemedsam_gateway_jobs_accepted_total", "Jobs accepted", registry=self.registry)
        self.stages = Histogram(
            "litemedsam_gateway_stage_seconds",
            "Seconds per job stage",
            ["stage"],
            buckets=BUCKETS,
            registry=self.registry,
        )
        self.pending = Gauge(
            "litemedsam_gateway_jobs_pending", "Jobs queued or running in this service", registry=self.registry
        )
        self.pending.set_function(pending)
        self.mode = "embedded"

    def finished(self, job: Job) -> None:
        self.jobs.labels(job.state, self.mode).inc()
        for stage in STAGES:
            if stage in job.timings:
                self.stages.labels(stage).observe(job.timings[stage])

    def exposition(self) -> bytes:
        return generate_latest(self.registry)
