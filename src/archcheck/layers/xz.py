"""The blocks of an xz file, read from the index at the end of each stream (formats.md 7), so a
file of many blocks (`xz -T0`, pixz) decodes its blocks in parallel and resumes at a block.

The walk reads the footers, indexes and stream headers, and checks their CRC-32s, magic
bytes and flags and that the blocks the index lists fill the stream exactly; in a local file
it reads each block's header too, and where one that holds states its sizes (xz -T writes
them), they must be its record's. When anything there is not so, there are no blocks to
trust: the file is decoded stream after stream, as `xz -d` reads it, and liblzma names the
damage.
"""
from __future__ import annotations

import itertools
import struct
import zlib
from typing import Any

from .zstd import Frame

HEADER_MAGIC = b"\xfd7zXZ\x00"
FOOTER_MAGIC = b"YZ"
HEADER = FOOTER = 12
MAX_INDEX = 16 * 1024 * 1024  # an index this large would list millions of blocks
MAX_FOOTER_SEARCH = 1024 * 1024  # the largest index looked for before a damaged footer
MAX_FOOTER_CANDIDATES = 64  # footers (or index sizes) tried, so that hostile bytes cost little
MAX_BLOCKS = 1 << 20  # more than this (24 TiB in xz -T0's blocks) decode as whole streams, in bounded memory
PADDING_PIECE = 64 * 1024
CHECK_NONE = 0
KNOWN_CHECKS = (1, 4, 10)  # CRC-32, CRC-64, SHA-256; the other IDs are reserved
CHECK_SIZES = (0, 4, 4, 4, 8, 8, 8, 16, 16, 16, 32, 32, 32, 64, 64, 64)  # bytes, by check ID
MAX_BLOCK_HEADER = 1024


class NotWalkable(Exception):
    """The structure at the end of the file is not a clean xz stream's."""


def walk_blocks(reader: Any) -> list[Frame] | None:
    """Frames of kind "xz-block", one per block, in file order; None when the file has one
    block only or its streams cannot be walked from their indexes."""
    try:
        streams = _streams(reader)
    except NotWalkable:
        return None
    if getattr(reader, "small_reads_cheap", False) and not all(
            _headers_agree(reader, start + HEADER, check, records) for check, start, records in streams):
        return None  # an index that lies, its CRC-32 made anew: liblzma names it, reading the stream whole
    frames: list[Frame] = []
    for check, start, records in streams:
        offset = start + HEADER
        for unpadded, uncompressed in records:
            padded = _padded(unpadded)
            frames.append(Frame(len(frames), "xz-block", offset, offset + padded, content_size=uncompressed,
                                params=(check, unpadded, uncompressed, len(frames))))
            offset += padded
    return frames if len(frames) > 1 else None


def unchecked(frames: list[Frame], reader: Any) -> list[tuple[str, int, tuple[int, int]]]:
    """(code, check type, byte range) for the first block of each kind that liblzma cannot
    check, "XZ_NO_CHECK" (none written) or "XZ_UNSUPPORTED_CHECK" (a reserved check type): of
    every block the walk found, else of the first stream, from its header."""
    checks = [(frame.params[0], (frame.offset, frame.end)) for frame in frames if frame.kind == "xz-block"]
    if not checks:
        head = reader.pread(0, 8)
        checks = [(head[7] & 0x0F, (0, HEADER))] if len(head) == 8 and head[:6] == HEADER_MAGIC else []
    said: dict[str, tuple[int, tuple[int, int]]] = {}
    for check, where in checks:
        if check not in KNOWN_CHECKS:
            said.setdefault("XZ_NO_CHECK" if check == CHECK_NONE else "XZ_UNSUPPORTED_CHECK", (check, where))
    return sorted(((code, check, where) for code, (check, where) in said.items()), key=lambda finding: finding[2])


def damaged_structure(reader: Any, start: int, stop: int) -> tuple[str, tuple[int, int]] | None:
    """What stopped liblzma at ``stop`` in the stream that begins at ``start``, when the
    stream's own structure says it was its index or its footer: ("XZ_BAD_INDEX" or
    "XZ_BAD_FOOTER", byte range). None when it does not say (the damage is in a block, or
    more than one part is damaged)."""
    if (footer := damaged_footer(reader, start, stop)) is not None:
        return "XZ_BAD_FOOTER", footer
    if (index := damaged_index(reader, start, stop)) is not None:
        return "XZ_BAD_INDEX", index
    return None


