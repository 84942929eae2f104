"""Expected whole-file checksums (``--expect sha256:HEX``, ``--expect-file SHA256SUMS``).

The digest is computed while the drill runs, by one thread reading the file in order beside the
workers (hashlib, blake3 and the core's digests release the GIL): the archive is read in the same
run, so its pages are usually still cached when the lanes read them, and a gate need not run a
second tool. It is not resumable: a resumed drill computes it from the start.
"""
from __future__ import annotations

import hashlib
import os
import re
import threading
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterable

from .errors import UsageError, describe_error

READ = 4 << 20
HASHLIB = ("sha256", "sha512", "sha1", "md5")
ALGORITHMS = HASHLIB + ("blake3", "xxh3-128")
LENGTHS = {32: "md5", 40: "sha1", 64: "sha256", 128: "sha512"}  # the *sum tools' formats, by digest length


@dataclass(frozen=True)
class Expectation:
    algorithm: str
    hexdigest: str
    source: str  # where it was stated: "--expect", "SHA256SUMS line 3"


def parse_expect(value: str) -> Expectation:
    """ALGORITHM:HEX, e.g. sha256:9f86d08... (xxh3 means xxh3-128)."""
    algorithm, _, digest = value.partition(":")
    algorithm = {"xxh3": "xxh3-128", "xxh128": "xxh3-128"}.get(algorithm.lower(), algorithm.lower())
    if algorithm not in ALGORITHMS or not re.fullmatch(r"[0-9a-fA-F]+", digest):
        raise UsageError(f"--expect takes ALGORITHM:HEX with ALGORITHM one of {', '.join(ALGORITHMS)}, "
                         f"not {value!r}")
    _check_length(algorithm, digest, "--expect")
    return Expectation(algorithm, digest.lower(), "--expect")


def _check_length(algorithm: str, digest: str, source: str) -> None:
    expected = {"sha256": 64, "sha512": 128, "sha1": 40, "md5": 32, "blake3": 64, "xxh3-128": 32}[algorithm]
    if len(digest) != expected:
        raise UsageError(f"{source}: a {algorithm} digest has {expected} hex digits, not {len(digest)}")


_GNU = re.compile(r"(?P<digest>[0-9a-fA-F]+) [ *](?P<name>.+)")  # sha256sum's "HEX  name" / "HEX *name"
_BSD = re.compile(r"(?P<algorithm>[A-Za-z0-9-]+) ?\((?P<name>.+)\) ?= ?(?P<digest>[0-9a-fA-F]+)")  # --tag


def read_sums(path: Path, archives: Iterable[Path]) -> dict[Path, Expectation]:
    """Each archive's line in a checksum file (the format ``sha256sum -c`` reads), found by its
    path as given or by its file name."""
    try:
        lines = path.read_text(encoding="utf-8").splitlines()
    except (OSError, UnicodeDecodeError) as exc:
        raise UsageError(f"{path}: cannot read the checksum file: {describe_error(exc)}") from None
    listed: dict[str, Expectation] = {}
    for number, line in enumerate(lines, start=1):
        if not line.strip() or line.startswith("#"):
            continue
        source = f"{path} line {number}"
        expectation, name = _parse_line(line, source)
        listed[name] = expectation
    found = {}
    for archive in archives:
        for name in (str(archive), os.path.normpath(archive), archive.name):
            if name in listed:
                found[archive] = listed[name]
                break
        else:
            raise UsageError(f"{path}: no line for {archive.name}")
    return found


def _parse_line(line: str, source: str) -> tuple[Expectation, str]:
    bsd = _BSD.fullmatch(line.strip())
    if bsd:
        algorithm = {"BLAKE3": "blake3", "XXH128": "xxh3-128"}.get(bsd["algorithm"], bsd["algorithm"].lower())
        if algorithm not in ALGORITHMS:
            raise UsageError(f"{source}: unknown algorithm {bsd['algorithm']!r}")
        _check_length(algorithm, bsd["digest"], source)
        return Expectation(algorithm, bsd["digest"].lower(), source), bsd["name"]
    gnu = _GNU.fullmatch(line.rstrip("\n"))
    if not gnu or len(gnu["digest"]) not in LENGTHS:
        raise UsageError(f"{source}: not a checksum line (HEX  NAME, as sha256sum writes)")
    name = gnu["name"][2:] if gnu["name"].startswith("./") else gnu["name"]
    return Expectation(LENGTHS[len(gnu["digest"])], gnu["digest"].lower(), source), name


def _hasher(algorithm: str) -> Any:
    if algorithm in HASHLIB:
        return hashlib.new(algorithm)
    if algorithm == "blake3":
        import blake3
        return blake3.blake3(max_threads=1)
    from . import _native
    return _native.ContentDigest(algorithm)


@dataclass
class FileDigests:
    """Digests of whole files, computed by a thread while the drill runs. ``stop()`` ends it
    early (the drill stopped); a digest not computed to the end is never reported."""

    files: dict[Path, tuple[str, ...]]  # file -> algorithms
    digests: dict[Path, dict[str, str]] = field(default_factory=dict)
    errors: dict[Path, str] = field(default_factory=dict)
    _stop: threading.Event = field(default_factory=threading.Event)
    _thread: threading.Thread | None = None

    def start(self) -> "FileDigests":
        self._thread = threading.Thread(target=self._run, name="archcheck-file-digests", daemon=True)
        self._thread.start()
        return self

    def stop(self) -> None:
        self._stop.set()

    def join(self) -> None:
        if self._thread is not None:
            self._thread.join()

    def _run(self) -> None:
        for path, algorithms in self.files.items():
            try:
                self._digest(path, algorithms)
            except OSError as exc:
                self.errors[path] = describe_error(exc)

    def _digest(self, path: Path, algorithms: tuple[str, ...]) -> None:
        hashers = {algorithm: _hasher(algorithm) for algorithm in algorithms}
        buffer = memoryview(bytearray(READ))
        with open(path, "rb", buffering=0) as f:
            while not self._stop.is_set():
                n = f.readinto(buffer)
                if not n:
                    self.digests[path] = {a: h.hexdigest() for a, h in hashers.items()}
                    return
                piece = buffer[:n].toreadonly()  # (the core reads only read-only buffers; only this thread refills it)
                for hasher in hashers.values():
                    hasher.update(piece)
        self.errors[path] = "the drill stopped before the whole file was read"
