"""Reading records files of any size: every line checked, bad lines counted, memory bounded.

``RecordsFile.records`` streams a JSON-lines file and checks each line as the collector checks a
record it receives (the schema, then ``rates.check_record``). A line that fails (a typo, a record
the collector would refuse, a last line cut short by a crash) is skipped and counted, the first few
named; with ``strict`` the first one is an error instead.

``latest`` keeps the latest form of each usage (its first final form, else its latest checkpoint,
as ``records.latest_forms``) and ``partitioned`` groups items by a key, both without holding a large
file in memory: past ``limit`` items they spill to temporary files partitioned by the key's hash and
work through one partition at a time.
"""

from __future__ import annotations

import heapq
import itertools
import os
import pickle
import tempfile
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass, field
from datetime import datetime, timedelta, timezone
from pathlib import Path
from typing import Any, BinaryIO, NamedTuple, TypeVar

from .rates import check_record
from .records import UNIT_SIZE, InvalidRecord, MeterRecord, Status

__all__ = ["Fact", "RecordsFile", "Skipped", "Usage", "latest", "merged", "partitioned", "spill_partitions", "usages"]

T = TypeVar("T")
F = TypeVar("F", bound=tuple[Any, ...])

# (id, final, end_ms, raw, ...): what ``latest`` needs of a record, then whatever the caller keeps.
Fact = tuple[Any, ...]

MAX_LINE_BYTES = 1 << 20  # a record is a few hundred bytes; a longer line is not one
NAMED = 5  # bad lines named in the message, the rest counted
SPILL_LIMIT = 50_000  # items held in memory before spilling to temporary files
_SPILL_BATCH = 1_000  # items per pickle in a partition file


@dataclass
class Skipped:
    """Lines of a records file that were not counted: how many, and the first few with the reason."""

    path: str = ""
    count: int = 0
    named: list[str] = field(default_factory=list)

    def add(self, line: int, reason: str) -> None:
        self.count += 1
        if len(self.named) < NAMED:
            self.named.append(f"line {line}: {reason[:300]}")

    def __bool__(self) -> bool:
        return self.count > 0

    def __str__(self) -> str:
        more = f"; and {self.count - len(self.named)} more" if self.count > len(self.named) else ""
        lines = "line" if self.count == 1 else "lines"
        return f"skipped {self.count} bad {lines} of {self.path} ({'; '.join(self.named)}{more})"


class RecordsFile:
    """A JSON-lines file of meter records, read as a stream of checked records."""

    def __init__(self, path: str | os.PathLike[str], *, strict: bool = False) -> None:
        self.path = Path(path)
        self.strict = strict
        self.skipped = Skipped(str(path))

    @property
    def size(self) -> int:
        return self.path.stat().st_size

    def records(self, progress: Callable[[int, int], None] | None = None) -> Iterator[MeterRecord]:
        """Each good record in file order; ``progress(bytes read, file size)`` now and then.

        Raises InvalidRecord (``path:line: reason``) at the first bad line when ``strict``; skips it
        into ``skipped`` otherwise. Reading again starts the count again.
        """
        self.skipped = Skipped(str(self.path))
        total = self.size
        done = 0
        with open(self.path, "rb") as handle:
            for number, line in enumerate(_lines(handle), 1):
                done += len(line)
                if progress is not None and number % 4096 == 0:
                    progress(done, total)
                if not line.strip():
                    continue
                reason = ""
                if len(line) > MAX_LINE_BYTES:
                    reason = f"longer than {MAX_LINE_BYTES} bytes: not a meter record"
                else:
                    try:
                        record = MeterRecord.from_json_text(line)
                    except InvalidRecord as exc:
                        reason = str(exc)
                    else:
                        reason = check_record(record) or ""
                        if not reason:
                            yield record
                            continue
                if self.strict:
                    raise InvalidRecord(f"{self.path}:{number}: {reason}")
                self.skipped.add(number, reason)
        if progress is not None:
            progress(total, total)


def _lines(handle: BinaryIO) -> Iterator[bytes]:
    """Lines of at most MAX_LINE_BYTES + 1 bytes: a longer one is cut there and the rest dropped."""
    while True:
        line = handle.readline(MAX_LINE_BYTES + 1)
        if not line:
            return
        if len(line) > MAX_LINE_BYTES and not line.endswith(b"\n"):
            while True:  # skip to the end of this line without holding it
                rest = handle.readline(MAX_LINE_BYTES)
                if not rest or rest.endswith(b"\n"):
                    break
        yield line


# -- what a report or an invoice keeps of a record -------------------------------------------------------

_EPOCH = datetime(1970, 1, 1, tzinfo=timezone.utc)
_MS = timedelta(milliseconds=1)
_DAY_MS = 86_400_000


class Usage(NamedTuple):
    """One record as the report and invoice sum it: a small tuple that pickles fast (``latest``
    reads its first four fields). ``billable`` is the quantity in base units (exact: ms, bytes...)."""

    id: str
    final: bool
    end_ms: int
    raw: int
    session_id: str
    start_ms: int
    room: str
    agent: str
    customer: str
    resource: str
    unit: str
    provider: str
    model: str
    language: str
    day: str
    billable: int


