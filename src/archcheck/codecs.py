"""The formats decoded member after member by one native decoder (formats.md 7): gzip members,
xz streams, lz4 frames and bzip2 streams. Members cannot be found without decoding, so a file
is one frame of archcheck's making and its findings name the member instead."""
from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class StreamCodec:
    name: str  # the codec, its frame kind, its findings' layer and the prefix of their codes
    magic: bytes
    unit: str  # what a member is called: "gzip member"
    content_mismatch: tuple[str, ...] = ()  # codes for a member whose every byte came out, wrong
    block: bool = False  # its unit is one frame of the file's walk (an xz or bzip2 block), not the file
    zeros_ignored: bool = True  # its tool accepts zero bytes after the last member (tape padding) silently
    unchecked_code: str | None = None  # the code for members written without a check of their data

    @property
    def detail_key(self) -> str:
        """The finding detail naming the member: gzip_member, xz_stream, ..."""
        return self.unit.replace(" ", "_")

    @property
    def trailing_code(self) -> str:
        return f"{self.name.upper()}_TRAILING_DATA"


STREAM_CODECS = {codec.name: codec for codec in (
    StreamCodec("gzip", b"\x1f\x8b", "gzip member", ("GZIP_CRC_MISMATCH", "GZIP_SIZE_MISMATCH")),
    StreamCodec("xz", b"\xfd7zXZ\x00", "xz stream"),
    StreamCodec("lz4", b"\x04\x22\x4d\x18", "lz4 frame", ("LZ4_CONTENT_CHECKSUM", "LZ4_SIZE_MISMATCH"),
                zeros_ignored=False, unchecked_code="LZ4_NO_CHECKSUM"),
    StreamCodec("bzip2", b"BZh", "bzip2 stream"),
)}


def _past_skippable_frames(head: bytes) -> bytes:
    """lz4 shares zstd's skippable frames (magic 0x184D2A5?, a length, bytes): the format is
    told by the first frame that is not one."""
    at = 0
    while len(head) >= at + 8 and head[at + 1:at + 4] == b"\x2a\x4d\x18" and head[at] & 0xF0 == 0x50:
        at += 8 + int.from_bytes(head[at + 4:at + 8], "little")
    return head[at:] if at else head


# frame kinds decoded by a StreamDecoder: a whole file of a stream codec, one block of one, or
# a run of a BGZF file's members (numbered as in the file)
UNITS = {**STREAM_CODECS, "xz-block": StreamCodec("xz", b"\xfd7zXZ\x00", "xz block", block=True),
         "bzip2-block": StreamCodec("bzip2", b"BZh", "bzip2 block", block=True),
         "gzip-members": STREAM_CODECS["gzip"]}


def stream_codec(head: bytes) -> StreamCodec | None:
    """The codec whose magic ``head`` starts with."""
    head = _past_skippable_frames(head)
    for codec in STREAM_CODECS.values():
        if head.startswith(codec.magic):
            return codec
    return None


def frame_of(frame: int | None, details: dict) -> int | None:
    """The frame a finding is in, when its location or unit says: its location's, or the
    block's own for a codec whose blocks are frames (xz, bzip2). A gzip member (xz stream, ...)
    is in the frame its bytes are in: the file's one frame, or a run of BGZF members."""
    if frame is not None:
        return frame
    for unit in UNITS.values():
        if unit.block and details.get(unit.detail_key) is not None:
            return details[unit.detail_key]
    return None

