"""Sinks for meter records: the durable outbox to a collector, a JSON-lines file, the log."""

from .backoff import Backoff
from .base import Exporter
from .client import BatchRefused, CollectorClient, CollectorError, RecordResult, RetryableError
from .config import default_exporter, shared_outbox
from .fanout import FanoutExporter
from .file import FileExporter, read_records
from .health import OutboxHealth
from .log import LogExporter
from .outbox import Outbox, default_outbox_path

__all__ = [
    "Backoff",
    "BatchRefused",
    "CollectorClient",
    "CollectorError",
    "Exporter",
    "FanoutExporter",
    "FileExporter",
    "LogExporter",
    "Outbox",
    "OutboxHealth",
    "RecordResult",
    "RetryableError",
    "default_exporter",
    "default_outbox_path",
    "read_records",
    "shared_outbox",
]
