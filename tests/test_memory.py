"""Memory is bounded by the budget, not the archive: verifying an archive 24 times the budget
costs no process more memory (by its high-water mark) than one of 4 times the budget, which
already fills every buffer the budget allows, and the whole tree (coordinator, forkserver,
workers) stays under a fixed bound."""
from __future__ import annotations

import json
import re
import os
import struct
import subprocess
import sys
import time

import pytest
import xxhash

from conftest import ARCHCHECK, ROOT

sys.path.insert(0, str(ROOT / "bench"))
from proctree import descendants, tree_rss  # noqa: E402

MiB = 1024 * 1024
BUDGET = 32 * MiB
SIZES = {"medium": 4 * BUDGET, "big": 24 * BUDGET}  # bytes of member content
NOISE = 16 * MiB  # malloc arenas of the decode threads, and sampling jitter between runs


def peak_rss(args: list[str]) -> tuple[int, subprocess.CompletedProcess]:
    peak, _, run = peak_memory(args)
    return peak, run


def peak_memory(args: list[str]) -> tuple[int, int, subprocess.CompletedProcess]:
    """(peak summed RSS of the tree, as sampled; the largest high-water mark of one process, which
    the kernel keeps, so a short peak between two samples is not missed; the run)."""
    import tempfile
    with tempfile.TemporaryFile("w+") as out, tempfile.TemporaryFile("w+") as err:  # (a pipe fills, and blocks it)
        proc = subprocess.Popen([*ARCHCHECK, *args], stdout=out, stderr=err, text=True)
        peak, high = 0, {}
        while proc.poll() is None:
            peak = max(peak, tree_rss(proc.pid))
            for pid in [proc.pid, *descendants(proc.pid)]:
                high[pid] = max(high.get(pid, 0), _status_kib(pid, "VmHWM:") * 1024)
            time.sleep(0.02)
        out.seek(0)
        err.seek(0)
        return peak, max(high.values(), default=0), subprocess.CompletedProcess(args, proc.returncode, out.read(),
                                                                               err.read())


def _status_kib(pid: int, field: str) -> int:
    try:
        with open(f"/proc/{pid}/status") as f:
            return next((int(line.split()[1]) for line in f if line.startswith(field)), 0)
    except OSError:
        return 0


