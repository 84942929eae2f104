"""A gzip file of many members decoded on two threads, its output handed on in file order,
with the findings of a serial decode (formats.md 7).

gzip records no member's compressed length: where a member starts is known only once the one
before it is decoded. So a scout looks a little past the decoding for a member header (the
magic, deflate, no reserved flag, the extra flags and OS byte writers set) and decodes from
there on the other thread, into a pool of its own. The decoding in front reads no further than
that candidate. If a member ends exactly there, the scout's output is what follows, and the
scout is in front from then on; if a member goes on past it (a .gz file stored inside, say),
the scout's work is dropped and the front decodes on. A scout that fails drops its work too:
the front comes to the damage in order and names it as a serial decode does. Memory stays
within the two pools, so a member longer than a pool's chunks overlaps only that much of it.
"""
from __future__ import annotations

import queue
import re
import threading
from dataclasses import dataclass, field
from typing import Any

from .. import _native
from .decoding import LOCATORS, READ_SIZE, Block, Event, Failure, FrameDecoders, decode_chunks
from .zstd import Frame

MAGIC = b"\x1f\x8b\x08"  # ID1, ID2, CM = deflate
HEADER = 10  # the fixed part of a member header
RESERVED_FLAGS = 0xE0
WRITER_XFL = (0, 2, 4)  # what gzip, zlib, pigz, Go and Java write in XFL
LOOKAHEAD = 16 * 1024 * 1024  # scanned past the front's reads: within a remote reader's read-ahead
SPECULATIVE_SPAN = LOOKAHEAD  # what a scout reads before its start is confirmed (no file read twice)
FIRST_READ = 64 * 1024  # a scout's first read: most candidates that are no member fail in it
MIN_AHEAD = READ_SIZE  # no candidate this close to the front: it would be cut short there for little
SKIP_AFTER_FAILED = 64 * 1024  # no candidate tried this close after one that failed (hostile files)
SCAN_PIECE = 1024 * 1024
POLL = 0.2  # seconds between looks at the run's stop while waiting
UNIT = "gzip member"


def header_at(data: bytes, at: int) -> bool:
    """A member header plausibly starts at ``at`` (the magic is there)."""
    if len(data) < at + HEADER:
        return False
    flags, xfl, system = data[at + 3], data[at + 8], data[at + 9]
    return not flags & RESERVED_FLAGS and xfl in WRITER_XFL and (system <= 13 or system == 255)


def first_header(data: bytes) -> int | None:
    """The first plausible member header whose fixed part is whole in ``data``."""
    at = data.find(MAGIC)
    while at >= 0 and at + HEADER <= len(data):
        if header_at(data, at):
            return at
        at = data.find(MAGIC, at + 1)
    return None


def renumbered(message: str, index: int, base: int) -> str:
    """A decoder's message naming member ``index`` of its own as member ``index + base`` of
    the file ("gzip member 3: ...", "the file ends inside gzip member 3 (...)")."""
    return re.sub(rf"\b{UNIT} {index}\b", f"{UNIT} {index + base}", message, count=1) if base else message


@dataclass(eq=False)
class _Segment:
    """Members from ``start`` on, decoded by one thread into its pool; confirmed once the
    member before it ends at ``start`` (the first is)."""

    start: int
    pool: int
    confirmed: bool = False
    dropped: bool = False
    base: int = 0  # members of the file before it
    target: int | None = None  # the scout starts here: read no further unless a member goes on past it
    reading_to: int = 0  # input read, or being read
    finished: bool = False  # its thread is done with it
    events: queue.SimpleQueue = field(default_factory=queue.SimpleQueue)


@dataclass(frozen=True)
class _Handoff:
    """The segment ended where the next (``following``) starts."""

    following: _Segment


