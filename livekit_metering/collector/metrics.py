"""Prometheus metrics, one registry per app (so several apps in one process do not clash).

Under ``serve --workers`` each worker would count only what it handled itself, and a scrape reaches
one worker at random: there the values live in files that every worker writes and any worker sums
(prometheus_client's multiprocess mode, as under gunicorn).
"""

from __future__ import annotations

import os

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, generate_latest, values
from prometheus_client.exposition import CONTENT_TYPE_LATEST
from prometheus_client.multiprocess import MultiProcessCollector

__all__ = ["CONTENT_TYPE_LATEST", "Metrics", "share_between_processes"]

_DIRECTORY = "PROMETHEUS_MULTIPROC_DIR"


def share_between_processes(directory: str) -> None:
    """Keep the values of every metric made from now on in files under ``directory``, which all
    processes forked afterwards share; ``Metrics.render`` then reports their sum."""
    os.environ[_DIRECTORY] = directory
    values.ValueClass = values.MultiProcessValue()  # type: ignore[no-untyped-call]


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
        self.in_flight = Gauge(
            "metering_requests_in_flight",
            "Requests being handled now (this scrape included), over every worker.",
            multiprocess_mode="livesum",
            registry=self.registry,
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
        directory = os.environ.get(_DIRECTORY)
        if directory and values.ValueClass is not values.MutexValue:  # multiprocess mode
            registry = CollectorRegistry()
            MultiProcessCollector(registry, directory)  # type: ignore[no-untyped-call]
            return generate_latest(registry)
        return generate_latest(self.registry)
