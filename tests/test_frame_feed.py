"""The frame feed between a frame walk that runs beside the decoders and the decode lanes."""
from __future__ import annotations

import threading
from dataclasses import replace

from archcheck.layers.decoding import PASSED, FrameFeed
from archcheck.layers.zstd import Frame

MiB = 1024 * 1024


def frames(count: int, size: int) -> list[Frame]:
    return [Frame(i, "zstd", i * size, (i + 1) * size) for i in range(count)]


def walk(feed: FrameFeed, todo: list[Frame], handed: list[int]) -> threading.Thread:
    def run() -> None:
        for frame in todo:
            handed.append(frame.index)
            if not feed.put(frame):
                break
        feed.end()
    thread = threading.Thread(target=run, daemon=True)
    thread.start()
    return thread


def test_the_walk_waits_while_it_is_far_ahead_of_the_frame_being_read():
    feed, handed = FrameFeed(lanes=2), []
    thread = walk(feed, frames(40, 4 * MiB), handed)
    assert feed.get(0).index == 0
    thread.join(0.3)
    # a frame per lane and one more, and LEAD bytes: then the walk waits for the reader
    assert thread.is_alive() and feed.count == 6 and feed.last().offset == 20 * MiB
    feed.read_from(10)
    assert feed.get(10).index == 10
    assert feed.get(9) is PASSED  # frames before the one being read are let go
    thread.join(0.3)
    assert thread.is_alive() and feed.count == 16
    feed.unpace()  # whoever waits for the walk's end reads nothing meanwhile
    thread.join(5)
    assert not thread.is_alive() and feed.count == 40 and feed.get(40) is None


def test_a_closed_feed_lets_the_walk_finish_and_an_abandoned_one_ends_it():
    feed, handed = FrameFeed(lanes=2), []
    thread = walk(feed, frames(40, 4 * MiB), handed)
    assert feed.get(0) is not None
    feed.close()  # the lanes are done (a failure): the walk's findings still count
    thread.join(5)
    assert not thread.is_alive() and handed == list(range(40)) and feed.get(1) is None
    feed, handed = FrameFeed(lanes=2), []
    thread = walk(feed, frames(40, 4 * MiB), handed)
    assert feed.get(0) is not None
    feed.abandon()  # stopped
    thread.join(5)
    assert not thread.is_alive() and len(handed) < 10


