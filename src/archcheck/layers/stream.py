"""The stream check: frames decoded on parallel lanes, tar walked and members hashed in order,
database files scanned as they pass (all by the native core), and findings placed in the
archive.

It runs where the bytes are (a pool worker): decoded bytes never leave the process. What it
finds leaves as data through callbacks: member batches (JSON lines), frame-table rows,
checkpoints and the final result.
"""
from __future__ import annotations

import collections
import json
import threading
import time
from dataclasses import dataclass, replace
from typing import Any, Callable

from .. import _native
from ..errors import format_size
from ..findings import CATALOGUE, Category, Finding, Findings, Location
from ..scanners import ScanConfig, scan_handoff
from ..scanners.policy import DatabasePolicy
from .boundary import Walker
from ..codecs import STREAM_CODECS, UNITS
from .decoding import CHUNK, DEPTH, Event, FrameDecoders, FrameFeed
from . import bzip2, gzip, xz
from . import DEFAULT_MAX_WINDOW
from .frame_log import FrameLog
from .zstd import CONTENT_KINDS, LARGE_WINDOW, Frame, SeekTable, hand_frames_on, read_seek_table, walk_frames

FRAME_FIELDS = ("index", "kind", "offset", "end", "window", "content_size", "checksummed",
                "uncompressed_start", "uncompressed_end")
STRUCTURAL = (Category.CORRUPTION, Category.UNVERIFIED)  # frame-level facts from the walk
RAW_PIECE = 16 * 1024 * 1024
CHECKPOINT_SHARE = 0.02  # of the run's time, at most, spent taking checkpoints
READ_APPROXIMATION = 128 * 1024  # where no block is known, a range this far back from the input read
MAX_EXPANSION = 1 << 15  # output a compressed byte can give at most: a zstd RLE block, 128 KiB from 4 bytes
BLOCK = 512
WALK_POLL = 0.2  # seconds between looks at a stop request while waiting for the frame walk
MembersCallback = Callable[[bytes, int], None]
# parts found without decoding
BLOCK_WALKS = {"xz": xz.walk_blocks, "bzip2": bzip2.walk_blocks, "gzip": gzip.walk_members}


@dataclass(frozen=True)
class StreamResult:
    format: str  # "tar", or "tar+CODEC" or "CODEC" for zstd and the stream codecs (gzip, xz, lz4, bzip2)
    frames: int
    skippable_frames: int
    checksummed_frames: int
    max_window: int
    seekable: bool
    compressed_size: int
    uncompressed_size: int
    member_count: int
    findings: tuple[Finding, ...]
    frame_table: tuple[tuple, ...] = ()  # one row per frame (FRAME_FIELDS), unless on_frames took them
    scan_state: dict | None = None  # what the database scanners learnt (e.g. a data directory's facts)


class StreamStopped(Exception):
    """The stream check was asked to stop; its last checkpoint says where to go on."""


class CheckpointMismatch(Exception):
    """A checkpoint does not fit the archive's frames: it belongs to other content."""


