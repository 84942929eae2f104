"""The stream check: decode frames in parallel threads, walk tar and hash members in order.

One process owns the decoded bytes; they never cross a process boundary. Frames are decoded by
``threads`` threads (libzstd releases the GIL), each into its own small pool of buffers, and
the walker consumes frames strictly in order. A single-frame stream is one thread's work; a
plain tar is one pseudo-frame read straight from the file. Memory is bounded by
threads x (depth + 1) x chunk, whatever the archive's size; the zstd window is the exception.
"""
from __future__ import annotations

import collections
import queue
import threading
import time
from dataclasses import dataclass
from typing import Any, Callable, Iterator

import xxhash
import zstandard

from ..errors import SourceChanged, format_size
from ..findings import Category, Finding, Findings, Location
from .members import Member, restore_hazard
from .tar import TarWalker
from .zstd import DEFAULT_MAX_WINDOW, LARGE_WINDOW, Frame, FrameWalk, classify_decode_error, unwalked_problem

FRAME_FIELDS = ("index", "kind", "offset", "end", "window", "content_size", "checksummed",
                "uncompressed_start", "uncompressed_end")
STRUCTURAL = (Category.CORRUPTION, Category.UNVERIFIED)  # frame-level facts from the walk
CHUNK = 1024 * 1024
DEPTH = 6  # chunks a lane may decode ahead by default; the pipeline sizes it from the budget
READ_SIZE = 128 * 1024
RAW_PIECE = 16 * 1024 * 1024
CHECKPOINT_SHARE = 0.02  # of the run's time, at most, spent taking checkpoints


@dataclass(frozen=True)
class StreamResult:
    format: str  # "tar", "tar+zstd" or "zstd"
    frames: int
    skippable_frames: int
    checksummed_frames: int
    max_window: int
    seekable: bool
    compressed_size: int
    uncompressed_size: int
    member_count: int
    findings: tuple[Finding, ...]
    frame_table: tuple[tuple, ...] = ()  # one row per frame (FRAME_FIELDS), unless on_frames took them
    scan_state: dict | None = None  # what the database scanners learnt (e.g. a data directory's facts)


class StreamStopped(Exception):
    """The stream check was asked to stop; its last checkpoint says where to go on."""


class CheckpointMismatch(Exception):
    """A checkpoint does not fit the archive's frames: it belongs to other content."""


class DecoderFailed(Exception):
    """A decoding thread or worker failed in a way no finding describes (a bug)."""


@dataclass(frozen=True)
class Failure:
    """Why a decoder or reader stopped: handed on to whoever waits for its output, so that no
    wait outlives what feeds it."""

    changed: bool  # the archive changed under the reader (SourceChanged); else a bug
    message: str

    @classmethod
    def of(cls, exc: BaseException) -> "Failure":
        if isinstance(exc, SourceChanged):
            return cls(True, exc.what)
        return cls(False, f"{type(exc).__name__}: {exc}")

    def exception(self) -> Exception:
        return SourceChanged(self.message) if self.changed else DecoderFailed(self.message)


def _short_read() -> SourceChanged:
    return SourceChanged("shrank: it ends before frames the run had found")


class _RangeFile:
    """File-like view of [start, end) of a reader, tracking how far the decoder has read."""

    def __init__(self, reader: Any, start: int, end: int):
        self.reader, self.pos, self.end = reader, start, end

    def read(self, n: int = -1) -> bytes:
        n = self.end - self.pos if n < 0 else min(n, self.end - self.pos)
        data = self.reader.pread(self.pos, n) if n > 0 else b""
        if len(data) < n:  # the frame walk saw these bytes: the file shrank since
            raise _short_read()
        self.pos += len(data)
        return data


@dataclass
class Event:
    """One piece of a frame's output, or (``slot`` None) the end of the frame."""

    frame: Frame
    slot: int | None
    length: int
    compressed_pos: int
    error: str | None = None  # the decoder's message when the frame stopped early
    io_error: str | None = None  # a read of the archive failed
    problem: tuple | None = None  # what the block walk found in a frame not walked before
    failure: Failure | None = None  # the decoder itself failed: the stream cannot go on


