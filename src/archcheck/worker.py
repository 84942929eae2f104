"""Top-level functions that run in worker processes. No asyncio here.

Tasks carry descriptors (a source ref, offsets, a nonce), never archive bytes: each worker
opens the source itself and maps or reads only the ranges it is given.
"""
from __future__ import annotations

import json
import os
import signal
import sys
import time
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any

from .errors import StateError, WindowTooLarge
from .layers import raw
from .layers.stream import StreamCheck, StreamResult
from .segments import Segment
from .sources import SourceRef

_progress: Any = None
PROGRESS_INTERVAL = 0.25


def init_worker(progress_queue: Any) -> None:
    global _progress
    _progress = progress_queue
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # the coordinator decides how to stop
    # decode threads need the GIL briefly after every chunk; a short switch interval keeps them
    # from waiting on the tar walker for the default 5 ms each time
    sys.setswitchinterval(0.0005)


@dataclass(frozen=True)
class SegmentResult:
    index: int
    nonce: str
    leaves: tuple[str, ...] = ()
    error: str | None = None


def hash_segment(ref: SourceRef, segment: Segment) -> SegmentResult:
    try:
        reader = ref.open()
        try:
            leaves = raw.leaf_digests(reader.view, segment.offset, segment.length)
        finally:
            reader.close()
    except (OSError, ValueError) as exc:
        return SegmentResult(segment.index, segment.nonce, error=_describe(exc))
    return SegmentResult(segment.index, segment.nonce, tuple(leaves))


@dataclass(frozen=True)
class StreamTask:
    nonce: str
    compressed: bool
    check_tar: bool
    digest: str | None
    max_window: int
    threads: int
    members_path: str | None = None  # where this attempt writes its member records


class MembersWriter:
    """Member records leave the walker in batches, one JSON array per line, so the list of
    members never has to be held in memory or shipped between processes."""

    def __init__(self, path: str):
        self.path = path
        with self._state():
            self.file = open(path, "w", encoding="utf-8")

    def write(self, members: list) -> None:
        with self._state():
            self.file.write(json.dumps(members, ensure_ascii=False, separators=(",", ":")) + "\n")

    def close(self) -> None:
        with self._state():
            self.file.flush()
            os.fsync(self.file.fileno())
            self.file.close()

    @contextmanager
    def _state(self):
        """A failure to write here is the state directory's, not the archive's."""
        try:
            yield
        except OSError as exc:
            raise StateError(f"cannot write {self.path}: {exc.strerror or exc}") from None


@dataclass(frozen=True)
class StreamOutcome:
    nonce: str
    result: StreamResult | None = None
    error: str | None = None
    window: tuple[int, int, int] | None = None  # (frame, window, limit) when over --max-window
    state_error: str | None = None  # the members file could not be written


def check_stream(ref: SourceRef, task: StreamTask) -> StreamOutcome:
    last = [0.0]

    def progress(done: int) -> None:
        now = time.monotonic()
        if _progress is not None and now - last[0] >= PROGRESS_INTERVAL:
            last[0] = now
            _progress.put((task.nonce, done))

    try:
        writer = MembersWriter(task.members_path) if task.members_path else None
        reader = ref.open()
        try:
            result = StreamCheck(reader, ref.uri, compressed=task.compressed, check_tar=task.check_tar,
                                 digest=task.digest, max_window=task.max_window, threads=task.threads,
                                 on_progress=progress, on_members=writer.write if writer else None).run()
        finally:
            reader.close()
            if writer:
                writer.close()
    except WindowTooLarge as exc:
        return StreamOutcome(task.nonce, window=(exc.frame, exc.window, exc.limit))
    except StateError as exc:
        return StreamOutcome(task.nonce, state_error=str(exc))
    except OSError as exc:
        return StreamOutcome(task.nonce, error=_describe(exc))
    if _progress is not None:
        _progress.put((task.nonce, result.compressed_size))
    return StreamOutcome(task.nonce, result)


def _describe(exc: BaseException) -> str:
    if isinstance(exc, OSError) and exc.strerror:
        return f"{exc.strerror} (errno {exc.errno})"
    return str(exc) or type(exc).__name__
