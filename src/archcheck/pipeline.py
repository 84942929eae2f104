"""One run's machinery: reader task, bounded queue, process pool, nonces, autosave.

Segments flow as descriptors through a bounded ``asyncio.Queue``: when the workers fall
behind, the reader waits, so nothing grows with the archive. The stream check (zstd, tar,
members) runs as one task in the same pool beside the raw segment hashing.
"""
from __future__ import annotations

import asyncio
import logging
import os
import signal
import threading
import time
from concurrent.futures import Executor
from concurrent.futures.process import BrokenProcessPool
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Awaitable, Callable

from . import events
from .events import Event
from .errors import SourceChanged, WorkerCrashed, describe_error
from .findings import Category, Finding, Location
from .layers import raw
from .layers.age import AgeKey
from .layers.decoding import CHUNK, MIN_CHUNK
from .layers.stream import FRAME_FIELDS, CheckpointMismatch, StreamResult, StreamStopped
from .layers.members import MEMBER_FIELDS
from .logs import LogWriter, parts_from_json, parts_json
from .manifest import (Manifest, MembersWriter, SegmentRecord, StreamState, StreamStatus, StreamSummary,
                       sealed_json, utc_now, write_atomic)
from .segments import Segment, new_nonce, segments_overlapping
from .sources import Source, SourceRef, is_remote
from .sources.remote import RemoteOptions
from .executors import ExecutorSpec, open_pool
from .scanners import ScanConfig
from .stream_channel import StreamChannel, StreamStoppedHere
from .worker import SegmentResult, StreamTask, hash_segment

ProgressCallback = Callable[[int, int], None]
# How often the manifest is saved and the stream checkpointed: about what a crash can cost. A
# manifest that grows costly to save (millions of leaves) is saved less often, so that saving
# takes at most SAVE_SHARE of the run.
SAVE_INTERVAL = float(os.environ.get("ARCHCHECK_SAVE_INTERVAL", "0.5"))
SAVE_SHARE = 0.02
STOP_GRACE = 2.0  # seconds an interrupted run gives its workers to finish what they hold
STREAM_LAYERS = ("zstd", "tar", "members", "pages")


