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

import gc
import heapq
import itertools
import os
import pickle
import tempfile
from collections.abc import Callable, Iterable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path
from typing import Any, BinaryIO, Final, TypeVar

from pydantic import TypeAdapter, ValidationError

from .rates import check_record
from .records import UNIT_SIZE, InvalidRecord, MeterRecord, Resource, Status

__all__ = [
    "AGENT",
    "BILLABLE",
    "CUSTOMER",
    "END_MS",
    "FINAL",
    "ID",
    "KEY",
    "RAW",
    "ROOM",
    "SESSION",
    "SESSION_TIME",
    "START_MS",
    "RecordsFile",
    "Skipped",
    "StrKey",
    "Usage",
    "gc_paused",
    "latest",
    "merged",
    "partitioned",
    "progress_bar",
    "spill_partitions",
    "usages",
]

T = TypeVar("T")
# A fact: (id, final, end_ms, raw, ...), what ``latest`` needs of a record, then whatever the caller keeps.
F = TypeVar("F", bound=tuple[Any, ...])

MAX_LINE_BYTES = 1 << 20  # a record is a few hundred bytes; a longer line is not one
NAMED = 5  # bad lines named in the message, the rest counted
SPILL_LIMIT = 200_000  # items held in memory before spilling to temporary files
_SPILL_BATCH = 1_000  # items per pickle in a partition file


@dataclass
class Skipped:
    """Lines of a records file that were not counted: how many, and the first few with the reason."""

    path: str = ""
    count: int = 0
    named: list[tuple[int, str]] = field(default_factory=list)  # (line number, reason)

    def add(self, line: int, reason: str) -> None:
        self.count += 1
        if len(self.named) < NAMED:
            self.named.append((line, reason[:300]))

    def __bool__(self) -> bool:
        return self.count > 0

    def __str__(self) -> str:
        more = f"; and {self.count - len(self.named)} more" if self.count > len(self.named) else ""
        lines = "line" if self.count == 1 else "lines"
        named = "; ".join(f"line {n}: {reason}" for n, reason in self.named)
        return f"skipped {self.count} bad {lines} of {self.path} ({named}{more})"


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
        batch: list[tuple[int, bytes]] = []
        with open(self.path, "rb") as handle:
            for number, line in enumerate(_lines(handle), 1):
                done += len(line)
                if len(line) > MAX_LINE_BYTES:
                    self._bad(number, f"longer than {MAX_LINE_BYTES} bytes: not a meter record")
                elif not line.isspace():
                    batch.append((number, line))
                    if len(batch) == _BATCH:
                        yield from self._checked(batch)
                        batch = []
                        if progress is not None:
                            progress(done, total)
            yield from self._checked(batch)
        if progress is not None:
            progress(total, total)

    def usages(
        self,
        since: datetime | None = None,
        until: datetime | None = None,
        progress: Callable[[int, int], None] | None = None,
        *,
        detail: bool = True,
    ) -> Iterator[Usage]:
        """``usages(self.records(progress), since, until, detail=detail)``."""
        return usages(self.records(progress), since, until, detail=detail)

    def _checked(self, batch: list[tuple[int, bytes]]) -> Iterator[MeterRecord]:
        # A batch of lines is one JSON array, validated in one call (pydantic's cost per call is paid
        # once); a batch with a bad line is done again line by line to find it.
        if not batch:
            return
        try:
            records = _MANY.validate_json(b"[" + b",".join(line for _, line in batch) + b"]")
        except ValidationError:
            records = []
        if len(records) != len(batch):
            yield from self._one_by_one(batch)
            return
        for (number, _), record in zip(batch, records, strict=True):
            reason = check_record(record)
            if reason:
                self._bad(number, reason)
            else:
                yield record

    def _one_by_one(self, batch: list[tuple[int, bytes]]) -> Iterator[MeterRecord]:
        for number, line in batch:
            try:
                record = MeterRecord.from_json_text(line)
            except InvalidRecord as exc:
                self._bad(number, str(exc))
                continue
            reason = check_record(record)
            if reason:
                self._bad(number, reason)
            else:
                yield record

    def _bad(self, number: int, reason: str) -> None:
        if self.strict:
            raise InvalidRecord(f"{self.path}:{number}: {reason}")
        self.skipped.add(number, reason)


_BATCH = 64  # lines validated in one call (more are slower: a larger array falls out of the CPU caches)
_MANY: TypeAdapter[list[MeterRecord]] = TypeAdapter(list[MeterRecord])


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