class StreamCheck:
    """Composes the decoders and the tar walker, and places findings in the archive."""

    def __init__(self, reader: Any, uri: str, *, codec: str, check_tar: bool,
                 digest: str | None = "xxh3-128", max_window: int = DEFAULT_MAX_WINDOW, threads: int = 2,
                 depth: int = DEPTH, chunk: int = CHUNK, on_progress: Callable[[int], None] | None = None,
                 on_members: MembersCallback | None = None,
                 on_frames: Callable[[list[tuple]], None] | None = None,
                 resume_from: dict[str, Any] | None = None,
                 on_checkpoint: Callable[[dict[str, Any]], None] | None = None,
                 checkpoint_every: float = 2.0, checkpoint_from: int | None = None,
                 stop: threading.Event | None = None, scan: ScanConfig | None = None,
                 on_walked: Callable[[Frame], None] | None = None,
                 on_cut: Callable[[int, int], None] | None = None):
        """``on_walked`` sees each frame as the walk finds it (a frame handed on open, again once
        walked), every frame from the first on a resume too. ``on_cut`` is told, for each place
        in the input where the reader says a restore stops, the uncompressed offset where what
        the input before it decodes to ends."""
        self.reader, self.uri = reader, uri
        self.threads, self.depth, self.chunk = threads, depth, chunk
        self.codec, self.check_tar, self.max_window = codec, check_tar, max_window  # codec: tar, zstd or a stream codec
        self.compressed = codec != "tar"
        self.on_progress = on_progress or (lambda done: None)
        self.on_members = on_members or (lambda line, count: None)
        self.findings = Findings()
        self.scan = scan if check_tar else None  # database files inside members
        self.policy = DatabasePolicy()
        # findings that wait for the end of the archive to be decided (checksums on or off?):
        # kept apart, so that a flood of them on a cluster without checksums fills no cap
        self.provisional = Findings()
        # restore hazards, found as member batches leave the walker: kept apart from its
        # findings, which would hold checkpoints back until the next frame
        self.hazards = Findings()
        self.walker: Walker | None = self._walker(digest) if check_tar else None
        self.spans: collections.deque = collections.deque(maxlen=64)  # (u0, u1, frame, c0, c1)
        self.upstream_lost = False  # decoded content went missing: tar's own end checks do not apply
        self.findings_at_frame_start = 0
        # the frame table leaves row by row as frames end (a log, not a list held here)
        self.frame_rows: list[tuple] = []
        self.on_frames = on_frames or self.frame_rows.extend
        self.on_walked = on_walked
        self.on_cut = on_cut or (lambda position, uncompressed: None)
        self.log = FrameLog(on_add=on_walked)  # the frames whose rows have not left, and what all of them say
        self.fold: tuple[int, int, int] | None = None  # (finding, frame end, members then) after a bad frame
        self.losses: list[tuple[int, int]] = []  # (finding, offset): where the walk lost the stream
        self.count_at_frame_start = 0
        self.uoff = 0
        # resuming: (frame index, uncompressed start, archive offset, members, findings) at recent
        # frame starts; a checkpoint restarts decoding at one of them
        self.frame_starts: collections.deque = collections.deque(maxlen=4096)
        self.resume_from, self.on_checkpoint = resume_from, on_checkpoint
        self.checkpoint_every, self.next_checkpoint = checkpoint_every, time.monotonic() + checkpoint_every
        self.checkpoint_from = checkpoint_from  # past this archive offset, checkpoint at every chunk
        self.stop = stop or threading.Event()
        self.walk_findings = 0  # findings of the frame walk: made again by every (resumed) run
        self.walk_made: list[Finding] = []  # as the walk made them (what decoding adds to them is checkpointed)
        self.skip_to = 0  # output before this offset was walked before the checkpoint
        self.broken: dict[int, int] = {}  # frame index -> the walk's finding that it lost content
        self.walking: _WalkThread | None = None  # a frame walk running beside the decoders
        self.following: _WalkThread | None = None  # a walk that took over handing frames on from it

    def _walker(self, digest: str | None) -> Walker:
        if self.scan is None:
            return _native.TarWalker(digest)
        listed = {path: (entry.size, entry.algorithm, entry.checksum) for path, entry in (self.scan.listed or {}).items()}
        known = json.dumps(self.scan.known) if self.scan.known else None
        return _native.TarWalker(digest, scan=True, listed=listed if self.scan.listed is not None else None,
                                 prefix=self.scan.prefix, known=known)

    def member_at(self, offset: int) -> tuple[str | None, int | None]:
        """The member holding uncompressed ``offset``, among those the walker still knows."""
        return self.walker.member_at(offset) if self.walker else (None, None)

    def found_so_far(self) -> list[Finding]:
        """The findings made before a failure ended the check (those whose meaning waits for the
        end of the archive, such as PostgreSQL pages before pg_control, are left out); the frame
        walk's first, when it ran beside the decoders (it has ended: ``run`` waits for it)."""
        walking = self.walking
        if walking is not None and not walking.is_alive():
            return [*walking.found, *self.findings]
        return list(self.findings)

    def run(self) -> StreamResult:
        seek = self._seek_table()
        if self.codec == "zstd" and self._walks_while_decoding() and seek is not None:
            feed = self._walk_while_decoding(seek)
        else:
            feed = self._walk_first()
        decoders = FrameDecoders(self.reader, feed, self.threads, self.max_window, self.depth, self.chunk)
        try:
            self._consume(decoders)
        except OSError:
            if self.stop.is_set():  # the decoders were told to stop: not a read failure
                raise StreamStopped() from None
            raise
        finally:
            decoders.close()  # the lanes stop decoding now, not when the generator is collected
            feed.close()
            if self.walking is not None:
                self._join_walk(self.walking)  # to the end, unless stopped: what it finds is reported
            if self.following is not None:  # (it has ended, unless the run failed) what it finds is known
                self.following.feed.abandon()
                self._join_walk(self.following)
        if self.stop.is_set():
            raise StreamStopped()
        self._settle_walk()
        if self.following is not None and self.following.error is not None:
            raise self.following.error  # a read that failed: the frames after it were not handed on
        upstream = self.upstream_lost or any(f.code == "ZSTD_TRUNCATED_FRAME" for f in self.findings)
        if self.walker:
            self.walker.finish(self.uoff, upstream_damage=upstream)
            self._drain_walker()
            self._name_recoveries()
        if self.scan is not None:
            self._decide_scans()
        return self._result()

    # --- the frame walk ----------------------------------------------------------------------

    def _walk_first(self) -> FrameFeed:
        """Walk every frame, then decode: the feed of the frames with content (from a resume's
        checkpoint on)."""
        frames = self._walk_now()
        self.log = FrameLog.of(frames, with_rows=self.compressed, on_add=self.on_walked)
        content_frames = self._walked(frames)
        if self.resume_from is not None:
            content_frames = self._restore(self.resume_from, content_frames)
        return FrameFeed(content_frames, stop=self.stop)

    def _walk_now(self) -> list[Frame]:
        """Every frame, walked before decoding begins (a walk that may read the whole file:
        a stop ends it at its next read)."""
        reader = _StoppableReads(self.reader, self.stop)
        if self.codec == "zstd":
            return walk_frames(reader, self.uri, self.max_window, self.findings)
        if self.codec in STREAM_CODECS:  # members are found only by decoding them: one frame of the whole file
            # (but the blocks of an xz or bzip2 file and the members of a BGZF file can be found:
            # those of many decode in parallel)
            walk = BLOCK_WALKS.get(self.codec)
            return (walk(reader) if walk else None) or [Frame(0, self.codec, 0, self.reader.size)]
        # pieces of a plain file, so several threads read ahead in parallel
        return [Frame(i, "raw", start, min(start + RAW_PIECE, self.reader.size))
                for i, start in enumerate(range(0, self.reader.size, RAW_PIECE))]

    def _walked(self, frames: list[Frame] | None = None) -> list[Frame]:
        """What the frames say as a whole, once the walk has ended and its findings come first;
        returns those of ``frames`` (every frame, when the walk went first) that hold content."""
        self._frame_facts()
        self._unchecked_stream(frames or [])
        self.broken = {f.location.frame: i for i, f in enumerate(self.findings)
                       if f.category in STRUCTURAL and _loses_content(f, self.log)}
        self.walk_findings = len(self.findings)
        self.walk_made = list(self.findings)
        return [f for f in frames or () if f.kind in CONTENT_KINDS]

    def _seek_table(self) -> SeekTable | None:
        """A seekable file's table, read before the walk: its checksums are needed as each frame
        is decoded. Empty without one; None when the walk must check it first (read_seek_table)."""
        return read_seek_table(self.reader) if self.codec == "zstd" else SeekTable()

    def _walks_while_decoding(self) -> bool:
        """A resume walks beside the decoders too, unless decoding had named something on the
        walk's findings, or has yet to (losses, which count them): they must all be there first."""
        cp = self.resume_from
        return cp is None or not (cp.get("walk_named") or cp.get("losses"))

    def _walk_while_decoding(self, seek: SeekTable) -> FrameFeed:
        """Walk a zstd file's frames on a thread of its own, handing each to the lanes as it is
        found: the walk's reads and the decoders' are of the same blocks at about the same time
        (one transfer from a store, not two). The stream's findings wait for the walk's, so that
        they come in the order of a walk that ended first: a finding to add, or a frame the walk
        found damage in, waits for the walk to end (a damaged archive, or a slow walk, is no
        worse off than before). A resume hands on the frames from the checkpoint's. A seekable
        file's frames carry what its table (``seek``, read first) says of them."""
        feed = FrameFeed(lanes=self.threads, stop=self.stop)
        cp = self.resume_from
        resume_at = None
        if cp is not None:
            self._restore_state(cp)
            resume_at = (cp["frame"], cp["frame_offset"])
        # before the walk reads on: what it fetches is kept for the lanes
        self.reader.reading_from(resume_at[1] if resume_at else 0)
        walking = _WalkThread(self.reader, self.uri, self.max_window, self.log, feed, resume_at, seek)
        self.walking = walking
        self.findings = _AfterWalk(self._settle_walk, self.findings)
        walking.start()
        return feed

    def _settle_walk(self) -> None:
        """End a walk running beside the decoders (waiting for it): its findings go first, and
        what the frames say as a whole after them. Raises what ended the walk early. The walk
        goes on to the end without handing on the frames past the lead, so that they are not
        all held meanwhile: another walk takes over from the first of them."""
        walking, self.walking = self.walking, None
        if walking is None:
            return
        self.findings.wait_for = None
        walking.feed.unpace()
        self._join_walk(walking)
        if self.stop.is_set():
            raise StreamStopped()
        if walking.error is not None:
            raise walking.error
        if walking.resume_at is not None and not walking.resumed:
            raise CheckpointMismatch(f"the walk found no frame {walking.resume_at[0]} at {walking.resume_at[1]}")
        if walking.follow_from is not None:
            self.following = _WalkThread(self.reader, self.uri, self.max_window, self.log, walking.feed,
                                         seek=walking.seek, start=walking.follow_from)
            walking.feed.pace()
            self.following.start()
        self.log.table_holds = walking.table_holds
        made = list(self.findings)  # a checkpoint's (the others wait for the walk)
        del self.findings[:]
        self.findings.extend(walking.found)
        self.findings.dropped.update(walking.found.dropped)
        self._walked()
        self.findings.extend(made)
        shift = self.walk_findings  # counts taken while the walk's findings were not yet in
        self.findings_at_frame_start += shift
        self.frame_starts = collections.deque(((*s[:4], s[4] + shift) for s in self.frame_starts),
                                              maxlen=self.frame_starts.maxlen)

    def _join_walk(self, walking: "_WalkThread") -> None:
        """Wait for the walk to end; a stop ends it at its next frame (not at the archive's end)."""
        while walking.is_alive():
            if self.stop.is_set():
                walking.feed.abandon()
            walking.join(WALK_POLL)

    # --- what the walker made ----------------------------------------------------------------

    def _drain_walker(self) -> None:
        """Members out, hazards and findings placed while their chunks are still known."""
        members = self.walker.take_members()
        if members is not None:
            line, count, hazards = members
            self.on_members(line, count)
            for what, path, restore, name, header_offset in hazards:
                loc = Location(self.uri, uncompressed_offset=header_offset, member=name)
                finding = Finding.of("TAR_UNSAFE_PATH", loc, what=what, path=path, restore=restore)
                self.hazards.append(self._place(finding, header_offset, header_offset + BLOCK))
        for handoff in self.walker.take_handoffs():
            self._scan_handoff(*handoff)
        if not self.walker.has_findings():
            return
        for code, start, end, member, member_offset, place, details in self.walker.take_findings():
            loc = Location(self.uri, uncompressed_offset=start, member=member, member_offset=member_offset, **place)
            self._add(Finding.of(code, loc, **details), start, end)
        if self.fold is not None and self.walker.count > self.fold[2]:
            self.fold = None  # a member after the bad frame: the walk is back in step

    def _add(self, finding: Finding, start: int, end: int) -> None:
        if self.fold is not None and _is_tar_damage(finding):
            self._add_effect(self.fold[0], finding)
            return
        placed = self._place(finding, start, end)
        (self.provisional if self._is_provisional(finding) else self.findings).append(placed)

    def _scan_handoff(self, kind: str, name: str, data_offset: int, size: int, received: int, complete: bool,
                      head: bytes, data: bytes | None, limit: int) -> None:
        """A database the core collected whole (SQLite): walked here, its findings placed."""
        for code, offset, length, place, details in scan_handoff(kind, size, received, complete, head, data, limit):
            start = data_offset + offset
            loc = Location(self.uri, uncompressed_offset=start, member=name, member_offset=offset, **place)
            self._add(Finding.of(code, loc, **details), start, start + length)

    def _is_provisional(self, finding: Finding) -> bool:
        return self.scan is not None and self.policy.waits(finding.code)

    def _decide_scans(self) -> None:
        """Scanner findings were provisional: now the whole archive is known, decide them."""
        datadirs = json.loads(self.walker.data_dirs())
        decided = Findings(self.findings.limit)
        decided.dropped = self.findings.dropped
        kept: set[str] = set()
        for finding in [*self.findings, *self.provisional]:
            if finding.layer == "pages":
                outcome = self.policy.decide(finding.code, dict(finding.details), datadirs)
                if outcome is None:
                    continue
                kept.add(finding.code)
                code, details = outcome
                details.pop("lsn", None)
                finding = Finding.of(code, finding.location, **details)
            decided.append(finding)
        for code, count in self.provisional.dropped.items():  # over the cap, and real after all
            if code in kept:
                decided.dropped[code] += count
        for code, details in self.policy.summaries(datadirs):
            decided.append(Finding.of(code, Location(self.uri), **details))
        self.findings = decided

    def _unchecked_stream(self, frames: list[Frame]) -> None:
        """An xz file written without its integrity check, as ZSTD_NO_CHECKSUM says it of zstd
        frames: the first xz block of each kind (else the first stream's header). (lz4 frames
        without checksums are counted by their decoder, as they end.)"""
        if self.codec == "xz":
            for code, check, where in xz.unchecked(frames, self.reader):
                self.findings.append(Finding.of(code, Location(self.uri, byte_range=where),
                                                **({"check": check} if code == "XZ_UNSUPPORTED_CHECK" else {})))

    def _add_effect(self, cause_index: int, effect: Finding) -> None:
        cause = self.findings[cause_index]
        if len(dict(cause.details).get("tar_effects", ())) >= 20:
            return
        effects = dict(cause.details).get("tar_effects", ()) + (
            f"{effect.code} at uncompressed offset {effect.location.uncompressed_offset}",)
        details = {**dict(cause.details), "tar_effects": effects}
        self.findings[cause_index] = Finding(cause.code, cause.location, tuple(sorted(details.items())))

    def _frame_facts(self) -> None:
        tally = self.log.tally
        unchecked, first = self.log.unchecked()
        if unchecked:
            self.findings.append(Finding.of("ZSTD_NO_CHECKSUM", Location(self.uri, frame=first), frames=unchecked))
        big = tally.widest
        if big is not None and big.window > LARGE_WINDOW:
            self.findings.append(Finding.of("ZSTD_LARGE_WINDOW", Location(self.uri, frame=big.index),
                                            window=format_size(big.window)))
        if tally.zstd == 1 and self.reader.size >= 256 * 1024 * 1024:
            self.findings.append(Finding.of("ZSTD_SINGLE_FRAME", Location(self.uri, frame=tally.first_zstd),
                                            size=format_size(self.reader.size)))

    # --- the stream -------------------------------------------------------------------------

    def _consume(self, decoders: FrameDecoders) -> None:
        frame_start, start_pos, content_hash = 0, None, None
        for event in decoders:
            if self.stop.is_set():  # at the next piece: the last checkpoint says where to go on
                raise StreamStopped()
            frame = event.frame
            if frame.kind not in CONTENT_KINDS and event.failure is None:  # (skippable, a seek table) for its row
                self._table_rows(frame.index, None)
                self.on_progress(frame.end)
                continue
            if start_pos is None:  # the frame's first event
                if self.walking is not None and self.walking.findings_made:
                    self._settle_walk()  # the walk found damage: the frames' findings are needed
                frame_start, start_pos = self.uoff, frame.offset
                self.count_at_frame_start = self.walker.count if self.walker else 0
                if self.resume_from is not None and frame.index == self.resume_from["frame"]:
                    self.count_at_frame_start = self.resume_from["frame_count"]
                self.findings_at_frame_start = len(self.findings)
                self.frame_starts.append((frame.index, self.uoff, frame.offset, self.count_at_frame_start,
                                          len(self.findings) + len(self.provisional)))
                hashed = frame.seek_checksum is not None or event.checksum_outside
                content_hash = _native.Xxh64() if hashed else None
            for position, offset in event.cuts:  # offsets in this piece (the frame's end: none left)
                self.on_cut(position, self.uoff + offset)
            if event.data is not None:
                self._piece(event, frame, start_pos, content_hash)
                start_pos = event.compressed_pos
                decoders.release(event)
                if self.on_checkpoint and (time.monotonic() >= self.next_checkpoint or (
                        self.checkpoint_from is not None and event.compressed_pos >= self.checkpoint_from)):
                    self.checkpoint()
                continue
            if self.walking is not None and (self.walking.findings_made or self.walking.error is not None):
                self._settle_walk()  # the walk found damage in the frame it handed on open, or failed
            if self.following is not None and self.following.error is not None:
                raise self.following.error  # a read failed: the frame's end is not the walk's
            self._table_rows(frame.index, (frame_start, self.uoff))
            event = _checksum_checked(event, content_hash)
            self._end_frame(frame, event, frame_start, self.uoff - frame_start, content_hash, self.broken.get(frame.index))
            if event.error_code is not None and frame.decodable:
                self._past_stated_size(frame, frame_start, event)
            if self.losses and self.walker:
                self._name_recoveries()
            start_pos = None
            self.on_progress(frame.end)

    def _past_stated_size(self, frame: Frame, frame_start: int, event: Event) -> None:
        """A frame that failed before giving its stated size (its header's, an xz block's index
        record, a seek table's): what follows starts where the format says, so offsets after a
        lost frame stay exact. Without a stated size they count the output decoded, a failed
        block's withheld output included; so they do when the size is more than the bytes left
        undecoded could hold (a lie)."""
        stated = frame.content_size if frame.content_size is not None else frame.seek_size
        undecoded = frame.end - (event.block.start if event.block is not None else frame.offset)
        if stated is not None and self.uoff < frame_start + stated <= self.uoff + undecoded * MAX_EXPANSION:
            self.uoff = frame_start + stated
        elif stated is None:
            self.uoff += event.withheld  # a block whose check failed: the output it gave, not walked

    def _piece(self, event: Event, frame: Frame, start_pos: int, content_hash: Any) -> None:
        self.spans.append((self.uoff, self.uoff + event.length, frame.index, start_pos, event.compressed_pos,
                           frame.offset))
        if self.walker and self.uoff + event.length > self.skip_to:
            cut = max(0, self.skip_to - self.uoff)  # walked before the checkpoint: skip
            self.walker.feed(event.data, self.uoff, cut)
            self._drain_walker()
        if content_hash is not None:
            content_hash.update(event.data)
        self.uoff += event.length
        self.on_progress(event.compressed_pos)

    # --- checkpoints ---------------------------------------------------------------------------

    def checkpoint(self) -> None:
        """Hand ``on_checkpoint`` the state a later run needs to go on from here: the frame to
        decode from, the offset where the walk takes over, and the findings made so far. None is
        taken while a frame's findings are still open (a fold, findings since the frame began)."""
        started = time.monotonic()
        try:
            self._checkpoint()
        finally:  # a costly checkpoint (many findings, many frames) is taken less often
            cost = time.monotonic() - started
            self.next_checkpoint = time.monotonic() + max(self.checkpoint_every, cost / CHECKPOINT_SHARE)

    def _checkpoint(self) -> None:
        if self.fold is not None or self.findings.dropped:
            return
        walker = json.loads(self.walker.checkpoint() or "null") if self.walker else {"at": self.uoff}
        if walker is None:
            return
        at = walker["at"]
        start = next((s for s in reversed(self.frame_starts) if s[1] <= at), None)
        if start is None or start[4] != len(self.findings) + len(self.provisional):
            return
        index, frame_start, frame_offset, count, _ = start
        recent = []
        if self.walker:
            self.walker.flush()  # every member before the checkpoint reaches the members log first
            self._drain_walker()
            recent = json.loads(self.walker.recent_json(frame_start, 16))
        self.on_checkpoint({
            "frame": index, "frame_offset": frame_offset, "frame_start": frame_start, "frame_count": count,
            "covered": self._archive_offset(at, frame_offset), "walker": walker, "recent": recent,
            "upstream_lost": self.upstream_lost,
            "findings": [f.to_json() for f in self.findings[self.walk_findings:]], "rows_next": self.log.rows_next,
            "walk_named": [[i, f.to_json()] for i, f in enumerate(self.findings[:self.walk_findings])
                           if f is not self.walk_made[i]],
            "provisional": [f.to_json() for f in self.provisional],
            "provisional_dropped": dict(self.provisional.dropped),
            "hazards": [f.to_json() for f in self.hazards], "hazards_dropped": dict(self.hazards.dropped),
            "losses": [list(loss) for loss in self.losses]})

    def _archive_offset(self, uoff: int, frame_offset: int) -> int:
        """The archive offset before which everything is checked, for an uncompressed offset:
        the input read before the piece of output holding it (at least its frame's start)."""
        if not self.compressed:
            return uoff
        for u0, u1, _, c0, c1, _ in reversed(self.spans):
            if u0 <= uoff <= u1:
                return max(frame_offset, c1 if uoff == u1 else c0)
        return frame_offset

    def _restore(self, cp: dict[str, Any], frames: list[Frame]) -> list[Frame]:
        """Set the walk up as the checkpoint left it; returns the frames still to decode."""
        rest = [f for f in frames if f.index >= cp["frame"]]
        if not rest or rest[0].index != cp["frame"] or rest[0].offset != cp["frame_offset"]:
            raise CheckpointMismatch(f"frame {cp['frame']} is not at {cp['frame_offset']}")
        self._restore_state(cp)
        self._rename_walk_findings(cp.get("walk_named", ()))
        return rest

    def _restore_state(self, cp: dict[str, Any]) -> None:
        """The tar walker, findings and offsets as the checkpoint left them."""
        if self.walker:
            try:
                self.walker.restore(json.dumps(cp["walker"]), json.dumps(cp["recent"]))
            except ValueError as exc:  # another core's checkpoint: the walk starts over
                raise CheckpointMismatch(str(exc)) from None
        self.uoff, self.upstream_lost = cp["frame_start"], cp["upstream_lost"]
        self.skip_to = cp["walker"]["at"]
        self.findings.extend(Finding.from_json(f) for f in cp["findings"])
        self.provisional.extend(Finding.from_json(f) for f in cp["provisional"])
        self.provisional.dropped.update(cp["provisional_dropped"])
        self.hazards.extend(Finding.from_json(f) for f in cp.get("hazards", ()))
        self.hazards.dropped.update(cp.get("hazards_dropped", {}))
        self.log.skip_rows(cp["rows_next"])
        self.losses = [tuple(loss) for loss in cp.get("losses", ())]

    def _rename_walk_findings(self, named: Any) -> None:
        """What decoding named on the walk's findings before the checkpoint (the member a
        broken frame cuts, say), put back on the same findings of this run's walk."""
        for index, saved in named:
            finding = Finding.from_json(saved)
            walked = self.findings[index] if 0 <= index < self.walk_findings else None
            if walked is None or (walked.code, walked.location.byte_range) != (finding.code, finding.location.byte_range):
                raise CheckpointMismatch(f"the walk's finding {index} is not the checkpoint's")
            self.findings[index] = finding

    # --- the end of a frame -----------------------------------------------------------------------

    def _end_frame(self, frame: Frame, event: Event, frame_start: int, produced: int,
                   seek_hash: Any, structural: int | None) -> None:
        """``structural`` is the index of the walk's finding for this frame, if it has one."""
        if event.notable or (frame.content_size is not None and produced != frame.content_size):
            self._settle_walk()  # findings to make, which count on the walk's being in first
        if event.failure is not None:
            raise event.failure.exception()
        if event.io_error is not None:
            raise OSError(event.io_error)
        if event.problem is not None and structural is None:  # found by the decoding thread's block walk
            code, start, end, details = event.problem
            before = len(self.findings)
            self.findings.append(Finding.of(code, Location(self.uri, byte_range=(start, end), frame=frame.index),
                                            **details))
            structural = before if len(self.findings) > before else None
            if structural is None:  # over the findings limit: still, the frame's content is lost
                self._lost(frame, event, None, code, **details)
                return
        if event.trailing is not None and (event.trailing[2] or not UNITS[frame.kind].zeros_ignored):
            at, length, nonzero = event.trailing  # zeros (tape padding) gzip and bzip2 accept silently
            self.findings.append(Finding.of(UNITS[frame.kind].trailing_code,
                                            Location(self.uri, byte_range=(at, at + length)), length=length, nonzero=nonzero))
        codec = UNITS.get(frame.kind)
        if event.unchecked is not None and codec is not None and codec.unchecked_code:
            first, at, count = event.unchecked  # said once, at the first such member's header
            self.findings.append(Finding.of(codec.unchecked_code, Location(self.uri, byte_range=(at, at + 7)),
                                            **{codec.detail_key: first}, members=count))
        if event.error is not None:
            self._decode_failed(frame, event, frame_start, structural)
            return
        if structural is not None:  # decoded what it could; the structural finding names the damage
            self._lost(frame, event, structural)
            return
        if frame.content_size is not None and produced != frame.content_size:
            self._lost(frame, event, None, "ZSTD_CONTENT_SIZE_MISMATCH", actual=produced, expected=frame.content_size)
            return
        # the walk's word on the table decides; while it walks, the frames carry the table read first
        problem = _seek_problem(self.log.as_walked(frame), produced, seek_hash)
        if problem is not None and self.walking is not None:
            self._settle_walk()
            problem = _seek_problem(self.log.as_walked(frame), produced, seek_hash)
        if problem is not None:
            self._content_mismatch(frame, "ZSTD_SEEK_TABLE_MISMATCH", frame_start, detail=problem)

    def _decode_failed(self, frame: Frame, event: Event, frame_start: int, structural: int | None) -> None:
        code = event.error_code
        if (frame.kind in UNITS and UNITS[frame.kind].block and CATALOGUE[code].category is not Category.CORRUPTION
                and any(f.code == code for f in self.findings)):
            if self.walker:  # every block of a file over the limit is: said once
                self.walker.lost(self.uoff)
            self.upstream_lost = True
            return
        if code == "ZSTD_CHECKSUM_MISMATCH":
            self._content_mismatch(frame, code, frame_start)
            if self.walker:  # a restore stops here (zstd -d fails the frame): no member it ends in is whole
                self.walker.lost(self.uoff)
                self.upstream_lost = True
        elif frame.kind in UNITS and code in UNITS[frame.kind].content_mismatch:
            # every byte came out; which of them is wrong is unknown
            member, codec = event.block, UNITS[frame.kind]
            self._content_mismatch(frame, code, frame_start, byte_range=(member.start, member.end),
                                   **{codec.detail_key: member.index}, detail=event.error)
            if self.walker and member.end < frame.end:  # the tool stops here: the members after are lost
                self.walker.lost(self.uoff)
                self.upstream_lost = True
        elif (named := self._xz_structure(frame, event)) is not None:
            named_code, byte_range = named
            loc = Location(self.uri, byte_range=byte_range, frame=self._numbered(frame.index),
                           uncompressed_offset=self.uoff)
            self.findings.append(Finding.of(named_code, loc, xz_stream=event.block.index))
            if self.walker:  # xz -d stops here: any stream after it is not restored
                self.walker.lost(self.uoff)
                self.upstream_lost = True
        elif frame.kind in UNITS:
            # a member's output is checked only at its end: tar damage in it is this failure's effect
            effects = self._take_tar_effects(frame_start)
            before = len(self.findings)
            self._lost(frame, event, structural, code, error=event.error)
            if len(self.findings) > before:
                for effect in effects:
                    self._add_effect(before, effect)
        else:
            self._lost(frame, event, structural, code, error=event.error)

    def _xz_structure(self, frame: Frame, event: Event) -> tuple[str, tuple[int, int]] | None:
        """An xz stream's failure that its index or footer alone explains: liblzma names it as a
        header's or a data error, over the stream's whole range."""
        if frame.kind != "xz" or event.error_code not in ("XZ_DECODE_ERROR", "XZ_BAD_HEADER") or event.block is None:
            return None
        return xz.damaged_structure(self.reader, event.block.start, event.block.end)

    def _lost(self, frame: Frame, event: Event, structural: int | None, code: str | None = None,
              **details: Any) -> None:
        """Decoding stopped early: the rest of the frame's content is gone. Named: the block that
        failed, where good output ends, the member holding that offset, and what a restore loses."""
        member, member_offset = self.walker.lost(self.uoff) if self.walker else (None, None)
        self.upstream_lost = True
        context = dict(uncompressed_offset=self.uoff, member=member, member_offset=member_offset)
        if structural is not None:  # name the member on the walk's finding instead of adding another
            self.findings[structural] = self.findings[structural].with_location(**context)
            return
        if event.block is not None:
            byte_range = (event.block.start, event.block.end)
            details[UNITS[frame.kind].detail_key if frame.kind in UNITS else "block"] = event.block.index
            if (deflate := event.block.deflate) is not None:  # a gzip member: the deflate block in it
                byte_range = (deflate.start, max(deflate.start + 1, event.block.end))
                details.update(deflate_block=deflate.index, deflate_block_type=deflate.kind,
                               deflate_block_output=deflate.output)
        else:
            start = max(frame.offset, (self.spans[-1][4] if self.spans and self.spans[-1][2] == frame.index
                                       else frame.offset) - READ_APPROXIMATION)
            byte_range = (start, max(start, event.compressed_pos))
        if self.walker and CATALOGUE[code].category is Category.CORRUPTION:  # not a memory limit
            details["restore_loses"] = self._loss(frame, member, member_offset)
        loc = Location(self.uri, byte_range=byte_range, frame=self._numbered(frame.index), **context)
        before = len(self.findings)
        self.findings.append(Finding.of(code, loc, **details))
        if self.walker and len(self.findings) > before:
            self.losses.append((before, self.uoff))

    def _loss(self, frame: Frame, member: str | None, member_offset: int | None) -> str:
        """What a restore of this archive loses: the member cut here, and every member after it
        to the end of the frame (of the archive, for a single frame)."""
        cut = f"{member} from byte {member_offset or 0} on" if member else "what follows"
        self._settle_walk()  # how many frames there are
        if self.log.tally.content <= 1 or frame.kind in UNITS:  # xz -d, bzip2 -d stop at a bad block
            return f"{cut}, and every member after it to the end of the archive"
        unit = UNITS[frame.kind].unit if frame.kind in UNITS else "frame"
        return f"{cut}, and every member after it to the end of {unit} {frame.index} (archive bytes {frame.offset}-{frame.end})"

    def _name_recoveries(self) -> None:
        """Where the walk found members again after each loss: the first whole member after it."""
        pending = []
        for index, offset in self.losses:
            found = self.walker.first_member_after(offset)
            if found is None or index >= len(self.findings):
                pending.append((index, offset))
                continue
            name, header_offset = found
            finding = self.findings[index]
            details = {**dict(finding.details), "walk_resumes_at": f"{name} (uncompressed offset {header_offset})"}
            self.findings[index] = Finding(finding.code, finding.location, tuple(sorted(details.items())))
        self.losses = pending

    def _content_mismatch(self, frame: Frame, code: str, frame_start: int,
                          byte_range: tuple[int, int] | None = None, **details: Any) -> None:
        """The frame decoded, but its content is wrong somewhere in [frame_start, uoff)."""
        members, total = self.walker.members_since(frame_start, self.count_at_frame_start) if self.walker else ([], 0)
        only = members[0] if total == 1 else None  # name a member only when it is the only one
        loc = Location(self.uri, byte_range=byte_range or (frame.offset, frame.end), frame=self._numbered(frame.index),
                       uncompressed_offset=frame_start, member=only)
        if members:
            details["members"] = tuple(members[:10]) + ((f"... {total - len(members[:10])} more",) if total > 10 else ())
        effects = self._take_tar_effects(frame_start)
        before = len(self.findings)
        self.findings.append(Finding.of(code, loc, **details))
        if len(self.findings) > before:  # kept, not over the findings limit
            self.fold = (before, self.uoff, self.walker.count) if self.walker else None
            for effect in effects:
                self._add_effect(before, effect)

    def _take_tar_effects(self, frame_start: int) -> list[Finding]:
        """Tar damage in or right after a bad frame is that frame's damage: taken out of the
        findings, to be listed on the frame's."""
        if not self.walker:
            return []
        self._drain_walker()
        recent = self.findings[self.findings_at_frame_start:]
        effects = [f for f in recent if _is_tar_damage(f) and frame_start <= f.location.uncompressed_offset]
        self.findings[self.findings_at_frame_start:] = [f for f in recent if f not in effects]
        return effects

    def _numbered(self, frame: int) -> int | None:
        """A frame's index for a location: a gzip (xz, ...) file is one frame of archcheck's
        making, not the format's, so its findings name the member instead."""
        return None if self.codec in STREAM_CODECS else frame

    def _place(self, finding: Finding, start: int, end: int) -> Finding:
        """Give a walker finding its archive byte range and frame."""
        if not self.compressed:
            return finding.with_location(byte_range=(start, max(end, start)))
        for u0, u1, frame, c0, c1, frame_offset in reversed(self.spans):
            if u0 <= start < u1 or (start == u1 == self.uoff):
                # the read-ahead allowance stays within the frame the location names
                return finding.with_location(byte_range=(max(frame_offset, c0 - READ_APPROXIMATION), c1),
                                             frame=self._numbered(frame))
        return finding

    # --- the result ------------------------------------------------------------------------------

    def _table_rows(self, upto: int, span: tuple[int, int] | None) -> None:
        """The frame table's rows up to frame ``upto`` (its uncompressed span, if decoded), in
        order: frames between that were not decoded (skippable, seek table) have no span."""
        if not self.compressed:
            return
        rows = self.log.rows(upto, span)
        if rows:
            self.on_frames(rows)

    def _result(self) -> StreamResult:
        self._table_rows(self.log.count - 1, None)
        not_tar = any(f.code == "TAR_NOT_TAR" for f in self.findings)
        seen_tar = self.check_tar and not not_tar and self.uoff > 0  # nothing decoded: no tar seen
        fmt = (f"tar+{self.codec}" if seen_tar else self.codec) if self.compressed else "tar"
        tally = self.log.tally
        return StreamResult(
            format=fmt, frames=tally.zstd, skippable_frames=tally.skippable, checksummed_frames=self.log.checksummed(),
            max_window=tally.widest.window if tally.widest else 0, seekable=tally.seekable,
            compressed_size=self.reader.size, uncompressed_size=self.uoff,
            member_count=self.walker.count if self.walker else 0,
            findings=tuple(self.findings.closed(self.uri)) + tuple(self.hazards.closed(self.uri)),
            frame_table=tuple(self.frame_rows),
            scan_state=json.loads(self.walker.data_dirs()) if self.scan is not None else None)