def damaged_index(reader: Any, start: int, stop: int) -> tuple[int, int] | None:
    """The index's byte range, when liblzma stopped inside it and it does not hold: the first
    footer after the stop holds and points to an index that begins before the stop, and that
    index does not parse, fails its CRC-32 or lists blocks that do not fill the stream. liblzma
    reads the index only once every block has decoded and passed its check (a bad check stops
    it where the index begins). A block that damage makes run on into a whole index is not the
    index's: None then, as whenever the structure does not say."""
    first = max(0, stop - FOOTER)
    try:
        flags = _header(_read(reader, start, HEADER))
        window = _read(reader, first, min(reader.size - first, MAX_INDEX + 2 * FOOTER))
    except NotWalkable:
        return None
    at = window.find(FOOTER_MAGIC, FOOTER - 2)
    for _ in range(MAX_FOOTER_CANDIDATES):
        if flags is None or at == -1:
            return None
        footer = _footer(window[at + 2 - FOOTER:at + 2])
        if footer is not None and footer[1] == flags:  # the stream's footer: it decides
            footer_at = first + at + 2 - FOOTER
            index_start = footer_at - footer[0]
            if not (footer[0] <= MAX_INDEX and start + HEADER < index_start < stop <= footer_at):
                return None
            return None if _index_fills(reader, start, flags, index_start, footer_at) else (index_start, footer_at)
        at = window.find(FOOTER_MAGIC, at + 1)
    return None


