"""The Source protocol: async range reads for the coordinator, picklable refs for workers."""
from __future__ import annotations

from contextlib import AbstractContextManager
from dataclasses import dataclass
from typing import Protocol


@dataclass(frozen=True)
class ArchiveIdentity:
    """What makes an archive the same archive across runs."""

    uri: str
    size: int
    mtime_ns: int
    head_blake3: str  # first 64 KiB
    tail_blake3: str  # last 64 KiB

    def to_json(self) -> dict:
        return dict(self.__dict__)


class RangeReader(Protocol):
    """Opened inside a worker process."""

    size: int

    def pread(self, offset: int, length: int) -> bytes: ...

    def readinto(self, offset: int, buffer: bytearray | memoryview) -> int: ...

    def view(self, offset: int, length: int) -> AbstractContextManager[memoryview]: ...

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
