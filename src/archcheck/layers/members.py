"""Members: one record per tar member, with a digest of its content (computed by the core)."""
from __future__ import annotations

from typing import Any, NamedTuple

from .. import _native

DIGESTS = ("xxh3-128", "blake3")


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
    uid: int = 0  # the owner, as the header (or a pax record) gives it
    gid: int = 0
    uname: str = ""
    gname: str = ""

    def to_json(self) -> dict[str, Any]:
        return {k: v for k, v in self._asdict().items() if v not in (None, "") or k == "digest"}

    @property
    def owner(self) -> str:
        """uid:gid, with the names when the archive gives them (as tar -tv shows)."""
        names = f" ({self.uname}:{self.gname})" if self.uname or self.gname else ""
        return f"{self.uid}:{self.gid}{names}"


MEMBER_FIELDS = list(Member._fields)
assert MEMBER_FIELDS == list(_native.MEMBER_FIELDS), "the core writes members in this order"