# A plain tuple (quick to build, pickle and free; the collector of cycles need not track it), with its
# fields at these indices. ``KEY`` is the price key in wire names (resource, unit, provider, model,
# language, UTC day), one shared tuple per distinct key; ``BILLABLE`` the quantity in base units (exact:
# ms, bytes, tokens...). ``latest`` reads the first four.
ID: Final = 0
FINAL: Final = 1
END_MS: Final = 2
RAW: Final = 3
SESSION: Final = 4
START_MS: Final = 5
ROOM: Final = 6
AGENT: Final = 7
CUSTOMER: Final = 8
KEY: Final = 9
BILLABLE: Final = 10
SESSION_TIME: Final = 11  # the agent's own time in the room, billed by LiveKit (its billed minutes)
StrKey = tuple[str, str, str, str, str, str]
Usage = tuple[str, bool, int, int, str, int, str, str, str, StrKey, int, bool]


def usages(
    records: Iterable[MeterRecord], since: datetime | None = None, until: datetime | None = None, *, detail: bool = True
) -> Iterator[Usage]:
    """The records whose start is in [since, until), as Usage tuples (a usage belongs to the window its
    start falls in, as a session belongs to the day it started).

    Without ``detail`` (sums per price key, as an invoice needs them), SESSION, ROOM, AGENT and CUSTOMER
    are empty and START_MS and END_MS 0, but for a checkpoint's end (``latest`` compares them).
    """
    days: dict[int, str] = {}
    keys: dict[StrKey, StrKey] = {}
    shared: dict[str, str] = {}  # one string object per agent, customer, room...: less memory per tuple
    share = shared.setdefault
    checkpoint = Status.CHECKPOINT
    for r in records:
        start = r.start
        if (since is not None and start < since) or (until is not None and start >= until):
            continue
        ordinal = start.toordinal()
        day = days.get(ordinal)
        if day is None:
            day = days[ordinal] = start.date().isoformat()
        unit = r.unit
        # ``_value_``: the plain attribute behind an enum's ``.value`` (a slower descriptor).
        key = (r.resource._value_, unit._value_, r.provider, r.model, r.language, day)
        key = keys.setdefault(key, key)
        final = r.status is not checkpoint
        billable = int(r.quantity * UNIT_SIZE[unit])
        if not detail:
            end_ms = 0 if final else round(r.end.timestamp() * 1000)
            yield (r.id, final, end_ms, r.raw, "", 0, "", "", "", key, billable, False)
            continue
        if len(shared) > 100_000:
            shared.clear()
        yield (
            r.id,
            final,
            round(r.end.timestamp() * 1000),  # exact: record times are whole milliseconds
            r.raw,
            share(r.session_id, r.session_id),
            round(start.timestamp() * 1000),
            share(r.room, r.room),
            share(r.agent_name, r.agent_name),
            share(r.customer, r.customer),
            key,
            billable,
            # As the collector's sessions count it: agent_session (deployed to LiveKit Cloud) or a
            # self-hosted agent's own connection marked meta.session_time; not on your own server.
            (r.resource is Resource.AGENT_SESSION or r.meta.get("session_time") is True)
            and r.provider.strip().lower() in ("", "livekit"),
        )


@contextmanager
def gc_paused() -> Iterator[None]:
    """Pause Python's cycle collector while a large file is read: reading makes millions of objects and
    no cycles, and each collection would walk every object still held (half the time, measured)."""
    enabled = gc.isenabled()
    gc.disable()
    try:
        yield
    finally:
        if enabled:
            gc.enable()


def progress_bar() -> tuple[Callable[[int, int | None], None], Callable[[], None]]:
    """A progress bar on stderr for reading a file: the callback (done, total), and a close function."""
    from rich.console import Console
    from rich.progress import BarColumn, TaskProgressColumn, TextColumn, TimeElapsedColumn
    from rich.progress import Progress as Bar

    bar = Bar(
        TextColumn("reading"), BarColumn(), TaskProgressColumn(), TimeElapsedColumn(),
        console=Console(stderr=True), transient=True,
    )  # fmt: skip
    task = bar.add_task("read", total=None)
    bar.start()

    def advance(done: int, total: int | None) -> None:
        bar.update(task, completed=done, total=total)

    return advance, bar.stop


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
    for part in partitioned(facts, lambda fact: fact[0], limit=limit, partitions=partitions):
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
