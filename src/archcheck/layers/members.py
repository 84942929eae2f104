"""Members: one record per tar member, with a digest of its content."""
from __future__ import annotations

from typing import Any, Callable, NamedTuple

import blake3
import xxhash

DIGESTS: dict[str, Callable[[], Any]] = {  # streaming, for content that spans chunks
    "xxh3-128": xxhash.xxh3_128,
    "blake3": blake3.blake3,
}
ONESHOT: dict[str, Callable[[Any], str]] = {  # one call, for content inside one chunk
    "xxh3-128": xxhash.xxh3_128_hexdigest,
    "blake3": lambda data: blake3.blake3(data).hexdigest(),
}
DEFAULT_DIGEST = "xxh3-128"


class Member(NamedTuple):
    name: str
    type: str  # "file", "dir", "symlink", "hardlink", "char", "block", "fifo", "other:<flag>"
    size: int  # bytes stored in the archive
    mode: int
    mtime: int
    header_offset: int  # uncompressed offset of the member's (first) header
    data_offset: int  # uncompressed offset of its content
    digest: str | None  # None when the content could not be read whole (or digests are off)
    linkname: str = ""
    sparse_size: int | None = None  # logical size of a sparse file

    def to_json(self) -> dict[str, Any]:
        return {k: v for k, v in self._asdict().items() if v not in (None, "") or k == "digest"}


MEMBER_FIELDS = list(Member._fields)

TYPE_NAMES = {b"0": "file", b"\0": "file", b"7": "file", b"S": "file", b"1": "hardlink",
              b"2": "symlink", b"3": "char", b"4": "block", b"5": "dir", b"6": "fifo"}


def restore_hazard(member: Member) -> tuple[str, str, str] | None:
    """(what, path, what a restore does) when GNU tar would not restore the path as written."""
    for what, path in (("member name", member.name), ("hard link target", member.linkname)):
        if what == "hard link target" and member.type != "hardlink":
            continue
        if path.startswith("/"):
            return what, path, "an absolute path: GNU tar strips the leading '/' and restores it below the target"
        if ".." in path and ".." in path.split("/"):  # the substring first: this runs for every member
            return what, path, "a '..' component: GNU tar refuses to restore it (it would leave the target directory)"
    return None


def type_name(flag: bytes) -> str:
    return TYPE_NAMES.get(flag, "other:" + flag.decode("latin-1"))
