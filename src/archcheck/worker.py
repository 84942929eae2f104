"""Top-level functions that run in worker processes. No asyncio here.

Tasks carry descriptors (a source ref, offsets, a nonce), never archive bytes: each worker
opens the source itself and maps or reads only the ranges it is given.
"""
from __future__ import annotations

import os
import select
import signal
import threading
from multiprocessing.connection import Client
from multiprocessing.shared_memory import SharedMemory
from dataclasses import dataclass
from typing import Any

from .errors import SourceChanged, describe_error
from .layers import raw
from .layers.stream import CHUNK, Failure, FrameDecoders
from .layers.zstd import Frame
from .segments import Segment
from .sources import SourceRef


def init_worker(coordinator: int | None = None) -> None:
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # the coordinator decides how to stop
    if coordinator is not None:
        threading.Thread(target=_end_with, args=(coordinator,), daemon=True).start()


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
            leaves = raw.leaf_digests(reader.view, segment.offset, segment.length)
            reader.check()
        finally:
            reader.close()
    except SourceChanged as exc:
        return SegmentResult(segment.index, segment.nonce, changed=exc.what)
    except (OSError, ValueError) as exc:
        return SegmentResult(segment.index, segment.nonce, error=describe_error(exc))
    return SegmentResult(segment.index, segment.nonce, tuple(leaves))


@dataclass(frozen=True)
class DecodeTask:
    """Decode ``frames`` into the coordinator's shared memory, reporting over ``address``."""

    nonce: str
    frames: tuple[Frame, ...]
    threads: int
    max_window: int
    depth: int
    shm_name: str
    slots: int
    address: str
    authkey: bytes


def decode_frames(ref: SourceRef, task: DecodeTask) -> None:
    """Decode frames into shared-memory slots and send each piece's place, in frame order, to
    the coordinator, which walks tar over the slots and hands them back. Decoded bytes never
    travel through a pipe, and the decode threads never wait on the tar walker's GIL."""
    shm = SharedMemory(task.shm_name)
    buffers = [shm.buf[i * CHUNK:(i + 1) * CHUNK] for i in range(task.slots)]
    try:
        with Client(task.address, authkey=task.authkey) as conn:
            _decode_to(conn, ref, task, buffers)
    except (OSError, EOFError):
        pass  # the coordinator went away or stopped us: nothing is left to report to
    finally:
        for view in buffers:
            view.release()
        shm.close()


def _decode_to(conn: Any, ref: SourceRef, task: DecodeTask, buffers: list) -> None:
    """Send each decoded piece's place, then None; or, whatever fails here, a Failure: the
    coordinator waits for this worker's word and must always get one."""
    try:
        reader = ref.open()
    except Exception as exc:  # noqa: BLE001 - handed on, never swallowed
        conn.send(Failure.of(exc))
        return
    positions = {frame.index: k for k, frame in enumerate(task.frames)}
    decoders = FrameDecoders(reader, list(task.frames), task.threads, task.max_window, task.depth, buffers)
    returns = threading.Thread(target=_take_back_slots, args=(conn, decoders), daemon=True)
    returns.start()
    try:
        events = iter(decoders)
        while True:
            try:
                event = next(events, None)
            except Exception as exc:  # noqa: BLE001 - handed on, never swallowed
                conn.send(Failure.of(exc))
                return
            if event is None:
                break
            conn.send((positions[event.frame.index], event.slot, event.length, event.compressed_pos,
                       event.error, event.io_error, event.problem, event.failure))
        conn.send(None)
    finally:  # the connection is not closed under a thread still reading it
        decoders.stop.set()
        returns.join(timeout=5)
        reader.close()


def _take_back_slots(conn: Any, decoders: FrameDecoders) -> None:
    """Slots the coordinator is done with go back to their lanes; None means stop."""
    try:
        while (slot := conn.recv()) is not None:
            decoders.release_slot(slot)
    except (OSError, EOFError):
        pass
    decoders.stop.set()