@dataclass(frozen=True)
class RunOptions:
    layers: tuple[str, ...]
    segment_size: int
    max_memory: int
    workers: int
    max_window: int
    digest: str
    remote: RemoteOptions = RemoteOptions()  # retries, read-ahead and timeouts of object stores
    executor: ExecutorSpec = ExecutorSpec()  # this machine's process pool, or a Dask cluster
    age: AgeKey | None = None  # decrypts age files; never saved with the options

    @property
    def stream(self) -> bool:
        return any(layer in self.layers for layer in STREAM_LAYERS)

    def stream_chunk(self) -> int:
        """Decoded bytes per chunk: large (fewer Python steps), yet at least four per lane
        within a quarter of the budget."""
        return max(MIN_CHUNK, min(CHUNK, self.max_memory // 4 // self.workers // 4))

    def stream_depth(self) -> int:
        """Chunks each decode lane may run ahead of the tar walker: a quarter of the budget.
        Depth pays: the walker's pace varies with member sizes, and the decoder should not."""
        return max(2, min(32, self.max_memory // 4 // self.stream_chunk() // self.workers - 1))

    def in_flight(self) -> int:
        """Raw segments in flight: each reads a few leaves at a time; decode buffers come first."""
        stream_buffers = self.workers * (self.stream_depth() + 1) * self.stream_chunk() if self.stream else 0
        return max(1, min(2 * self.workers, (self.max_memory - stream_buffers) // raw.LEAF_SIZE))


@dataclass(frozen=True)
class RunLimits:
    """When a run stops short. ``deadline`` (time.monotonic()) abandons what is in flight and
    ends the run as ``status``; ``stop_offset`` verifies the archive up to that byte only."""

    deadline: float | None = None
    status: str = "stopped"  # "stopped" for a deadline, "partial" for a budget of time
    stop_offset: int | None = None


class _Progress:
    """Archive bytes done, averaged over the passes that read them (raw, stream)."""

    def __init__(self, size: int, passes: int, callback: ProgressCallback | None):
        self.size, self.passes, self.callback = size, max(1, passes), callback
        self.raw_done = self.stream_done = 0

    def update(self, *, raw: int = 0, stream: int | None = None) -> None:
        self.raw_done += raw
        if stream is not None:
            self.stream_done = max(self.stream_done, stream)
        if self.callback:
            self.callback((self.raw_done + self.stream_done) // self.passes, self.size)


class Run:
    """Verifies one archive into ``manifest``; the manifest is saved as it goes."""

    def __init__(self, source: Source, manifest: Manifest, manifest_path, options: RunOptions,
                 on_progress: ProgressCallback | None = None, limits: RunLimits = RunLimits(),
                 scan: ScanConfig = ScanConfig(), recheck: bool = True):
        """``scan``: what the database scanners are told; ``recheck``: read again what earlier
        runs verified before building on it."""
        self.source, self.manifest, self.path, self.options = source, manifest, manifest_path, options
        self.scan, self.recheck = scan, recheck
        self.read_here: set[int] = set()  # segments whose bytes this run has read itself
        # an object's leaves hashed by the stream worker from the blocks it transfers, kept by
        # the event loop: a segment whose leaves have all come is done; the raw pass reads the rest
        self.shares_leaves = options.stream and "raw" in options.layers and is_remote(source.uri)
        self.shared_leaves: dict[int, str] = {}
        self.loop: asyncio.AbstractEventLoop | None = None
        self.limits = limits
        self.ref: SourceRef = source.ref()
        passes = ("raw" in options.layers) + options.stream
        self.progress = _Progress(source.size, passes, on_progress)
        self.pool: Executor | None = None
        self.stopping = threading.Event()  # interruption: the stream thread tells its worker to stop
        self.workers: list = []  # the pool's processes when it was stopped
        self.saves = self.written = 0  # snapshots taken, and the latest one written
        self.save_lock = threading.Lock()
        self.task: asyncio.Task | None = None
        self.changed: str | None = None  # how the archive changed, when the watcher saw it
        self.halted = False
        self.progress.update(raw=sum(s.length for s in manifest.segments if s.status == "done"))
        manifest.bind(Path(manifest_path).parent)  # segment results are logged beside it

    async def run(self) -> None:
        """Verify; SIGINT and SIGTERM stop the run at its next await, never inside the pool's
        own bookkeeping (an exception raised there can strand a worker), and surface as
        KeyboardInterrupt once the run is saved."""
        self.task = asyncio.current_task()
        signals = _Signals(self.task)
        try:
            await self._run()
        except asyncio.CancelledError:
            if signals.received:
                raise KeyboardInterrupt from None
            raise
        finally:
            signals.restore()

    async def _run(self) -> None:
        self.save()  # the run directory exists and is writable before any work starts
        self.loop = asyncio.get_running_loop()
        self.pool = open_pool(self.options.executor, self.options.workers)
        # made into coroutines only when they run: one a deadline ended first must not be left unawaited
        layers: list[Callable[[], Awaitable[None]]] = []
        if self.shares_leaves:
            layers.append(self._stream_then_raw)
        else:
            if self.options.stream:  # the longest task goes first, so it starts at once
                layers.append(self._stream_layer)
            if "raw" in self.options.layers:
                layers.append(self._raw_layer)
        helpers = [asyncio.create_task(self._autosave()), asyncio.create_task(self._watch_source())]
        try:
            await self._within_deadline(self._recheck_then(layers))
            self._unchanged()
            if self._everything_done():
                await self._confirm()
                self._unchanged()
                self._finish()
            else:
                self.manifest.status = "partial"  # a budget's planned share
        except TimeoutError:
            self._halt(self.limits.status)
        except SourceChanged as exc:  # the stamp says best what changed; a reader saw only its effect
            self._source_changed(self.source.changes() or exc.what)
        except asyncio.CancelledError:
            if self.changed is None:  # a signal, or the caller
                self._halt("interrupted")
                raise
            _uncancel(self.task)
            self._source_changed(self.changed)
        except Exception:
            what = self.source.changes()  # a failure (a worker killed by SIGBUS on a truncated map)
            if not what:                 # that a change explains is the change
                self._halt("interrupted")
                raise
            self._source_changed(what)
        except BaseException:
            self._halt("interrupted")
            raise
        finally:
            for task in helpers:
                task.cancel()
            if self.halted:
                _end_workers(self.workers)
            else:
                self.pool.shutdown(wait=True, cancel_futures=True)
            self.save()

    async def _recheck_then(self, layers: list[Callable[[], Awaitable[None]]]) -> None:
        await self._recheck_verified()
        await asyncio.gather(*(layer() for layer in layers))

    async def _stream_then_raw(self) -> None:
        """An object's stream pass hashes the raw leaves of the blocks it transfers (recorded
        as they come); the raw pass then reads what is left, also after a stream that failed."""
        try:
            await self._stream_layer()
        except asyncio.CancelledError:
            raise
        except Exception:
            await self._raw_layer()
            raise
        await self._raw_layer()

    async def _within_deadline(self, work: Any) -> None:
        if self.limits.deadline is None:
            return await work
        await asyncio.wait_for(work, max(0.0, self.limits.deadline - time.monotonic()))

    def _halt(self, status: str) -> None:
        """Stop, do not kill: the stream thread tells its decoding worker to stop, queued tasks
        are cancelled (which also releases a thread waiting for one), and what runs is short.
        What was verified is in the manifest; the stream's last checkpoint says where to go on."""
        self.manifest.status = status
        if self.halted:
            return
        self.halted = True
        events.emit(Event.RUN_HALTED, logging.WARNING, status=status)
        self.stopping.set()
        self.workers = list((getattr(self.pool, "_processes", None) or {}).values())  # shutdown forgets them
        self.pool.shutdown(wait=False, cancel_futures=True)

    def _unchanged(self) -> None:
        what = self.source.changes()
        if what:
            raise SourceChanged(what)

    def _source_changed(self, what: str) -> None:
        """The archive is not the file the run began with: nothing read from it is judged. What
        the layers found is set aside (counted), never reported as the archive's damage."""
        manifest = self.manifest
        set_aside = len(manifest.findings)  # (before the halt: a checkpoint's count too)
        self._halt("changed")
        for record in manifest.segments:
            if record.findings:
                record.findings = []
                manifest.record_segment(record)
        manifest.stream_findings, manifest.tree_root = [], None
        manifest.run_findings = [Finding.of("SOURCE_CHANGED", Location(self.source.uri), what=what,
                                            noticed=utc_now(), set_aside=set_aside)]

    async def _watch_source(self) -> None:
        """A change mid-run stops the run at once: its work would be judged on a moving file."""
        while True:
            await asyncio.sleep(SAVE_INTERVAL)
            what = await asyncio.to_thread(self.source.changes, False)
            if what and self.task is not None:
                self.changed = what
                self.task.cancel()
                return

    def _everything_done(self) -> bool:
        return (all(s.status != "pending" for s in self.manifest.segments)
                and (not self.options.stream or self.manifest.stream.settled))

    def save(self) -> None:
        self._write(*self._snapshot())

    def _snapshot(self) -> tuple[int, bytes]:
        self.manifest.updated = utc_now()
        self.saves += 1
        return self.saves, sealed_json(self.manifest.to_json())

    def _write(self, number: int, data: bytes) -> None:
        """Write a snapshot unless a later one is on disk already: an autosave still writing in
        its thread when the run ends must not put back the state from before the end."""
        with self.save_lock:
            if number > self.written:
                self.manifest.segment_log.sync()  # what the snapshot names is durable first
                write_atomic(self.path, data)
                self.written = number

    async def _in_pool(self, fn: Callable, *args: Any) -> Any:
        try:
            return await asyncio.get_running_loop().run_in_executor(self.pool, fn, *args)
        except BrokenProcessPool:
            raise _worker_crashed() from None

    # --- raw layer --------------------------------------------------------------------------

    async def _raw_layer(self) -> None:
        stop_offset = self.limits.stop_offset
        records = [r for r in self.manifest.segments
                   if r.status != "done" and (stop_offset is None or r.offset < stop_offset)]
        slots = self.options.in_flight()
        queue: asyncio.Queue[SegmentRecord | None] = asyncio.Queue(maxsize=slots)

        async def reader() -> None:
            for record in records:
                await queue.put(record)
            for _ in range(slots):
                await queue.put(None)

        async def consumer() -> None:
            while (record := await queue.get()) is not None:
                if record.status != "done":  # (its leaves may have come from the stream meanwhile)
                    await self._hash_segment(record)
                    self.progress.update(raw=record.length)

        await asyncio.gather(reader(), *(consumer() for _ in range(slots)))

    async def _hash_segment(self, record: SegmentRecord) -> None:
        with events.bound(correlation_id=events.new_correlation_id()):
            await self._hash_segment_once(record)

    async def _hash_segment_once(self, record: SegmentRecord) -> None:
        """Hash once; a read error is retried once before it is reported."""
        error = None
        for attempt in range(2):
            if attempt:
                events.emit(Event.SEGMENT_RETRY, logging.WARNING, status="retry", segment=record.index,
                            offset=record.offset, length=record.length, error=error)
                record.nonce = new_nonce()  # a late answer to the first attempt cannot count
            record.attempt += 1
            started = time.monotonic()
            result: SegmentResult = await self._in_pool(
                hash_segment, self.ref, Segment(record.index, record.offset, record.length, record.nonce))
            if result.nonce != record.nonce:
                continue
            if result.changed is not None:
                raise SourceChanged(result.changed)
            if result.error is None:
                self._segment_done(record, result.leaves, time.monotonic() - started)
                return
            error = result.error
        end = record.offset + record.length
        loc = Location(self.source.uri, byte_range=(record.offset, end), segment=record.index)
        record.status = "failed"
        record.findings = [Finding.of("SOURCE_READ_ERROR", loc, start=record.offset, end=end, error=error)]
        self.manifest.record_segment(record)
        events.emit(Event.SEGMENT_FAILED, logging.ERROR, status="failed", segment=record.index,
                    offset=record.offset, length=record.length, nonce=record.nonce, attempt=record.attempt,
                    error=error)

    def _leaf_shared(self, index: int, digest: str) -> None:
        """A leaf the stream worker hashed; its segment is done once all of its leaves are in."""
        self.shared_leaves[index] = digest
        offset = index * raw.LEAF_SIZE
        for record in segments_overlapping(self.manifest.segments, offset, offset + 1):
            if record.status == "done" or self.halted:
                continue
            first = record.offset // raw.LEAF_SIZE
            leaves = [self.shared_leaves.get(i) for i in range(first, first + -(-record.length // raw.LEAF_SIZE))]
            if None not in leaves:
                self._segment_done(record, leaves, seconds=None, read_by="stream")
                self.progress.update(raw=record.length)

    def _segment_done(self, record: SegmentRecord, leaves: Any, seconds: float | None, read_by: str = "raw") -> None:
        """``seconds``: how long hashing it took; None for leaves hashed in the stream's reads."""
        record.leaves, record.digest = list(leaves), raw.combine(leaves)
        record.status, record.findings, record.read_at = "done", [], utc_now()
        record.seconds = None if seconds is None else round(seconds, 6)
        self.read_here.add(record.index)
        self.manifest.record_segment(record)
        events.emit(Event.SEGMENT_VERIFIED, status="done", segment=record.index, offset=record.offset,
                    length=record.length, nonce=record.nonce, attempt=record.attempt,
                    seconds=record.seconds, digest=record.digest, read_by=read_by)

    # --- stream layers ----------------------------------------------------------------------

    async def _stream_layer(self) -> None:
        """zstd, tar and members in one pass, from the last checkpoint if there is one; a read
        failure is retried once."""
        if self.manifest.stream.status is StreamStatus.DONE:
            return  # a stream that failed to read is tried again: the storage may be back
        error = None
        for attempt in range(2):
            checkpoint = self._stream_start()
            events.emit(Event.STREAM_STARTED, status="running", attempt=attempt + 1, codec=self.manifest.format,
                        from_offset=checkpoint["covered"] if checkpoint else 0)
            try:
                outcome = await asyncio.to_thread(self._check_stream, checkpoint)
            except StreamStopped:
                self.manifest.stream.status = StreamStatus.STOPPED
                events.emit(Event.STREAM_FINISHED, status="stopped")
                return
            except CheckpointMismatch:  # not this archive's: start the stream over
                self.manifest.stream = StreamState()
                events.emit(Event.STREAM_RETRY, logging.WARNING, status="retry", why="checkpoint mismatch")
                continue
            except OSError as exc:  # read again, from the last checkpoint if there is one
                error = describe_error(exc)
                events.emit(Event.STREAM_RETRY, logging.WARNING, status="retry", why="read error", error=error)
                continue
            except BrokenProcessPool:
                raise _worker_crashed() from None
            self._record_stream(*outcome, attempt=attempt + 1)
            events.emit(Event.STREAM_FINISHED, status="done", members=self.manifest.members.get("count"),
                        findings=len(self.manifest.stream_findings))
            return
        self.manifest.stream = StreamState(StreamStatus.FAILED, attempt=2)
        loc = Location(self.source.uri, byte_range=(0, self.source.size))
        self.manifest.stream_findings = [Finding.of("SOURCE_READ_ERROR", loc, start=0, end=self.source.size,
                                                    error=error)]
        events.emit(Event.STREAM_FINISHED, logging.ERROR, status="failed", error=error)

    def _stream_start(self) -> dict | None:
        """The checkpoint to go on from, or a fresh start with a new nonce. A checkpoint whose
        logs are gone or short is not used; a fresh start removes the logs of earlier attempts."""
        stream = self.manifest.stream
        if stream.checkpoint is not None and self._logs_present(stream.checkpoint):
            stream.status, stream.resumed = StreamStatus.RUNNING, stream.resumed + 1
            return stream.checkpoint
        for prefix in ("members", "frames"):
            for stale in self.path.parent.glob(f"{prefix}-*.jsonl"):
                stale.unlink(missing_ok=True)
        self.manifest.stream = StreamState.started(stream.attempt + 1)
        return None

    def _logs_present(self, checkpoint: dict) -> bool:
        parts = [*parts_from_json(checkpoint.get("members")), *parts_from_json(checkpoint.get("frames"))]
        folder = self.path.parent
        return all((folder / p.file).exists() and (folder / p.file).stat().st_size >= p.length for p in parts)

    def _check_stream(self, checkpoint: dict | None) -> tuple[StreamResult, tuple, tuple]:
        """Runs in a thread of this process. The check itself runs in a pool worker, where the
        bytes are; this takes its messages: member lines and frame rows go to logs that each
        checkpoint names, checkpoints to the manifest."""
        options, folder = self.options, self.path.parent
        members = MembersWriter(folder, parts_from_json((checkpoint or {}).get("members")))
        frames = LogWriter(folder, "frames", parts_from_json((checkpoint or {}).get("frames")))
        task = StreamTask(
            self.source.uri, codec=self.manifest.format,
            check_tar=any(layer in options.layers for layer in ("tar", "members", "pages")),
            digest=options.digest if "members" in options.layers else None, max_window=options.max_window,
            threads=options.workers, depth=options.stream_depth(), chunk=options.stream_chunk(), checkpoint=checkpoint,
            checkpoint_every=SAVE_INTERVAL, checkpoint_from=self.limits.stop_offset,
            scan=self.scan if "pages" in options.layers else None, address="", authkey=b"", age=options.age,
            share_leaves=self.shares_leaves)
        try:
            with StreamChannel(self.pool, self.ref, task, self.stopping,
                               rescheduled=self.options.executor.is_dask,
                               tcp=self.options.executor.is_remote) as channel:
                for message in channel:
                    kind = message[0]
                    if kind == "members":
                        members.write_line(message[1])
                    elif kind == "frames":
                        frames.append_json(message[1])
                    elif kind == "checkpoint":
                        self._stream_checkpoint(message[1], members, frames)
                    elif kind == "progress":
                        self.progress.update(stream=message[1])
                    elif kind == "leaf":
                        try:
                            self.loop.call_soon_threadsafe(self._leaf_shared, message[1], message[2])
                        except RuntimeError:
                            pass  # the run has ended (its loop is closed): nothing records it now
                    elif kind == "found" and self.manifest.status != "changed":  # the check failed: what
                        self.manifest.stream_findings = list(message[1])  # it found is reported, unless set aside
                    elif kind == "result":
                        return message[1], members.sync(), frames.sync()
                    elif kind == "mismatch":
                        raise CheckpointMismatch()
                    elif kind == "io_error":
                        raise OSError(message[1])
                    else:
                        raise StreamStopped()
            raise StreamStopped()
        except StreamStoppedHere:
            raise StreamStopped() from None
        finally:
            members.close()
            frames.close()

    def _stream_checkpoint(self, state: dict, members: MembersWriter, frames: LogWriter) -> None:
        state["members"] = parts_json(members.sync())  # durable before the manifest points at them
        state["frames"] = parts_json(frames.sync())
        self.manifest.stream.checkpoint = state
        self.progress.update(stream=state["covered"])
        if self.limits.stop_offset is not None and state["covered"] >= self.limits.stop_offset:
            self.stopping.set()  # the budget's share is done: the stream stops here

    def _record_stream(self, result: StreamResult, members: tuple, frames: tuple, attempt: int) -> None:
        self.manifest.format = result.format
        self.manifest.stream = StreamState(
            StreamStatus.DONE, self.manifest.stream.nonce, attempt, resumed=self.manifest.stream.resumed,
            summary=StreamSummary.of(result),
            scanners=result.scan_state or {},
            frame_table={"fields": list(FRAME_FIELDS), "log": parts_json(frames)})
        self.manifest.stream_findings = list(result.findings)
        self.manifest.members = {"log": parts_json(members), "count": result.member_count, "fields": MEMBER_FIELDS}
        self.progress.update(stream=self.source.size)

    # --- reading again: resume, confirmation ------------------------------------------------

    async def _recheck_verified(self) -> None:
        """Segments an earlier run verified are read again before anything builds on them: the
        file may have rotted under an unchanged size and mtime. Bytes that changed and stay
        changed are corruption, located; the stream starts over if it had walked past them, so
        the deeper layers name the damage too."""
        done = [r for r in self.manifest.segments if r.status == "done"]
        if not done:
            return
        resume = {"at": utc_now(), "rechecked": self.recheck, "segments": len(done)}
        self.manifest.resumes.append(resume)
        if not self.recheck:
            return
        gate = asyncio.Semaphore(self.options.in_flight())

        async def recheck(record: SegmentRecord) -> int | None:
            async with gate:
                again = await self._read_again(record)
            self.read_here.add(record.index)
            if again.outcome == "changed":
                return self._record_change(record, again.leaves)
            if again.outcome == "unstable":
                record.findings.append(Finding.of("SOURCE_UNSTABLE", self._segment_location(record),
                                                  start=record.offset, end=record.offset + record.length))
                self.manifest.record_segment(record)
            elif again.outcome == "failed":  # hashed again by the raw layer, with its retry
                record.status, record.leaves, record.digest = "pending", [], None
                self.manifest.record_segment(record)
            return None

        firsts = [at for at in await asyncio.gather(*(recheck(r) for r in done)) if at is not None]
        resume["changed_segments"] = len(firsts)
        if firsts and min(firsts) < self.manifest.stream.covered(self.source.size):
            self.manifest.stream, self.manifest.stream_findings = StreamState(), []  # walked on old bytes

    async def _read_again(self, record: SegmentRecord) -> "_Reread":
        """Read a verified segment again; when it differs from the record, once more: damage that
        stays is a change, damage that comes and goes is unstable storage."""
        reads = []
        for _ in range(2):
            result = await self._in_pool(hash_segment, self.ref, Segment(record.index, record.offset, record.length,
                                                                           new_nonce()))
            if result.changed is not None:
                raise SourceChanged(result.changed)
            if result.error is not None:
                return _Reread("failed")
            if list(result.leaves) == record.leaves:
                return _Reread("same")
            reads.append(result.leaves)
        return _Reread("changed", reads[0]) if reads[0] == reads[1] else _Reread("unstable")

    def _record_change(self, record: SegmentRecord, leaves: tuple[str, ...]) -> int:
        """A RAW_CHANGED finding per changed leaf; the record takes the bytes as they are now, so
        the tree root is the file's. Returns where the first change starts."""
        first = None
        for i, (old, new) in enumerate(zip(record.leaves, leaves)):
            if old != new:
                start = record.offset + i * raw.LEAF_SIZE
                end = min(start + raw.LEAF_SIZE, record.offset + record.length)
                first = start if first is None else first
                record.findings.append(Finding.of(
                    "RAW_CHANGED", self._segment_location(record, (start, end)), start=start, end=end,
                    first_read=record.read_at or "an earlier run"))
        record.leaves, record.digest, record.read_at = list(leaves), raw.combine(leaves), utc_now()
        self.manifest.record_segment(record)
        return first if first is not None else record.offset

    def _segment_location(self, record: SegmentRecord, span: tuple[int, int] | None = None) -> Location:
        return Location(self.source.uri, byte_range=span or (record.offset, record.offset + record.length),
                        segment=record.index)

    async def _confirm(self) -> None:
        """Read damaged spots again. Bytes that do not hold still during this run are unstable
        storage, not corruption; bytes an earlier run read (a resume that trusted them) that
        changed since and stay changed are damage, and say since when."""
        rereads: dict[int, str] = {}
        for i, finding in enumerate(self.manifest.stream_findings):
            span = finding.location.byte_range
            if finding.category is not Category.CORRUPTION or span is None:
                continue
            for record in segments_overlapping(self.manifest.segments, span[0], span[1]):
                if record.status != "done":
                    continue
                if record.index not in rereads:
                    again = await self._read_again(record)
                    rereads[record.index] = again.outcome
                    if again.outcome == "changed" and record.index in self.read_here:
                        rereads[record.index] = "unstable"  # it moved while this run read it
                    elif again.outcome == "changed":
                        self._record_change(record, again.leaves)
                if rereads[record.index] in ("unstable", "failed"):
                    self.manifest.stream_findings[i] = Finding.of(
                        "SOURCE_UNSTABLE", finding.location, start=record.offset, end=record.offset + record.length)
                    break
        self._fold_changes()

    def _fold_changes(self) -> None:
        """Damage is reported once, at the deepest layer that names it: a stream finding over a
        changed leaf says when the bytes were first read, and the raw finding folds into it."""
        findings = self.manifest.stream_findings
        for record in self.manifest.segments:
            kept = []
            for change in record.findings:
                if change.code != "RAW_CHANGED":
                    kept.append(change)
                    continue
                start, end = change.location.byte_range
                deeper = [i for i, f in enumerate(findings) if f.category is Category.CORRUPTION
                          and f.location.byte_range is not None
                          and f.location.byte_range[0] < end and start < f.location.byte_range[1]]
                for i in deeper:
                    details = {**dict(findings[i].details), "changed_since": dict(change.details)["first_read"]}
                    findings[i] = Finding(findings[i].code, findings[i].location, tuple(sorted(details.items())))
                if not deeper:
                    kept.append(change)
            if len(kept) != len(record.findings):
                record.findings = kept
                self.manifest.record_segment(record)

    def _finish(self) -> None:
        segments = self.manifest.segments
        if segments and all(s.status == "done" for s in segments):
            self.manifest.tree_root = raw.combine(leaf for s in segments for leaf in s.leaves)
        # ranges that could not be read (dead letters) leave it for resume to read again
        unread = self.manifest.dead_letters or self.manifest.stream.status is StreamStatus.FAILED
        self.manifest.status = "incomplete" if unread else "complete"

    # --- helpers -------------------------------------------------------------------------------

    async def _autosave(self) -> None:
        cost = 0.0
        while True:
            await asyncio.sleep(max(SAVE_INTERVAL, cost / SAVE_SHARE))
            started = time.monotonic()
            await asyncio.to_thread(self._write, *self._snapshot())
            cost = time.monotonic() - started


@dataclass(frozen=True)
class _Reread:
    outcome: str  # "same", "changed" (two new reads agree), "unstable" (they do not), "failed" (an error)
    leaves: tuple[str, ...] = ()


def _uncancel(task: asyncio.Task | None) -> None:
    """A cancellation handled here (the watcher's) must not linger on the task (Python 3.11+)."""
    if task is not None and hasattr(task, "uncancel"):
        task.uncancel()


def _worker_crashed() -> WorkerCrashed:
    return WorkerCrashed("a worker process died (killed or out of memory); the manifest keeps what was verified")


def _end_workers(workers: list) -> None:
    """After an interruption, end any worker still there after a short grace: an interrupt
    that lands while the pool is starting a worker can leave one that takes another's stop
    sentinel, and the pool's exit would then wait for that other one forever."""
    deadline = time.monotonic() + STOP_GRACE
    for process in workers:
        process.join(max(0.0, deadline - time.monotonic()))
        if process.is_alive():
            process.terminate()


class _Signals:
    """SIGINT and SIGTERM cancel the running task (a cooperative stop), while it runs."""

    STOPPING = (signal.SIGINT, signal.SIGTERM)

    def __init__(self, task: asyncio.Task):
        self.loop, self.received = asyncio.get_running_loop(), False
        self.previous = {sig: signal.getsignal(sig) for sig in self.STOPPING}
        for sig in self.STOPPING:
            self.loop.add_signal_handler(sig, self._stop, task)

    def _stop(self, task: asyncio.Task) -> None:
        self.received = True
        task.cancel()

    def restore(self) -> None:
        for sig, handler in self.previous.items():
            self.loop.remove_signal_handler(sig)
            signal.signal(sig, handler)
