"""The coordinator's side of decoding in a worker: shared-memory slots, events in frame order.

The worker decodes frames on several threads into slots of a shared memory block and sends,
over a local socket, where each piece is; the coordinator walks tar over the slot in place and
sends the slot back. Only slot numbers cross the process boundary, never the decoded bytes,
and the tar walker's GIL is not the decode threads' GIL.
"""
from __future__ import annotations

import secrets
import threading
from concurrent.futures import Executor, Future
from concurrent.futures import TimeoutError as FutureTimeout
from concurrent.futures.process import BrokenProcessPool
from multiprocessing.connection import Client, Listener
from multiprocessing.shared_memory import SharedMemory
from typing import Iterator

from .errors import WorkerCrashed
from .layers.stream import CHUNK, DecoderFailed, Event, Failure
from .layers.zstd import Frame
from .sources import SourceRef
from .worker import DecodeTask, decode_frames


POLL = 0.2  # seconds between looks at a stop request while waiting for the worker
WORKER_END_GRACE = 10.0  # for the pool to say why a worker that hung up ended


class SharedDecoders:
    """Iterate for decoded pieces in frame order; ``release`` hands a slot back."""

    def __init__(self, pool: Executor, ref: SourceRef, frames: list[Frame], *, threads: int,
                 max_window: int, depth: int, nonce: str, stop: threading.Event):
        self.pool, self.ref, self.frames = pool, ref, frames
        self.threads = max(1, min(threads, len(frames)))
        self.depth = depth
        self.slots = self.threads * (depth + 1)
        self.max_window, self.nonce = max_window, nonce
        # an abstract socket: no path-length limit, nothing left on disk; the authkey guards it
        self.address = f"\0archcheck-{nonce}-{secrets.token_hex(4)}"
        self.shm: SharedMemory | None = None
        self.views: list[memoryview] = []
        self.conn = None
        self.future: Future | None = None
        self.unlinked = False
        self.stop = stop  # set when the run is interrupted: the worker is told to stop, not killed

    def __iter__(self) -> Iterator[Event]:
        if self.stop.is_set():
            return
        self.shm = SharedMemory(create=True, size=self.slots * CHUNK)
        self.views = [self.shm.buf[i * CHUNK:(i + 1) * CHUNK] for i in range(self.slots)]
        authkey = secrets.token_bytes(16)
        with Listener(self.address, family="AF_UNIX", authkey=authkey) as listener:
            task = DecodeTask(self.nonce, tuple(self.frames), self.threads, self.max_window, self.depth,
                              self.shm.name, self.slots, self.address, authkey)
            self.future = self.pool.submit(decode_frames, self.ref, task)
            self.future.add_done_callback(lambda f: self._unblock(authkey))
            try:
                self.conn = listener.accept()
                self._unlink()  # the worker has attached by now: nothing can be left in /dev/shm
                yield from self._events()
            finally:
                self.close()  # tells the worker to stop, if it has not finished
        self.future.result()  # a worker that failed says why here

    def _events(self) -> Iterator[Event]:
        """Every wait here ends: a message, the worker's end (however it ended), or a stop."""
        while not self.stop.is_set():
            if not self.conn.poll(POLL):
                if self.future.done() and not self.conn.poll(0):
                    raise self._ended()
                continue
            try:
                message = self.conn.recv()
            except EOFError:
                raise self._ended() from None
            if message is None:
                return
            if isinstance(message, Failure):
                raise message.exception()
            position, *rest = message
            yield Event(self.frames[position], *rest)

    def _ended(self) -> Exception:
        """Why the worker stopped talking: killed (the pool breaks), failed, or hung up."""
        try:
            exc = self.future.exception(timeout=WORKER_END_GRACE)
        except FutureTimeout:
            return DecoderFailed("the decoding worker stopped answering")
        except Exception as cancelled:  # noqa: BLE001 - cancelled by a stop
            return OSError(f"the decoding worker was stopped ({type(cancelled).__name__})")
        if isinstance(exc, BrokenProcessPool):
            return WorkerCrashed("the decoding worker died (killed or out of memory); what was verified is kept")
        if exc is not None:
            return exc
        return DecoderFailed("the decoding worker ended before the end of the archive")

    def _unblock(self, authkey: bytes) -> None:
        """If the worker ended without connecting, connect once so accept() returns."""
        if self.conn is None:
            try:
                Client(self.address, family="AF_UNIX", authkey=authkey).close()
            except OSError:
                pass

    def view(self, event: Event) -> memoryview:
        return self.views[event.slot][:event.length]

    def release(self, event: Event) -> None:
        if event.slot is not None and self.conn is not None:
            self.conn.send(event.slot)

    def close(self) -> None:
        if self.conn is not None:
            try:
                self.conn.send(None)
            except OSError:
                pass
            self.conn.close()
        self._unlink()
        try:
            for view in self.views:
                view.release()
            if self.shm is not None:
                self.shm.close()
        except BufferError:  # a consumer still holds a view (an exception is unwinding): GC unmaps it
            pass
        self.views, self.shm = [], None

    def _unlink(self) -> None:
        if self.shm is not None and not self.unlinked:
            self.unlinked = True
            self.shm.unlink()
