"""Archives in object storage (s3://, gs://, https://): ranged reads through a transport, with
retries (resilience.py), read-ahead bounded per reader, and the object pinned by its ETag.

The object's ETag (and version, when the store has versions) is read once when the run opens
it; every range asks for that ETag (If-Match) and checks the one that comes back, so bytes of a
replaced object are never judged: the run stops that archive with SOURCE_CHANGED.
Credentials never pass through here: each transport reads them from the environment where it
runs (the coordinator and its workers alike), so no ref, manifest, log or report holds one."""
from __future__ import annotations

import asyncio
import collections
import random
import threading
import time
from concurrent.futures import Future, ThreadPoolExecutor
from contextlib import contextmanager
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Callable, Iterator, Protocol

import blake3

from ..errors import SourceChanged, SourceError
from .base import ArchiveIdentity
from .resilience import Clock, RetryPolicy, SystemClock, Transient, breaker_for, retrying, with_retries

if TYPE_CHECKING:
    from .s3 import S3Settings

ID_PROBE = 64 * 1024
BLOCK = 8 * 1024 * 1024  # a range request: large enough that latency is small beside transfer
CHANGE_POLL = 10.0  # seconds between the coordinator's looks at the object (a HEAD each)


@dataclass(frozen=True)
class ObjectInfo:
    size: int
    etag: str  # without quotes
    version: str | None  # the store's version id, if it keeps versions
    mtime_ns: int


@dataclass(frozen=True)
class RemoteOptions:
    """What a reader needs besides the object: tunables, never credentials."""

    policy: RetryPolicy = RetryPolicy()
    in_flight: int = 4  # concurrent range requests per reader (read-ahead included)
    timeout: float = 30.0  # seconds: connect and read, per request
    # the S3 store as the coordinator resolved it (s3.settings), so that workers on other
    # machines (Dask) read the same store; None: resolve from this process's environment
    s3: S3Settings | None = None
    gcs: str | None = None  # Google Cloud Storage's JSON API base URL, resolved likewise (gcs.api_base)


class Transport(Protocol):
    """One object's requests; raises resilience.Transient for what is worth retrying,
    SourceChanged when the object is not the pinned one, OSError for the rest."""

    endpoint: str  # the circuit breaker's key

    def head(self) -> ObjectInfo: ...

    def get(self, start: int, end: int, pinned: ObjectInfo) -> bytes: ...


@dataclass(frozen=True)
class RemoteRef:
    """Picklable: a worker opens its own transport (and connection pool) from it."""

    uri: str
    pinned: ObjectInfo
    options: RemoteOptions = RemoteOptions()

    def open(self) -> "RemoteReader":
        from . import transport_for
        return RemoteReader(transport_for(self.uri, self.options), self.pinned, self.options)


