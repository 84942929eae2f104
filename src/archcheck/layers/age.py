"""age-encrypted archives (formats.md 8): the file is age ciphertext, and inside it any archive
archcheck reads (.tar.zst.age, .tar.gz.age, .tar.age).

The raw layer hashes the file as stored. The stream check runs on the plaintext, read through
``Plaintext``: each 64 KiB chunk it reads is authenticated and decrypted by the core (the age
crate's STREAM reader); chunks no layer read (a member's content under ``--layers tar``) are
authenticated by a sweep at the end, so every chunk and the final-chunk marker are checked.
Nothing decrypted is written anywhere. A chunk that fails reads as zeros, so the layers below go
on past it; what they report inside it is listed as its effect.

Locations stay in the file's coordinates: a finding's byte range is where its bytes are
stored (encrypted), and ``plaintext_range`` says where they are in the decrypted stream."""
from __future__ import annotations

import array
import bisect
import json
import os
import threading
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

from .. import _native
from ..errors import UsageError
from ..findings import Finding, Location
from .stream import StreamResult
from .zstd import Frame

MAGIC = b"age-encryption.org/v1\n"
HEAD = 64 * 1024  # the header must be whole in the file's first bytes
CHUNK = 64 * 1024
SEALED = CHUNK + 16  # a chunk's ciphertext: its plaintext and a Poly1305 tag
SWEEP_CHUNKS = 64  # chunks authenticated per call of the sweep: 4 MiB of ciphertext
# chunks decrypted at least at once, kept for the reads after: the zstd frame walk reads each
# block's 3-byte header, tens of KiB apart
MIN_SPAN = 16
AHEAD_THREADS = min(4, os.cpu_count() or 1)
AHEAD_SPANS = 2  # spans decrypted ahead of each reading thread: the walk alone keeps two cores busy
MAX_EFFECTS = 20


def is_age(head: bytes) -> bool:
    return head.startswith(MAGIC)


@dataclass(frozen=True)
class AgeKey:
    """An identity file's text. It travels to the stream check in its task and nowhere else:
    never printed, logged or written to a manifest."""

    text: str = field(repr=False)
    source: str  # where it came from, safe to print: "--identity key.txt", "AGE_IDENTITY"


def identity_from(path: str | os.PathLike | None) -> AgeKey | None:
    """The identity of ``--identity PATH``, else of AGE_IDENTITY (a path to an identity file, or
    the identity itself); None without either. An unreadable file is one clear line."""
    where = "--identity"
    if path is None:
        value = os.environ.get("AGE_IDENTITY", "").strip()
        if not value:
            return None
        if value.startswith("AGE-SECRET-KEY-"):
            return AgeKey(value, "AGE_IDENTITY")
        path, where = value, "AGE_IDENTITY"
    try:
        return AgeKey(Path(path).read_text(encoding="utf-8"), f"{where} {path}")
    except OSError as exc:
        raise UsageError(f"{where}: cannot read the identity file {path}: {exc.strerror}") from None
    except UnicodeDecodeError:
        raise UsageError(f"{where}: {path} is not an age identity file") from None


def recipients(head: bytes) -> str:
    """What the header's stanzas are for, from their types: "1 X25519 recipient"."""
    kinds: dict[str, int] = {}
    for line in head.split(b"\n---", 1)[0].split(b"\n"):
        if line.startswith(b"-> "):
            kind = (line[3:].split(b" ", 1)[0].decode("ascii", "replace") or "?")[:20]
            kinds[kind] = kinds.get(kind, 0) + 1
    parts = [f"{n} {kind if kind.isalnum() or '-' in kind else '?'} recipient{'s' if n > 1 else ''}"
             for kind, n in kinds.items()]
    return ", ".join(parts) or "no recipient"


