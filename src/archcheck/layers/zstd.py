"""zstd layer: the frame walk (structure, no decoding) and decoder error classification.

The walk follows the format's block headers from frame to frame (formats.md 1.5), so frame
boundaries, truncation and garbage are found before anything is decoded, and a broken frame
does not hide the ones after it: the walk resynchronises at the next frame magic.
"""
from __future__ import annotations

import struct
from dataclasses import dataclass, replace
from typing import Protocol

from ..errors import format_size
from ..findings import Finding, Findings, Location

ZSTD_MAGIC = 0xFD2FB528
ZSTD_MAGIC_BYTES = b"\x28\xb5\x2f\xfd"
SKIPPABLE_MASK, SKIPPABLE_BASE = 0xFFFFFFF0, 0x184D2A50
SEEK_TABLE_MAGIC, SEEKABLE_FOOTER_MAGIC = 0x184D2A5E, 0x8F92EAB1
LEGACY_MAGICS = {0xFD2FB522 + i for i in range(6)} | {0x1EB52FFD}
BLOCK_SIZE_MAX = 1 << 17
DEFAULT_MAX_WINDOW = 1 << 31
FORMAT_WINDOW_MAX = 1 << 31  # windowLog 31: the most zstd makes or decodes (ZSTD_WINDOWLOG_MAX_64)
LARGE_WINDOW = 128 * 1024 * 1024  # libzstd's default limit; above it `zstd -d` needs --long


class Reader(Protocol):
    size: int

    def pread(self, offset: int, length: int) -> bytes: ...

    def find(self, needle: bytes, start: int, end: int) -> int: ...


@dataclass(frozen=True, slots=True)  # slots: an archive can have a million frames
class Frame:
    index: int
    kind: str  # "zstd", "skippable", "seek_table", "raw" (an uncompressed pseudo-frame)
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

    @property
    def decodable(self) -> bool:
        return self.kind in ("zstd", "raw") and self.dictionary_id == 0 and self.window_ok


def is_zstd_start(head: bytes) -> bool:
    if len(head) < 4:
        return False
    magic = struct.unpack_from("<I", head)[0]
    return magic == ZSTD_MAGIC or (magic & SKIPPABLE_MASK) == SKIPPABLE_BASE


@dataclass
class _Header:
    length: int
    window: int
    content_size: int | None
    has_checksum: bool
    dictionary_id: int
    reserved_bit: bool


def parse_frame_header(head: bytes) -> _Header | None:
    """Parse magic + frame header; None when ``head`` is too short to hold it."""
    if len(head) < 5:
        return None
    fhd = head[4]
    single, did_flag, fcs_flag = (fhd >> 5) & 1, fhd & 3, fhd >> 6
    pos = 5
    window = 0
    if not single:
        if len(head) < 6:
            return None
        wd = head[5]
        base = 1 << (10 + (wd >> 3))
        window = base + (base >> 3) * (wd & 7)
        pos = 6
    did_size = (0, 1, 2, 4)[did_flag]
    fcs_size = (1 if single else 0, 2, 4, 8)[fcs_flag]
    if len(head) < pos + did_size + fcs_size:
        return None
    dictionary_id = int.from_bytes(head[pos:pos + did_size], "little")
    pos += did_size
    content_size = None
    if fcs_size:
        content_size = int.from_bytes(head[pos:pos + fcs_size], "little") + (256 if fcs_size == 2 else 0)
    if single:
        window = content_size or 0
    return _Header(pos + fcs_size, window, content_size, bool(fhd & 4), dictionary_id, bool(fhd & 8))