class _AfterWalk(Findings):
    """The stream's findings while the frame walk still runs: adding one waits for the walk's
    (``wait_for``), which come first. (Code that takes an index before it adds, a frame's end
    that went wrong, settles the walk first.)"""

    def __init__(self, wait_for: Callable[[], None], held: Findings):
        """``held``: those made already (a checkpoint's), kept as they are."""
        super().__init__(held.limit)
        self.wait_for: Callable[[], None] | None = None
        self.extend(held)
        self.dropped.update(held.dropped)
        self.wait_for = wait_for

    def append(self, finding: Finding) -> None:
        if self.wait_for is not None:
            self.wait_for()
        super().append(finding)


class _WalkThread(threading.Thread):
    """The native frame walk, handing ``log`` and ``feed`` each frame as it is found (the feed
    paces the walk; its reader passes the frames without content); ``found``, ``table_holds`` and ``error`` once it has ended. On a
    resume (``resume_at``: a checkpoint's frame index and offset), the feed gets the frames from
    there on, and the walk checks that the archive has that frame there.

    Once the feed is unpaced and has no room, the walk hands on no more frames (``follow_from``:
    the first it did not) and goes on only to find what it finds; a walk made with ``start``
    (that frame) then takes over handing them on."""

    def __init__(self, reader: Any, uri: str, max_window: int, log: FrameLog, feed: FrameFeed,
                 resume_at: tuple[int, int] | None = None, seek: SeekTable | None = None,
                 start: Frame | None = None):
        super().__init__(name="archcheck-frame-walk", daemon=True)
        self.reader, self.uri, self.max_window, self.log, self.feed = reader, uri, max_window, log, feed
        self.resume_at = resume_at
        self.resumed = False  # the checkpoint's frame was found where it said
        self.seek = seek if seek is not None else SeekTable()  # read first
        self.table_holds = True  # False once the walk finds no seek table that holds for the frames
        self.start_frame = start
        self.follow_from: Frame | None = None
        self.open_index: int | None = None  # the frame last handed on open
        self.found = Findings()
        self.findings_made = 0  # by the walk, when it handed on its last frame
        self.error: BaseException | None = None

    def run(self) -> None:
        try:
            self.table_holds = hand_frames_on(_PacedReads(self.reader, self.feed), self.uri, self.max_window,
                                              self.found, self.seek, self._hand_on, self.start_frame)
        except _Abandoned:
            pass  # the stream was stopped: nobody needs the rest
        except BaseException as exc:  # noqa: BLE001 - raised again where the walk is settled
            self.error = exc
        finally:
            if self.follow_from is None:  # else the walk that takes over ends the feed
                self.feed.end()

    def _hand_on(self, frame: Frame, found: int, whole: bool) -> None:
        self.findings_made = found
        if frame.index < len(self.seek):  # any frame before the table, as the walk's check of it does
            size, checksum = self.seek[frame.index]
            frame = replace(frame, seek_checksum=checksum, seek_size=size)
        new = frame.index != self.open_index  # not the open frame again, walked
        if not whole:
            self.open_index = frame.index
        # (not at a frame whose end came from pzstd's note: the walk that takes over would not
        # have the note, which goes before it)
        if self.follow_from is None and new and frame.walked and not self.feed.paced and not self.feed.room():
            self.follow_from = frame  # the walk that takes over begins here
        if self.follow_from is not None:
            self.log.add(frame, held=False)  # counted, not kept
            return
        self.log.add(frame, again=self.start_frame is not None)  # (the open frame again, once walked)
        if not whole:  # its blocks are walked next, while a lane decodes it
            if self._decoded(frame) and not self.feed.open(frame):
                raise _Abandoned()
            return
        if self._decoded(frame) and not self.feed.put(frame):
            raise _Abandoned()

    def _decoded(self, frame: Frame) -> bool:
        """Whether the feed gets this frame: on a resume, not those before the checkpoint's
        frame, which must be the first after them."""
        if self.resume_at is None or self.resumed:
            return True
        index, offset = self.resume_at
        if frame.index < index:
            return False
        if (frame.index, frame.offset) != (index, offset):
            raise CheckpointMismatch(f"frame {index} is not at {offset}")
        self.resumed = True
        return True


