"""The frame feed between a frame walk that runs beside the decoders and the decode lanes."""
from __future__ import annotations

import threading

from archcheck.layers.decoding import FrameFeed
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
    assert thread.is_alive() and len(feed.frames) == 6 and feed.frames[-1].offset == 20 * MiB
    feed.read_from(10)
    assert feed.get(10).index == 10
    thread.join(0.3)
    assert thread.is_alive() and len(feed.frames) == 16
    feed.unpace()  # whoever waits for the walk's end reads nothing meanwhile
    thread.join(5)
    assert not thread.is_alive() and len(feed.frames) == 40 and feed.get(40) is None


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
    assert thread.is_alive() and feed.frames[-1].offset == FrameFeed.LEAD + MiB // 4
    feed.close()
    thread.join(5)
    known = FrameFeed(frames(3, MiB))
    assert [known.get(k).index for k in range(3)] == [0, 1, 2] and known.get(3) is None
