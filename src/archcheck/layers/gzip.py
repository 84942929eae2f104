"""BGZF files (bgzip, htslib, samtools; formats.md 7): gzip members of at most 64 KiB of
output, each holding its own compressed length in a "BC" subfield of its extra field. The
members are found without decoding, so runs of them decode in parallel, each run a frame of
its own (kind "gzip-members") and a resumed check goes on at a run.

The walk trusts nothing else: a member without the subfield, or lengths that do not walk to
the file's end exactly (damage, a cut, bytes appended), and the file decodes member after
member as `gzip -d` reads it, the decoder naming the damage. Any other gzip file has no
lengths to walk and is decoded that way too (its members on two threads: relay.py).
"""
from __future__ import annotations

import struct
from dataclasses import dataclass
from typing import Any

from .. import _native
from .zstd import Frame

GROUP = 4 * 1024 * 1024  # compressed bytes of members per frame, at least
MAX_FRAMES = 1 << 16  # larger files get larger runs: the frame table stays bounded
PIECE = 8 * 1024 * 1024  # read at a time by the walk
FIXED = 12  # magic, method, flags, mtime, extra flags, OS, XLEN
FEXTRA = 0x04


@dataclass(frozen=True)
class DeflateBlock:
    """The deflate block a gzip member failed in: its number in the member, its type, the
    archive byte holding its first bit, and the member's output before it."""

    index: int
    kind: str  # "stored", "fixed Huffman", "dynamic Huffman", "reserved type 3", or not read
    start: int
    output: int


def deflate_block(reader: Any, member_start: int, failed_at: int, stop: Any) -> DeflateBlock | None:
    """The block a member's inflate failed in: its blocks walked again from the member's first
    byte to where the inflater stopped (zlib-rs does not say where blocks begin). Where a
    flipped bit ended a block early, the walk fails where zlib did, in the block read after it.
    None if the walk ends before that (the member's deflate data is whole to the walk), or
    ``stop`` (an Event) is set first."""
    walk = _native.DeflateBlocks()
    pos = member_start
    while pos < failed_at and not walk.stopped:
        if stop.is_set():
            return None
        data = reader.pread(pos, min(PIECE, failed_at - pos))
        if not data:
            break
        walk.feed(data)
        pos += len(data)
    walk.finish()
    if walk.located is None:
        return None
    index, kind, start, output = walk.located
    return DeflateBlock(index, kind, member_start + start, output)


def walk_members(reader: Any) -> list[Frame] | None:
    """Frames of kind "gzip-members", runs of whole BGZF members in file order; None when the
    file is not BGZF from start to end, or its members make one run only."""
    size = reader.size
    group = max(GROUP, -(-size // MAX_FRAMES))
    frames: list[Frame] = []
    piece_start, piece = 0, b""
    pos = run_start = run_first = index = 0
    while pos < size:
        if pos + FIXED > piece_start + len(piece):
            piece_start, piece = pos, reader.pread(pos, min(PIECE, size - pos))
        length = _member_length(piece, pos - piece_start)
        if length is None and pos - piece_start > 0:  # its extra field runs past the piece: read on from it
            piece_start, piece = pos, reader.pread(pos, min(PIECE, size - pos))
            length = _member_length(piece, 0)
        if length is None or pos + length > size:
            return None
        pos += length
        index += 1
        if pos - run_start >= group or pos == size:
            frames.append(Frame(len(frames), "gzip-members", run_start, pos, params=(run_first,)))
            run_start, run_first = pos, index
    return frames if len(frames) > 1 else None


def _member_length(data: bytes, at: int) -> int | None:
    """The whole length of the BGZF member whose header starts at ``at`` (its BSIZE + 1), or
    None when no such header is whole there."""
    if len(data) < at + FIXED or data[at:at + 3] != b"\x1f\x8b\x08" or not data[at + 3] & FEXTRA:
        return None
    (xlen,) = struct.unpack_from("<H", data, at + 10)
    extra, end = at + FIXED, at + FIXED + xlen
    if len(data) < end:
        return None
    while extra + 4 <= end:
        si1, si2, slen = data[extra], data[extra + 1], struct.unpack_from("<H", data, extra + 2)[0]
        if (si1, si2, slen) == (66, 67, 2) and extra + 6 <= end:  # "BC": BSIZE, the member's length - 1
            return struct.unpack_from("<H", data, extra + 4)[0] + 1
        extra += 4 + slen
    return None
