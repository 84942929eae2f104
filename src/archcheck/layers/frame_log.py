"""The frames of one stream check as they pass: those whose rows of the frame table have yet to
leave, and what the frames say as a whole. Nothing else is kept of a frame once its row has left,
so that memory does not grow with the number of frames (a seekable archive of 64 KiB frames has
a million in 64 GB).
"""
from __future__ import annotations

import collections
import threading
from dataclasses import dataclass, field, replace
from typing import Callable

from .zstd import CONTENT_KINDS, Frame


@dataclass
class FrameTally:
    """What every frame found says as a whole, counted as each is found."""

    zstd: int = 0
    content: int = 0  # frames the lanes decode (zstd, raw pieces, a stream codec's units)
    skippable: int = 0  # skippable frames and seek tables
    seekable: bool = False
    first_zstd: int | None = None
    widest: Frame | None = None  # the first zstd frame of the largest window
    # zstd frames without a content checksum: (count, first index), without one nor a seek
    # table's; the table counts only when the walk finds that it holds
    no_checksum: list[int | None] = field(default_factory=lambda: [0, None])
    no_check_at_all: list[int | None] = field(default_factory=lambda: [0, None])
    undecodable: set[int] = field(default_factory=set)  # zstd frames not decoded: a window, a dictionary

    def add(self, frame: Frame) -> None:
        self.content += frame.kind in CONTENT_KINDS
        self.skippable += frame.kind in ("skippable", "seek_table")
        self.seekable = self.seekable or frame.kind == "seek_table"
        if frame.kind != "zstd":
            return
        self.zstd += 1
        if self.first_zstd is None:
            self.first_zstd = frame.index
        if self.widest is None or frame.window > self.widest.window:
            self.widest = frame
        if not frame.has_checksum:
            _count(self.no_checksum, frame.index)
            if frame.seek_checksum is None:
                _count(self.no_check_at_all, frame.index)
        if not frame.decodable:
            self.undecodable.add(frame.index)


def _count(counter: list[int | None], index: int) -> None:
    counter[0] += 1
    if counter[1] is None:
        counter[1] = index


class FrameLog:
    """Frames in order as a walk finds them (``add``, from any thread), and their rows as the
    stream ends them (``rows``). ``table_holds``: False once the walk has found that the seek
    table the frames were handed with does not hold for them. A plain tar's pieces have no rows
    (``with_rows``). ``on_add`` sees every frame added, as ``add`` does."""

    def __init__(self, rows_next: int = 0, with_rows: bool = True, on_add: Callable[[Frame], None] | None = None):
        self.tally = FrameTally()
        self.count = 0  # frames found
        self.rows_next = rows_next  # the first frame whose row has not left (a resume's, from its checkpoint)
        self.table_holds = True
        self.with_rows = with_rows
        self.on_add = on_add
        self._pending: collections.deque[Frame] = collections.deque()  # frames rows_next onwards
        self._lock = threading.Lock()

    @classmethod
    def of(cls, frames: list[Frame], with_rows: bool = True, on_add: Callable[[Frame], None] | None = None) -> FrameLog:
        log = cls(with_rows=with_rows, on_add=on_add)
        for frame in frames:
            log.add(frame)
        return log

    def add(self, frame: Frame, held: bool = True, again: bool = False) -> None:
        """The next frame, counted; or the last one again, walked to its end (it came first
        open); or (``again``), from a walk that took over from one that went on to the end
        without handing frames on, a frame counted before. ``held``: kept until its row leaves."""
        with self._lock:
            if self.on_add is not None and not again and frame.index >= self.count - 1:
                self.on_add(frame)
            if frame.index >= self.count:
                self.count = frame.index + 1
                self.tally.add(frame)
            if not (held and self.with_rows and frame.index >= self.rows_next):
                return
            if self._pending and self._pending[-1].index == frame.index:
                self._pending[-1] = frame
            elif not self._pending or self._pending[-1].index < frame.index:
                self._pending.append(frame)

    def skip_rows(self, rows_next: int) -> None:
        """Rows before ``rows_next`` left in an earlier run (a resume's checkpoint says)."""
        with self._lock:
            self.rows_next = rows_next
            while self._pending and self._pending[0].index < rows_next:
                self._pending.popleft()

    def rows(self, upto: int, span: tuple[int, int] | None) -> list[tuple]:
        """The frame table's rows up to frame ``upto`` (its uncompressed span, if decoded), in
        order, each once: frames between that were not decoded (skippable, seek table) have no
        span."""
        rows = []
        with self._lock:
            while self._pending and self._pending[0].index <= upto:
                frame = self.as_walked(self._pending.popleft())
                start, end = span if (span is not None and frame.index == upto) else (None, None)
                rows.append((frame.index, frame.kind, frame.offset, frame.end, frame.window, frame.content_size,
                             frame.has_checksum or frame.seek_checksum is not None, start, end))
            self.rows_next = max(self.rows_next, upto + 1)
        return rows

    def as_walked(self, frame: Frame) -> Frame:
        """A frame as the walk has it: without the seek table's word if the table does not hold."""
        if self.table_holds or (frame.seek_checksum is None and frame.seek_size is None):
            return frame
        return replace(frame, seek_checksum=None, seek_size=None)

    def unchecked(self) -> tuple[int, int | None]:
        """(how many, the first) zstd frames that nothing checks the content of."""
        count, first = self.tally.no_check_at_all if self.table_holds else self.tally.no_checksum
        return count, first

    def checksummed(self) -> int:
        return self.tally.zstd - self.unchecked()[0]

    def decodable(self, index: int | None) -> bool:
        """Whether zstd frame ``index`` is one the lanes decode."""
        return index is not None and 0 <= index < self.count and index not in self.tally.undecodable
