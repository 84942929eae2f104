"""A source whose reads fail or lie a set number of times, shared across worker processes
through a counter file: for testing retry and confirmation. Importable by workers because
spawned processes inherit the test run's sys.path."""
from __future__ import annotations

import errno
import fcntl
import os
from dataclasses import dataclass

from archcheck.sources.local import LocalReader


@dataclass(frozen=True)
class FlakyRef:
    uri: str
    counter: str  # file holding how many faults are left
    position: int  # a read covering this byte misbehaves
    mode: str  # "error" (EIO), "flip" (the byte reads flipped) or "cut" (the file is cut there under a map)

    def open(self) -> "FlakyReader":
        return FlakyReader(self)


class FlakyReader(LocalReader):
    def __init__(self, ref: FlakyRef):
        super().__init__(ref.uri)
        self.ref = ref

    def _fault(self, offset: int, length: int) -> bool:
        if not (offset <= self.ref.position < offset + length) or length < 4096:
            return False
        with open(self.ref.counter, "r+") as f:
            fcntl.flock(f, fcntl.LOCK_EX)
            left = int(f.read() or 0)
            if left <= 0:
                return False
            f.seek(0)
            f.truncate()
            f.write(str(left - 1))
        if self.ref.mode == "error":
            raise OSError(errno.EIO, "Input/output error")
        return True

    def pread(self, offset: int, length: int) -> bytes:
        data = super().pread(offset, length)
        if self._fault(offset, len(data)):
            at = self.ref.position - offset
            data = data[:at] + bytes([data[at] ^ 0xFF]) + data[at + 1:]
        return data

    def read_in_place(self, offset: int, length: int) -> bytes | memoryview:
        view = super().read_in_place(offset, length)
        if self.ref.mode == "cut" and self._fault(offset, len(view)):
            os.truncate(self.ref.uri, self.ref.position)  # what this process touches past it: SIGBUS
            return view
        if self._fault(offset, len(view)):
            copy = bytearray(view)
            copy[self.ref.position - offset] ^= 0xFF
            return bytes(copy)
        return view
