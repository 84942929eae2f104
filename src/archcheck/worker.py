"""Top-level functions that run in worker processes. No asyncio here.

Tasks carry descriptors (a source ref, offsets, a nonce), never archive bytes: each worker
opens the source itself and reads only the ranges it is given. The per-byte work is the native
core's, called with the GIL released.
"""
from __future__ import annotations

import os
import resource
import select
import signal
import threading
import time
from multiprocessing.connection import Client
from dataclasses import dataclass
from typing import Any

from .errors import SourceChanged, UnsupportedArchive, describe_error
from .layers import age, raw
from .layers.age import AgeKey
from .layers.detect import detect_format
from .layers.decoding import Failure
from .layers.stream import CheckpointMismatch, StreamCheck, StreamStopped
from .scanners import ScanConfig
from .segments import Segment
from .sources import SourceRef


def init_worker(coordinator: int | None = None) -> None:
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # the coordinator decides how to stop
    if coordinator is not None:
        threading.Thread(target=_end_with, args=(coordinator,), daemon=True).start()


def _more_files() -> None:
    """Each piece of a local file read in place holds a mapping, and CPython's mmap keeps a file
    descriptor per mapping: lanes x depth of them (about a thousand at --workers 32 and a large
    --max-memory, past the usual soft limit of 1024). The soft limit goes up to the hard one;
    a map that still cannot be made is read instead (LocalReader.read_in_place)."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft != hard:
        try:
            resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
        except (ValueError, OSError):
            pass  # the limit stays; mapping falls back to reading


def _end_with(coordinator: int) -> None:
    """A worker ends when its coordinator does, however it ended. Killed with SIGKILL, or
    stopped before the pool was fully up, the coordinator cannot tell it to; and its task
    queue's pipe is open in the worker itself, so it would wait forever, holding the
    coordinator's stdout and stderr open. A pidfd cannot be fooled by a reused pid."""
    try:
        fd = os.pidfd_open(coordinator)
    except ProcessLookupError:
        fd = None  # gone before this worker even started
    except (OSError, AttributeError):
        return  # no pidfd (old kernel): the coordinator's own shutdown has to do
    if fd is not None:
        select.select([fd], [], [])  # readable once the coordinator has exited
    os.kill(os.getpid(), signal.SIGTERM)


@dataclass(frozen=True)
class SegmentResult:
    index: int
    nonce: str
    leaves: tuple[str, ...] = ()
    error: str | None = None
    changed: str | None = None  # the archive is not the file the run was planned on


def hash_segment(ref: SourceRef, segment: Segment) -> SegmentResult:
    """Hash a segment of the file the run was planned on: checked when opened and again when
    hashed, so digests of another file (or of this one, changed meanwhile) never count."""
    try:
        reader = ref.open()
        try:
            leaves = raw.leaf_digests(reader, segment.offset, segment.length)
            reader.check()
        finally:
            reader.close()
    except SourceChanged as exc:
        return SegmentResult(segment.index, segment.nonce, changed=exc.what)
    except (OSError, ValueError) as exc:
        return SegmentResult(segment.index, segment.nonce, error=describe_error(exc))
    return SegmentResult(segment.index, segment.nonce, tuple(leaves))


@dataclass(frozen=True)
class StreamTask:
    """Run the stream check where the bytes are, reporting over ``address``."""

    uri: str
    codec: str  # "tar" (none), "zstd", a stream codec ("gzip", "xz", "lz4", "bzip2") or "age"
    check_tar: bool
    digest: str | None
    max_window: int
    threads: int
    depth: int
    chunk: int
    checkpoint: dict | None  # go on from here
    checkpoint_every: float
    checkpoint_from: int | None  # past this archive offset, checkpoint at every chunk
    scan: ScanConfig | None
    address: str
    authkey: bytes
    age: AgeKey | None = None  # decrypts an age file's payload (its repr hides the key)
    share_leaves: bool = False  # hash the raw layer's leaves from what this check transfers


PROGRESS_EVERY = 0.1  # seconds between progress messages
ROWS_PER_MESSAGE = 1024  # frame rows held before they are sent


def check_stream(ref: SourceRef, task: StreamTask) -> None:
    """The stream check of one archive, in this worker: decoded bytes never leave it. What it
    finds goes to the coordinator as messages: ("members", line, count), ("frames", rows),
    ("checkpoint", state), ("progress", offset), ("leaf", index, digest), then ("result", StreamResult) or ("stopped",),
    ("mismatch",), ("io_error", text), or ("found", findings) and a Failure. The coordinator's "stop" ends it early."""
    _more_files()  # here, not in a pool's initializer: a Dask worker runs this too
    try:
        with Client(task.address, authkey=task.authkey) as conn:
            _stream_to(_Sender(conn), ref, task)
    except (OSError, EOFError):
        pass  # the coordinator went away: nothing is left to report to


