"""The coordinator's end of a stream check running in a pool worker.

The worker decodes and walks where the bytes are and sends only small messages (member lines,
frame rows, checkpoints, progress, the result) over a local socket. Every wait here ends: a
message, the worker's end however it ended (killed, failed, hung up), or a stop, which is
passed on to the worker.
"""
from __future__ import annotations

import dataclasses
import secrets
import threading
import time
from concurrent.futures import Executor, Future
from concurrent.futures import TimeoutError as FutureTimeout
from concurrent.futures.process import BrokenProcessPool
from multiprocessing.connection import Client, Listener
from typing import Any, Iterator

from .errors import WorkerCrashed
from .layers.decoding import DecoderFailed, Failure
from .sources import SourceRef
from .worker import StreamTask, check_stream

POLL = 0.2  # seconds between looks at a stop request while waiting for the worker
WORKER_END_GRACE = 10.0  # for the pool to say why a worker that hung up ended
STOP_GRACE = 5.0  # for a stopped worker to say so


class StreamStoppedHere(Exception):
    """The stop was passed on and the worker did not answer in time."""


class StreamChannel:
    """Iterate for the worker's messages; leaving the block closes the channel."""

    def __init__(self, pool: Executor, ref: SourceRef, task: StreamTask, stop: threading.Event,
                 rescheduled: bool = False, tcp: bool = False):
        """``rescheduled``: the executor runs a task again when its worker dies (Dask), so a
        worker that hangs up is a read to go on with from the checkpoint, not a failure.
        ``tcp``: workers may be on other machines."""
        self.pool, self.ref, self.stop, self.rescheduled = pool, ref, stop, rescheduled
        self.authkey = secrets.token_bytes(16)
        # an abstract socket: no path-length limit, nothing left on disk; the authkey guards it
        self.address: Any = ((_routable_address(), 0) if tcp else f"\0archcheck-{secrets.token_hex(8)}")
        self.family = "AF_INET" if tcp else "AF_UNIX"
        self.task = task
        self.conn: Any = None
        self.future: Future | None = None
        self.listener: Listener | None = None
        self.stop_sent_at: float | None = None

    def __enter__(self) -> "StreamChannel":
        self.listener = Listener(self.address, family=self.family, authkey=self.authkey)
        self.address = self.listener.address  # a TCP port is known once bound
        self.task = dataclasses.replace(self.task, address=self.address, authkey=self.authkey)
        self.future = self.pool.submit(check_stream, self.ref, self.task)
        self.future.add_done_callback(lambda f: self._unblock())
        self.conn = self.listener.accept()
        return self

    def __exit__(self, *exc: Any) -> None:
        if self.conn is not None:
            try:
                self.conn.send("stop")  # a worker still walking stops; a finished one ignores it
            except OSError:
                pass
            self.conn.close()
        if self.listener is not None:
            self.listener.close()
        if self.rescheduled and self.future is not None:
            self.future.cancel()  # a task the cluster would start again has nobody to talk to

    def _unblock(self) -> None:
        """If the worker ended without connecting, connect once so accept() returns."""
        if self.conn is None:
            try:
                Client(self.address, family=self.family, authkey=self.authkey).close()
            except OSError:
                pass

    def __iter__(self) -> Iterator[tuple]:
        while True:
            if self.stop.is_set() and self.stop_sent_at is None:
                self.stop_sent_at = time.monotonic()
                try:
                    self.conn.send("stop")
                except OSError:
                    pass
            if self.stop_sent_at is not None and time.monotonic() - self.stop_sent_at > STOP_GRACE:
                raise StreamStoppedHere()
            if not self.conn.poll(POLL):
                if self.future.done() and not self.conn.poll(0):
                    raise self._ended()
                continue
            try:
                message = self.conn.recv()
            except EOFError:
                raise self._ended() from None
            if isinstance(message, Failure):
                raise message.exception()
            yield message
            if message[0] in ("result", "stopped", "mismatch", "io_error"):
                return

    def _ended(self) -> Exception:
        """Why the worker stopped talking: killed (the pool breaks), failed, or hung up."""
        if self.rescheduled and not self.future.done():
            return OSError("the stream worker went away (its Dask worker died or was restarted)")
        try:
            exc = self.future.exception(timeout=WORKER_END_GRACE)
        except FutureTimeout:
            return DecoderFailed("the stream worker stopped answering")
        except Exception as cancelled:  # noqa: BLE001 - cancelled by a stop
            return OSError(f"the stream worker was stopped ({type(cancelled).__name__})")
        if isinstance(exc, BrokenProcessPool):
            return WorkerCrashed("a worker process died (killed or out of memory); what was verified is kept")
        if exc is not None:
            return exc
        if self.stop.is_set():
            return StreamStoppedHere()
        return DecoderFailed("the stream worker ended before the end of the archive")


def _routable_address() -> str:
    """This machine's address on the route out (no packet is sent): a Dask worker elsewhere
    reaches the coordinator there; the authkey guards the port."""
    import socket
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as probe:
        try:
            probe.connect(("192.0.2.1", 9))  # TEST-NET-1: routed like any address, never answered
            return probe.getsockname()[0]
        except OSError:
            return "127.0.0.1"