def lane_slots(lanes: int, depth: int) -> list[list[int]]:
    """Buffer slots per lane: each lane owns its own, so no lane can starve another."""
    return [list(range(t * (depth + 1), (t + 1) * (depth + 1))) for t in range(lanes)]


class FrameDecoders:
    """Decodes ``frames`` on ``threads`` threads into buffer slots; iterate for the output in
    frame order, and ``release`` each event's slot when done with it."""

    def __init__(self, reader: Any, frames: list[Frame], threads: int, max_window: int,
                 depth: int = DEPTH, buffers: list | None = None):
        self.reader, self.frames, self.max_window = reader, frames, max_window
        self.threads = max(1, min(threads, len(frames)))
        self.buffers = buffers if buffers is not None else [bytearray(CHUNK) for _ in range(threads * (depth + 1))]
        self.queues = [queue.Queue(depth + 1) for _ in range(self.threads)]
        self.free = [queue.SimpleQueue() for _ in range(self.threads)]
        self.owner: dict[int, int] = {}
        for lane, slots in enumerate(lane_slots(self.threads, depth)):
            for slot in slots:
                self.owner[slot] = lane
                self.free[lane].put(slot)
        self.stop = threading.Event()
        self.workers = [threading.Thread(target=self._decode_lane, args=(t,), daemon=True)
                        for t in range(self.threads)]

    def __iter__(self) -> Iterator[Event]:
        for worker in self.workers:
            worker.start()
        try:
            for k in range(len(self.frames)):
                while True:
                    event = self._next(k % self.threads)
                    if event is None:
                        return  # stopped from outside
                    yield event
                    if event.slot is None:
                        break
        finally:
            self.close()

    def _next(self, lane: int) -> Event | None:
        return self._until_stopped(lambda: self.queues[lane].get(timeout=0.2))

    def _until_stopped(self, attempt: Callable[[], Any]) -> Any:
        """Retry a blocking queue operation until it succeeds or the decoders are stopped
        (then None): no thread ever blocks past a stop."""
        while not self.stop.is_set():
            try:
                return attempt()
            except (queue.Empty, queue.Full):
                continue
        return None

    def view(self, event: Event) -> memoryview:
        return memoryview(self.buffers[event.slot])[:event.length]

    def release(self, event: Event) -> None:
        if event.slot is not None:
            self.release_slot(event.slot)

    def release_slot(self, slot: int) -> None:
        self.free[self.owner[slot]].put(slot)

    def close(self) -> None:
        self.stop.set()
        for q in self.queues:  # unblock producers waiting on a full queue
            while True:
                try:
                    event = q.get_nowait()
                except queue.Empty:
                    break
                self.release(event)
        for worker in self.workers:
            worker.join(timeout=5)

    def _decode_lane(self, lane: int) -> None:
        mine = self.frames[lane::self.threads]
        frame = mine[0] if mine else None
        try:
            dctx = zstandard.ZstdDecompressor(max_window_size=self.max_window)
            for frame in mine:
                if self.stop.is_set():
                    return
                self._decode_frame(dctx, frame, lane)
        except BaseException as exc:  # a lane that dies silently leaves the walker waiting forever
            if frame is not None:
                self._put(lane, Event(frame, None, 0, frame.offset, failure=Failure.of(exc)))

    def _put(self, lane: int, event: Event) -> bool:
        return self._until_stopped(lambda: self.queues[lane].put(event, timeout=0.2) or True) is not None

    def _take_slot(self, lane: int) -> int | None:
        return self._until_stopped(lambda: self.free[lane].get(timeout=0.2))

    def _decode_frame(self, dctx: zstandard.ZstdDecompressor, frame: Frame, lane: int) -> None:
        source = _RangeFile(self.reader, frame.offset, frame.end)
        if frame.kind == "raw":
            def read(buf) -> int:
                n = self.reader.readinto(source.pos, memoryview(buf)[:max(0, frame.end - source.pos)])
                if n == 0 and source.pos < frame.end:
                    raise _short_read()
                source.pos += n
                return n
        else:
            read = dctx.stream_reader(source, read_size=READ_SIZE, read_across_frames=False).readinto
        error = io_error = problem = None
        try:
            if not frame.walked:
                problem = unwalked_problem(self.reader, frame)
            while frame.decodable:
                slot = self._take_slot(lane)
                if slot is None:
                    return
                n = read(self.buffers[slot])
                if not n:
                    self.release_slot(slot)
                    break
                if not self._put(lane, Event(frame, slot, n, source.pos)):
                    return
        except zstandard.ZstdError as exc:
            error = str(exc)
        except OSError as exc:
            io_error = f"{exc.strerror or exc} (errno {exc.errno})"
        self._put(lane, Event(frame, None, 0, source.pos, error, io_error, problem))


