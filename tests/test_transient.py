"""Transient faults are retried and never called corruption: a read error that does not repeat
is absorbed, one that repeats makes the run incomplete (exit 3), and damage that reads
differently the second time is SOURCE_UNSTABLE, not corruption."""
from __future__ import annotations

import asyncio
import shutil

import pytest

from archcheck.api import _config
from archcheck.manifest import Manifest, SegmentRecord
from archcheck.pipeline import Run, RunOptions
from archcheck.segments import plan_segments
from archcheck.sources import open_source
from flaky_source import FlakyRef

MiB = 1024 * 1024


def run_with_faults(path, tmp_path, *, faults: int, position: int, mode: str, layers=("raw",)):
    counter = tmp_path / "faults"
    counter.write_text(str(faults))
    source = open_source(path)
    source.ref = lambda: FlakyRef(str(path), str(counter), position, mode)
    options = RunOptions(tuple(layers), 8 * MiB, 256 * MiB, 2, 1 << 31, "xxh3-128")
    fmt = "zstd" if path.suffix == ".zst" else "tar"
    identity = asyncio.run(source.identity())
    manifest = Manifest("test-run", identity, fmt, _config(options),
                        [SegmentRecord.planned(s) for s in plan_segments(source.size, 8 * MiB)])
    asyncio.run(Run(source, manifest, tmp_path / "run" / "manifest.json", options).run())
    return manifest


def test_a_read_error_that_does_not_repeat_is_absorbed(fx, tmp_path):
    manifest = run_with_faults(fx / "gnu.tar", tmp_path, faults=1, position=9 * MiB, mode="error")
    segment = manifest.segments[1]
    assert segment.status == "done" and segment.attempt == 2
    assert manifest.findings == [] and manifest.tree_root


def test_a_read_error_that_repeats_is_transient_not_corruption(fx, tmp_path):
    from archcheck.findings import verdict
    manifest = run_with_faults(fx / "gnu.tar", tmp_path, faults=2, position=9 * MiB, mode="error")
    [finding] = manifest.findings
    assert finding.code == "SOURCE_READ_ERROR" and finding.category.value == "transient"
    assert finding.location.segment == 1 and finding.location.byte_range == (8 * MiB, 16 * MiB)
    assert verdict(manifest.findings) == "incomplete" and manifest.tree_root is None


def test_damage_that_reads_differently_again_is_unstable_not_corruption(fx, tmp_path):
    # the first two reads of the spot (stream check and raw digest) see a flipped byte; the
    # confirmation re-read sees the true byte
    position = (fx / "multi.tar.zst").stat().st_size // 2
    manifest = run_with_faults(fx / "multi.tar.zst", tmp_path, faults=2, position=position, mode="flip",
                               layers=("raw", "zstd", "tar", "members"))
    corrupt = [f for f in manifest.findings if f.category.value == "corruption"]
    unstable = [f for f in manifest.findings if f.code == "SOURCE_UNSTABLE"]
    assert corrupt == [] and len(unstable) == 1
    assert unstable[0].location.byte_range[0] <= position < unstable[0].location.byte_range[1]


@pytest.mark.parametrize("layers", [("raw",), ("tar", "members")])
def test_a_file_cut_under_a_workers_map_is_a_change_not_a_crash(fx, tmp_path, layers, monkeypatch):
    """Local reads are mapped: a file cut short while a worker holds its pages kills that worker
    (SIGBUS) as it touches them. The run reports the change, not a failed worker."""
    from archcheck.errors import WorkerCrashed
    from archcheck.findings import verdict
    archive = tmp_path / "cut.tar"
    shutil.copyfile(fx / "gnu.tar", archive)
    crashes: list[str] = []
    real_init = WorkerCrashed.__init__
    monkeypatch.setattr(WorkerCrashed, "__init__", lambda self, *a: crashes.append(a[0]) or real_init(self, *a))
    manifest = run_with_faults(archive, tmp_path, faults=1, position=9 * MiB, mode="cut", layers=layers)
    assert archive.stat().st_size == 9 * MiB  # the cut happened, in the worker, under its map
    assert crashes  # the worker died touching the pages cut off (SIGBUS); a change explains it
    [finding] = manifest.findings
    assert finding.code == "SOURCE_CHANGED" and "shrank by" in dict(finding.details)["what"]
    assert verdict(manifest.findings) == "incomplete"
