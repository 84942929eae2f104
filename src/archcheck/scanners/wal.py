"""PostgreSQL WAL segment names, and which segments a backup needs (formats.md 3.9). Reading
the segments themselves is the native core's (page headers, record CRCs)."""
from __future__ import annotations

import re

SEG_SIZE = 16 * 1024 * 1024
SEGMENT_NAME = re.compile(r"([0-9A-F]{8})([0-9A-F]{8})([0-9A-F]{8})(?:\.partial)?")


def segment_name_info(name: str, seg_size: int = SEG_SIZE) -> tuple[int, int] | None:
    """(timeline, segment number) for a WAL segment file name ("TTTTTTTTXXXXXXXXYYYYYYYY",
    optionally with a directory or a ``.partial`` suffix); None if it is not one."""
    m = SEGMENT_NAME.fullmatch(name.rsplit("/", 1)[-1])
    if m is None:
        return None
    per_log = 0x100000000 // seg_size
    timeline, log, seg = (int(g, 16) for g in m.groups())
    if timeline == 0 or seg >= per_log:
        return None
    return timeline, log * per_log + seg


def segment_name(timeline: int, segno: int, seg_size: int = SEG_SIZE) -> str:
    per_log = 0x100000000 // seg_size
    return f"{timeline:08X}{segno // per_log:08X}{segno % per_log:08X}"


def segments_needed(start_lsn: int, end_lsn: int, timeline: int, seg_size: int = SEG_SIZE) -> list[str]:
    """The segment file names holding the WAL from start_lsn to end_lsn on one timeline. An
    end exactly on a segment boundary belongs to the segment before (as XLByteToPrevSeg)."""
    last = end_lsn - 1 if end_lsn > start_lsn and end_lsn % seg_size == 0 else end_lsn
    return [segment_name(timeline, segno, seg_size)
            for segno in range(start_lsn // seg_size, max(start_lsn, last) // seg_size + 1)]
