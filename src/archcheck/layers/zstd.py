"""zstd layer: the frame walk (structure, no decoding) and what its results mean.

The walk itself is the native core's (formats.md 1.5): it follows block headers from frame to
frame, so frame boundaries, truncation and garbage are found before anything is decoded, and a
broken frame does not hide the ones after it. This module gives its results their Python shape.
"""
from __future__ import annotations

import struct
from dataclasses import dataclass, replace
from typing import Any, Callable

from .. import _native
from ..findings import Finding, Findings, Location
from ..codecs import UNITS

ZSTD_MAGIC = 0xFD2FB528
SKIPPABLE_MASK, SKIPPABLE_BASE = 0xFFFFFFF0, 0x184D2A50
CONTENT_KINDS = ("zstd", "raw", *UNITS)  # frames that hold content
FORMAT_WINDOW_MAX = 1 << 31  # windowLog 31: the most zstd makes or decodes (ZSTD_WINDOWLOG_MAX_64)
LARGE_WINDOW = 128 * 1024 * 1024  # libzstd's default limit; above it `zstd -d` needs --long


@dataclass(frozen=True, slots=True)  # slots: an archive can have a million frames
class Frame:
    index: int
    kind: str  # "zstd", "skippable", "seek_table", "raw" (an uncompressed pseudo-frame), or a stream codec (a whole gzip, xz, ... file)
    offset: int
    end: int  # where the next frame starts (or where a broken frame's bytes stop)
    window: int = 0
    content_size: int | None = None
    has_checksum: bool = False
    dictionary_id: int = 0
    intact: bool = True  # False when the walk found its structure broken
    seek_checksum: int | None = None  # low 32 bits of XXH64 from a seek table
    seek_size: int | None = None
    walked: bool = True  # False: its end came from pzstd's size note; the decoder walks its blocks
    window_ok: bool = True  # False: a damaged window, or one over --max-window: not decoded
    header_length: int = 0
    params: tuple[int, ...] = ()  # what its decoder needs besides the bytes (an xz block's index record)

    @property
    def decodable(self) -> bool:
        return self.kind in CONTENT_KINDS and self.dictionary_id == 0 and self.window_ok


def is_zstd_start(head: bytes) -> bool:
    if len(head) < 4:
        return False
    magic = struct.unpack_from("<I", head)[0]
    return magic == ZSTD_MAGIC or (magic & SKIPPABLE_MASK) == SKIPPABLE_BASE


SEEKABLE_FOOTER = struct.pack("<I", 0x8F92EAB1)  # the last four bytes of a seekable file


class SeekTable:
    """A seek table's word on each frame (formats.md 1.7): its entries kept as the table's own
    bytes (8 or 12 a frame), read one at a time."""

    def __init__(self, entries: bytes = b"", entry_size: int = 8, present: bool = False):
        """``present``: the file ends in a seekable footer (a table of no frames is one)."""
        self.entries, self.entry_size, self.present = entries, entry_size, present

    def __len__(self) -> int:
        return len(self.entries) // self.entry_size

    def __getitem__(self, i: int) -> tuple[int, int | None]:
        """Frame ``i``'s decompressed size, and the low 32 bits of XXH64 of its content if the
        table has checksums."""
        if not 0 <= i < len(self):
            raise IndexError(i)
        at = i * self.entry_size
        checksum = struct.unpack_from("<I", self.entries, at + 8)[0] if self.entry_size == 12 else None
        return struct.unpack_from("<I", self.entries, at + 4)[0], checksum

    def compressed_total(self) -> int:
        """The bytes of the frames the table lists."""
        return sum(struct.unpack_from("<I", self.entries, at)[0] for at in range(0, len(self.entries), self.entry_size))


SEEK_TABLE_MAGIC = 0x184D2A5E


def read_seek_table(reader: Any) -> SeekTable | None:
    """The seek table a seekable file ends in, read before the walk gets there: an empty one
    for a file without one; None unless it is whole by the rules the walk checks it by and its
    frames' sizes add up to the table's offset (the walk, run first, then says what is wrong)."""
    size = reader.size
    footer = reader.pread(size - 9, 9) if size >= 9 else b""
    if len(footer) < 9 or footer[5:] != SEEKABLE_FOOTER:
        return SeekTable()
    if size < 17:
        return None
    count, descriptor = struct.unpack_from("<IB", footer)
    entry = 12 if descriptor & 0x80 else 8
    length = 8 + count * entry + 9
    if descriptor & 0x7C or length > size:
        return None
    header = reader.pread(size - length, 8)  # first: a damaged count must not read a whole object
    if len(header) != 8 or struct.unpack("<II", header) != (SEEK_TABLE_MAGIC, length - 8):
        return None
    data = header + reader.pread(size - length + 8, length - 8)
    if len(data) != length:
        return None
    table = SeekTable(data[8:8 + count * entry], entry, present=True)
    # frames that do not fill the file up to the table: the walk may find the table at odds
    # with them, and then it says nothing of any frame
    return table if table.compressed_total() == size - length else None


def walk_frames(reader: Any, uri: str, max_window: int, findings: Findings) -> list[Frame]:
    """Every frame of a zstd file; the walk's findings go to ``findings``. ``reader``: pread
    and size (the core asks it for the bytes it needs)."""
    frames, found = _native.walk_frames(reader, max_window)
    _walk_findings(found, uri, findings)
    return [Frame(*f) for f in frames]


def hand_frames_on(reader: Any, uri: str, max_window: int, findings: Findings, seek: SeekTable,
                   on_frame: Callable[[Frame, int, bool], None], start: Frame | None = None) -> bool:
    """Walk a zstd file's frames, handing each to ``on_frame`` as it is found, with the number
    of findings made so far and True; a zstd frame without a size note comes first open, before
    its blocks are walked, with False and the file's end as its end. None is kept, and the
    frames carry nothing of a seek table: returns whether the table the file ends in (``seek``,
    read first) holds for them. What ``on_frame`` raises ends the walk. ``start``: a frame to
    begin at, as another walk found it (this walk then checks no seek table)."""
    def hand_on(row: tuple, found: int, whole: bool) -> None:
        frame = Frame(*row)
        on_frame(frame if whole else replace(frame, end=reader.size), found, whole)

    begin = (start.offset, start.index) if start is not None else (0, 0)
    found, table_holds = _native.hand_frames_on(reader, max_window, seek.present, hand_on, begin)
    _walk_findings(found, uri, findings)
    return table_holds


def _walk_findings(found: list[tuple], uri: str, findings: Findings) -> None:
    for code, start, end, frame, details in found:
        findings.append(Finding.of(code, Location(uri, byte_range=(start, end), frame=frame), **details))


def unwalked_problem(reader: Any, frame: Frame) -> tuple | None:
    """The block walk of a frame whose end came from pzstd's size note: (code, start, end,
    details), or None when its blocks end exactly there."""
    return _native.unwalked_problem(reader, frame.offset, frame.end)
