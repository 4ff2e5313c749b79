"""Prometheus metrics, one registry per app (so several apps in one process do not clash)."""

from __future__ import annotations

from prometheus_client import CollectorRegistry, Counter, Histogram, generate_latest
from prometheus_client.exposition import CONTENT_TYPE_LATEST

__all__ = ["CONTENT_TYPE_LATEST", "Metrics"]


class Metrics:
    def __init__(self) -> None:
        self.registry = CollectorRegistry()
        self.records = Counter(
            "metering_records",
            "Meter records received, by outcome (accepted, duplicate, conflict, rejected).",
            ["status"],
            registry=self.registry,
        )
        self.requests = Counter(
            "metering_requests", "HTTP requests by route and status code.", ["route", "code"], registry=self.registry
        )
        self.latency = Histogram(
            "metering_request_seconds",
            "Request handling time, including the durable commit for ingest.",
            ["route"],
            buckets=(0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10),
            registry=self.registry,
        )
        self.webhooks = Counter(
            "metering_webhooks", "LiveKit webhooks received, by event.", ["event"], registry=self.registry
        )
        self.closed_sessions = Counter(
            "metering_sessions_closed_by_webhook", "Agent sessions closed from webhooks.", registry=self.registry
        )

    def render(self) -> bytes:
        return generate_latest(self.registry)
