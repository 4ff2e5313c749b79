"""Sinks for meter records: the durable outbox to a collector, a JSON-lines file, the log."""

from .base import Exporter
from .config import default_exporter
from .file import FileExporter, read_records

__all__ = ["Exporter", "FileExporter", "default_exporter", "read_records"]