def usages(
    records: Iterable[MeterRecord], since: datetime | None = None, until: datetime | None = None
) -> Iterator[Usage]:
    """The records whose start is in [since, until), as Usage tuples (a usage belongs to the window its
    start falls in, as a session belongs to the day it started)."""
    lo = (since - _EPOCH) // _MS if since is not None else None
    hi = (until - _EPOCH) // _MS if until is not None else None
    days: dict[int, str] = {}
    shared: dict[str, str] = {}  # one string object per agent, customer, model...: less memory per tuple
    for r in records:
        start_ms = (r.start - _EPOCH) // _MS
        if (lo is not None and start_ms < lo) or (hi is not None and start_ms >= hi):
            continue
        day = days.get(start_ms // _DAY_MS)
        if day is None:
            day = days[start_ms // _DAY_MS] = r.start.date().isoformat()
        if len(shared) > 100_000:
            shared.clear()
        yield Usage(
            r.id,
            r.status is not Status.CHECKPOINT,
            (r.end - _EPOCH) // _MS,
            r.raw,
            shared.setdefault(r.session_id, r.session_id),
            start_ms,
            shared.setdefault(r.room, r.room),
            shared.setdefault(r.agent_name, r.agent_name),
            shared.setdefault(r.customer, r.customer),
            r.resource.value,
            r.unit.value,
            shared.setdefault(r.provider, r.provider),
            shared.setdefault(r.model, r.model),
            r.language,
            day,
            int(r.quantity * UNIT_SIZE[r.unit]),
        )


# -- latest forms and grouping, in bounded memory ---------------------------------------------------------


def _fold(held: dict[str, F], fact: F) -> None:
    # MeterRecord.supersedes on facts: a stored final form stands; a checkpoint gives way to the final
    # form or to a later checkpoint (by end, then raw).
    old = held.get(fact[0])
    if old is None or (not old[1] and (fact[1] or (fact[2], fact[3]) > (old[2], old[3]))):
        held[fact[0]] = fact


def spill_partitions(size_bytes: int, limit: int = SPILL_LIMIT) -> int:
    """How many partitions to spill a file of ``size_bytes`` into: about ``limit`` records each (a
    record's line is rarely under 150 bytes), at least 8 and at most 256 open files."""
    return max(8, min(256, size_bytes // 150 // limit + 1))


def latest(facts: Iterable[F], *, limit: int = SPILL_LIMIT, partitions: int = 64) -> Iterator[F]:
    """The latest form of each id among ``facts`` (given in file order), like ``records.latest_forms``."""
    for part in partitioned(facts, lambda fact: str(fact[0]), limit=limit, partitions=partitions):
        held: dict[str, F] = {}
        for fact in part:
            _fold(held, fact)
        yield from held.values()


def partitioned(
    items: Iterable[T], key: Callable[[T], str], *, limit: int = SPILL_LIMIT, partitions: int = 64
) -> Iterator[list[T]]:
    """``items`` in lists such that all items of one key are in the same list, in their order.

    Up to ``limit`` items: one list, in memory. More: the items go to ``partitions`` temporary files
    by the hash of their key, and each file comes back as one list (about ``n / partitions`` items).
    """
    it = iter(items)
    first: list[T] = []
    for item in it:
        first.append(item)
        if len(first) > limit:
            break
    else:
        if first:
            yield first
        return
    files = [tempfile.TemporaryFile(prefix="livekit-metering-") for _ in range(partitions)]
    try:
        buffers: list[list[T]] = [[] for _ in range(partitions)]

        def put(item: T) -> None:
            n = hash(key(item)) % partitions
            buffer = buffers[n]
            buffer.append(item)
            if len(buffer) >= _SPILL_BATCH:
                pickle.dump(buffer, files[n], pickle.HIGHEST_PROTOCOL)
                buffer.clear()

        for item in first:
            put(item)
        del first
        for item in it:
            put(item)
        for n, handle in enumerate(files):
            if buffers[n]:
                pickle.dump(buffers[n], handle, pickle.HIGHEST_PROTOCOL)
            buffers[n] = []
            handle.seek(0)
        for handle in files:
            part = [item for batch in _unpickled(handle) for item in batch]
            handle.close()  # its disk space goes back before the next partition is read
            if part:
                yield part
    finally:
        for handle in files:
            handle.close()


def merged(runs: Iterable[list[T]], key: Callable[[T], Any]) -> Iterator[T]:
    """The items of ``runs`` (each sorted by ``key``) in one sorted stream: a single run straight from
    memory; several through temporary files, merged, so that only a batch of each is held at once."""
    it = iter(runs)
    first, second = next(it, None), next(it, None)
    if second is None:
        yield from first or ()
        return
    files: list[BinaryIO] = []
    try:
        for run in itertools.chain((first or [], second), it):
            handle: BinaryIO = tempfile.TemporaryFile(prefix="livekit-metering-")
            files.append(handle)
            for start in range(0, len(run), _SPILL_BATCH):
                pickle.dump(run[start : start + _SPILL_BATCH], handle, pickle.HIGHEST_PROTOCOL)
            handle.seek(0)
        del first, second
        yield from heapq.merge(*(_items(f) for f in files), key=key)
    finally:
        for f in files:
            f.close()


def _unpickled(handle: BinaryIO) -> Iterator[Any]:
    while True:
        try:
            yield pickle.load(handle)
        except EOFError:
            return


def _items(handle: BinaryIO) -> Iterator[Any]:
    for batch in _unpickled(handle):
        yield from batch