class _Sender:
    """Messages from the walker thread and a progress clock, one at a time. Frame rows are
    sent in batches (a file of many small frames would make a message per frame), and what is
    held is sent before any other message, so that a checkpoint or a result never overtakes
    the rows before it."""

    def __init__(self, conn: Any):
        self.conn, self.lock, self.last_progress = conn, threading.Lock(), 0.0
        self.rows: list[tuple] = []

    def send(self, *message: Any) -> None:
        with self.lock:
            self._send_rows()
            self.conn.send(message)

    def frame_rows(self, rows: list[tuple]) -> None:
        with self.lock:
            self.rows.extend(rows)
            if len(self.rows) >= ROWS_PER_MESSAGE:
                self._send_rows()

    def failure(self, exc: BaseException) -> None:
        with self.lock:
            self._send_rows()
            self.conn.send(Failure.of(exc))

    def progress(self, offset: int) -> None:
        now = time.monotonic()
        if now - self.last_progress >= PROGRESS_EVERY:
            self.last_progress = now
            self.send("progress", offset)

    def _send_rows(self) -> None:
        if self.rows:
            rows, self.rows = self.rows, []
            self.conn.send(("frames", rows))


def _stream_to(out: _Sender, ref: SourceRef, task: StreamTask) -> None:
    try:
        reader = ref.open()
    except Exception as exc:  # noqa: BLE001 - handed on, never swallowed
        out.failure(exc)
        return
    if task.share_leaves:
        reader.on_fetch(_LeafSharer(out, reader.size))
    codec, plain = task.codec, None
    if codec == "age":
        opened = _decrypted(out, reader, task)
        if opened is None:
            return
        plain, codec = opened
        reader = plain
    stop = threading.Event()
    listener = threading.Thread(target=_wait_for_stop, args=(out.conn, stop), daemon=True)
    listener.start()
    check = StreamCheck(
        reader, task.uri, codec=codec, check_tar=task.check_tar, digest=task.digest,
        max_window=task.max_window, threads=task.threads, depth=task.depth, chunk=task.chunk,
        on_progress=out.progress,
        on_members=_members_to(out, plain),
        on_frames=out.frame_rows, on_walked=plain.note_frame if plain is not None else None,
        on_cut=plain.note_cut if plain is not None else None,
        resume_from=task.checkpoint,
        on_checkpoint=_checkpoints_to(out, plain), checkpoint_every=task.checkpoint_every,
        checkpoint_from=task.checkpoint_from, stop=stop, scan=task.scan)
    try:
        result = check.run()
        if plain is not None:
            result = age.conclude(plain, task.uri, result, check.member_at if codec == "tar" else None)
        out.send("result", result)
    except StreamStopped:
        out.send("stopped")
    except CheckpointMismatch:
        out.send("mismatch")
    except OSError as exc:
        out.send("io_error", describe_error(exc))
    except Exception as exc:  # noqa: BLE001 - handed on, never swallowed
        out.send("found", check.found_so_far())  # what was found before the failure is kept
        out.failure(exc)
    finally:
        stop.set()
        listener.join()  # it reads the connection, which is closed once this returns
        reader.close()


class _LeafSharer:
    """The raw layer's leaves of the blocks the stream check transfers from storage anyway
    (each block a whole leaf), so that the raw pass need not transfer them again."""

    def __init__(self, out: _Sender, size: int):
        self.out, self.size = out, size
        self.sent: set[int] = set()
        self.lock = threading.Lock()

    def __call__(self, offset: int, data: bytes) -> None:
        index = offset // raw.LEAF_SIZE
        whole = offset % raw.LEAF_SIZE == 0 and len(data) == min(raw.LEAF_SIZE, self.size - offset)
        with self.lock:
            if not whole or index in self.sent:
                return
            self.sent.add(index)
        try:
            self.out.send("leaf", index, raw.leaf_digest(data))
        except OSError:
            pass  # the coordinator went away: the stream's own messages say so


def _decrypted(out: _Sender, reader: Any, task: StreamTask) -> tuple[age.Plaintext, str] | None:
    """An age file's plaintext (its chunks checked before restored) and what it is; None once
    what could be checked without it (or a failure) is sent."""
    try:
        if task.age is None:
            raise age.Unopened("no_key", "no identity was given (--identity or AGE_IDENTITY)")
        plain = age.Plaintext(reader, task.age)
        plain.restore((task.checkpoint or {}).get("age"))
        return plain, _inner_codec(plain)
    except age.Unopened as exc:  # what the header says, and what could not be checked
        out.send("result", age.unopened_result(reader, task.uri, None if exc.kind == "no_key" else exc))
    except Exception as exc:  # noqa: BLE001 - handed on, never swallowed
        out.failure(exc)
    reader.close()
    return None


def _inner_codec(plain: age.Plaintext) -> str:
    """What the plaintext is; anything else is walked as tar, which says it is not one."""
    try:
        codec = detect_format(plain.pread(0, 1024), "the plaintext")
    except UnsupportedArchive:
        return "tar"
    return "tar" if codec == "age" else codec


def _members_to(out: _Sender, plain: age.Plaintext | None) -> Any:
    def send(line: bytes, count: int) -> None:
        if plain is not None:  # a failed chunk is named by the member a restore is cut in
            plain.note_members(line)
        out.send("members", line, count)
    return send


def _checkpoints_to(out: _Sender, plain: age.Plaintext | None) -> Any:
    if plain is None:
        return lambda state: out.send("checkpoint", state)
    return lambda state: out.send("checkpoint", {**state, "age": plain.state()})


STOP_POLL = 0.1  # seconds between looks at whether the walk ended by itself


def _wait_for_stop(conn: Any, stop: threading.Event) -> None:
    """The coordinator says "stop", or goes away: either way the walk stops. Ends as soon as
    the walk does, so that the connection is never closed under it."""
    try:
        while not stop.is_set():
            if conn.poll(STOP_POLL) and conn.recv() == "stop":
                break
    except (OSError, EOFError):
        pass
    stop.set()