class FrameWalk:
    """Walks every frame of a zstd file; collects frames and structural findings."""

    def __init__(self, reader: Reader, uri: str, max_window: int = DEFAULT_MAX_WINDOW,
                 findings: Findings | None = None):
        self.reader, self.uri, self.max_window = reader, uri, max_window
        self.frames: list[Frame] = []
        self.findings = Findings() if findings is None else findings
        self.size_hint: tuple[int, int] | None = None  # (frame start, compressed size) from pzstd

    def run(self) -> tuple[list[Frame], Findings]:
        pos, size = 0, self.reader.size
        while pos < size:
            head = self.reader.pread(pos, 18)
            magic = struct.unpack_from("<I", head)[0] if len(head) >= 4 else None
            if magic == ZSTD_MAGIC:
                pos = self._zstd_frame(pos, head)
            elif magic is not None and (magic & SKIPPABLE_MASK) == SKIPPABLE_BASE:
                pos = self._skippable(pos, head, magic)
            else:
                pos = self._garbage(pos, magic)
        self._check_seek_table()
        return self.frames, self.findings

    def _find(self, code: str, start: int, end: int, frame: int | None = None, **details) -> None:
        loc = Location(self.uri, byte_range=(start, end), frame=frame)
        self.findings.append(Finding.of(code, loc, **details))

    def _next_magic(self, start: int) -> int:
        found = self.reader.find(ZSTD_MAGIC_BYTES, start, self.reader.size)
        return self.reader.size if found < 0 else found

    def _garbage(self, pos: int, magic: int | None) -> int:
        nxt = self._next_magic(pos + 1)
        if magic in LEGACY_MAGICS:
            self._find("ZSTD_LEGACY_FRAME", pos, nxt, frame=len(self.frames))
        elif nxt >= self.reader.size:
            self._find("ZSTD_TRAILING_GARBAGE", pos, nxt, length=nxt - pos)
        else:
            self._find("ZSTD_BAD_MAGIC", pos, nxt, detail=f"{nxt - pos} bytes of unknown data before the next frame")
        return nxt

    def _skippable(self, pos: int, head: bytes, magic: int) -> int:
        index = len(self.frames)
        if len(head) < 8:
            self._find("ZSTD_TRUNCATED_FRAME", pos, self.reader.size, frame=index)
            return self.reader.size
        end = pos + 8 + struct.unpack_from("<I", head, 4)[0]
        if end > self.reader.size:
            self._find("ZSTD_TRUNCATED_FRAME", pos, self.reader.size, frame=index)
            end = self.reader.size
        kind = "seek_table" if magic == SEEK_TABLE_MAGIC and end == self.reader.size and \
            self.reader.pread(end - 4, 4) == struct.pack("<I", SEEKABLE_FOOTER_MAGIC) else "skippable"
        self.frames.append(Frame(index, kind, pos, end))
        if magic == SKIPPABLE_BASE and end - pos == 12:  # pzstd's note of the next frame's size
            self.size_hint = (end, struct.unpack_from("<I", head, 8)[0])
        return end

    def _zstd_frame(self, pos: int, head: bytes) -> int:
        index = len(self.frames)
        header = parse_frame_header(head)
        if header is None:
            self._find("ZSTD_TRUNCATED_FRAME", pos, self.reader.size, frame=index)
            return self.reader.size
        frame = Frame(index, "zstd", pos, pos, header.window, header.content_size,
                      header.has_checksum, header.dictionary_id, window_ok=self._window_ok(pos, header, index))
        if header.reserved_bit:
            self._find("ZSTD_RESERVED_BIT", pos, pos + header.length, frame=index)
            end = self._next_magic(pos + 1)
            self.frames.append(replace(frame, end=end, intact=False))
            return end
        hinted = self._hinted_end(pos)
        if hinted is not None:  # the decoding thread walks its blocks, in parallel
            end, intact = hinted, True
            frame = replace(frame, walked=False)
        else:
            end, intact = self._walk_blocks(pos + header.length, header, index)
        self.frames.append(replace(frame, end=end, intact=intact))
        if frame.dictionary_id:
            self._find("ZSTD_DICTIONARY_REQUIRED", pos, end, frame=index, dictionary_id=frame.dictionary_id)
        return end

    def _window_ok(self, pos: int, header: _Header, index: int) -> bool:
        """A window no encoder would write is header damage (corruption); a plausible one over
        --max-window is a question of memory, and leaves the frame unverified."""
        window, content = header.window, header.content_size
        why = None
        if window > FORMAT_WINDOW_MAX:
            why = f"beyond what zstd makes or decodes ({format_size(FORMAT_WINDOW_MAX)}, windowLog 31)"
        elif content is not None and window > max(content, LARGE_WINDOW):
            # zstd sizes the window to the content when it knows the size (formats.md 1.3)
            why = f"while the frame holds {format_size(content)}: no encoder asks for more than its content"
        if why is not None:
            self._find("ZSTD_BAD_WINDOW", pos, pos + header.length, frame=index, window=format_size(window), why=why)
            return window <= self.max_window and window <= FORMAT_WINDOW_MAX
        if window > self.max_window:
            self._find("ZSTD_WINDOW_OVER_LIMIT", pos, pos + header.length, frame=index, window=format_size(window),
                       limit=format_size(self.max_window))
            return False
        return True

    def _hinted_end(self, pos: int) -> int | None:
        """The end pzstd noted for the frame at ``pos``, if it leads to the next frame or to the
        end of the file. The block walk then moves to the decoding thread, off the critical path."""
        hint, self.size_hint = self.size_hint, None
        if hint is None or hint[0] != pos:
            return None
        end = pos + hint[1]
        if end == self.reader.size or (end < self.reader.size and is_zstd_start(self.reader.pread(end, 4))):
            return end
        return None

    def _walk_blocks(self, p: int, header: _Header, index: int) -> tuple[int, bool]:
        end, problem = walk_blocks(self.reader, p, header.window, header.has_checksum)
        if problem is None:
            return end, True
        code, start, stop, details = problem
        self._find(code, start, stop, frame=index, **details)
        return (self.reader.size if code == "ZSTD_TRUNCATED_FRAME" else self._next_magic(stop)), False

    def _check_seek_table(self) -> None:
        """Seekable format (formats.md 1.7): the table must describe the frames before it."""
        if not self.frames or self.frames[-1].kind != "seek_table":
            return
        table = self.frames[-1]
        data = self.reader.pread(table.offset, table.end - table.offset)
        count, descriptor = struct.unpack_from("<IB", data, len(data) - 9)
        entry_size = 12 if descriptor & 0x80 else 8
        problem = None
        if descriptor & 0x7C:
            problem = "reserved bits set in the seek table descriptor"
        elif 8 + count * entry_size + 9 != len(data):
            problem = f"table of {count} entries does not fit its frame"
        data_frames = self.frames[:-1]
        if problem is None and count != len(data_frames):
            problem = f"table lists {count} frames, the file has {len(data_frames)}"
        if problem:
            self._find("ZSTD_SEEK_TABLE_MISMATCH", table.offset, table.end, frame=table.index, detail=problem)
            return
        for i, frame in enumerate(data_frames):
            csize, dsize = struct.unpack_from("<II", data, 8 + i * entry_size)
            checksum = struct.unpack_from("<I", data, 16 + i * entry_size)[0] if entry_size == 12 else None
            if csize != frame.end - frame.offset:
                self._find("ZSTD_SEEK_TABLE_MISMATCH", frame.offset, frame.end, frame=frame.index,
                           detail=f"frame is {frame.end - frame.offset} bytes, table says {csize}")
            self.frames[i] = replace(frame, seek_checksum=checksum, seek_size=dsize)


