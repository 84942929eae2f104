"""How this implementation answers the oracle (tests/oracle.py): every layer over one archive's
bytes, in process, as canonical data."""
from __future__ import annotations

from archcheck.errors import ArchcheckError
from archcheck.layers import raw
from archcheck.layers.detect import detect_format
from archcheck.layers.stream import StreamCheck
from archcheck.scanners import ScanConfig

import json

import blake3


class BytesReader:
    """The RangeReader protocol over bytes."""

    def __init__(self, data: bytes):
        self.data, self.size = data, len(data)

    def pread(self, offset: int, length: int) -> bytes:
        return self.data[offset:offset + length]

    read_in_place = pread

    def readinto(self, offset: int, buffer) -> int:
        chunk = self.data[offset:offset + len(buffer)]
        buffer[:len(chunk)] = chunk
        return len(chunk)

    def find(self, needle: bytes, start: int, end: int) -> int:
        return self.data.find(needle, start, end)

    def reading_from(self, offset: int) -> None:
        pass


def outcome(data: bytes) -> dict:
    try:
        fmt = detect_format(data[:1024], "archive")
    except ArchcheckError as exc:
        return {"unsupported": str(exc), "findings": [], "members": []}
    members: list = []
    rows: list = []
    result = StreamCheck(BytesReader(data), "archive", codec=fmt, check_tar=True,
                         digest="xxh3-128", threads=2, on_members=lambda line, n: members.extend(json.loads(line)),
                         on_frames=rows.extend, scan=ScanConfig()).run()
    leaves = [blake3.blake3(data[i:i + raw.LEAF_SIZE]).hexdigest() for i in range(0, len(data), raw.LEAF_SIZE)]
    return {
        "format": result.format, "frames": result.frames, "skippable_frames": result.skippable_frames,
        "checksummed_frames": result.checksummed_frames, "max_window": result.max_window,
        "seekable": result.seekable, "uncompressed_size": result.uncompressed_size,
        "member_count": result.member_count,
        "findings": [{"code": f.code, "location": f.location.to_json(), "details": dict(f.details)}
                     for f in result.findings],
        "members": [list(m) for m in members], "frame_rows": [list(r) for r in rows],
        "root": raw.combine(leaves),
    }