class GzipRelay:
    """Decodes ``frame`` (a whole gzip file) on two threads, each with its own pool of
    ``decoders``' chunks, and hands its events to lane ``lane``'s queue in order."""

    def __init__(self, decoders: FrameDecoders, frame: Frame, lane: int):
        self.decoders, self.reader, self.frame, self.lane = decoders, decoders.reader, frame, lane
        self.lock = threading.Condition()
        self.front = _Segment(frame.offset, lane, confirmed=True, reading_to=frame.offset)
        self.scout: _Segment | None = None
        self.scanned_to = frame.offset
        self.ended = False  # a confirmed segment reached the file's end or failed: nothing more to scout
        self.done = False
        self.handoffs = 0  # segments that went on from where a scout had decoded ahead
        self.threads = [threading.Thread(target=self._work, args=(pool, segment), daemon=True,
                                         name=f"archcheck-relay-{lane}-{i}")
                        for i, (pool, segment) in enumerate([(lane, self.front), (decoders.new_pool(), None)])]

    def run(self) -> None:
        """Forward the segments' events in file order until the file's end event is handed on
        or the run stops."""
        segment = self.front  # (before the threads start: a handoff moves the front on)
        for thread in self.threads:
            thread.start()
        try:
            while True:
                item = self.decoders.until_stopped(lambda: segment.events.get(timeout=POLL))
                if item is None:
                    return
                if isinstance(item, _Handoff):
                    segment = item.following
                    continue
                if not self.decoders.put(self.lane, item) or item.data is None:
                    return
        finally:
            self.close()

    def close(self) -> None:
        with self.lock:
            self.done = True
            self.lock.notify_all()
        for thread in self.threads:
            if thread.is_alive() and thread is not threading.current_thread():
                thread.join(timeout=5)

    # --- a thread: decode a segment, then scout for the next ----------------------------------

    def _work(self, pool: int, segment: _Segment | None) -> None:
        """Decode ``segment`` (the file's first), or scout first for one."""
        while True:
            try:
                segment = segment or self._scout(pool)
            except Exception:  # a read ahead failed (an I/O error, the object changed): the front
                return  # reads those bytes itself and says what is wrong; no thread dies loudly
            if segment is None:
                return
            try:
                self._decode(segment)
            except OSError as exc:  # a scout's read: the front reads those bytes itself, and says so
                self._last(segment, Event(self.frame, None, 0, segment.reading_to,
                                          io_error=f"{exc.strerror or exc} (errno {exc.errno})"))
            except BaseException as exc:  # a thread that dies silently leaves the forwarding waiting
                self._last(segment, Event(self.frame, None, 0, segment.reading_to, failure=Failure.of(exc)))
            finally:
                with self.lock:
                    segment.finished = True
                    left = segment.dropped
                if left:
                    self._discard(segment)
            segment = None

    def _scout(self, pool: int) -> _Segment | None:
        """The next segment to decode ahead: at the first plausible header past the front's
        reads, within LOOKAHEAD of them. None once nothing is left to scout."""
        while True:
            with self.lock:
                while True:
                    if self.done or self.ended or self.decoders.stop.is_set():
                        return None
                    front = self.front
                    low = max(self.scanned_to, front.reading_to + MIN_AHEAD)
                    high = min(self.frame.end, front.reading_to + LOOKAHEAD)
                    if self.scout is None and front.target is None and low + HEADER <= high:
                        break
                    self.lock.wait(POLL)
            self.reader.reading_from(low)
            piece = self.reader.pread(low, min(SCAN_PIECE, high - low))
            at = first_header(piece)
            with self.lock:
                if at is None:
                    self.scanned_to = max(self.scanned_to, low + max(1, len(piece) - HEADER + 1))
                    continue
                candidate = low + at
                self.scanned_to = candidate + 1
                if self.front is front and front.target is None and front.reading_to < candidate and not self.ended:
                    self.scout = _Segment(candidate, pool, reading_to=candidate)
                    front.target = candidate
                    return self.scout

    def _decode(self, segment: _Segment) -> None:
        decoder = _native.StreamDecoder(self.frame.kind, self.decoders.max_window)
        self.reader.reading_from(segment.start)
        done = decode_chunks(decoder, segment.start, _SegmentPort(self, segment, decoder))
        if done.ended:
            self._end(segment, done.pos, done.failed, decoder)

    def _next_read(self, segment: _Segment, pos: int, past_members: bool) -> int | None:
        """How much to read at ``pos``: up to the scout's start, if there is one. A scout
        waits, until the front has got to its start, at SPECULATIVE_SPAN past it or once its
        decoder is past the members (bytes that are no member: a serial decode counts them to
        the file's end, once). None once the segment is dropped or the run stopped."""
        with self.lock:
            while True:
                if self.decoders.stop.is_set() or segment.dropped or self.done:
                    return None
                end = segment.target if segment.target is not None else self.frame.end
                if not segment.confirmed:
                    end = min(end, segment.start + SPECULATIVE_SPAN)
                if segment.confirmed or (pos < end and not past_members) or pos == self.frame.end:
                    break
                self.lock.wait(POLL)
            want = min(READ_SIZE if pos > segment.start or segment.confirmed else FIRST_READ, end - pos)
            segment.reading_to = pos + want
            self.lock.notify_all()
            return want

    def _handed_on(self, segment: _Segment, chunk: Any, decoder: Any) -> bool:
        """The segment has read up to the scout's start: a member ends there (the scout's
        segment follows this one) or it does not (the scout's work is dropped)."""
        with self.lock:
            scout = self.scout
            if segment.target is None or scout is None:
                return False  # the scout gave up meanwhile
            confirmed = decoder.at_member_end  # else the candidate is inside a member: no member starts there
            if confirmed:
                scout.confirmed, scout.base = True, segment.base + decoder.members
                self.front, self.scout, segment.target = scout, None, None
                self.handoffs += 1
                self.lock.notify_all()
            else:
                left = self._drop_scout()
        if not confirmed:
            if left:
                self._discard(scout)
            return False
        if len(chunk):
            self._emit(segment, chunk, scout.start)
        else:
            self._release(segment, chunk)
        segment.events.put(_Handoff(scout))
        return True

    def _end(self, segment: _Segment, pos: int, failed: tuple | None, decoder: Any) -> None:
        """The segment stopped: at the file's end, or at damage (``failed``, its member counted
        from the segment's first)."""
        trailing = decoder.trailing
        if trailing is not None:
            trailing = (segment.start + trailing[0], trailing[1], trailing[2])
        if failed is None:
            self._last(segment, Event(self.frame, None, 0, pos, trailing=trailing))
            return
        message, code, index, first, last = failed
        where = Block(index, segment.start + first, segment.start + last) if index is not None else None
        self._last(segment, Event(self.frame, None, 0, pos, message, code, block=where, trailing=trailing))

    def _last(self, segment: _Segment, event: Event) -> None:
        """The segment's last event. A scout's that is not a clean end is dropped (the front,
        decoding on, comes to the same place in order and says what is there); a confirmed
        segment's ends the file, its member numbered in the file."""
        with self.lock:
            if not segment.confirmed and (event.error or event.io_error or event.failure):
                if self.scout is segment:
                    self._drop_scout()
                segment.dropped = True
                self.scanned_to = max(self.scanned_to, segment.start + SKIP_AFTER_FAILED)
                return
            if segment.confirmed:
                self.ended = True
                self.lock.notify_all()
                if event.block is not None:
                    event.error = renumbered(event.error or "", event.block.index, segment.base) or None
                    event.block.index += segment.base
        block = event.block
        if event.error_code in LOCATORS and block is not None and not self.decoders.stop.is_set():
            block.deflate = self.decoders.locate(event.error_code, block)
        event.pool = segment.pool
        segment.events.put(event)

    def _drop_scout(self) -> bool:
        """(Lock held.) The scout's work is not the file's: its start is no member's. True when
        its thread is done with it and its chunks are the caller's to give back."""
        scout = self.scout
        scout.dropped = True
        self.scout = None
        self.front.target = None
        self.lock.notify_all()
        return scout.finished

    # --- chunks --------------------------------------------------------------------------------

    def _chunk(self, segment: _Segment) -> Any:
        return self.decoders.chunk_of(segment.pool, lambda: segment.dropped or self.done)

    def _emit(self, segment: _Segment, chunk: Any, behind: int) -> None:
        segment.events.put(Event(self.frame, chunk, len(chunk), behind, pool=segment.pool))

    def _release(self, segment: _Segment, chunk: Any) -> None:
        if chunk is not None:
            self.decoders.release(Event(self.frame, chunk, 0, 0, pool=segment.pool))

    def _discard(self, segment: _Segment) -> None:
        """A dropped segment's chunks back to its pool (nobody will forward them)."""
        if not segment.dropped:
            return
        while True:
            try:
                item = segment.events.get_nowait()
            except queue.Empty:
                return
            if isinstance(item, Event):
                self.decoders.release(item)


class _SegmentPort:
    """A segment's decoding: read as far as _next_read lets it, its chunks put on its own
    events, and handed on at the scout's start when a member ends there."""

    def __init__(self, relay: GzipRelay, segment: _Segment, decoder: Any):
        self.relay, self.segment, self.decoder = relay, segment, decoder

    def chunk(self) -> Any:
        return self.relay._chunk(self.segment)

    def next_read(self, pos: int) -> int | None:
        return self.relay._next_read(self.segment, pos, past_members=self.decoder.trailing is not None)

    def read(self, pos: int, size: int) -> bytes:
        return self.relay.reader.pread(pos, size) if size > 0 else b""

    def emit(self, chunk: Any, behind: int) -> bool:
        self.relay._emit(self.segment, chunk, behind)
        return True

    def release(self, chunk: Any) -> None:
        self.relay._release(self.segment, chunk)

    def read_to(self, pos: int, chunk: Any) -> bool:
        return pos == self.segment.target and self.relay._handed_on(self.segment, chunk, self.decoder)
