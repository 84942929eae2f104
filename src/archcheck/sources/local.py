"""Local files: aiofiles for the coordinator, pread and windowed mmap in workers.

The file is stamped when it is opened (device, inode, size, mtime, ctime). Every reader that
opens it again checks the stamp, and the coordinator keeps a handle open to compare with: a
file replaced by rename, rewritten, appended to, truncated or touched is a changed source,
never a damaged one."""
from __future__ import annotations

import mmap
import os
import stat
import time
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Iterator

import blake3

from .. import _native
from ..errors import SourceChanged, SourceError
from .base import ArchiveIdentity, FileStamp

ID_PROBE = 64 * 1024
MAP_POPULATE = getattr(mmap, "MAP_POPULATE", 0)  # Linux: a map's pages read in at once, not a fault each
# a test's way to make reading slow, so what depends on time (budgets, deadlines) does not
# depend on how fast the machine is
SLOW_READ = os.environ.get("ARCHCHECK_FAILPOINT") == "slow-read"
SLOW_READ_SECONDS = float(os.environ.get("ARCHCHECK_SLOW_READ_SECONDS", "0.02"))


def _throttle() -> None:
    if SLOW_READ:
        time.sleep(SLOW_READ_SECONDS)


class LocalFile:
    def __init__(self, path: Path, fd: int):
        self.path = path
        self.uri = str(path)
        self.fd = fd  # held for the source's life: fstat on it sees in-place changes
        self.stamp = FileStamp.of(os.fstat(fd))
        self.size = self.stamp.size

    async def read(self, offset: int, length: int) -> bytes:
        import aiofiles  # only the coordinator reads this way; workers start without asyncio
        async with aiofiles.open(self.path, "rb") as f:
            await f.seek(offset)
            return await f.read(length)

    async def identity(self) -> ArchiveIdentity:
        head = await self.read(0, ID_PROBE)
        tail = await self.read(max(0, self.size - ID_PROBE), ID_PROBE)
        return ArchiveIdentity(self.uri, self.stamp.size, self.stamp.mtime_ns,
                               blake3.blake3(head).hexdigest(), blake3.blake3(tail).hexdigest())

    def ref(self) -> "LocalFileRef":
        return LocalFileRef(str(self.path), self.stamp)

    def changes(self, fresh: bool = True) -> str:
        """The held handle tells in-place changes; the path tells a replacement or removal."""
        try:
            by_path = FileStamp.of(os.stat(self.path))
        except FileNotFoundError:
            return "removed"
        except OSError as exc:
            return f"no longer readable ({exc.strerror})"
        # the path first: a file renamed over this one also bumps the old inode's ctime
        return self.stamp.changes(by_path) or self.stamp.changes(FileStamp.of(os.fstat(self.fd)))

    def close(self) -> None:
        if self.fd >= 0:
            os.close(self.fd)
            self.fd = -1

    def __del__(self) -> None:
        self.close()


def open_local(location: str | os.PathLike) -> LocalFile:
    """Open a local archive, or raise SourceError with one clear sentence."""
    path = Path(location)
    try:
        st = os.stat(path)
    except FileNotFoundError:
        raise SourceError(f"{path}: no such file") from None
    except OSError as exc:
        raise SourceError(f"{path}: cannot open: {exc.strerror}") from None
    if stat.S_ISDIR(st.st_mode):
        raise SourceError(f"{path} is a directory; archcheck verifies an archive file (.tar, .tar.zst, .zst)")
    if not stat.S_ISREG(st.st_mode):
        raise SourceError(f"{path} is not a regular file")
    try:
        fd = os.open(path, os.O_RDONLY)
        os.pread(fd, 1, 0)
    except OSError as exc:
        raise SourceError(f"{path}: cannot read: {exc.strerror}") from None
    if os.fstat(fd).st_size == 0:
        os.close(fd)
        raise SourceError(f"{path} is empty: an empty file is no backup")
    return LocalFile(path.resolve(), fd)