def check_identity(head: bytes, size: int, key: AgeKey, name: str) -> None:
    """UsageError (exit 2) unless ``key`` opens the file's header: a wrong identity is a
    mistake of the run, never damage. A damaged header is left to the stream check to report."""
    try:
        _native.AgePayload(head, size, key.text)
    except ValueError as exc:
        kind, message = exc.args
        if kind == "identity":
            raise UsageError(f"{key.source}: {message}") from None
        if kind == "no_match":
            raise UsageError(f"{name}: no identity in {key.source} opens it (it is encrypted to "
                             f"{recipients(head)}, or those stanzas are damaged)") from None


DERAILED_BY = 3 + 128 * 1024  # a zstd block header and the largest block: how far past a failed chunk's zeros a frame walk reads


class Unopened(Exception):
    """The payload cannot be decrypted: no identity, or a header that does not open."""

    def __init__(self, kind: str, message: str):
        super().__init__(message)
        self.kind = kind


class Plaintext:
    """An age file's plaintext, read as a reader reads its file (``pread``, ``size``,
    ``expect``). Each thread decrypts with its own payload; which chunks were authenticated
    and which failed is kept here, under a lock.

    Readers read on in order (a decode lane, the frame walk), so each reading thread keeps the
    span it decrypted last, and the span after it is decrypted on another core meanwhile: a
    decoder waits for neither the decryption nor, for small reads, the next call."""

    def __init__(self, reader: Any, key: AgeKey):
        self.reader = reader
        self._head, self._key = reader.pread(0, HEAD), key
        self._local = threading.local()
        try:
            payload = self._payload()
        except ValueError as exc:
            raise Unopened(*exc.args) from None
        self.start, self.chunks, self.size = payload.start, payload.chunks, payload.plaintext_size
        self._lock = threading.Lock()
        self._done: list[tuple[int, int]] = []  # authenticated chunks: sorted, disjoint [first, end)
        self.faults: dict[int, tuple[str, str]] = {}  # chunk: (code, why)
        # a failed chunk: the uncompressed offset where what the plaintext before it gives ends
        # (age -d stops there), and the member a restore is cut in there
        self.cuts: dict[int, int] = {}
        self.members: dict[int, tuple[str, int]] = {}
        # the compressed frames of the plaintext, in order: 16 bytes a frame
        self._frame_starts, self._frame_ends = array.array("q"), array.array("q")
        self._ahead = ThreadPoolExecutor(AHEAD_THREADS, thread_name_prefix="age-ahead")

    def _payload(self) -> Any:
        payload = getattr(self._local, "payload", None)
        if payload is None:
            payload = self._local.payload = _native.AgePayload(self._head, self.reader.size, self._key.text)
        return payload

    def pread(self, offset: int, length: int) -> bytes:
        end = min(offset + length, self.size)
        if offset >= end:
            return b""
        start, data = self._decrypted(offset, end)
        return data[offset - start:end - start]

    read_in_place = pread  # (decrypted into memory of its own)

    def _decrypted(self, offset: int, end: int) -> tuple[int, bytes]:
        start, data = getattr(self._local, "kept", (0, b""))
        if not (start <= offset and end <= start + len(data)):
            start, data = self._fill(offset, end, start, data)
        return start, data

    def cut_within(self, offset: int, end: int) -> int | None:
        """The first place in (offset, end] where a restore stops: the start of a chunk that
        fails (the span, and the chunk at ``end``, are decrypted, as the reads that follow would)."""
        end = min(end, self.size)
        if offset >= end:
            return None
        self._decrypted(max(0, offset), min(self.size, end + 1))
        with self._lock:
            failed = [k * CHUNK for k in self.faults if offset < k * CHUNK <= end]
        return min(failed, default=None)

    def note_cut(self, position: int, uncompressed: int) -> None:
        """What the plaintext before ``position`` (a failed chunk's start) decodes to ends at
        ``uncompressed``: a restore through age -d is cut there."""
        with self._lock:
            self.cuts.setdefault(position // CHUNK, uncompressed)

    def _fill(self, offset: int, end: int, start: int, data: bytes) -> tuple[int, bytes]:
        """This thread's span from ``offset``'s chunk to at least ``end``: the whole chunks of
        the last span from there on, the read-ahead if it goes on from them, and what is still
        missing decrypted now; then the read-ahead of the next span starts."""
        local, first = self._local, offset // CHUNK
        have = data[first * CHUNK - start:] if start <= first * CHUNK < start + len(data) else b""
        have_start = first * CHUNK
        ahead: list = getattr(local, "ahead", [])
        while ahead and ahead[0][0] == have_start + len(have) and have_start + len(have) < end:
            have += ahead.pop(0)[1].result()
        if ahead and ahead[0][0] != have_start + len(have):  # a jump: what was read ahead is not wanted
            for _, future, _ in ahead:
                future.cancel()
            ahead = []
        span = max((end - 1) // CHUNK + 1 - first, MIN_SPAN)  # the chunks this read needs, or more
        have_end = -(-(have_start + len(have)) // CHUNK)
        if have_start + len(have) < end:
            have += self._decrypt(have_end, min(self.chunks, max(have_end, first + span)))
        local.kept = (have_start, have)
        following = ahead[-1][2] if ahead else -(-(have_start + len(have)) // CHUNK)
        while len(ahead) < AHEAD_SPANS and following < self.chunks:
            last = min(self.chunks, following + span)
            ahead.append((following * CHUNK, self._ahead.submit(self._decrypt, following, last), last))
            following = last
        local.ahead = ahead
        return local.kept

    def reading_from(self, offset: int) -> None:
        self.reader.reading_from(self.sealed_at(offset))

    def expect(self, start: int, end: int) -> None:
        self.reader.expect(self.sealed_at(start), self.sealed_at(end))

    def check(self) -> None:
        self.reader.check()

    def close(self) -> None:
        self._ahead.shutdown(wait=True, cancel_futures=True)
        self.reader.close()

    def sealed_at(self, offset: int) -> int:
        """Where plaintext byte ``offset`` is stored in the file."""
        return min(self.reader.size, self.start + offset // CHUNK * SEALED + offset % CHUNK)

    def sealed_range(self, chunk: int) -> tuple[int, int]:
        start = self.start + chunk * SEALED
        return start, min(start + SEALED, self.reader.size)

    def plain_range(self, chunk: int) -> tuple[int, int]:
        return chunk * CHUNK, min((chunk + 1) * CHUNK, self.size)

    def _decrypt(self, first: int, end: int) -> bytes:
        start, stop = self.sealed_range(first)[0], self.sealed_range(end - 1)[1]
        sealed = self.reader.pread(start, stop - start)
        if len(sealed) < stop - start:
            raise OSError(5, f"read {len(sealed)} of {stop - start} bytes at {start}: the file ends early")
        plain, faults = self._payload().decrypt(first, sealed)
        with self._lock:
            for chunk, code, why in faults:
                self.faults[chunk] = (code, why)
            self._mark(first, end)
        return plain

    def _mark(self, first: int, end: int) -> None:
        apart = [(a, b) for a, b in self._done if b < first or a > end]
        joined = [(a, b) for a, b in self._done if not (b < first or a > end)]
        self._done = sorted(apart + [(min([first] + [a for a, _ in joined]), max([end] + [b for _, b in joined]))])

    def unread(self) -> list[tuple[int, int]]:
        """The chunks not authenticated yet, as [first, end) runs."""
        with self._lock:
            gaps, at = [], 0
            for a, b in self._done:
                if a > at:
                    gaps.append((at, a))
                at = max(at, b)
            return gaps + ([(at, self.chunks)] if at < self.chunks else [])

    def sweep(self) -> None:
        """Authenticate every chunk no layer read."""
        for a, b in self.unread():
            for first in range(a, b, SWEEP_CHUNKS):
                self._decrypt(first, min(b, first + SWEEP_CHUNKS))

    def note_members(self, line: bytes) -> None:
        """A batch of members passed: name the member a restore is cut in at each failed chunk."""
        with self._lock:
            pending = {k: at for k, at in self.cuts.items() if k not in self.members}
        if not pending:
            return
        for name, _, size, _, _, header_offset, data_offset, *_ in json.loads(line):
            end = data_offset + -(-size // 512) * 512
            for k, at in pending.items():
                if header_offset <= at < max(end, data_offset):
                    self.members[k] = (name, max(0, at - data_offset))

    def note_frame(self, frame: Frame) -> None:
        """A frame of the plaintext as the walk finds it (again once walked, if it came open)."""
        if frame.kind == "raw":
            return
        if self._frame_starts and self._frame_starts[-1] == frame.offset:
            self._frame_ends[-1] = frame.end
        else:
            self._frame_starts.append(frame.offset)
            self._frame_ends.append(frame.end)

    def frame_end(self, at: int) -> int | None:
        """The end of the frame that holds plaintext offset ``at``, if one does."""
        k = bisect.bisect_right(self._frame_starts, at) - 1
        return self._frame_ends[k] if k >= 0 and at < self._frame_ends[k] else None

    def state(self) -> dict:
        """What a checkpoint keeps: the chunks authenticated and those that failed."""
        with self._lock:
            return {"authenticated": [list(span) for span in self._done],
                    "faults": [[k, code, why] for k, (code, why) in sorted(self.faults.items())],
                    "cuts": [[k, at] for k, at in sorted(self.cuts.items())],
                    "members": [[k, name, offset] for k, (name, offset) in sorted(self.members.items())]}

    def restore(self, state: dict | None) -> None:
        if not state:
            return
        with self._lock:
            self._done = [(a, b) for a, b in state.get("authenticated", ())]
            self.faults = {k: (code, why) for k, code, why in state.get("faults", ())}
            self.cuts = {k: at for k, at in state.get("cuts", ())}
            self.members = {k: (name, offset) for k, name, offset in state.get("members", ())}


def unopened_result(reader: Any, uri: str, why: Unopened | None) -> StreamResult:
    """The result for a payload that was not decrypted: the header's structure and the chunk
    sizes, checked without a key, and what was left unchecked."""
    head = reader.pread(0, HEAD)
    findings = []
    try:
        start = _native.age_payload_start(head, reader.size)
    except ValueError as exc:
        start, why = None, Unopened(*exc.args)
    if why is not None and why.kind in ("header", "mac"):
        findings.append(Finding.of("AGE_BAD_HEADER", Location(uri, byte_range=(0, start or _header_end(head))),
                                   error=str(why)))
    if start is not None:
        payload = reader.size - start
        chunks = -(-payload // SEALED)
        if payload == 0 or payload % SEALED and payload % SEALED < 16:
            findings.append(Finding.of("AGE_TRUNCATED", Location(uri, byte_range=(start + max(0, chunks - 1) * SEALED, reader.size)),
                                       error=f"the file ends {payload % SEALED} bytes into chunk {max(0, chunks - 1)}, "
                                             "before its 16-byte tag" if payload else "no chunk follows the header"))
        if why is None or why.kind not in ("header", "mac"):
            findings.append(Finding.of("AGE_NOT_DECRYPTED", Location(uri, byte_range=(start, reader.size)),
                                       recipients=recipients(head), chunks=chunks,
                                       why=str(why) if why else "no identity was given (--identity or AGE_IDENTITY)"))
    return StreamResult(format="age", frames=0, skippable_frames=0, checksummed_frames=0, max_window=0, seekable=False,
                       compressed_size=reader.size, uncompressed_size=0, member_count=0, findings=tuple(findings))


def _header_end(head: bytes) -> int:
    """Where a header that does not parse seems to end: after its MAC line and the nonce."""
    mac = head.find(b"\n--- ")
    line_end = head.find(b"\n", mac + 1) if mac >= 0 else -1
    return min(len(head), line_end + 1 + 16) if line_end >= 0 else len(head)


def conclude(plain: Plaintext, uri: str, result: StreamResult, member_at: Any | None) -> StreamResult:
    """The stream check's result on the plaintext, made the file's: the chunks no layer read
    authenticated, each failed chunk a finding (with what the layers below saw in it as its
    effects), and every byte range moved to where the bytes are stored. ``member_at`` names
    the member at a plaintext offset when the plaintext is a plain tar (None otherwise).
    Decoding stops at the first damage in a compressed frame, and what its walk reads in the
    zeros goes wrong at their end: what is found from the chunk to its frame's end is its effect."""
    plain.sweep()
    findings = list(result.findings)
    chunk_findings = []
    for k in sorted(plain.faults):
        code, why = plain.faults[k]
        start, end = plain.plain_range(k)
        frame_end = plain.frame_end(start) or end
        if k == plain.chunks - 1:  # and what ends with the plaintext (a tar cut short) ends with it
            frame_end = plain.size + 1
        reach = max(end, frame_end)
        # a frame walk that read block headers in the zeros ends the frame in the wrong place,
        # a block past them at most: the rest of the real frame, up to the next one, is
        # 'unknown data' that starts there
        rest = next((f for f in findings if f.code == "ZSTD_BAD_MAGIC" and f.location.byte_range
                     and f.location.byte_range[0] == reach <= end + DERAILED_BY), None)
        if rest is not None:
            reach = rest.location.byte_range[1]
        effects = [f for f in findings if _inside(f, start, reach)]
        findings = [f for f in findings if f not in effects]
        chunk_findings.append(_chunk_finding(plain, uri, k, code, why, effects, member_at))
    return replace(result, format=f"{result.format}+age", compressed_size=plain.reader.size,
                   findings=tuple(chunk_findings) + tuple(_stored(plain, f) for f in findings))


def _inside(finding: Finding, start: int, end: int) -> bool:
    span = finding.location.byte_range
    return span is not None and span[0] < end and start < max(span[1], span[0] + 1)


def _chunk_finding(plain: Plaintext, uri: str, k: int, code: str, why: str, effects: list[Finding],
                   member_at: Any | None) -> Finding:
    """The member a failed chunk cuts a restore in: the one holding the end of what the
    plaintext before the chunk decodes to; else the one named by what the layers below found in
    it (a decode error names where good output ends); else, in a plain tar, the one at its offset."""
    start, end = plain.plain_range(k)
    named = next((f.location for f in effects if f.location.member), None)
    member, member_offset, uncompressed = None, None, None
    if k in plain.members:
        (member, member_offset), uncompressed = plain.members[k], plain.cuts.get(k)
    elif named is not None:
        member, member_offset, uncompressed = named.member, named.member_offset, named.uncompressed_offset
    elif member_at is not None:
        member, member_offset = member_at(start)
        uncompressed = start if member else None
    cut = f"{member} from byte {member_offset or 0} on" if member else f"the plaintext from byte {start} on"
    details: dict[str, Any] = {"chunk": k, "plaintext_range": f"{start}-{end}", "error": why,
                               "restore_loses": f"{cut}, and everything after it: age -d stops at this chunk"}
    candidates = next((dict(f.details)["members"] for f in effects if "members" in dict(f.details)), None)
    if member is None and candidates:  # a frame whose content is wrong: the members it holds
        details["members"] = candidates
    if effects:
        details["effects"] = tuple(f"{f.code} at plaintext byte {f.location.byte_range[0]}" for f in effects[:MAX_EFFECTS])
    loc = Location(uri, byte_range=plain.sealed_range(k), uncompressed_offset=uncompressed, member=member,
                   member_offset=member_offset)
    return Finding.of(code, loc, **details)


def _stored(plain: Plaintext, finding: Finding) -> Finding:
    """A finding of the layers below, its byte range moved from the plaintext to the file."""
    span = finding.location.byte_range
    if span is None:
        return finding
    stored = (plain.sealed_at(span[0]), plain.sealed_at(max(span[0], span[1] - 1)) + (span[1] > span[0]))
    details = {**dict(finding.details), "plaintext_range": f"{span[0]}-{span[1]}"}
    return Finding(finding.code, replace(finding.location, byte_range=stored), tuple(sorted(details.items())))