BlockProblem = tuple  # (code, start, end, details): a structural finding, not yet placed


def walk_blocks(reader: Reader, p: int, window: int, has_checksum: bool) -> tuple[int, BlockProblem | None]:
    """Follow a frame's block headers from ``p`` (formats.md 1.5): (frame end, None), or
    (where the walk stopped, the problem)."""
    size = reader.size
    block_max = min(window, BLOCK_SIZE_MAX)
    block = 0
    while True:
        raw = reader.pread(p, 3)
        if len(raw) < 3:
            return size, ("ZSTD_TRUNCATED_FRAME", p, size, {})
        h = int.from_bytes(raw, "little")
        last, btype, bsize = h & 1, (h >> 1) & 3, h >> 3
        if btype == 3:
            return p, ("ZSTD_RESERVED_BLOCK", p, p + 3, {"block": block})
        if bsize > block_max:
            return p, ("ZSTD_BLOCK_TOO_LARGE", p, p + 3, {"block": block, "size": bsize, "limit": block_max})
        p += 3 + (1 if btype == 1 else bsize)
        if p > size:
            return size, ("ZSTD_TRUNCATED_FRAME", p - bsize - 3, size, {})
        block += 1
        if last:
            break
    if has_checksum:
        if p + 4 > size:
            return size, ("ZSTD_TRUNCATED_FRAME", p, size, {})
        p += 4
    return p, None


def unwalked_problem(reader: Reader, frame: Frame) -> BlockProblem | None:
    """The block walk of a frame whose end came from a size note: it must end exactly there."""
    header = parse_frame_header(reader.pread(frame.offset, 18))
    if header is None:  # the file no longer holds the header the walk saw
        return "ZSTD_TRUNCATED_FRAME", frame.offset, reader.size, {}
    end, problem = walk_blocks(reader, frame.offset + header.length, header.window, header.has_checksum)
    if problem is None and end != frame.end:
        return "ZSTD_SIZE_NOTE_MISMATCH", frame.offset, frame.end, {
            "noted": frame.end - frame.offset, "actual": end - frame.offset}
    return problem


def classify_decode_error(message: str) -> str:
    """Map a libzstd error message to a finding code."""
    return "ZSTD_CHECKSUM_MISMATCH" if "checksum" in message.lower() else "ZSTD_DECODE_ERROR"