class RemoteReader:
    """Ranged reads of one pinned object. Reads that go forward are read ahead, up to
    ``in_flight`` blocks at once, within the span ``expect`` names."""

    small_reads_cheap = False  # each read is a block's range request, read ahead from

    def __init__(self, transport: Transport, pinned: ObjectInfo, options: RemoteOptions,
                 clock: Clock | None = None, rng: random.Random | None = None):
        self.transport, self.pinned, self.options = transport, pinned, options
        self.size = pinned.size
        self.clock = clock or SystemClock()
        self.rng = rng or random.Random()
        self.breaker = breaker_for(transport.endpoint, options.policy, self.clock)
        self.pool = ThreadPoolExecutor(max(1, options.in_flight), thread_name_prefix="archcheck-range")
        self.blocks: dict[int, Future] = {}  # block index -> its bytes
        self.cursors: dict[int, int] = {}  # reading thread -> the first block of its last read
        self.lock = threading.Lock()
        self.span = (0, self.size)
        self.fetched: Callable[[int, bytes], None] | None = None

    def reading_from(self, offset: int) -> None:
        """Keep the blocks from ``offset`` on for this thread (as its reads would): another
        thread reading ahead of it (the frame walk) fetches them for both."""
        self._forget_before(min(offset, max(0, self.size - 1)) // BLOCK)

    def on_fetch(self, callback: Callable[[int, bytes], None]) -> bool:
        """Each block, once transferred, goes to ``callback`` too (from the fetching thread):
        bytes another layer needs need not cross the network twice."""
        self.fetched = callback
        return True

    def expect(self, start: int, end: int) -> None:
        """The reads to come are in [start, end): nothing past it is read ahead."""
        self.span = (max(0, start), min(self.size, end))

    def check(self) -> None:
        """Every range is checked against the pinned ETag as it arrives: nothing to do here."""

    def pread(self, offset: int, length: int) -> bytes:
        end = min(self.size, offset + length)
        if offset >= end:
            return b""
        first, last = offset // BLOCK, (end - 1) // BLOCK
        self._read_ahead(last)
        parts = []
        for index in range(first, last + 1):
            data = self._block(index).result()
            lo = max(offset, index * BLOCK) - index * BLOCK
            hi = min(end, (index + 1) * BLOCK) - index * BLOCK
            parts.append(data[lo:hi])
        self._forget_before(first)
        return parts[0] if len(parts) == 1 else b"".join(parts)

    def readinto(self, offset: int, buffer) -> int:
        data = self.pread(offset, len(buffer))
        memoryview(buffer)[:len(data)] = data
        return len(data)

    def read_in_place(self, offset: int, length: int) -> bytes:
        return self.pread(offset, length)

    @contextmanager
    def view(self, offset: int, length: int) -> Iterator[memoryview]:
        yield memoryview(self.pread(offset, length))

    def find(self, needle: bytes, start: int, end: int) -> int:
        """First offset of ``needle`` in [start, end), or -1; one block at a time."""
        pos, end = max(0, start), min(end, self.size)
        while pos < end:
            hit = self.pread(pos, min(BLOCK + len(needle) - 1, end - pos)).find(needle)
            if hit >= 0:
                return pos + hit
            pos += BLOCK
        return -1

    def close(self) -> None:
        with self.lock:
            for future in self.blocks.values():
                future.cancel()
            self.blocks.clear()
        self.pool.shutdown(wait=True, cancel_futures=True)

    def __enter__(self) -> "RemoteReader":
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    # --- blocks ---------------------------------------------------------------------------

    def _block(self, index: int) -> Future:
        with self.lock:
            future = self.blocks.get(index)
            if future is None:
                future = self.blocks[index] = self.pool.submit(self._fetch, index)
            return future

    def _read_ahead(self, last: int) -> None:
        """Blocks after ``last`` within the span, so that in_flight requests are out at once."""
        span_end = (self.span[1] - 1) // BLOCK if self.span[1] > 0 else -1
        for index in range(last + 1, min(last + self.options.in_flight, span_end + 1)):
            self._block(index)

    def _forget_before(self, first: int) -> None:
        """Keep the blocks that some reading thread's read-ahead may still use (the decode lanes
        of a multi-frame archive share a reader): memory stays within in_flight + 1 blocks per
        thread, whatever the order of the reads. A block dropped is not cancelled: a thread may
        be waiting for it."""
        with self.lock:
            self.cursors[threading.get_ident()] = first
            keep = set()
            for cursor in self.cursors.values():
                keep.update(range(cursor, cursor + self.options.in_flight + 1))
            for index in [i for i in self.blocks if i not in keep]:
                del self.blocks[index]

    def _fetch(self, index: int) -> bytes:
        start, end = index * BLOCK, min(self.size, (index + 1) * BLOCK)
        data = with_retries(lambda: self.transport.get(start, end, self.pinned),
                            f"bytes {start}-{end}", self.options.policy, self.breaker, self.clock, self.rng)
        if self.fetched is not None and len(data) == end - start:
            self.fetched(start, data)
        return data


class RemoteSource:
    """The coordinator's view of one pinned object."""

    def __init__(self, uri: str, transport: Transport, info: ObjectInfo, options: RemoteOptions):
        self.uri, self.transport, self.pinned, self.options = uri, transport, info, options
        self.size = info.size
        self._changed = ""
        self._looked = time.monotonic()
        self._key = _content_key(uri, transport.endpoint, info)
        # the first ID_PROBE bytes, once read: every small read is one request
        self._head: bytes | None = _HEADS.get(self._key) if self._key else None

    async def read(self, offset: int, length: int) -> bytes:
        """The coordinator's small reads (identity, format): the object's head is read once
        (ID_PROBE bytes), and reads within it are served from it."""
        end = min(self.size, offset + length)
        if offset >= end:
            return b""
        if end <= ID_PROBE:
            if self._head is None:
                self._head = await self._get(0, min(self.size, ID_PROBE))
                if self._key:
                    _HEADS.put(self._key, self._head)
            return self._head[offset:end]
        return await self._get(offset, end)

    async def _get(self, start: int, end: int) -> bytes:
        return await asyncio.to_thread(retrying, lambda: self.transport.get(start, end, self.pinned),
                                       f"bytes {start}-{end}", self.options.policy, self.transport.endpoint)

    async def identity(self) -> ArchiveIdentity:
        known = _IDENTITIES.get(self._key) if self._key else None
        if known is not None:
            return known
        head = await self.read(0, ID_PROBE)
        tail = await self.read(max(0, self.size - ID_PROBE), ID_PROBE)
        identity = ArchiveIdentity(self.uri, self.size, self.pinned.mtime_ns, blake3.blake3(head).hexdigest(),
                                   blake3.blake3(tail).hexdigest(), version=_version(self.pinned))
        if self._key:
            _IDENTITIES.put(self._key, identity)
        return identity

    def ref(self) -> RemoteRef:
        return RemoteRef(self.uri, self.pinned, self.options)

    def changes(self, fresh: bool = True) -> str:
        """A HEAD; for a periodic look, one every CHANGE_POLL seconds at most (ranges check the
        ETag themselves)."""
        if self._changed or (not fresh and time.monotonic() - self._looked < CHANGE_POLL):
            return self._changed
        self._looked = time.monotonic()
        try:
            now = self.transport.head()
        except SourceChanged as exc:
            self._changed = exc.what
        except (OSError, Transient, SourceError):
            return ""  # not reachable now: the ranges are pinned, and their retries say what it costs
        else:
            self._changed = describe_change(self.pinned, now)
        return self._changed


class _Recent:
    """The last ``limit`` values put, by key (thread-safe)."""

    def __init__(self, limit: int):
        self.limit, self.values, self.lock = limit, collections.OrderedDict(), threading.Lock()

    def get(self, key: tuple) -> Any:
        with self.lock:
            return self.values.get(key)

    def put(self, key: tuple, value: Any) -> None:
        with self.lock:
            self.values[key] = value
            self.values.move_to_end(key)
            while len(self.values) > self.limit:
                self.values.popitem(last=False)


# A run reads an object's identity several times (checking the command line, scheduling, the
# run, the coverage summary): each time, a HEAD pins it, and the same pinned content has the
# same head, tail and identity, so their ranged reads are made once per process (_content_key).
_IDENTITIES = _Recent(4096)
_HEADS = _Recent(16)  # ID_PROBE bytes each


def _content_key(uri: str, endpoint: str, info: ObjectInfo) -> tuple | None:
    """What names an object's bytes in a store that changes it with every write: S3's ETag
    (a digest of the content, or opaque but new on each write) with its version id, a GCS
    generation. Not a web server's ETag, which is often made of the size and the modification
    time (a rewrite in the same second, or one that keeps the time, keeps it): no caching."""
    if uri.startswith(("s3://", "gs://")) and (info.etag or info.version not in (None, "", "null")):
        return (endpoint, uri, info.size, info.etag, info.version, info.mtime_ns)
    return None


def _version(info: ObjectInfo) -> str:
    return f"etag:{info.etag}" + (f" version:{info.version}" if info.version else "")


def describe_change(before: ObjectInfo, now: ObjectInfo) -> str:
    said = []
    if now.mtime_ns != before.mtime_ns and not before.etag:  # no ETag: the time tells
        said.append("its modification time differs")
    if now.etag != before.etag:
        said.append(f"its ETag is {now.etag}, not {before.etag}")
    if now.version != before.version and before.version:
        said.append(f"its version is {now.version}, not {before.version}")
    if now.size != before.size:
        said.append(f"its size is {now.size}, not {before.size}")
    return "replaced: " + ", ".join(said) if said else ""
