"""The segment plan: deterministic byte ranges of the archive, each with a nonce (pure)."""
from __future__ import annotations

import secrets
from dataclasses import dataclass

from .errors import UsageError
from .layers import LEAF_SIZE

MiB = 1024 * 1024
DEFAULT_SEGMENT_SIZE = 64 * MiB


@dataclass(frozen=True)
class Segment:
    index: int
    offset: int
    length: int
    nonce: str


def new_nonce() -> str:
    return secrets.token_hex(8)


def check_segment_size(segment_size: int) -> int:
    if segment_size <= 0 or segment_size % LEAF_SIZE:
        raise UsageError(f"--segment-size must be a positive multiple of {LEAF_SIZE // MiB} MiB "
                         f"(the tree's leaf size), got {segment_size} bytes")
    return segment_size


def plan_segments(size: int, segment_size: int) -> list[Segment]:
    """Segments [i*S, min((i+1)*S, size)), each with a fresh nonce."""
    check_segment_size(segment_size)
    count = max(1, -(-size // segment_size))
    return [Segment(i, i * segment_size, min(segment_size, size - i * segment_size), new_nonce())
            for i in range(count)]


def segments_overlapping(segments: list[Segment], start: int, end: int) -> list[Segment]:
    if not segments:
        return []
    size = segments[0].length
    first, last = start // size, max(start, end - 1) // size
    return segments[first:last + 1]
