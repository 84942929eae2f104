"""Append-only logs beside a manifest, for the lists that grow with the archive (segment
results, the frame table, members).

A log is written one JSON line at a time; the manifest holds only its parts, each a file with
the length that counts and the BLAKE3 of those bytes. Saving the manifest then costs the same
whatever the archive's size. Bytes written after the last save are past the recorded length
and are ignored, so a crash loses only what was not saved. A part is never rewritten: every
run starts a new one, so a part can be shared (hard-linked) with a drill that adopts the pass.
"""
from __future__ import annotations

import json
import os
import shutil
import threading
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Iterable, Iterator

import blake3

from .errors import StateError
from .segments import new_nonce

READ_CHUNK = 1 << 20


@dataclass(frozen=True)
class LogPart:
    file: str  # a name in the manifest's folder
    length: int  # the bytes that count
    blake3: str  # of those bytes

    def to_json(self) -> list:
        return [self.file, self.length, self.blake3]

    @classmethod
    def from_json(cls, data: list) -> "LogPart":
        file, length, digest = data
        if not isinstance(file, str) or "/" in file or file.startswith("."):
            raise ValueError(f"bad log part name {file!r}")
        return cls(file, int(length), str(digest))


def parts_json(parts: Iterable[LogPart]) -> list:
    return [p.to_json() for p in parts]


def parts_from_json(data: list | None) -> tuple[LogPart, ...]:
    return tuple(LogPart.from_json(p) for p in data or ())


class LogWriter:
    """Appends lines to a new part of a log; ``parts()`` is what a save records."""

    def __init__(self, folder: Path, prefix: str, earlier: Iterable[LogPart] = ()):
        self.folder, self.earlier = Path(folder), tuple(earlier)
        self.name = f"{prefix}-{new_nonce()}.jsonl"
        self.fd: int | None = None
        self.length = 0
        self.synced = 0  # bytes known durable: a sync with nothing new costs no fsync
        self.hasher = blake3.blake3()
        self.lock = threading.Lock()  # appends and snapshots may come from different threads

    def append_json(self, obj: Any) -> None:
        self.append(json.dumps(obj, ensure_ascii=False, separators=(",", ":")).encode() + b"\n")

    def append(self, line: bytes) -> None:
        with self.lock, _state_errors(self.folder / self.name):
            if self.fd is None:
                self.folder.mkdir(parents=True, exist_ok=True)
                self.fd = os.open(self.folder / self.name, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o666)
            view = memoryview(line)
            while view:  # a short write goes on where it stopped
                view = view[os.write(self.fd, view):]
            self.length += len(line)
            self.hasher.update(line)

    def parts(self) -> tuple[LogPart, ...]:
        """The parts as written so far (not yet durable: ``sync`` first, or after)."""
        with self.lock:
            if not self.length:
                return self.earlier
            return (*self.earlier, LogPart(self.name, self.length, self.hasher.copy().hexdigest()))

    def sync(self) -> tuple[LogPart, ...]:
        """Make what was written durable; the parts, for a save that must point at durable bytes."""
        parts = self.parts()
        with self.lock, _state_errors(self.folder / self.name):
            if self.fd is not None and self.synced < self.length:
                length = self.length
                os.fsync(self.fd)
                self.synced = length
        return parts

    def close(self) -> None:
        with self.lock:
            if self.fd is not None:
                os.close(self.fd)
                self.fd = None


def read_lines(folder: Path, parts: Iterable[LogPart]) -> Iterator[bytes]:
    """Each part's lines up to its recorded length; a part whose bytes do not match its digest
    is damaged state, refused when it is found."""
    for part in parts:
        path = Path(folder) / part.file
        digest, left, rest = blake3.blake3(), part.length, b""
        with _state_errors(path), open(path, "rb") as f:
            while left > 0:
                chunk = f.read(min(READ_CHUNK, left))
                if not chunk:
                    raise StateError(f"{path} is shorter than its manifest says; it cannot be trusted")
                left -= len(chunk)
                digest.update(chunk)
                lines = (rest + chunk).split(b"\n")
                rest = lines.pop()
                if left == 0 and digest.hexdigest() != part.blake3:
                    raise StateError(f"{path} is damaged or was edited (its digest does not match the "
                                     "manifest); it cannot be trusted")
                yield from lines
        if rest:
            raise StateError(f"{path} ends inside a line; it cannot be trusted")


def read_json(folder: Path, parts: Iterable[LogPart]) -> Iterator[Any]:
    for line in read_lines(folder, parts):
        yield json.loads(line)


def link_parts(parts: Iterable[LogPart], source: Path, target: Path) -> None:
    """Share parts with another folder: hard links (a part is never rewritten), a copy where
    the folders are on different file systems."""
    target.mkdir(parents=True, exist_ok=True)
    for part in parts:
        src, dst = Path(source) / part.file, Path(target) / part.file
        if dst.exists():
            continue
        with _state_errors(dst):
            try:
                os.link(src, dst)
            except OSError:
                shutil.copyfile(src, dst)


@contextmanager
def _state_errors(path: Path) -> Iterator[None]:
    try:
        yield
    except OSError as exc:
        raise StateError(f"cannot use {path}: {exc.strerror or exc}") from None
