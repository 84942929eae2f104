"""Decoding lanes: zstd frames decoded by the native core on ``threads`` threads, into chunks
the core owns; iterate for the output in frame order.

Each lane decodes every n-th frame, reads its compressed bytes and hands them to the core with
the GIL released, so lanes run on separate cores. A lane owns a small pool of chunks, so no
lane can starve another and memory is bounded by lanes x (depth + 1) x chunk, whatever the
archive's size. A plain tar is read the same way, as pseudo-frames of the file. A gzip file
is one frame: its lane takes the idle lane's share too (relay.py). Whatever stops a lane is
handed on as a Failure, so the walker never waits for output that will not come.
"""
from __future__ import annotations

import collections
import queue
import threading
from dataclasses import dataclass
from typing import Any, Callable, Iterator, Protocol

from .. import _native
from ..errors import SourceChanged
from .boundary import Chunk, Decoder
from ..codecs import UNITS
from .gzip import DeflateBlock, deflate_block
from .zstd import CONTENT_KINDS, Frame, unwalked_problem

# failures the decoder cannot place inside their member: found by reading the member again,
# from its first byte to where decoding failed (the failure path only)
LOCATORS: dict[str, Callable[[Any, int, int, threading.Event], DeflateBlock | None]] = {"GZIP_DECODE_ERROR": deflate_block}

CHUNK = 4 * 1024 * 1024  # decoded bytes per chunk: fewer Python steps than bytes
MIN_CHUNK = 256 * 1024
DEPTH = 4  # chunks a lane may decode ahead by default; the pipeline sizes it from the budget
READ_SIZE = 1024 * 1024  # compressed bytes read at a time
STOP_POLL = 0.2  # seconds between looks at the stream's stop while waiting for the walk's next frame
STALL_LIMIT = 64  # calls in a row that neither take input nor give output: the decoder is stuck


class DecoderFailed(Exception):
    """A decoding thread failed in a way no finding describes (a bug)."""


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
        if isinstance(exc, _native.NativePanic):
            return cls(False, f"the native core panicked: {exc}")
        return cls(False, f"{type(exc).__name__}: {exc}")

    def exception(self) -> Exception:
        return SourceChanged(self.message) if self.changed else DecoderFailed(self.message)


@dataclass
class Block:
    """The unit a frame failed in (a zstd block, a gzip member, an xz stream, ...): its index,
    its archive byte range, and the deflate block inside it when it is a gzip member."""

    index: int
    start: int
    end: int
    deflate: DeflateBlock | None = None


@dataclass
class Event:
    """A piece of a frame's output (``data``), or, with ``data`` None, the end of the frame."""

    frame: Frame
    data: Chunk | bytes | None  # bytes of a plain file; None at the end of the frame
    length: int
    compressed_pos: int  # how far into the archive the input was read
    error: str | None = None  # the decoder's message when the frame stopped early
    error_code: str | None = None  # its finding code
    io_error: str | None = None  # a read of the archive failed
    problem: tuple | None = None  # what the block walk found in a frame not walked before
    failure: Failure | None = None  # the decoder itself failed: the stream cannot go on
    block: Block | None = None  # where the decoder failed (a zstd block, a gzip member, an xz stream, ...)
    trailing: tuple[int, int, int] | None = None  # bytes after the last member of a stream codec: (offset, length, non-zero)
    unchecked: tuple[int, int, int] | None = None  # members of a stream codec no check covers: (first, offset, count)
    withheld: int = 0  # output of a unit that failed its check, not handed on: about how long it was
    checksum_outside: bool = False  # the consumer checks the frame's content checksum (Decoder.checksum_outside)
    stored_checksum: int | None = None  # at the frame's end, the checksum it checks against
    # where a restore reading the input stops inside it (an age chunk that fails): (input
    # position, the offset in ``data`` of all the output decoded from the input before it)
    cuts: tuple[tuple[int, int], ...] = ()
    lane: int = 0
    pool: int | None = None  # the pool its chunk goes back to, when not its lane's

    @property
    def notable(self) -> bool:
        """The frame ended with something to say: an error, a problem, bytes after it, ..."""
        return any(x is not None for x in (self.error, self.io_error, self.problem, self.failure, self.trailing,
                                           self.unchecked))


