"""Format detection by magic bytes, never by file name."""
from __future__ import annotations

from ..errors import UnsupportedArchive
from .. import _native
from .zstd import is_zstd_start

OTHER_FORMATS = [  # (magic, offset, name) of formats we recognise but do not verify
    (b"BZh", 0, "bzip2"), (b"\xfd7zXZ\x00", 0, "xz"),
    (b"\x04\x22\x4d\x18", 0, "lz4"), (b"7z\xbc\xaf\x27\x1c", 0, "7-Zip"), (b"PK\x03\x04", 0, "zip"),
    (b"\x89LZO", 0, "lzop"), (b"SQLite format 3\x00", 0, "an SQLite database"),
]


GZIP_MAGIC = b"\x1f\x8b"  # ID1 ID2 (a method other than deflate is the header's damage, said by the decoder)
SUPPORTED = ".tar, .tar.zst, .zst, .tar.gz and .gz"


def detect_format(head: bytes, name: str) -> str:
    """'zstd', 'gzip' or 'tar' from the first bytes; UnsupportedArchive with one clear line otherwise."""
    if is_zstd_start(head):
        return "zstd"
    if head[:2] == GZIP_MAGIC:
        return "gzip"
    if _native.is_tar_header(head[:512]) or head[257:262] == b"ustar" or head[:1024] == bytes(1024):
        return "tar"  # the last: an empty archive is just its end marker
    for magic, offset, label in OTHER_FORMATS:
        if head[offset:offset + len(magic)] == magic:
            raise UnsupportedArchive(f"{name} is {label}, not zstd, gzip or tar; archcheck verifies {SUPPORTED}")
    raise UnsupportedArchive(f"{name} is not a zstd, gzip or tar archive (unrecognised first bytes); archcheck verifies {SUPPORTED}")