def damaged_footer(reader: Any, start: int, end: int) -> tuple[int, int] | None:
    """The footer's byte range, when it is what stopped liblzma at ``end`` in the stream that
    begins at ``start``: the footer there does not hold, and a whole index ends where it begins,
    listing blocks that fill the stream from a whole header exactly. liblzma checks each block
    and then the index against them before it reads the footer, so nothing else stops it there;
    every block's content came out checked. None when that is not so (the usual answer).

    The index's size is the footer's, unless that field is the damage: then it is a size whose
    CRC-32 with the stream's flags is the footer's (one field damaged, the others hold)."""
    footer_at = end - FOOTER
    if footer_at - 8 < start + HEADER:
        return None
    try:
        footer = _read(reader, footer_at, FOOTER)
        flags = _header(_read(reader, start, HEADER))
    except NotWalkable:
        return None
    if _footer(footer) is not None or flags is None:
        return None
    crc, backward = struct.unpack_from("<II", footer)
    sizes = itertools.chain([(backward + 1) * 4], (
        size for size in range(8, min(MAX_FOOTER_SEARCH, footer_at - start - HEADER) + 1, 4)
        if zlib.crc32(struct.pack("<I", size // 4 - 1) + flags) == crc))
    for size in itertools.islice(sizes, MAX_FOOTER_CANDIDATES):
        if size <= min(MAX_INDEX, footer_at - start - HEADER) and _index_fills(reader, start, flags, footer_at - size, footer_at):
            return footer_at, end
    return None


def _index_fills(reader: Any, start: int, flags: bytes, index_start: int, index_end: int) -> bool:
    """Whether [index_start, index_end) is an index that holds and lists blocks that fill the
    stream from its header (at ``start``, with ``flags``) to where the index begins, as their
    headers say (in a local file: remote, reading every header would fetch most of the stream
    again)."""
    try:
        records = _index_records(_read(reader, index_start, index_end - index_start))
    except NotWalkable:
        return False
    return (start + HEADER + _blocks_size(records) == index_start
            and (not getattr(reader, "small_reads_cheap", False)
                 or _headers_agree(reader, start + HEADER, flags[1], records)))


def _headers_agree(reader: Any, offset: int, check: int, records: list[tuple[int, int]]) -> bool:
    """False when a block header that holds (its CRC-32) states sizes (xz -T writes them) that
    its index record does not: the index lies. A header that does not hold is the block's
    damage, for its decoding to name; one that states no sizes says nothing."""
    for unpadded, uncompressed in records:
        # (read whole whatever the record says: a record shorter than the header is a lie too)
        header = _block_header(reader.pread(offset, MAX_BLOCK_HEADER), check)
        if header is not None:
            length, stated = header
            if length + CHECK_SIZES[check] >= unpadded or any(
                    size is not None and size != recorded for size, recorded in zip(stated, (unpadded, uncompressed))):
                return False
        offset += _padded(unpadded)
    return True


def _block_header(block: bytes, check: int) -> tuple[int, tuple[int | None, int | None]] | None:
    """(its length, (unpadded size, uncompressed size)) of a block header that holds at the
    start of ``block``, each size None when not stated; None when it does not hold."""
    size = (block[0] + 1) * 4 if block and block[0] else 0
    header = block[:size]
    if size == 0 or len(header) < size or zlib.crc32(header[:-4]) != struct.unpack_from("<I", header, size - 4)[0]:
        return None
    flags, at = header[1], 2
    try:
        compressed, at = _variable_length(header, at) if flags & 0x40 else (None, at)
        uncompressed, at = _variable_length(header, at) if flags & 0x80 else (None, at)
    except NotWalkable:
        return None
    return size, (None if compressed is None else size + compressed + CHECK_SIZES[check], uncompressed)


def _padded(unpadded: int) -> int:
    """A block's size in the file: its unpadded size rounded up to four bytes."""
    return -(-unpadded // 4) * 4


def _blocks_size(records: list[tuple[int, int]]) -> int:
    """The bytes the blocks an index lists take in the file."""
    return sum(_padded(unpadded) for unpadded, _ in records)


def _footer(footer: bytes) -> tuple[int, bytes] | None:
    """(index size, stream flags) of a footer that holds: magic, CRC-32, flags."""
    crc, backward, flags, magic = struct.unpack("<II2s2s", footer)
    if magic != FOOTER_MAGIC or zlib.crc32(footer[4:10]) != crc or flags[0] != 0 or flags[1] > 0x0F:
        return None
    return (backward + 1) * 4, flags


def _header(header: bytes) -> bytes | None:
    """The stream flags of a header that holds: magic, CRC-32."""
    if header[:6] != HEADER_MAGIC or zlib.crc32(header[6:8]) != struct.unpack_from("<I", header, 8)[0]:
        return None
    return header[6:8]


def _streams(reader: Any) -> list[tuple[int, int, list[tuple[int, int]]]]:
    """(check type, stream start, index records) of every stream, first to last."""
    streams = []
    end, blocks = reader.size, 0
    while end > 0:
        end = _skip_padding(reader, end)
        check, start, records = _stream_ending_at(reader, end)
        blocks += len(records)
        if blocks > MAX_BLOCKS:
            raise NotWalkable
        streams.append((check, start, records))
        end = start
    streams.reverse()
    return streams


def _skip_padding(reader: Any, end: int) -> int:
    """Stream padding (zero bytes, a multiple of four) before ``end``."""
    while end > 0:
        piece = _read(reader, max(0, end - PADDING_PIECE), min(end, PADDING_PIECE))
        zeros = len(piece) - len(piece.rstrip(b"\x00"))
        end -= zeros // 4 * 4
        if zeros < len(piece) or zeros % 4:
            return end  # an odd count: the footer check after it fails, and the stream decodes whole
    return end


def _stream_ending_at(reader: Any, end: int) -> tuple[int, int, list[tuple[int, int]]]:
    if end < HEADER + FOOTER:
        raise NotWalkable
    footer = _footer(_read(reader, end - FOOTER, FOOTER))
    if footer is None:
        raise NotWalkable
    index_size, flags = footer
    index_start = end - FOOTER - index_size
    if index_size > MAX_INDEX or index_start < HEADER:
        raise NotWalkable
    records = _index_records(_read(reader, index_start, index_size))
    start = index_start - _blocks_size(records) - HEADER
    if start < 0 or _header(_read(reader, start, HEADER)) != flags:
        raise NotWalkable
    return flags[1], start, records


def _index_records(index: bytes) -> list[tuple[int, int]]:
    """(unpadded size, uncompressed size) of each block the index lists."""
    if index[:1] != b"\x00":
        raise NotWalkable
    at = 1
    count, at = _variable_length(index, at)
    if count > min(MAX_BLOCKS, len(index) // 2):  # a record takes two bytes at least
        raise NotWalkable
    records = []
    for _ in range(count):
        unpadded, at = _variable_length(index, at)
        uncompressed, at = _variable_length(index, at)
        if unpadded == 0:
            raise NotWalkable
        records.append((unpadded, uncompressed))
    if index[at:-4] != bytes(len(index) - 4 - at) or (len(index) - 4 - at) >= 4:
        raise NotWalkable  # the index padding: zeros, fewer than four
    if zlib.crc32(index[:-4]) != struct.unpack_from("<I", index, len(index) - 4)[0]:
        raise NotWalkable  # checked last: bytes that are no index mostly fail the cheaper checks first
    return records


def _variable_length(data: bytes, at: int) -> tuple[int, int]:
    value = shift = 0
    for i in range(9):  # xz's integers take at most nine bytes
        if at >= len(data) - 4:
            raise NotWalkable
        byte = data[at]
        at += 1
        if byte == 0 and i > 0:
            raise NotWalkable  # not the shortest encoding, which xz requires
        value |= (byte & 0x7F) << shift
        shift += 7
        if byte < 0x80:
            return value, at
    raise NotWalkable


def _read(reader: Any, offset: int, length: int) -> bytes:
    data = reader.pread(offset, length)
    if len(data) != length:
        raise NotWalkable
    return data
