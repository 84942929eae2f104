"""The blocks of a bzip2 file, found by their magic (formats.md 7), so they decode in parallel
and a resumed check goes on at a block.

bzip2 records nowhere where its blocks start: the core scans the file for the 48-bit block and
end-of-stream magics (as lbzip2 and bzip2recover do). The walk trusts what it found only when
every stream starts with its header, its first block right after it, and the CRC-32s of its
blocks combine to the CRC its end marker holds: a magic found by chance inside compressed data,
or a damaged block CRC, breaks that, and the file is then decoded stream after stream as
`bzip2 -d` reads it, libbzip2 naming the damage.
"""
from __future__ import annotations

from typing import Any

from .. import _native
from .zstd import Frame

SCAN_PIECE = 16 * 1024 * 1024
MAX_MARKS = 1 << 20  # more magics than this decode as whole streams, in bounded memory
HEADER_BITS = 32  # "BZh" and the level digit
END_BITS = 48 + 32  # the end-of-stream magic and the combined CRC


def walk_blocks(reader: Any) -> list[Frame] | None:
    """Frames of kind "bzip2-block", one per block, in file order (a file of one block too: a
    block's output is checked before the walk sees it, a whole stream's is not); None when the
    blocks cannot be trusted."""
    marks = _scan(reader)
    if marks is None:
        return None
    frames: list[Frame] = []
    pos, i = 0, 0
    while pos < reader.size:
        header = reader.pread(pos, 4)
        if len(header) < 4 or header[:3] != b"BZh" or not 0x31 <= header[3] <= 0x39:
            return None  # bytes after the last stream: the whole decode says what they are
        blocks = []
        while i < len(marks) and not marks[i][0]:
            blocks.append(marks[i])
            i += 1
        if i == len(marks) or (blocks[0] if blocks else marks[i])[1] != pos * 8 + HEADER_BITS:
            return None
        end_bit, stored = marks[i][1], marks[i][2]
        i += 1
        if _combined([crc for _, _, crc in blocks]) != stored:
            return None
        for k, (_, bit, crc) in enumerate(blocks):
            following = blocks[k + 1][1] if k + 1 < len(blocks) else end_bit
            frames.append(Frame(len(frames), "bzip2-block", bit // 8, -(-following // 8),
                                params=(header[3] - 0x30, bit % 8, following - bit, crc, len(frames))))
        pos = -(-(end_bit + END_BITS) // 8)
    if i != len(marks):
        return None
    return frames


def _scan(reader: Any) -> list[tuple[bool, int, int]] | None:
    scan = _native.Bzip2Scan()
    for offset in range(0, reader.size, SCAN_PIECE):
        piece = reader.pread(offset, min(SCAN_PIECE, reader.size - offset))
        if not piece:
            return None
        scan.feed(piece)
        if scan.count > MAX_MARKS:
            return None
    return scan.marks


def _combined(crcs: list[int]) -> int:
    """The stream's CRC from its blocks' CRCs, as bzip2 combines them."""
    combined = 0
    for crc in crcs:
        combined = (((combined << 1) | (combined >> 31)) & 0xFFFFFFFF) ^ crc
    return combined