PASSED = Frame(-1, "passed", 0, 0)  # a frame without content that the reader has passed


def short_read() -> SourceChanged:
    return SourceChanged("shrank: it ends before frames the run had found")


class FrameFeed:
    """The frames to decode, in order: all known at once, or handed on (``put``) by a frame walk
    still running. That walk is held back while it is more than ``AHEAD_FRAMES`` frames, or
    ``LEAD`` bytes and a frame with content per lane, past the frame being read, until it is
    half as far ahead, so that a remote reader still holds the blocks the walk fetched when the
    lanes read them: the archive crosses the network once. Every wait ends: the walk ends
    (``end``, always), or the feed is closed.

    A frame without a size note is handed on ``open``, before the walk has followed its blocks:
    a lane decodes it as far as the walk has got (``bound``), and the walk stays within
    ``LEAD`` of that lane (``walk_reads``), so a single frame of any size is read once too.

    Frames before the one being read are let go: memory does not grow with their number. A
    frame without content (skippable, a seek table) is handed on too, for its row of the frame
    table and to pace the walk: the reader passes it, and no lane decodes it (lanes take the
    frames with content in turn: ``take``)."""

    LEAD = 16 * 1024 * 1024  # within a remote reader's read-ahead (in_flight blocks of 8 MiB)
    AHEAD_FRAMES = 4096  # frames of a few hundred bytes: memory goes by frames, not bytes

    def __init__(self, frames: list[Frame] | None = None, lanes: int = 1, stop: threading.Event | None = None):
        """``stop``: the stream's; a reader waiting for the walk's next frame gives up on it."""
        self._frames: collections.deque[Frame] = collections.deque(frames or [])
        self._first = 0  # the index of _frames[0]: those before are read and let go
        # of each frame held, how many frames with content come before it in the feed (-1: it
        # has none): lanes take frames with content in turn, whatever lies between
        self._ordinals: collections.deque[int] = collections.deque()
        self._with_content = self._content_count = 0  # of those held; of all
        for frame in self._frames:
            self._count_in(frame)
        self.stop = stop
        self.done = frames is not None  # no frame will be added
        self.lanes = lanes
        self.reading = 0  # the frame whose output is being read
        self.paced = True  # False: the walk goes on to the end without waiting
        self.closed = False  # nobody reads frames any more; the walk goes on to the end (its findings count)
        self.abandoned = False  # the stream was stopped: the walk ends too
        self.open_frame: int | None = None  # the frame whose blocks the walk is following
        self.walked_to = 0  # in the open frame: the bytes before this are the walk's
        self.decoded_to = 0  # in the open frame: how far its lane has read (past its end once done)
        self.cond = threading.Condition()
        self.walk_waits = threading.Condition(self.cond)  # (the same lock) the walk, held back in the open frame
        self.walk_waits_for = 0  # the lane's reads wake the walk only once past this
        self.walk_ahead = threading.Condition(self.cond)  # (the same lock) the walk, too far ahead of the reading
        self.lane_waits = threading.Condition(self.cond)  # the open frame's lane, for the walk to get on
        self.failed_frame: int | None = None  # a read of the walk failed in this frame: nothing after is checked

    def open(self, frame: Frame) -> bool:
        """Add a frame whose end the walk has yet to find; False once the feed is abandoned."""
        with self.cond:
            self.open_frame, self.walked_to, self.decoded_to = self.count, frame.offset, frame.offset
            return self._add(frame)

    def put(self, frame: Frame) -> bool:
        """Add the next frame (or the open one, walked); False once the feed is abandoned (the
        walk should end)."""
        with self.cond:
            if self.open_frame is not None:  # the walk goes frame by frame: this is the open one, walked
                self._frames[self._slot(self.open_frame)], self.open_frame = frame, None
                self._wake_all()
                return not self.abandoned
            return self._add(frame)

    @property
    def count(self) -> int:
        """Frames handed on so far."""
        return self._first + len(self._frames)

    def _slot(self, k: int) -> int:
        if not self._first <= k < self.count:
            raise IndexError(f"frame {k} of the feed is not held (held: {self._first} to {self.count - 1})")
        return k - self._first

    def _at(self, k: int) -> Frame:
        return self._frames[self._slot(k)]

    def last(self) -> Frame | None:
        with self.cond:
            return self._frames[-1] if self._frames else None

    def _count_in(self, frame: Frame) -> None:
        content = frame.kind in CONTENT_KINDS
        self._ordinals.append(self._content_count if content else -1)
        self._content_count += content
        self._with_content += content

    def _add(self, frame: Frame) -> bool:
        self._frames.append(frame)
        self._count_in(frame)
        self._let_go()
        self.cond.notify_all()
        while not self.closed and self.paced and self._ahead(self.LEAD, self.AHEAD_FRAMES):
            self.walk_ahead.wait()
        return not self.abandoned

    def walk_reads(self, offset: int) -> None:
        """The walk is about to read at ``offset``: what is before it in the open frame is
        walked; in it, the walk waits while it is more than LEAD past the lane's reads."""
        with self.cond:
            if self.open_frame is None:
                return
            self.walked_to = max(self.walked_to, offset)
            self.lane_waits.notify_all()
            if offset <= self.decoded_to + self.LEAD:
                return
            # held back until the lane is half a lead on: the walk then runs a few hundred blocks at a time
            self.walk_waits_for = offset - self.LEAD // 2
            while (self.paced and not self.closed and self.open_frame is not None
                   and self.decoded_to < self.walk_waits_for):
                self.walk_waits.wait()

    def walk_failed(self) -> None:
        """A read of the walk failed: the open frame is decoded no further than it had got (the
        walk ends with an error that the stream raises)."""
        with self.cond:
            self.failed_frame = self.open_frame
            self._wake_all()

    def current(self, k: int) -> tuple[Frame, bool]:
        """Frame ``k`` as known now, and whether it is still open."""
        with self.cond:
            return self._at(k), self.open_frame == k

    def bound(self, k: int, pos: int) -> int:
        """How far the lane decoding frame ``k`` may read, being at ``pos``: its end once walked;
        while open, as far as the walk has got, waiting for it to pass ``pos`` (at ``pos``
        once the walk has ended or failed without walking it, or the feed is closed)."""
        with self.cond:
            if self.open_frame == k:
                self.decoded_to = max(self.decoded_to, pos)
                if self.decoded_to >= self.walk_waits_for:
                    self.walk_waits.notify()
            while (self.open_frame == k and self.failed_frame is None and self.walked_to <= pos
                   and not self.done and not self.closed):
                self.lane_waits.wait()
            return self.walked_to if k in (self.open_frame, self.failed_frame) else self._at(k).end

    def decoded(self, k: int) -> Frame:
        """The lane is done with frame ``k``: the walk may go on through it unpaced. Returns the
        frame once walked (as it is, if the walk ends first or the feed is closed); if the walk
        failed in it, once the walk has ended (and its error is there to raise)."""
        with self.cond:
            if self.open_frame == k:
                self.decoded_to = 1 << 62
                self._wake_all()
            while k in (self.open_frame, self.failed_frame) and not self.done and not self.closed:
                self.cond.wait()
            return self._at(k)

    def _wake_all(self) -> None:
        self.cond.notify_all()
        self.walk_waits.notify_all()
        self.lane_waits.notify_all()
        self.walk_ahead.notify_all()

    def _ahead(self, lead: int, frames_ahead: int) -> bool:
        """Whether the walk is more than ``frames_ahead`` frames, or a frame with content per
        lane and ``lead`` bytes, past the frame being read (the frames held)."""
        frames, reading = self._frames, self.reading - self._first
        ahead = len(frames) - reading
        return ahead > frames_ahead or (self._with_content > self.lanes + 1
                                        and frames[-1].offset - frames[reading].offset > lead)

    def end(self) -> None:
        with self.cond:
            self.done = True
            self._wake_all()

    def get(self, k: int) -> Frame | None:
        """Frame ``k``, once the walk has found it; None past the last, or once closed. A frame
        the reader has passed (a lane late for a frame without content) is PASSED."""
        taken = self.take(k)
        return taken[0] if taken is not None else None

    def take(self, k: int) -> tuple[Frame, int] | None:
        """As ``get``, with how many frames with content come before it (-1: it has none)."""
        with self.cond:
            while k >= self.count and not self.done and not self.closed:
                if self.stop is not None and self.stop.is_set():
                    return None  # (a resume's walk over the frames before its checkpoint can be long)
                self.cond.wait(STOP_POLL if self.stop is not None else None)
            if self.closed or k >= self.count:
                return None
            return (PASSED, -1) if k < self._first else (self._at(k), self._ordinals[self._slot(k)])

    def unpace(self) -> None:
        """Let the walk run to the end: whoever waits for it reads no frame meanwhile. The walk
        hands on no frame once there is no ``room``, and another walk takes over (``pace``)."""
        with self.cond:
            self.paced = False
            self._wake_all()

    def pace(self) -> None:
        with self.cond:
            self.paced = True

    def room(self) -> bool:
        """Whether a frame handed on now would be within the lead."""
        with self.cond:
            return not self._ahead(self.LEAD, self.AHEAD_FRAMES)

    def read_from(self, k: int) -> None:
        """Frame ``k``'s output is read now: every lane is done with those before it."""
        with self.cond:
            self.reading = k
            self._let_go()
            if not self._ahead(self.LEAD // 2, self.AHEAD_FRAMES // 2):  # a walk held back goes on
                self.walk_ahead.notify()

    def _let_go(self) -> None:
        while self._first < self.reading and self._frames:
            self._with_content -= self._frames.popleft().kind in CONTENT_KINDS
            self._ordinals.popleft()
            self._first += 1

    def close(self) -> None:
        with self.cond:
            self.closed = True
            self._wake_all()

    def abandon(self) -> None:
        with self.cond:
            self.closed = self.abandoned = True
            self._wake_all()


class FrameDecoders:
    """Decodes the frames of ``feed`` on ``threads`` lanes; iterate for events in frame order,
    and ``release`` each event when done with its data."""

    def __init__(self, reader: Any, feed: FrameFeed, threads: int, max_window: int, depth: int = DEPTH,
                 chunk: int = CHUNK):
        self.reader, self.feed, self.max_window, self.chunk = reader, feed, max_window, chunk
        # where in (start, end] a restore reading the input stops, if anywhere (an age plaintext's failed chunk)
        self.cut_within: Callable[[int, int], int | None] = getattr(reader, "cut_within", lambda start, end: None)
        self.threads = max(1, min(threads, feed.count) if feed.done else threads)
        self.relays = threads > self.threads  # a lane left idle: a gzip file's lane decodes on two threads
        self.queues = [queue.Queue(depth + 1) for _ in range(self.threads)]
        self.free: list[queue.SimpleQueue] = [queue.SimpleQueue() for _ in range(self.threads)]
        self.depth = depth + 1  # chunks each lane may have out at once
        self.made = [0] * self.threads
        self.stop = threading.Event()
        self.workers = [threading.Thread(target=self._lane, args=(t,), name=f"archcheck-lane-{t}", daemon=True)
                        for t in range(self.threads)]

    def __iter__(self) -> Iterator[Event]:
        for worker in self.workers:
            worker.start()
        try:
            k = 0
            while (taken := self.feed.take(k)) is not None:
                frame, ordinal = taken
                self.feed.read_from(k)
                if ordinal < 0:  # handed on for its row: nothing to decode
                    yield Event(frame, None, 0, frame.end)
                    k += 1
                    continue
                self.reader.reading_from(frame.offset)  # the lanes read from about here now
                lane_queue = self.queues[ordinal % self.threads]
                while True:
                    event = self.until_stopped(lambda: lane_queue.get(timeout=0.2))
                    if event is None:
                        return  # stopped from outside
                    yield event
                    if event.data is None:
                        break
                k += 1
        finally:
            self.close()

    def release(self, event: Event) -> None:
        if isinstance(event.data, _native.Chunk):
            event.data.clear()
            self.free[event.lane if event.pool is None else event.pool].put(event.data)

    def close(self) -> None:
        self.stop.set()
        self.feed.close()
        for q in self.queues:  # unblock lanes waiting on a full queue
            while True:
                try:
                    self.release(q.get_nowait())
                except queue.Empty:
                    break
        for worker in self.workers:
            if worker.is_alive():  # (never started, when the stream stopped before its first event)
                worker.join(timeout=5)

    def until_stopped(self, attempt: Callable[[], Any], abandoned: Callable[[], bool] | None = None) -> Any:
        """Retry a blocking queue step until it succeeds or the lanes are stopped (None), or
        until ``abandoned``."""
        while not self.stop.is_set() and not (abandoned is not None and abandoned()):
            try:
                return attempt()
            except (queue.Empty, queue.Full):
                continue
        return None

    def put(self, lane: int, event: Event) -> bool:
        event.lane = lane
        return self.until_stopped(lambda: self.queues[lane].put(event, timeout=0.2) or True) is not None

    def chunk_of(self, pool: int, abandoned: Callable[[], bool] | None = None) -> Chunk | None:
        """A free chunk of this pool, made on first need up to its depth; None once stopped
        (or ``abandoned``)."""
        try:
            return self.free[pool].get_nowait()
        except queue.Empty:
            pass
        if self.made[pool] < self.depth:
            self.made[pool] += 1
            return _native.Chunk(self.chunk)
        return self.until_stopped(lambda: self.free[pool].get(timeout=0.2), abandoned)

    def new_pool(self) -> int:
        """Another pool of chunks, for a lane that decodes on two threads."""
        self.free.append(queue.SimpleQueue())
        self.made.append(0)
        return len(self.free) - 1

    def _lane(self, lane: int) -> None:
        k, frame = 0, None
        try:
            decoder = None
            while (taken := self.feed.take(k)) is not None:
                index, k = k, k + 1
                if self.stop.is_set():
                    return
                if taken[1] < 0 or taken[1] % self.threads != lane:  # another lane's, or none's
                    continue
                frame = taken[0]
                if frame.kind == "raw":
                    self._read_plain(frame, lane)
                    continue
                if frame.kind == "gzip" and self.relays:
                    from .relay import GzipRelay  # (it builds on this module's events and pools)
                    GzipRelay(self, frame, lane).run()
                    continue
                if frame.kind in UNITS:
                    self._decode_frame(_native.StreamDecoder(frame.kind, self.max_window, list(frame.params)),
                                       frame, lane)
                    continue
                if decoder is None:
                    decoder = _native.FrameDecoder(self.max_window, frame.header_length)
                else:
                    decoder.reset(frame.header_length)
                # the archive's first frame's checksum, a lone frame's, is hashed on the walk's
                # thread, which has time to spare (StreamCheck); frames decoded side by side keep
                # both cores busy, and libzstd hashes each block while it is still in cache, at a
                # third of the cost. (By the frame's index, not by how many frames are known yet:
                # the same on every run, resumed or not.)
                decoder.check_checksum_outside(frame.index == 0 and frame.has_checksum)
                self._decode_frame(decoder, frame, lane, index)
        except BaseException as exc:  # a lane that dies silently leaves the walker waiting forever
            failed = frame if frame is not None else PASSED  # (before its first frame)
            self.put(lane, Event(failed, None, 0, failed.offset, failure=Failure.of(exc)))

    def _read_plain(self, frame: Frame, lane: int) -> None:
        """A piece of a plain tar: read in chunk-sized pieces, handed on as they are."""
        pos = frame.offset
        io_error = None
        cut_within = self.cut_within
        at_start = _cut_at_start(cut_within, frame)
        try:
            while pos < frame.end and not self.stop.is_set():
                end = min(pos + self.chunk, frame.end)
                cut = cut_within(pos, end)  # a piece ends where a restore would stop
                data = self.reader.read_in_place(pos, (cut or end) - pos)
                if not data:
                    raise short_read()
                pos += len(data)
                cuts, at_start = at_start + (((cut, len(data)),) if cut == pos else ()), ()
                if not self.put(lane, Event(frame, data, len(data), pos, cuts=cuts)):
                    return
        except OSError as exc:
            io_error = f"{exc.strerror or exc} (errno {exc.errno})"
        self.put(lane, Event(frame, None, 0, pos, io_error=io_error))

    def _decode_frame(self, decoder: Decoder, frame: Frame, lane: int, index: int | None = None) -> None:
        """``index``: the frame's in the feed, which may hand it on open (its end not yet walked)."""
        opened = False
        if index is not None:
            frame, opened = self.feed.current(index)
        try:
            self._decode_whole(decoder, frame, lane, index if opened else None)
        except BaseException:
            if opened:
                self.feed.decoded(index)  # the walk must not wait on a lane that died (done: _decode_whole)
            raise

    def _decode_whole(self, decoder: Decoder, frame: Frame, lane: int, open_index: int | None) -> None:
        pos, failed, where = frame.offset, None, None
        io_error = problem = None
        # a frame whose end came from pzstd's note: its blocks walked on the bytes decoded
        trail = None if frame.walked else _native.BlockTrail(frame.offset, frame.end, frame.header_length,
                                                               frame.window, frame.has_checksum)
        cuts: tuple = ()
        try:
            if frame.decodable:
                pos, failed, where, cuts = self._decode_chunks(decoder, frame, lane, trail, open_index)
            if trail is not None and not self.stop.is_set():
                settled, problem = trail.settled()
                if not settled:  # decoding stopped first, or the blocks run past the note: read them
                    problem = unwalked_problem(self.reader, frame)
        except OSError as exc:
            io_error = f"{exc.strerror or exc} (errno {exc.errno})"
        message, code = failed or (None, None)
        if code in LOCATORS and where is not None and not self.stop.is_set():
            where.deflate = self.locate(code, where)
        if open_index is not None:
            frame = self.feed.decoded(open_index)  # its end, as the walk found it
        self.put(lane, Event(frame, None, 0, pos, message, code, io_error, problem, block=where,
                             trailing=decoder.trailing, unchecked=decoder.unchecked,
                             withheld=decoder.withheld, checksum_outside=decoder.checksum_outside,
                             stored_checksum=decoder.stored_checksum, cuts=cuts))

    def locate(self, code: str, where: Block) -> DeflateBlock | None:
        """Where in its member a failure lies, if reading the member again says; a read that
        fails or a run that stops leaves the failure at its member."""
        try:
            return LOCATORS[code](self.reader, where.start, where.end, self.stop)
        except OSError:
            return None

    def _decode_chunks(self, decoder: Decoder, frame: Frame, lane: int, trail: Any = None,
                       open_index: int | None = None) -> tuple[int, tuple[str, str] | None, Block | None, tuple]:
        """Feed the frame's bytes to the decoder; each full chunk goes to the walker. Returns
        how far the input was read, the error (message, code) and block where decoding failed,
        and the cuts no chunk took out (at the frame's end). An open frame is read as far as
        the walk has got (``open_index``: its index in the feed)."""
        port = _LanePort(self, frame, lane, trail, open_index, decoder.checksum_outside)
        done = decode_chunks(decoder, frame.offset, port)
        failed, where = _failure(frame, done.failed) if done.failed is not None else (None, None)
        return done.pos, failed, where, tuple(port.cuts)


class DecodePort(Protocol):
    """Where one decoding thread's input comes from and where its output goes (decode_chunks)."""

    def chunk(self) -> Chunk | None:
        """An empty chunk to decode into; None once the decoding should stop."""

    def next_read(self, pos: int) -> int | None:
        """How many bytes to read at ``pos`` (0: the input ends there); None to stop."""

    def read(self, pos: int, size: int) -> bytes: ...

    def emit(self, chunk: Chunk, behind: int) -> bool:
        """Hand on a chunk of output, decoded from the input before ``behind``; False to stop."""

    def release(self, chunk: Chunk) -> None:
        """A chunk not handed on goes back."""

    def read_to(self, pos: int, chunk: Chunk) -> bool:
        """The input is read up to ``pos``: True when the port takes ``chunk`` and the decoding
        ends here (a gzip relay's handoff)."""


@dataclass(frozen=True)
class Decoded:
    """How a decode_chunks ended: at ``pos`` in the input, at its end or the decoder's
    (``ended``, ``failed`` the decoder's failure then, if any), or stopped by its port."""

    pos: int
    ended: bool = False
    failed: tuple | None = None  # (message, code, unit index, unit start, unit end), offsets from the base


def decode_chunks(decoder: Decoder, base: int, port: DecodePort) -> Decoded:
    """Read the input from ``base`` on, decode it into chunks and hand each full one on, until
    the decoder fails or finishes, the input ends or the port stops it."""
    pos, chunk, stalls = base, port.chunk(), 0
    while chunk is not None:
        want = port.next_read(pos)
        if want is None:
            break
        data = port.read(pos, want)
        if len(data) < want:
            raise short_read()  # the walk saw these bytes: the file shrank since
        start = 0
        while True:
            before = len(chunk)
            taken, finished, failed = decoder.decode(data, start, chunk)
            start += taken
            # the input behind this output: up to the failed block, or what the decoder took
            behind = base + (failed[3] if failed is not None and failed[3] is not None else decoder.consumed)
            ended = failed is not None or finished
            if len(chunk) and (ended or len(chunk) == chunk.capacity):
                if not port.emit(chunk, behind):
                    return Decoded(pos + start)
                if ended:  # no chunk taken for nothing: a lane would wait for one at every frame's end
                    return Decoded(pos + start, True, failed)
                if (chunk := port.chunk()) is None:
                    return Decoded(pos + start)
            if ended:
                port.release(chunk)
                return Decoded(pos + start, True, failed)
            if start == len(data) and len(chunk) < chunk.capacity:
                break  # wants more input, or there is none left
            stalls = stalls + 1 if not taken and len(chunk) == before else 0
            if stalls > STALL_LIMIT:
                raise DecoderFailed(f"the decoder stopped taking input at archive offset {pos + start}")
        if not data:  # the input ended: a gzip (xz, ...) file whole or inside a member, a zstd frame cut short
            if len(chunk):
                port.emit(chunk, pos)
            else:
                port.release(chunk)
            return Decoded(pos, True, decoder.finish())
        pos += len(data)
        if port.read_to(pos, chunk):
            return Decoded(pos)
    if chunk is not None:
        port.release(chunk)
    return Decoded(pos)


class _LanePort:
    """A lane's frame: read to its end (an open frame as far as the walk has got), its chunks
    handed to the lane's queue."""

    def __init__(self, decoders: FrameDecoders, frame: Frame, lane: int, trail: Any, open_index: int | None,
                 checksum_outside: bool):
        self.decoders, self.frame, self.lane, self.trail, self.open_index = decoders, frame, lane, trail, open_index
        self.checksum_outside = checksum_outside
        self.cut_within = decoders.cut_within
        self.cut: int | None = None  # where the read in hand was made to end
        # in the chunk being filled; a chunk that fails at the frame's first byte cuts it at 0
        self.cuts: list[tuple[int, int]] = list(_cut_at_start(self.cut_within, frame))

    def chunk(self) -> Chunk | None:
        return self.decoders.chunk_of(self.lane)

    def next_read(self, pos: int) -> int:
        """Reads end where a restore would stop, so what the input before it decodes to is known
        (read_to)."""
        end = self.frame.end if self.open_index is None else self.decoders.feed.bound(self.open_index, pos)
        end = min(pos + READ_SIZE, end)
        self.cut = self.cut_within(pos, end) if pos < end else None
        return (self.cut or end) - pos

    def read(self, pos: int, size: int) -> bytes:
        data = self.decoders.reader.pread(pos, size) if size > 0 else b""
        if self.trail is not None:
            self.trail.feed(pos, data)
        return data

    def emit(self, chunk: Chunk, behind: int) -> bool:
        cuts, self.cuts = tuple(self.cuts), []
        return self.decoders.put(self.lane, Event(self.frame, chunk, len(chunk), behind, cuts=cuts,
                                                  checksum_outside=self.checksum_outside))

    def release(self, chunk: Chunk) -> None:
        self.decoders.release(Event(self.frame, chunk, 0, 0, lane=self.lane))

    def read_to(self, pos: int, chunk: Chunk) -> bool:
        if pos == self.cut:  # all the input before the cut is decoded: what it gives ends here
            self.cuts.append((pos, len(chunk)))
        return False


def _cut_at_start(cut_within: Callable[[int, int], int | None], frame: Frame) -> tuple[tuple[int, int], ...]:
    """A restore that stops at the frame's first byte: nothing of the frame is restored."""
    return ((frame.offset, 0),) if cut_within(frame.offset - 1, frame.offset) == frame.offset else ()


def _failure(frame: Frame, failed: tuple) -> tuple[tuple[str, str], Block | None]:
    """A decoder's failure, (message, code, unit index, unit start, unit end), as the error and
    the unit (zstd block, gzip member) in archive offsets."""
    message, code, index, first, last = failed
    return (message, code), (Block(index, frame.offset + first, frame.offset + last) if index is not None else None)
