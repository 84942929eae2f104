"""The Source protocol: async range reads for the coordinator, picklable refs for workers."""
from __future__ import annotations

from contextlib import AbstractContextManager
from dataclasses import dataclass
from typing import Callable, Protocol


@dataclass(frozen=True)
class ArchiveIdentity:
    """What makes an archive the same archive across runs."""

    uri: str
    size: int
    mtime_ns: int
    head_blake3: str  # first 64 KiB
    tail_blake3: str  # last 64 KiB
    version: str = ""  # an object's ETag and version id ("etag:... version:..."); "" for a file

    def to_json(self) -> dict:
        return dict(self.__dict__)


@dataclass(frozen=True)
class FileStamp:
    """What a file is at one instant, cheaply (one stat): a run checks it again and again, so
    that bytes read from another file, or from this one after it changed, are never judged."""

    device: int
    inode: int
    size: int
    mtime_ns: int
    ctime_ns: int

    @classmethod
    def of(cls, st) -> "FileStamp":
        return cls(st.st_dev, st.st_ino, st.st_size, st.st_mtime_ns, st.st_ctime_ns)

    def changes(self, now: "FileStamp") -> str:
        """What differs, in words; "" when nothing does."""
        if (now.device, now.inode) != (self.device, self.inode):
            return "replaced by another file"
        said = []
        if now.size != self.size:
            delta = now.size - self.size
            said.append(f"{'grew' if delta > 0 else 'shrank'} by {abs(delta)} bytes to {now.size}")
        if now.mtime_ns != self.mtime_ns:
            said.append("modified (mtime)")
        if now.ctime_ns != self.ctime_ns and not said:
            said.append("its inode changed (ctime: touched, rewritten, or its permissions changed)")
        return ", ".join(said)


class RangeReader(Protocol):
    """Opened inside a worker process."""

    size: int
    # whether scattered small reads cost little (a local file's page cache); a remote reader's
    # each fetch a block and read ahead. Readers without it are taken to be remote ones
    small_reads_cheap: bool

    def expect(self, start: int, end: int) -> None:
        """The reads to come are in [start, end) (a remote reader reads ahead within it)."""

    def check(self) -> None:
        """SourceChanged if the archive is no longer the one the run was planned on."""

    def pread(self, offset: int, length: int) -> bytes: ...

    def readinto(self, offset: int, buffer: bytearray | memoryview) -> int: ...

    def read_in_place(self, offset: int, length: int) -> bytes | memoryview:
        """pread's bytes, read in place where the reader can (a local file's pages, mapped), as
        long as the result is held: for the core, which reads any buffer."""

    def view(self, offset: int, length: int) -> AbstractContextManager[memoryview]: ...

    def reading_from(self, offset: int) -> None:
        """This thread reads on from ``offset`` (soon): a remote reader keeps what it holds there
        for it, whichever thread fetched it."""

    def on_fetch(self, callback: Callable[[int, bytes], None]) -> bool:
        """Hand ``callback`` each (offset, bytes) this reader transfers from storage; False when
        it cannot (a local file: the page cache already shares its reads)."""

    def close(self) -> None: ...


class SourceRef(Protocol):
    """A picklable handle a worker process can open."""

    uri: str

    def open(self) -> RangeReader: ...


class Source(Protocol):
    """The coordinator's view of an archive."""

    uri: str
    size: int

    async def read(self, offset: int, length: int) -> bytes: ...

    async def identity(self) -> ArchiveIdentity: ...

    def ref(self) -> SourceRef: ...

    def changes(self, fresh: bool = True) -> str:
        """How the archive differs from when it was opened ("" when it does not). ``fresh=False``:
        a periodic look, which a remote source may answer from its last request."""
        ...