class _PacedReads:
    """The walk's reader: its reads of an open frame wait for the lane decoding it (FrameFeed.walk_reads)."""

    def __init__(self, reader: Any, feed: FrameFeed):
        self.reader, self.feed, self.size = reader, feed, reader.size

    def pread(self, offset: int, length: int) -> bytes:
        if self.feed.abandoned:
            raise _Abandoned()  # stopped: the walk ends here, even inside a frame
        self.feed.walk_reads(offset)
        try:
            return self.reader.pread(offset, length)
        except BaseException:
            self.feed.walk_failed()  # the core takes a failed read for the file's end: decode nothing past it
            raise


class _StoppableReads:
    """A walk's reader that raises StreamStopped at the first read after a stop."""

    def __init__(self, reader: Any, stop: threading.Event):
        self.reader, self.stop, self.size = reader, stop, reader.size
        self.small_reads_cheap = getattr(reader, "small_reads_cheap", False)

    def pread(self, offset: int, length: int) -> bytes:
        if self.stop.is_set():
            raise StreamStopped()
        return self.reader.pread(offset, length)


class _Abandoned(Exception):
    pass


def _checksum_checked(event: Event, content_hash: Any) -> Event:
    """A frame's end, failed as libzstd fails it when the content checksum it stores is not the
    output's (the decoder left that check to this thread, off the decoding one)."""
    stored = event.stored_checksum
    if stored is None or event.error is not None or content_hash is None or content_hash.intdigest() & 0xFFFFFFFF == stored:
        return event
    return replace(event, error="zstd decompress error: Restored data doesn't match checksum",
                   error_code="ZSTD_CHECKSUM_MISMATCH")


def _seek_problem(frame: Frame, produced: int, seek_hash: Any) -> str | None:
    """How a decoded frame disagrees with what the seek table says of it, if it does."""
    if frame.seek_size is not None and produced != frame.seek_size:
        return f"frame decodes to {produced} bytes, table says {frame.seek_size}"
    if seek_hash is not None and frame.seek_checksum is not None and (
            seek_hash.intdigest() & 0xFFFFFFFF) != frame.seek_checksum:
        return "decoded content does not match the seek table checksum"
    return None


def _loses_content(finding: Finding, log: FrameLog) -> bool:
    """A damaged window that still decodes loses nothing: only its header byte is wrong. Nor
    does a seek table that disagrees with a frame's size: the frame itself was walked."""
    if finding.code == "ZSTD_SEEK_TABLE_MISMATCH":
        return False
    return not (finding.code == "ZSTD_BAD_WINDOW" and log.decodable(finding.location.frame))


def _is_tar_damage(finding: Finding) -> bool:
    return finding.layer == "tar" and finding.category is Category.CORRUPTION