@pytest.fixture(scope="module")
def archives(tmp_path_factory):
    out = tmp_path_factory.mktemp("memory")
    chunk = os.urandom(4 * MiB)
    for name, size in SIZES.items():
        tree = out / name
        tree.mkdir()
        for i in range(size // (64 * MiB)):  # 64 MiB files of varied, incompressible content
            with open(tree / f"file-{i:02d}", "wb") as f:
                for j in range(16):
                    f.write(bytes([i, j]) + chunk[2:])
        subprocess.run(["tar", "-cf", out / f"{name}.tar", "-C", tree, "."], check=True)
        subprocess.run(["pzstd", "-q", "-1", "-p", "2", out / f"{name}.tar", "-o", out / f"{name}.tar.zst"],
                       check=True)
    return out


@pytest.mark.slow
@pytest.mark.parametrize("suffix", [".tar", ".tar.zst"])
def test_peak_rss_does_not_grow_with_the_archive(archives, tmp_path, suffix):
    big = archives / f"big{suffix}"
    assert big.stat().st_size >= 20 * BUDGET
    options = ["--max-memory", "32M", "--segment-size", "8M", "--workers", "2", "--no-progress",
               "--state-dir", tmp_path]
    peaks, highs = {}, {}
    for name in SIZES:
        peaks[name], highs[name], run = peak_memory(["verify", archives / f"{name}{suffix}", *options])
        assert run.returncode == 0, run.stderr
        assert "verdict   INTACT" in run.stdout
    print(f"{suffix}: peak RSS {peaks['medium'] // MiB} MiB for {SIZES['medium'] // MiB} MiB, "
          f"{peaks['big'] // MiB} MiB for {big.stat().st_size // MiB} MiB; largest process "
          f"{highs['medium'] // MiB} and {highs['big'] // MiB} MiB", file=sys.stderr)
    # per process, by high-water mark: a short run may start one worker fewer (the pool starts
    # them on demand), and its peak can fall between two samples; growth would show in one process
    assert highs["big"] <= highs["medium"] + NOISE
    assert peaks["big"] < 300 * MiB


@pytest.mark.slow
def test_a_bomb_of_zeros_costs_time_not_memory(tmp_path):
    """2 GiB of zeros (64 times the budget) in a few hundred KiB of zstd: decoded output is
    streamed, never held."""
    tree = tmp_path / "bomb"
    tree.mkdir()
    with open(tree / "zeros", "wb") as f:
        f.truncate(2 * 1024 * MiB)
    tar = subprocess.Popen(["tar", "-cf", "-", "-C", tree, "zeros"], stdout=subprocess.PIPE)
    with open(tmp_path / "bomb.tar.zst", "wb") as out:
        subprocess.run(["zstd", "-q", "-1", "-c"], stdin=tar.stdout, stdout=out, check=True)
    assert tar.wait() == 0
    bomb = tmp_path / "bomb.tar.zst"
    assert bomb.stat().st_size < 1 * MiB
    peak, run = peak_rss(["verify", bomb, "--max-memory", "32M", "--no-progress", "--state-dir", tmp_path / "s"])
    assert run.returncode == 0, run.stderr
    assert "verdict   INTACT" in run.stdout
    print(f"bomb: {bomb.stat().st_size // 1024} KiB decoding to 2 GiB, peak RSS {peak // MiB} MiB", file=sys.stderr)
    assert peak < 200 * MiB


def test_megabyte_names_cost_neither_memory_nor_output(tmp_path):
    """40 members named '../N' and a MiB of escape bytes (pax paths; 2 KiB of zstd): each is a
    restore hazard, reported with its name cut at 4096 characters (with its length and digest),
    in findings and the member list alike; memory does not grow with the names."""
    import io
    import json
    import tarfile
    raw = io.BytesIO()
    with tarfile.open(fileobj=raw, mode="w", format=tarfile.PAX_FORMAT) as tar:
        for i in range(40):
            info = tarfile.TarInfo(f"../{i}" + "\x1b" * MiB)
            info.size = 1
            tar.addfile(info, io.BytesIO(b"x"))
    archive = tmp_path / "names.tar.zst"
    archive.write_bytes(subprocess.run(["zstd", "-q", "-c"], input=raw.getvalue(), capture_output=True,
                                       check=True).stdout)
    report = tmp_path / "r.json"
    peak, high, run = peak_memory(["verify", archive, "--no-progress", "--state-dir", tmp_path / "s",
                                   "--report", report, "--report-members"])
    assert run.returncode == 0, run.stderr
    assert len(run.stdout) < 40 * 3 * 4 * 4096 and "\x1b" not in run.stdout  # (shown as \\x1b, 4 characters)
    [entry] = json.loads(report.read_text())["archives"]
    hazards = [f for f in entry["findings"] if f["code"] == "TAR_UNSAFE_PATH"]
    assert len(hazards) == 40 and len(entry["members"]) == 40
    cut = re.escape(f"... ({MiB + 4} characters in all, blake3 ") + "[0-9a-f]{16}\\)"
    assert re.fullmatch(re.escape("../0" + "\x1b" * 4092) + cut, hazards[0]["location"]["member"])
    assert hazards[0]["details"]["path"] == hazards[0]["location"]["member"]  # cut once, not again
    # the member list is compared (catalogs, diff, policies): cut names stay distinct
    assert len({m["name"] for m in entry["members"]}) == 40
    assert all(re.fullmatch(r"\.\./\d+\x1b{4091,4092}\.\.\. \(\d+ characters in all, blake3 [0-9a-f]{16}\)", m["name"])
               for m in entry["members"])
    print(f"names: peak RSS {peak // MiB} MiB, largest process {high // MiB} MiB", file=sys.stderr)
    assert high < 200 * MiB  # (one process reached 514 MB for 50 such names)


@pytest.mark.slow
def test_sigterm_stops_cleanly(archives, tmp_path):
    """SIGTERM ends a run as Ctrl-C does: exit 3, the manifest says interrupted, and no worker
    process or shared memory is left behind."""
    import json
    import signal
    shm_before = set(os.listdir("/dev/shm"))
    proc = subprocess.Popen([*ARCHCHECK, "verify", archives / "big.tar.zst", "--workers", "1", "--no-progress",
                             "--state-dir", tmp_path], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                            env={**os.environ, "ARCHCHECK_FAILPOINT": "slow-read"})  # still running when stopped
    deadline = time.monotonic() + 30
    while not list(tmp_path.glob("drills/*/archives/*/manifest.json")) and time.monotonic() < deadline:
        time.sleep(0.02)
    time.sleep(0.3)
    children = descendants(proc.pid)
    proc.send_signal(signal.SIGTERM)
    out, err = proc.communicate(timeout=60)
    assert proc.returncode == 3, err
    assert "interrupted" in err and err.count("\n") == 1
    [manifest] = tmp_path.glob("drills/*/archives/*/manifest.json")
    assert json.loads(manifest.read_text())["status"] == "interrupted"
    assert "archcheck resume drill-1" in out  # the members file stays, for resume
    deadline = time.monotonic() + 10  # the forkserver and resource tracker exit once they see EOF
    while [pid for pid in children if os.path.exists(f"/proc/{pid}")] and time.monotonic() < deadline:
        time.sleep(0.1)
    assert not [pid for pid in children if os.path.exists(f"/proc/{pid}")]
    assert not [name for name in set(os.listdir("/dev/shm")) - shm_before if name.startswith("psm_")]


@pytest.mark.slow
def test_memory_does_not_grow_with_the_number_of_frames(tmp_path):
    """A seekable file of 100,000 small frames costs no process more memory than one of 10,000,
    whole or damaged: the walk, the feed and the stream keep no frame once its row of the frame
    table has left (before, each frame cost about 700 bytes), and the walk runs at most
    AHEAD_FRAMES frames ahead of the decoding. A finding made while decoding waits for the
    walk's to be in; the walk then goes on to the end handing on no frame, and another walk takes
    over from where it stopped (before, every frame after the damage was held). What stays is
    the seek table's 28 bytes a frame (2.5 MB here)."""
    text = b"".join(b"line %06d of a frame's text\n" % i for i in range(160))[:4096]
    frame = subprocess.run(["zstd", "-q", "--no-check", "-c"], input=text, capture_output=True, check=True).stdout
    checksum = xxhash.xxh64_intdigest(text) & 0xFFFFFFFF
    highs = {}
    for count, damaged in ((10_000, None), (100_000, None), (100_000, 50)):
        entries = [struct.pack("<III", len(frame), len(text), checksum ^ (k == damaged)) for k in range(count)]
        table = b"".join(entries) + struct.pack("<IBI", count, 0x80, 0x8F92EAB1)
        archive = tmp_path / f"frames-{count}-{damaged}.zst"
        archive.write_bytes(frame * count + struct.pack("<II", 0x184D2A5E, len(table)) + table)
        report = tmp_path / f"report-{count}-{damaged}.json"
        _, highs[count, damaged], run = peak_memory(["verify", archive, "--layers", "zstd", "--no-progress", "--report",
                                                     report, "--state-dir", tmp_path / f"state-{count}-{damaged}"])
        assert run.returncode == (0 if damaged is None else 1), run.stderr
        [verified] = json.loads(report.read_text())["archives"]
        stream = verified["summary"]["stream"]
        assert (stream["frames"], stream["checksummed_frames"], stream["seekable"]) == (count, count, True)
        findings = [(f["code"], f["location"]["frame"]) for f in verified["findings"]]
        assert findings == ([] if damaged is None else [("ZSTD_SEEK_TABLE_MISMATCH", damaged)])
    print("frames: largest process, MiB: " + ", ".join(f"{count:,} frames{' (damaged)' if damaged else ''} "
                                                        f"{high // MiB}" for (count, damaged), high in highs.items()),
          file=sys.stderr)
    assert max(highs[100_000, None], highs[100_000, 50]) <= highs[10_000, None] + NOISE


@pytest.mark.slow
def test_a_run_of_skippable_frames_costs_time_not_memory(tmp_path):
    """Eight bytes make a skippable frame: 300,000 of them (2.4 MB) before one zstd frame cost no
    process more memory than 10,000 do. Frames without content pace the walk as the others do
    (before, they were held until the next frame with content ended: 1,000,000 took 471 MiB)."""
    frame = subprocess.run(["zstd", "-q", "-c"], input=b"archcheck " * 100, capture_output=True, check=True).stdout
    highs = {}
    for count in (10_000, 300_000):
        archive = tmp_path / f"skippable-{count}.zst"
        archive.write_bytes(struct.pack("<II", 0x184D2A50, 0) * count + frame)
        report = tmp_path / f"report-{count}.json"
        _, highs[count], run = peak_memory(["verify", archive, "--layers", "zstd", "--no-progress", "--report", report,
                                            "--state-dir", tmp_path / f"state-{count}"])
        assert run.returncode == 0, run.stderr
        [verified] = json.loads(report.read_text())["archives"]
        stream = verified["summary"]["stream"]
        assert (stream["frames"], stream["skippable_frames"], verified["findings"]) == (1, count, [])
    print(f"skippable frames: largest process {highs[10_000] // MiB} MiB for 10,000, {highs[300_000] // MiB} MiB "
          f"for 300,000", file=sys.stderr)
    assert highs[300_000] <= highs[10_000] + NOISE