def test_small_frames_are_walked_a_lead_of_bytes_ahead_and_a_known_list_needs_no_walk():
    feed, handed = FrameFeed(lanes=2), []
    thread = walk(feed, frames(200, MiB // 4), handed)
    assert feed.get(0) is not None
    thread.join(0.3)
    assert thread.is_alive() and feed.last().offset == FrameFeed.LEAD + MiB // 4
    feed.close()
    thread.join(5)
    known = FrameFeed(frames(3, MiB))
    assert [known.get(k).index for k in range(3)] == [0, 1, 2] and known.get(3) is None


def walk_open(feed: FrameFeed, frame: Frame, block: int, reads: list[int]) -> threading.Thread:
    """A walk that hands ``frame`` on open and follows its blocks of ``block`` bytes."""
    def run() -> None:
        if feed.open(replace(frame, end=1 << 40)):
            for offset in range(frame.offset, frame.end, block):
                feed.walk_reads(offset)
                reads.append(offset)
            feed.put(frame)
        feed.end()
    thread = threading.Thread(target=run, daemon=True)
    thread.start()
    return thread


def in_thread(step) -> tuple[threading.Thread, list]:
    result: list = []
    thread = threading.Thread(target=lambda: result.append(step()), daemon=True)
    thread.start()
    thread.join(0.2)
    return thread, result


def test_an_open_frame_is_decoded_as_far_as_the_walk_has_got_and_the_walk_stays_a_lead_ahead():
    feed, frame = FrameFeed(lanes=2), Frame(0, "zstd", 0, 64 * MiB)
    assert feed.open(replace(frame, end=1 << 40))
    assert feed.get(0).end == 1 << 40 and feed.current(0)[1]  # open: its end not yet known
    feed.walk_reads(4 * MiB)  # the walk reads a block header there: the bytes before it are walked
    assert feed.bound(0, 0) == 4 * MiB
    lane, bound = in_thread(lambda: feed.bound(0, 4 * MiB))
    assert lane.is_alive()  # the lane waits for the walk: it decodes no byte the walk has not checked
    feed.walk_reads(5 * MiB)
    lane.join(5)
    assert bound == [5 * MiB]
    walk, _ = in_thread(lambda: feed.walk_reads(4 * MiB + FrameFeed.LEAD + 1))
    assert walk.is_alive()  # a lead past the lane's reads: the walk waits, so the lane reads what it fetched
    assert feed.bound(0, 5 * MiB) == 4 * MiB + FrameFeed.LEAD + 1
    walk.join(0.2)
    assert walk.is_alive()  # woken only once the lane is half a lead on: it then walks many blocks at once
    feed.bound(0, 4 * MiB + FrameFeed.LEAD // 2 + 1)
    walk.join(5)
    assert not walk.is_alive()
    lane, walked = in_thread(lambda: feed.decoded(0))  # done with it: the walk goes on unpaced
    feed.walk_reads(60 * MiB)
    assert lane.is_alive()  # the frame is handed back once the walk has found its end
    feed.put(frame)
    lane.join(5)
    assert walked == [frame] and feed.current(0) == (frame, False) and feed.bound(0, 0) == frame.end


def test_every_wait_on_an_open_frame_ends_when_the_walk_ends_or_the_feed_is_closed():
    feed, reads = FrameFeed(lanes=2), []
    thread = walk_open(feed, Frame(0, "zstd", 0, 64 * MiB), MiB, reads)
    assert feed.get(0) is not None
    feed.close()  # the lanes failed: the walk goes on to the end, its findings count
    thread.join(5)
    assert not thread.is_alive() and reads[-1] == 63 * MiB
    feed = FrameFeed(lanes=2)
    feed.open(Frame(0, "zstd", 0, 1 << 40))
    feed.end()  # the walk failed inside the frame: nothing more is walked
    assert feed.bound(0, 0) == 0 and feed.decoded(0).end == 1 << 40


def test_a_failed_read_of_the_walk_stops_the_lane_where_the_walk_got_to(tmp_path):
    """The core takes a failed read for the end of the file. Inside a frame handed on open, the
    lane decodes nothing past what the walk had checked, no checkpoint covers more, and the run
    raises the read's error (before, the lane read on to the file's end)."""
    import random
    import subprocess

    import pytest

    from archcheck.layers.stream import StreamCheck
    from archcheck.sources import open_source

    (tmp_path / "noise.bin").write_bytes(random.Random(3).randbytes(40 * MiB))
    archive = tmp_path / "noise.bin.zst"
    subprocess.run(["zstd", "-q", "-1", tmp_path / "noise.bin", "-o", archive], check=True)
    reader = open_source(archive).ref().open()
    read, lanes_read_to, failed_at = reader.pread, [0], []
    checkpoints: list[dict] = []
    checkpointed = threading.Event()

    def pread(offset: int, length: int) -> bytes:
        thread = threading.current_thread().name
        if thread == "archcheck-frame-walk" and offset > 24 * MiB:
            # not before the stream has taken its first piece: a walk that fails first is raised first
            checkpointed.wait(10)
            failed_at.append(offset)  # a block header: what is before it, the walk has checked
            raise OSError(5, "Input/output error")
        if thread.startswith("archcheck-lane"):
            lanes_read_to[0] = max(lanes_read_to[0], offset + length)
        return read(offset, length)

    reader.pread = pread
    check = StreamCheck(reader, str(archive), codec="zstd", check_tar=False, threads=2,
                        on_checkpoint=lambda cp: (checkpoints.append(cp), checkpointed.set()), checkpoint_every=0.0)
    with pytest.raises(OSError, match="Input/output error"):
        check.run()
    assert 24 * MiB - FrameFeed.LEAD < lanes_read_to[0] <= failed_at[0]
    assert checkpoints and all(c["covered"] <= failed_at[0] for c in checkpoints)


def test_frames_without_content_pace_the_walk_and_lanes_take_those_with_content_in_turn(tmp_path):
    """pzstd writes a skippable frame (its size note) before every frame. Those pass through the
    feed, so a run of them paces the walk too, but a lane is never given one: with two lanes,
    the frames with content still decode on both, in turn (not all on the lane whose turn the
    notes would leave them)."""
    import subprocess

    from archcheck.layers.decoding import FrameDecoders
    from archcheck.layers.stream import StreamCheck
    from archcheck.layers.zstd import walk_frames
    from archcheck.sources import open_source

    text = b"".join(b"line %07d of the test's text\n" % i for i in range(1_200_000))  # 36 MiB
    archive = tmp_path / "notes.zst"
    archive.write_bytes(subprocess.run(["pzstd", "-q", "-p", "2", "-c"], input=text, capture_output=True,
                                       check=True).stdout)
    reader = open_source(archive).ref().open()
    try:
        frames = walk_frames(reader, str(archive), 1 << 27, [])
        kinds = [f.kind for f in frames]
        assert kinds[:4] == ["skippable", "zstd", "skippable", "zstd"] and kinds.count("zstd") >= 4
        feed = FrameFeed(lanes=2)
        feed.unpace()  # (nobody reads while they are put)
        for frame in frames:
            feed.put(frame)
        feed.end()
        assert [feed.take(k)[1] for k in range(4)] == [-1, 0, -1, 1]
        decoders = FrameDecoders(reader, feed, 2, 1 << 27)
        ended = []
        for event in decoders:
            if event.data is None:
                ended.append((event.frame.kind, event.lane))
            else:
                decoders.release(event)
        assert [lane for kind, lane in ended if kind == "zstd"] == [k % 2 for k in range(kinds.count("zstd"))]
        assert len(ended) == len(frames)
        result = StreamCheck(reader, str(archive), codec="zstd", check_tar=False, threads=2).run()
        assert (result.frames, result.skippable_frames, result.uncompressed_size) == (
            kinds.count("zstd"), kinds.count("skippable"), len(text))
    finally:
        reader.close()
