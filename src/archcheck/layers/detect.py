"""Format detection by magic bytes, never by file name."""
from __future__ import annotations

from ..errors import UnsupportedArchive
from .. import _native
from ..codecs import stream_codec
from .age import is_age
from .zstd import is_zstd_start

OTHER_FORMATS = [  # (magic, offset, name) of formats we recognise but do not verify
    (b"\x02\x21\x4c\x18", 0, "legacy lz4 (lz4 -l)"), (b"7z\xbc\xaf\x27\x1c", 0, "7-Zip"),
    (b"PK\x03\x04", 0, "zip"), (b"\x89LZO", 0, "lzop"), (b"SQLite format 3\x00", 0, "an SQLite database"),
]


SUPPORTED = "tar, alone or compressed with zstd, gzip, xz, lz4 or bzip2, each also encrypted with age"


def detect_format(head: bytes, name: str) -> str:
    """'zstd', a stream codec ('gzip', 'xz', 'lz4', 'bzip2'), 'tar' or 'age' (any of them
    encrypted) from the first bytes; UnsupportedArchive with one clear line otherwise."""
    if is_age(head):
        return "age"
    codec = stream_codec(head)  # before zstd: an lz4 file may start with a skippable frame
    if codec is not None:  # damage in the rest of the header is the decoder's to name
        return codec.name
    if is_zstd_start(head):
        return "zstd"
    if _native.is_tar_header(head[:512]) or head[257:262] == b"ustar" or head[:1024] == bytes(1024):
        return "tar"  # the last: an empty archive is just its end marker
    for magic, offset, label in OTHER_FORMATS:
        if head[offset:offset + len(magic)] == magic:
            raise UnsupportedArchive(f"{name} is {label}, not a format archcheck reads; archcheck verifies {SUPPORTED}")
    raise UnsupportedArchive(f"{name} is not an archive archcheck knows (unrecognised first bytes); archcheck verifies {SUPPORTED}")
