"""Local files: aiofiles for the coordinator, pread and windowed mmap in workers."""
from __future__ import annotations

import mmap
import os
import stat
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Iterator

import blake3

from ..errors import SourceError
from .base import ArchiveIdentity

ID_PROBE = 64 * 1024


class LocalFile:
    def __init__(self, path: Path, size: int):
        self.path = path
        self.uri = str(path)
        self.size = size

    async def read(self, offset: int, length: int) -> bytes:
        import aiofiles  # only the coordinator reads this way; workers start without asyncio
        async with aiofiles.open(self.path, "rb") as f:
            await f.seek(offset)
            return await f.read(length)

    async def identity(self) -> ArchiveIdentity:
        st = os.stat(self.path)
        head = await self.read(0, ID_PROBE)
        tail = await self.read(max(0, self.size - ID_PROBE), ID_PROBE)
        return ArchiveIdentity(self.uri, st.st_size, st.st_mtime_ns,
                               blake3.blake3(head).hexdigest(), blake3.blake3(tail).hexdigest())

    def ref(self) -> "LocalFileRef":
        return LocalFileRef(str(self.path))


def open_source(location: str | os.PathLike) -> LocalFile:
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
        with open(path, "rb") as f:
            f.read(1)
    except OSError as exc:
        raise SourceError(f"{path}: cannot read: {exc.strerror}") from None
    if st.st_size == 0:
        raise SourceError(f"{path} is empty: an empty file is no backup")
    return LocalFile(path.resolve(), st.st_size)


@dataclass(frozen=True)
class LocalFileRef:
    uri: str

    def open(self) -> "LocalReader":
        return LocalReader(self.uri)


class LocalReader:
    def __init__(self, path: str):
        self.fd = os.open(path, os.O_RDONLY)
        self.size = os.fstat(self.fd).st_size

    def pread(self, offset: int, length: int) -> bytes:
        return os.pread(self.fd, length, offset)

    def readinto(self, offset: int, buffer) -> int:
        return os.preadv(self.fd, [buffer], offset)

    @contextmanager
    def view(self, offset: int, length: int) -> Iterator[memoryview]:
        """Map only [offset, offset+length): mapped pages count in RSS, so never the file."""
        length = max(0, min(length, self.size - offset))
        if length == 0:
            yield memoryview(b"")
            return
        start = offset - offset % mmap.ALLOCATIONGRANULARITY
        mm = mmap.mmap(self.fd, length + offset - start, access=mmap.ACCESS_READ, offset=start)
        try:
            mm.madvise(mmap.MADV_SEQUENTIAL)
            view = memoryview(mm)[offset - start:]
            try:
                yield view
            finally:
                view.release()
        finally:
            mm.close()

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