class StreamCheck:
    """Composes the decoders and the tar walker, and places findings in the archive."""

    def __init__(self, reader: Any, uri: str, *, compressed: bool, check_tar: bool,
                 digest: str | None = "xxh3-128", max_window: int = DEFAULT_MAX_WINDOW, threads: int = 2,
                 on_progress: Callable[[int], None] | None = None,
                 on_members: Callable[[list[Member]], None] | None = None,
                 on_frames: Callable[[list[tuple]], None] | None = None,
                 decoders: Callable[[list[Frame]], Any] | None = None,
                 resume_from: dict[str, Any] | None = None,
                 on_checkpoint: Callable[[dict[str, Any]], None] | None = None,
                 checkpoint_every: float = 2.0, checkpoint_from: int | None = None,
                 stop: threading.Event | None = None, scanners: Any = None):
        self.reader, self.uri = reader, uri
        # how frames get decoded: threads here by default; the pipeline decodes in a worker
        self.make_decoders = decoders or (lambda frames: FrameDecoders(reader, frames, threads, max_window))
        self.compressed, self.check_tar, self.max_window = compressed, check_tar, max_window
        self.on_progress = on_progress or (lambda done: None)
        self.findings = Findings()
        self.scanners = scanners if check_tar else None  # database files inside members
        # findings that wait for the end of the archive to be decided (checksums on or off?):
        # kept apart, so that a flood of them on a cluster without checksums fills no cap
        self.provisional = Findings()
        # restore hazards, found as member batches leave the walker: kept apart from its
        # findings, which would hold checkpoints back until the next frame
        self.hazards = Findings()
        self.on_members = on_members or (lambda members: None)
        self.walker = TarWalker(uri, digest, self._members, scanners=self.scanners) if check_tar else None
        self.spans: collections.deque = collections.deque(maxlen=64)  # (u0, u1, frame, c0, c1)
        self.upstream_lost = False  # decoded content went missing: tar's own end checks do not apply
        self.findings_at_frame_start = 0
        # the frame table leaves row by row as frames end (a log, not a list held here)
        self.frame_rows: list[tuple] = []
        self.on_frames = on_frames or self.frame_rows.extend
        self.frames: list[Frame] = []
        self.rows_next = 0  # the first frame whose row has not left yet
        self.fold: tuple[int, int, int] | None = None  # (finding, frame end, members then) after a bad frame
        self.count_at_frame_start = 0
        self.uoff = 0
        # resuming: (frame index, uncompressed start, archive offset, members, findings) at recent
        # frame starts; a checkpoint restarts decoding at one of them
        self.frame_starts: collections.deque = collections.deque(maxlen=4096)
        self.resume_from, self.on_checkpoint = resume_from, on_checkpoint
        self.checkpoint_every, self.next_checkpoint = checkpoint_every, time.monotonic() + checkpoint_every
        self.checkpoint_from = checkpoint_from  # past this archive offset, checkpoint at every chunk
        self.stop = stop or threading.Event()
        self.walk_findings = 0  # findings of the frame walk: made again by every (resumed) run
        self.skip_to = 0  # output before this offset was walked before the checkpoint

    def run(self) -> StreamResult:
        if self.compressed:
            frames, _ = FrameWalk(self.reader, self.uri, self.max_window, self.findings).run()
        else:  # pieces of a plain file, so several threads read ahead in parallel
            frames = [Frame(i, "raw", start, min(start + RAW_PIECE, self.reader.size))
                      for i, start in enumerate(range(0, self.reader.size, RAW_PIECE))]
        self.frames = frames
        self._frame_facts(frames)
        broken = {f.location.frame: i for i, f in enumerate(self.findings)
                  if f.category in STRUCTURAL and _loses_content(f, frames)}
        content_frames = [f for f in frames if f.kind in ("zstd", "raw")]
        self.walk_findings = len(self.findings)
        if self.resume_from is not None:
            content_frames = self._restore(self.resume_from, content_frames)
        try:
            self._consume(self.make_decoders(content_frames), broken)
        except OSError:
            if self.stop.is_set():  # the decoders were told to stop: not a read failure
                raise StreamStopped() from None
            raise
        if self.stop.is_set():
            raise StreamStopped()
        upstream = self.upstream_lost or any(f.code == "ZSTD_TRUNCATED_FRAME" for f in self.findings)
        if self.walker:
            self.walker.finish(self.uoff, upstream_damage=upstream)
            self._drain_walker()
        if self.scanners is not None:
            self._decide_scans()
        return self._result(frames)

    def _members(self, members: list[Member]) -> None:
        self.on_members(members)
        for member in members:
            hazard = restore_hazard(member)
            if hazard is not None:
                what, path, restore = hazard
                loc = Location(self.uri, uncompressed_offset=member.header_offset, member=member.name)
                finding = Finding.of("TAR_UNSAFE_PATH", loc, what=what, path=path, restore=restore)
                self.hazards.append(self._place(finding, member.header_offset, member.header_offset + 512))

    def _is_provisional(self, finding: Finding) -> bool:
        return self.scanners is not None and finding.code == "PG_PAGE_CHECKSUM"

    def _decide_scans(self) -> None:
        """Scanner findings were provisional: now the whole archive is known, decide them."""
        decided = Findings(self.findings.limit)
        decided.dropped = self.findings.dropped
        kept: set[str] = set()
        for finding in [*self.findings, *self.provisional]:
            if finding.layer == "pages":
                outcome = self.scanners.decide(finding.code, dict(finding.details))
                if outcome is None:
                    continue
                kept.add(finding.code)
                code, details = outcome
                details.pop("lsn", None)
                finding = Finding.of(code, finding.location, **details)
            decided.append(finding)
        for code, count in self.provisional.dropped.items():  # over the cap, and real after all
            if code in kept:
                decided.dropped[code] += count
        for code, details in self.scanners.summaries():
            decided.append(Finding.of(code, Location(self.uri), **details))
        self.findings = decided

    def _drain_walker(self) -> None:
        """Place the walker's new findings while their chunks are still known."""
        new = list(self.walker.findings)
        self.walker.findings.clear()
        for finding, start, end in new:
            if self.fold is not None and _is_tar_damage(finding):
                self._add_effect(self.fold[0], finding)
            else:
                placed = self._place(finding, start, end)
                (self.provisional if self._is_provisional(finding) else self.findings).append(placed)
        if self.fold is not None and self.walker.count > self.fold[2]:
            self.fold = None  # a member after the bad frame: the walk is back in step

    def _add_effect(self, cause_index: int, effect: Finding) -> None:
        cause = self.findings[cause_index]
        if len(dict(cause.details).get("tar_effects", ())) >= 20:
            return
        effects = dict(cause.details).get("tar_effects", ()) + (
            f"{effect.code} at uncompressed offset {effect.location.uncompressed_offset}",)
        details = {**dict(cause.details), "tar_effects": effects}
        self.findings[cause_index] = Finding(cause.code, cause.location, tuple(sorted(details.items())))

    def _frame_facts(self, frames: list[Frame]) -> None:
        zstd_frames = [f for f in frames if f.kind == "zstd"]
        unchecked = [f for f in zstd_frames if not f.has_checksum and f.seek_checksum is None]
        if unchecked:
            first = unchecked[0]
            self.findings.append(Finding.of("ZSTD_NO_CHECKSUM", Location(self.uri, frame=first.index),
                                            frames=len(unchecked)))
        big = max(zstd_frames, key=lambda f: f.window, default=None)
        if big is not None and big.window > LARGE_WINDOW:
            self.findings.append(Finding.of("ZSTD_LARGE_WINDOW", Location(self.uri, frame=big.index),
                                            window=format_size(big.window)))
        if len(zstd_frames) == 1 and self.reader.size >= 256 * 1024 * 1024:
            self.findings.append(Finding.of("ZSTD_SINGLE_FRAME", Location(self.uri, frame=zstd_frames[0].index),
                                            size=format_size(self.reader.size)))

    def _consume(self, decoders: Any, broken: dict[int, int]) -> None:
        frame_start, start_pos, seek_hash = 0, None, None
        for event in decoders:
            frame = event.frame
            if start_pos is None:  # the frame's first event
                frame_start, start_pos = self.uoff, frame.offset
                self.count_at_frame_start = self.walker.count if self.walker else 0
                if self.resume_from is not None and frame.index == self.resume_from["frame"]:
                    self.count_at_frame_start = self.resume_from["frame_count"]
                self.findings_at_frame_start = len(self.findings)
                self.frame_starts.append((frame.index, self.uoff, frame.offset, self.count_at_frame_start,
                                          len(self.findings) + len(self.provisional)))
                seek_hash = xxhash.xxh64() if frame.seek_checksum is not None else None
            if event.slot is not None:
                view = decoders.view(event)
                self.spans.append((self.uoff, self.uoff + event.length, frame.index, start_pos, event.compressed_pos))
                if self.walker and self.uoff + event.length > self.skip_to:
                    cut = max(0, self.skip_to - self.uoff)  # walked before the checkpoint: skip
                    self.walker.feed(view[cut:], self.uoff + cut)
                    if self.walker.findings:
                        self._drain_walker()
                if seek_hash is not None:
                    seek_hash.update(view)
                start_pos = event.compressed_pos
                self.uoff += event.length
                view.release()
                decoders.release(event)
                self.on_progress(event.compressed_pos)
                if self.on_checkpoint and (time.monotonic() >= self.next_checkpoint or (
                        self.checkpoint_from is not None and event.compressed_pos >= self.checkpoint_from)):
                    self.checkpoint()
                continue
            self._table_rows(frame.index, (frame_start, self.uoff))
            self._end_frame(frame, event, frame_start, self.uoff - frame_start, seek_hash, broken.get(frame.index))
            start_pos = None
            self.on_progress(frame.end)

    def checkpoint(self) -> None:
        """Hand ``on_checkpoint`` the state a later run needs to go on from here: the frame to
        decode from, the offset where the walk takes over, and the findings made so far. None is
        taken while a frame's findings are still open (a fold, findings since the frame began)."""
        started = time.monotonic()
        try:
            self._checkpoint()
        finally:  # a costly checkpoint (many findings, many frames) is taken less often
            cost = time.monotonic() - started
            self.next_checkpoint = time.monotonic() + max(self.checkpoint_every, cost / CHECKPOINT_SHARE)

    def _checkpoint(self) -> None:
        if self.fold is not None or self.findings.dropped:
            return
        walker = self.walker.checkpoint() if self.walker else {"at": self.uoff}
        if walker is None:
            return
        at = walker["at"]
        start = next((s for s in reversed(self.frame_starts) if s[1] <= at), None)
        if start is None or start[4] != len(self.findings) + len(self.provisional):
            return
        index, frame_start, frame_offset, count, _ = start
        recent = []
        if self.walker:
            self.walker.flush()  # every member before the checkpoint reaches the members file
            recent = [list(m) for m in self.walker.recent if m.data_offset + m.size > frame_start][:16]
        self.on_checkpoint({
            "frame": index, "frame_offset": frame_offset, "frame_start": frame_start, "frame_count": count,
            "covered": self._archive_offset(at, frame_offset), "walker": walker, "recent": recent,
            "upstream_lost": self.upstream_lost,
            "findings": [f.to_json() for f in self.findings[self.walk_findings:]], "rows_next": self.rows_next,
            "provisional": [f.to_json() for f in self.provisional],
            "provisional_dropped": dict(self.provisional.dropped),
            "hazards": [f.to_json() for f in self.hazards], "hazards_dropped": dict(self.hazards.dropped)})

    def _archive_offset(self, uoff: int, frame_offset: int) -> int:
        """The archive offset before which everything is checked, for an uncompressed offset:
        the input read before the piece of output holding it (at least its frame's start)."""
        if not self.compressed:
            return uoff
        for u0, u1, _, c0, c1 in reversed(self.spans):
            if u0 <= uoff <= u1:
                return max(frame_offset, c1 if uoff == u1 else c0)
        return frame_offset

    def _restore(self, cp: dict[str, Any], frames: list[Frame]) -> list[Frame]:
        """Set the walk up as the checkpoint left it; returns the frames still to decode."""
        rest = [f for f in frames if f.index >= cp["frame"]]
        if not rest or rest[0].index != cp["frame"] or rest[0].offset != cp["frame_offset"]:
            raise CheckpointMismatch(f"frame {cp['frame']} is not at {cp['frame_offset']}")
        self.uoff, self.upstream_lost = cp["frame_start"], cp["upstream_lost"]
        self.skip_to = cp["walker"]["at"]
        self.findings.extend(Finding.from_json(f) for f in cp["findings"])
        self.provisional.extend(Finding.from_json(f) for f in cp["provisional"])
        self.provisional.dropped.update(cp["provisional_dropped"])
        self.hazards.extend(Finding.from_json(f) for f in cp.get("hazards", ()))
        self.hazards.dropped.update(cp.get("hazards_dropped", {}))
        self.rows_next = cp["rows_next"]
        if self.walker:
            self.walker.restore(cp["walker"], [Member(*m) for m in cp["recent"]])
        return rest

    def _end_frame(self, frame: Frame, event: Event, frame_start: int, produced: int,
                   seek_hash: Any, structural: int | None) -> None:
        """``structural`` is the index of the walk's finding for this frame, if it has one."""
        if event.failure is not None:
            raise event.failure.exception()
        if event.io_error is not None:
            raise OSError(event.io_error)
        if event.problem is not None and structural is None:  # found by the decoding thread's block walk
            code, start, end, details = event.problem
            before = len(self.findings)
            self.findings.append(Finding.of(code, Location(self.uri, byte_range=(start, end), frame=frame.index),
                                            **details))
            structural = before if len(self.findings) > before else None
            if structural is None:  # over the findings limit: still, the frame's content is lost
                self._lost(frame, event, None, code, **details)
                return
        if event.error is not None:
            code = classify_decode_error(event.error)
            if code == "ZSTD_CHECKSUM_MISMATCH":
                self._content_mismatch(frame, code, frame_start)
                if self.walker:  # the decoder withholds its last piece of output on this error
                    self.walker.lost(self.uoff)
                    self.upstream_lost = True
            else:
                self._lost(frame, event, structural, code, error=event.error)
            return
        if structural is not None:  # decoded what it could; the structural finding names the damage
            self._lost(frame, event, structural)
            return
        if frame.content_size is not None and produced != frame.content_size:
            self._lost(frame, event, None, "ZSTD_CONTENT_SIZE_MISMATCH", actual=produced, expected=frame.content_size)
            return
        if frame.seek_size is not None and produced != frame.seek_size:
            self._content_mismatch(frame, "ZSTD_SEEK_TABLE_MISMATCH", frame_start,
                                   detail=f"frame decodes to {produced} bytes, table says {frame.seek_size}")
        elif seek_hash is not None and (seek_hash.intdigest() & 0xFFFFFFFF) != frame.seek_checksum:
            self._content_mismatch(frame, "ZSTD_SEEK_TABLE_MISMATCH", frame_start,
                                   detail="decoded content does not match the seek table checksum")

    def _lost(self, frame: Frame, event: Event, structural: int | None, code: str | None = None,
              **details: Any) -> None:
        """Decoding stopped early: the rest of the frame's content is gone."""
        member, member_offset = self.walker.lost(self.uoff) if self.walker else (None, None)
        self.upstream_lost = True
        context = dict(uncompressed_offset=self.uoff, member=member, member_offset=member_offset)
        if structural is not None:  # name the member on the walk's finding instead of adding another
            self.findings[structural] = self.findings[structural].with_location(**context)
            return
        start = max(frame.offset, (self.spans[-1][4] if self.spans and self.spans[-1][2] == frame.index
                                   else frame.offset) - READ_SIZE)
        loc = Location(self.uri, byte_range=(start, max(start, event.compressed_pos)), frame=frame.index, **context)
        self.findings.append(Finding.of(code, loc, **details))

    def _content_mismatch(self, frame: Frame, code: str, frame_start: int, **details: Any) -> None:
        """The frame decoded, but its content is wrong somewhere in [frame_start, uoff)."""
        members, total = self.walker.members_since(frame_start, self.count_at_frame_start) if self.walker else ([], 0)
        only = members[0] if total == 1 else None  # name a member only when it is the only one
        loc = Location(self.uri, byte_range=(frame.offset, frame.end), frame=frame.index,
                       uncompressed_offset=frame_start, member=only)
        if members:
            details["members"] = tuple(members[:10]) + ((f"... {total - len(members[:10])} more",) if total > 10 else ())
        effects: list[Finding] = []
        if self.walker:  # tar damage in or right after a bad frame is that frame's damage
            self._drain_walker()
            recent = self.findings[self.findings_at_frame_start:]
            effects = [f for f in recent if _is_tar_damage(f) and frame_start <= f.location.uncompressed_offset]
            self.findings[self.findings_at_frame_start:] = [f for f in recent if f not in effects]
        before = len(self.findings)
        self.findings.append(Finding.of(code, loc, **details))
        if len(self.findings) > before:  # kept, not over the findings limit
            self.fold = (before, self.uoff, self.walker.count) if self.walker else None
            for effect in effects:
                self._add_effect(before, effect)

    def _place(self, finding: Finding, start: int, end: int) -> Finding:
        """Give a walker finding its archive byte range and frame."""
        if not self.compressed:
            return finding.with_location(byte_range=(start, max(end, start)))
        for u0, u1, frame, c0, c1 in reversed(self.spans):
            if u0 <= start < u1 or (start == u1 == self.uoff):
                return finding.with_location(byte_range=(max(0, c0 - READ_SIZE), c1), frame=frame)
        return finding

    def _table_rows(self, upto: int, span: tuple[int, int] | None) -> None:
        """The frame table's rows up to frame ``upto`` (its uncompressed span, if decoded), in
        order: frames between that were not decoded (skippable, seek table) have no span."""
        if not self.compressed or upto < self.rows_next:
            return
        rows = []
        for frame in self.frames[self.rows_next:upto + 1]:
            start, end = span if (span is not None and frame.index == upto) else (None, None)
            rows.append((frame.index, frame.kind, frame.offset, frame.end, frame.window, frame.content_size,
                         frame.has_checksum or frame.seek_checksum is not None, start, end))
        self.rows_next = upto + 1
        self.on_frames(rows)

    def _result(self, frames: list[Frame]) -> StreamResult:
        self._table_rows(len(frames) - 1, None)
        not_tar = any(f.code == "TAR_NOT_TAR" for f in self.findings)
        fmt = ("tar+zstd" if self.check_tar and not not_tar else "zstd") if self.compressed else "tar"
        zstd_frames = [f for f in frames if f.kind == "zstd"]
        return StreamResult(
            format=fmt, frames=len(zstd_frames),
            skippable_frames=sum(f.kind in ("skippable", "seek_table") for f in frames),
            checksummed_frames=sum(f.has_checksum or f.seek_checksum is not None for f in zstd_frames),
            max_window=max((f.window for f in zstd_frames), default=0),
            seekable=any(f.kind == "seek_table" for f in frames),
            compressed_size=self.reader.size, uncompressed_size=self.uoff,
            member_count=self.walker.count if self.walker else 0,
            findings=tuple(self.findings.closed(self.uri)) + tuple(self.hazards.closed(self.uri)),
            frame_table=tuple(self.frame_rows),
            scan_state=self.scanners.state() if self.scanners is not None else None)


def _loses_content(finding: Finding, frames: list[Frame]) -> bool:
    """A damaged window that still decodes loses nothing: only its header byte is wrong."""
    index = finding.location.frame
    frame = frames[index] if index is not None and 0 <= index < len(frames) else None
    return not (finding.code == "ZSTD_BAD_WINDOW" and frame is not None and frame.decodable)


def _is_tar_damage(finding: Finding) -> bool:
    return finding.layer == "tar" and finding.category is Category.CORRUPTION