def _pages_told(fd: int) -> bool:
    """Whether mincore tells this process which of the file's pages are in memory: Linux (5.0
    on) tells only a process that owns the file or could write it, and says every page is in
    to others. Without it a page whose read failed cannot be told, so the file is read, not
    mapped (LocalReader.read_in_place)."""
    euid = os.geteuid()
    if euid in (0, os.fstat(fd).st_uid):
        return True
    try:
        return os.access(f"/proc/self/fd/{fd}", os.W_OK, effective_ids=True)
    except (NotImplementedError, OSError):
        return False


@dataclass(frozen=True)
class LocalFileRef:
    uri: str
    stamp: FileStamp | None = None  # what the file was when the run began: a reader checks it

    def open(self) -> "LocalReader":
        return LocalReader(self.uri, self.stamp)


class LocalReader:
    small_reads_cheap = True  # a read here and there costs a page, not a range request

    def __init__(self, path: str, stamp: FileStamp | None = None):
        self.fd = os.open(path, os.O_RDONLY)
        self.stamp = stamp
        try:
            self.check()
        except SourceChanged:
            os.close(self.fd)
            raise
        self.size = os.fstat(self.fd).st_size if stamp is None else stamp.size
        self.mappable = _pages_told(self.fd)

    def check(self) -> None:
        """SourceChanged unless the file is still the one the run began with."""
        if self.stamp is not None:
            what = self.stamp.changes(FileStamp.of(os.fstat(self.fd)))
            if what:
                raise SourceChanged(what)

    def reading_from(self, offset: int) -> None:
        pass  # the page cache keeps what was read

    def on_fetch(self, callback) -> bool:
        return False  # the page cache shares a file's reads between processes

    def expect(self, start: int, end: int) -> None:
        """The page cache reads ahead by itself."""

    def pread(self, offset: int, length: int) -> bytes:
        _throttle()
        return os.pread(self.fd, length, offset)

    def readinto(self, offset: int, buffer) -> int:
        _throttle()
        return os.preadv(self.fd, [buffer], offset)

    def read_in_place(self, offset: int, length: int) -> bytes | memoryview:
        """pread's bytes, read in place: mapped, with no copy out of the page cache (which
        costs as much as hashing them). Only that range is mapped (mapped pages count in RSS),
        its pages read in at once, and unmapped when its last view goes. Where a page did not
        read in whole (mincore: a bad sector), the range is read with pread instead: touching
        that page would kill the process (SIGBUS), where pread fails with EIO, which is retried
        and reported; so is a range that cannot be mapped (a FUSE mount with direct I/O, the
        process out of file descriptors). Short where the file ends now, as pread is. (A file
        cut short while mapped still kills the process that touches the lost pages: the run
        reports the change, pipeline.Run.)"""
        _throttle()
        length = max(0, min(length, os.fstat(self.fd).st_size - offset))
        if length == 0:
            return b""
        if not self.mappable:
            return os.pread(self.fd, length, offset)
        start = offset - offset % mmap.ALLOCATIONGRANULARITY
        try:
            mapped = mmap.mmap(self.fd, length + offset - start, flags=mmap.MAP_SHARED | MAP_POPULATE,
                               prot=mmap.PROT_READ, offset=start)
        except OSError:
            return os.pread(self.fd, length, offset)
        view = memoryview(mapped).toreadonly()  # PROT_READ, which CPython exports as writable all the same
        if not _native.resident(view, mmap.PAGESIZE):
            view.release()
            mapped.close()
            return os.pread(self.fd, length, offset)
        return view[offset - start:]

    @contextmanager
    def view(self, offset: int, length: int) -> Iterator[memoryview]:
        """read_in_place's bytes, unmapped at once when done."""
        view = memoryview(self.read_in_place(offset, length))
        try:
            yield view
        finally:
            view.release()  # (the map goes with its last view)

    def find(self, needle: bytes, start: int, end: int) -> int:
        """First offset of ``needle`` in [start, end), or -1; reads one window at a time."""
        window = 8 * 1024 * 1024
        pos = max(0, start)
        end = min(end, self.size)
        while pos < end:
            length = min(window + len(needle) - 1, end - pos)
            hit = self.pread(pos, length).find(needle)
            if hit >= 0:
                return pos + hit
            pos += window
        return -1

    def close(self) -> None:
        os.close(self.fd)

    def __enter__(self) -> "LocalReader":
        return self

    def __exit__(self, *exc) -> None:
        self.close()
