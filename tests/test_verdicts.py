"""Nothing hides a verdict: archives that change mid-run, failures that must end every wait,
torn ledgers, errors after corruption, bit rot in a frame header, and the exit-code contract."""
from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest

from archcheck import api
from archcheck.status import PRECEDENCE, ExitCode
from conftest import ROOT, cli, maker

MiB = 1024 * 1024
DRIVER = Path(__file__).with_name("change_driver.py")


def drive(cases: list[dict], timeout: float = 240, **env_vars: str) -> list[dict]:
    """Run the cases in one driver process; a hang fails here, by the timeout."""
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(ROOT / "src"), os.environ.get("PYTHONPATH", "")]),
           **env_vars}
    run = subprocess.run([sys.executable, DRIVER, json.dumps(cases)], capture_output=True, text=True,
                         timeout=timeout, env=env)
    assert run.returncode == 0, run.stderr[-3000:]
    return [json.loads(line) for line in run.stdout.splitlines()]


# --- case 2: an archive that changes during the run ------------------------------------------------

KINDS = {  # how each change is described
    "replace": "replaced by another file",
    "rewrite": "its inode changed (ctime",
    "append": "grew by 3145728 bytes",
    "truncate": "shrank by",
    "touch": "modified (mtime)",
}
MOMENTS = {"start": 0.0, "middle": 0.5, "end": 1.0}


@pytest.mark.parametrize("name", ["gnu.tar", "multi.tar.zst"])
def test_a_change_at_any_moment_is_source_changed_never_intact_never_corruption(fx, tmp_path, name):
    cases = []
    for kind in KINDS:
        for moment, at in MOMENTS.items():
            archive = tmp_path / f"{kind}-{moment}-{name}"
            shutil.copyfile(fx / name, archive)
            cases.append({"archive": str(archive), "state": str(tmp_path / f"state-{kind}-{moment}"), "kind": kind,
                          "at": at, "other": str(fx / ("pax.tar" if name.endswith(".tar") else "single.tar.zst"))})
    control = tmp_path / f"control-{name}"
    shutil.copyfile(fx / name, control)
    cases.append({"archive": str(control), "state": str(tmp_path / "state-control"), "kind": "none", "at": 0.5})
    *changed, unchanged = drive(cases)
    assert unchanged["verdict"] == "intact" and unchanged["exit"] == 0 and unchanged["sealed"]["verdict"] == "intact"
    for outcome in changed:
        kind, label = outcome["case"]["kind"], f"{outcome['case']['kind']} at {outcome['case']['at']}"
        assert outcome["fired"], label  # the change really happened during the run
        assert outcome["verdict"] == "incomplete" and outcome["exit"] == 3, label
        assert outcome["statuses"] == ["changed"], label
        assert not [f for f in outcome["findings"] if f[1] == "corruption"], (label, outcome["findings"])
        [what] = [f[2]["what"] for f in outcome["findings"] if f[0] == "SOURCE_CHANGED"]
        assert KINDS[kind] in what, (label, what)
        sealed = outcome["sealed"]  # the drill ended: its report says what happened, never "intact"
        assert sealed["verdict"] == "incomplete" and sealed["codes"] == ["SOURCE_CHANGED"], label


def test_a_raw_task_on_a_replaced_file_never_counts(fx, tmp_path):
    """Each raw task checks the file it opens against the stamp the run was planned with."""
    from archcheck.segments import Segment
    from archcheck.sources import open_source
    from archcheck.worker import hash_segment
    archive = tmp_path / "a.tar"
    shutil.copyfile(fx / "gnu.tar", archive)
    ref = open_source(archive).ref()
    assert hash_segment(ref, Segment(0, 0, 8 * MiB, "n")).leaves
    shutil.copyfile(fx / "pax.tar", tmp_path / "b.tar")
    os.rename(tmp_path / "b.tar", archive)
    result = hash_segment(ref, Segment(0, 0, 8 * MiB, "n"))
    assert result.changed == "replaced by another file" and not result.leaves


# --- case 1: every failure ends the wait it feeds -------------------------------------------------

@pytest.fixture(scope="module")
def big_multi(tmp_path_factory):
    """A 180 MB multi-frame archive: long enough to be cut while its frames decode."""
    out = tmp_path_factory.mktemp("big")
    tree = out / "tree"
    tree.mkdir()
    rnd = __import__("random").Random(3)
    for i in range(12):
        (tree / f"f{i:02d}.bin").write_bytes(rnd.randbytes(15 * MiB))
    subprocess.run(["tar", "-C", tree, "-cf", out / "big.tar", "."], check=True)
    subprocess.run(["pzstd", "-q", "-p", "2", "-1", out / "big.tar", "-o", out / "big.tar.zst"], check=True)
    shutil.rmtree(tree)
    return out


@pytest.fixture(scope="module")
def dense(tmp_path_factory):
    """A multi-frame archive of two-letter noise (an eighth of it in zstd): hashing it takes a
    moment, decoding and walking it several times longer, so a run stopped midway has hashed it
    all and walked only a part."""
    out = tmp_path_factory.mktemp("dense")
    tree = out / "tree"
    tree.mkdir()
    letters = bytes.maketrans(bytes(range(256)), b"ab" * 128)
    for i in range(32):
        (tree / f"f{i:02d}.txt").write_bytes(os.urandom(8 * MiB).translate(letters))
    subprocess.run(["tar", "-C", tree, "-cf", out / "dense.tar", "."], check=True)
    subprocess.run(["pzstd", "-q", "-p", "2", "-3", out / "dense.tar", "-o", out / "dense.tar.zst"], check=True)
    shutil.rmtree(tree)
    (out / "dense.tar").unlink()
    return out / "dense.tar.zst"


@pytest.mark.parametrize("at", [0.05, 0.3, 0.6])
@pytest.mark.parametrize("name", ["big.tar.zst", "big.tar"])
def test_an_archive_cut_while_its_frames_decode_ends_by_itself(big_multi, tmp_path, at, name):
    """A plain tar is read in place, mapped: a worker that touches pages cut off dies (SIGBUS),
    and the change explains it."""
    archive = tmp_path / name
    shutil.copyfile(big_multi / name, archive)
    started = time.monotonic()
    [outcome] = drive([{"archive": str(archive), "state": str(tmp_path / "s"), "kind": "truncate", "at": at}],
                      timeout=60)
    assert time.monotonic() - started < 60
    assert outcome["fired"] and outcome["exit"] == 3 and outcome["statuses"] == ["changed"]
    assert [f[0] for f in outcome["findings"]] == ["SOURCE_CHANGED"]


def test_a_decoder_that_fails_hands_its_failure_on(fx):
    """A lane thread that raises (a bug, a reader gone wrong) ends the walk with the failure."""
    from archcheck.layers.decoding import DecoderFailed
    from archcheck.layers.stream import StreamCheck
    from archcheck.sources import open_source

    reader = open_source(fx / "multi.tar.zst").ref().open()
    real = reader.pread

    def failing(offset, length):
        if threading.current_thread().name.startswith("archcheck-lane"):  # not the frame walk
            raise RuntimeError("the reader broke")
        return real(offset, length)

    reader.pread = failing
    check = StreamCheck(reader, "x", codec="zstd", check_tar=True, threads=2)
    started = time.monotonic()
    with pytest.raises(DecoderFailed, match="RuntimeError: the reader broke"):
        check.run()
    assert time.monotonic() - started < 10
    reader.close()


def test_a_lane_that_fails_before_its_first_frame_hands_its_failure_on(fx, monkeypatch):
    """A lane scans every frame of the feed for its own: one that fails before it has taken
    one still ends the run with the failure (before, the reader would wait on it for ever)."""
    from archcheck.layers.decoding import DecoderFailed, FrameFeed
    from archcheck.layers.stream import StreamCheck
    from archcheck.sources import open_source

    take = FrameFeed.take

    def failing(self, k):
        if threading.current_thread().name == "archcheck-lane-1":
            raise RuntimeError("the lane broke")
        return take(self, k)

    monkeypatch.setattr(FrameFeed, "take", failing)
    reader = open_source(fx / "multi.tar.zst").ref().open()
    started = time.monotonic()
    with pytest.raises(DecoderFailed, match="RuntimeError: the lane broke"):
        StreamCheck(reader, "x", codec="zstd", check_tar=True, threads=2).run()
    assert time.monotonic() - started < 10
    reader.close()


def _many_frames(tmp_path, garbage: bytes = b"") -> Path:
    """120 frames of 64 KiB without size notes (the walk follows each one's blocks), with
    ``garbage`` after the second."""
    rnd = __import__("random").Random(5)
    frames = [subprocess.run(["zstd", "-q", "-c", "-1"], input=rnd.randbytes(64 * 1024), capture_output=True,
                             check=True).stdout for _ in range(120)]
    archive = tmp_path / "many.zst"
    archive.write_bytes(frames[0] + frames[1] + garbage + b"".join(frames[2:]))
    return archive


def _stopped_with_a_slow_walk(archive: Path, resume_from=None) -> float:
    """Seconds from the start of a stream check whose walk takes 6 s and more to its
    StreamStopped, the stop being set after 0.5 s."""
    from archcheck.layers.stream import StreamCheck, StreamStopped
    from archcheck.sources import open_source

    reader = open_source(archive).ref().open()
    real = reader.pread
    walks = ("archcheck-frame-walk", threading.current_thread().name)  # beside the decoders, or before them

    def slow_walk(offset, length):
        if threading.current_thread().name in walks:
            time.sleep(0.05)
        return real(offset, length)

    reader.pread = slow_walk
    stop = threading.Event()
    check = StreamCheck(reader, "x", codec="zstd", check_tar=False, threads=2, stop=stop, resume_from=resume_from)
    threading.Timer(0.5, stop.set).start()
    started = time.monotonic()
    try:
        with pytest.raises(StreamStopped):
            check.run()
        return time.monotonic() - started
    finally:
        reader.close()


def test_a_stop_ends_a_frame_walk_the_stream_waits_for(tmp_path):
    """The walk runs beside the decoders; a frame it found damage in makes the stream wait for
    its end. A stop meanwhile ends the walk at its next frame, not at the end of the archive."""
    assert _stopped_with_a_slow_walk(_many_frames(tmp_path, b"garbage between frames")) < 2.5


def test_a_stop_ends_a_walk_that_runs_before_decoding(tmp_path):
    """A seekable file's frames are all walked before decoding begins (the checksums of its seek
    table, at the end, are needed first): a stop ends that walk at its next read."""
    plain = tmp_path / "plain.bin"
    plain.write_bytes(__import__("random").Random(5).randbytes(120 * 64 * 1024))
    maker.seekable(plain, tmp_path / "seekable.zst", frame_size=64 * 1024)  # frames without size notes
    assert _stopped_with_a_slow_walk(tmp_path / "seekable.zst") < 2.5


def test_a_stop_ends_a_resume_while_its_walk_goes_over_the_frames_before_the_checkpoint(tmp_path):
    """A resume hands the lanes nothing until the walk reaches the checkpoint's frame; a stop
    meanwhile is not left waiting for it."""
    from archcheck.layers.stream import StreamCheck
    from archcheck.sources import open_source

    archive = _many_frames(tmp_path)
    checkpoints: list[dict] = []
    reader = open_source(archive).ref().open()
    StreamCheck(reader, "x", codec="zstd", check_tar=False, threads=2, on_checkpoint=checkpoints.append,
                checkpoint_every=0.0, checkpoint_from=0).run()  # one at every piece, however slow the machine
    reader.close()
    assert checkpoints[-1]["frame"] >= 100
    assert _stopped_with_a_slow_walk(archive, resume_from=checkpoints[-1]) < 2.5


def test_a_stop_ends_the_decoding_of_a_frame_at_its_next_piece(tmp_path):
    """A stop (a deadline, a budget's share done, Ctrl-C) ends a one-frame stream at the next
    decoded piece, not at the end of the frame; the lanes end with it."""
    from archcheck.layers.stream import StreamCheck, StreamStopped
    from archcheck.sources import open_source

    size = 48 * 1024 * 1024
    archive = tmp_path / "one.zst"
    archive.write_bytes(subprocess.run(["zstd", "-q", "-c", "-1"], input=__import__("random").Random(6).randbytes(size),
                                       capture_output=True, check=True).stdout)
    reader = open_source(archive).ref().open()
    stop = threading.Event()

    def progress(offset):
        if offset >= 4 * 1024 * 1024:
            stop.set()

    check = StreamCheck(reader, "x", codec="zstd", check_tar=False, threads=2, stop=stop, on_progress=progress)
    with pytest.raises(StreamStopped):
        check.run()
    assert 4 * 1024 * 1024 <= check.uoff < size // 2
    assert not [t for t in threading.enumerate() if t.name.startswith(("archcheck-lane", "archcheck-frame-walk"))]
    reader.close()


def test_a_panic_in_the_native_core_is_one_clear_line_and_hides_no_verdict(fx, tmp_path):
    """A bug in the core (a failpoint stands in for it) ends the archive's check in its worker:
    one line saying where it panicked, no traceback, exit 11; and what was found before the
    panic (garbage after the last frame, found by the frame walk) is reported and wins."""
    clean = cli("verify", fx / "multi.tar.zst", "--state-dir", tmp_path / "a",
                env={"ARCHCHECK_FAILPOINT": "native-panic"})
    assert clean.returncode == int(ExitCode.INTERNAL), clean.stdout + clean.stderr
    assert "the native core panicked: failpoint native-panic at " in clean.stderr
    assert "Traceback" not in clean.stdout + clean.stderr and "panicked at" not in clean.stderr
    assert "(1 failed)" in clean.stdout
    garbage = tmp_path / "garbage.tar.zst"
    garbage.write_bytes((fx / "multi.tar.zst").read_bytes() + b"not a frame")
    run = cli("verify", garbage, "--state-dir", tmp_path / "b", "--report", tmp_path / "r.json",
              env={"ARCHCHECK_FAILPOINT": "native-panic"})
    assert run.returncode == int(ExitCode.CORRUPT), run.stdout + run.stderr
    assert "ZSTD_TRAILING_GARBAGE" in run.stdout and "the native core panicked" in run.stderr
    [archive] = json.loads((tmp_path / "r.json").read_text())["archives"]
    [finding] = [f for f in archive["findings"] if f["category"] == "corruption"]
    size = garbage.stat().st_size
    assert finding["code"] == "ZSTD_TRAILING_GARBAGE" and finding["location"]["byte_range"] == [size - 11, size]


def test_killed_workers_end_the_run_with_their_own_code_and_hide_no_verdict(big_multi, tmp_path, fx):
    """SIGKILL the pool's processes mid-run: the run ends (no hang), says a worker died, and the
    archive verified before it keeps its verdict; alone, the drill exits 10 and resumes."""
    archive = tmp_path / "big.tar.zst"
    shutil.copyfile(big_multi / "big.tar.zst", archive)
    bad = tmp_path / "bad.tar"
    data = bytearray((fx / "gnu.tar").read_bytes())
    data[600] ^= 0xFF  # inside the first member's header
    bad.write_bytes(bytes(data))
    after_corruption, alone = drive([
        {"archive": str(archive), "before": [str(bad)], "state": str(tmp_path / "s1"), "kind": "kill-workers", "at": 0.3},
        {"archive": str(archive), "state": str(tmp_path / "s2"), "kind": "kill-workers", "at": 0.3}], timeout=120)
    assert after_corruption["statuses"] == ["complete", "failed"] and "a worker process died" in after_corruption["notes"][1]
    assert after_corruption["exit"] == ExitCode.CORRUPT and after_corruption["verdict"] == "corrupt"
    assert "TAR_HEADER_CHECKSUM" in [f[0] for f in after_corruption["findings"]]
    assert alone["statuses"] == ["failed"] and alone["exit"] == ExitCode.WORKER_FAILED and alone["drill"] == "failed"
    again = cli("resume", "drill-1", "--state-dir", tmp_path / "s2", timeout=120)
    assert again.returncode == 0 and "drill-1  complete, INTACT" in again.stdout


# --- case 4: an error after corruption hides nothing ----------------------------------------------

def test_every_archive_gets_its_verdict_whatever_fails_after_it(fx, tmp_path, damaged):
    bad = damaged("multi.tar.zst", at=5000, xor=0x40)
    gone = tmp_path / "gone.tar"
    shutil.copyfile(fx / "gnu.tar", gone)
    fine = fx / "pax.tar"
    state = tmp_path / "s"

    def remove_the_second(done, total):
        gone.unlink(missing_ok=True)

    result = api.run_drill([bad, gone, fine], state=state, on_progress=remove_the_second)
    statuses = [(Path(e.path).name, e.status) for e in result.drill.archives]
    assert statuses == [("damaged-multi.tar.zst", "complete"), ("gone.tar", "failed"), ("pax.tar", "complete")]
    assert result.verifications[0][1].verdict == "corrupt" and result.verifications[2][1].verdict == "intact"
    assert result.drill.archives[1].exit_code == ExitCode.UNUSABLE and "no such file" in result.drill.archives[1].note
    assert result.exit_code == ExitCode.CORRUPT  # corruption first
    assert result.drill.status == "failed" and result.drill.sealed is None  # resume retries the failed one


def test_an_archive_that_cannot_be_verified_alone_exits_with_its_code(fx, tmp_path):
    gone = tmp_path / "gone.tar"
    shutil.copy2(fx / "gnu.tar", gone)
    result = api.run_drill([fx / "pax.tar", gone], state=tmp_path / "s",
                           on_progress=lambda d, t: gone.unlink(missing_ok=True))  # gone before its turn
    assert [a.status for a in result.drill.archives] == ["complete", "failed"]
    assert result.exit_code == ExitCode.UNUSABLE and result.verdict == "incomplete"
    shutil.copy2(fx / "gnu.tar", gone)  # back as it was: resume verifies what failed, and only that
    again = api.resume(result.drill.id, state=tmp_path / "s")
    assert [a.status for a in again.drill.archives] == ["complete", "complete"] and again.exit_code == 0


# --- case 5: bit rot in a frame header ------------------------------------------------------------

def _window_descriptor(path: Path) -> int:
    """Offset of the first zstd frame's Window_Descriptor (a frame that has one)."""
    data = path.read_bytes()
    pos = 0
    while True:
        magic = int.from_bytes(data[pos:pos + 4], "little")
        if magic == 0xFD2FB528:
            assert not data[pos + 4] & 0x20, "single-segment frames have no window descriptor"
            return pos + 5
        pos += 8 + int.from_bytes(data[pos + 4:pos + 8], "little")  # a skippable frame


def test_a_window_flipped_beyond_the_format_is_corruption_at_its_frame(fx, tmp_path, damaged):
    wd = _window_descriptor(fx / "long.tar.zst")  # windowLog 31 (zstd --long=31 from a pipe)
    assert (fx / "long.tar.zst").read_bytes()[wd] >> 3 == 21
    path = damaged("long.tar.zst", at=wd, xor=0x40)  # exponent 21 -> 29: a 512 TiB window
    result = api.verify(path, state=tmp_path / "s")
    [bad] = [f for f in result.findings if f.code == "ZSTD_BAD_WINDOW"]
    assert bad.location.frame == 0 and bad.location.byte_range == (0, 6)
    assert "asks for a 512.0 TiB window, beyond what zstd makes or decodes" in bad.message or \
        "window, beyond what zstd makes or decodes (2 GiB, windowLog 31)" in bad.message
    assert result.verdict == "corrupt" and result.exit_code == 1
    assert result.manifest.status == "complete"  # a finding, not a usage error leaving it interrupted
    run = cli("verify", path, "--state-dir", tmp_path / "c")
    assert run.returncode == 1 and "ZSTD_BAD_WINDOW" in run.stdout and run.stderr == ""


def test_a_window_larger_than_the_content_is_corruption_but_the_frame_still_decodes(fx, tmp_path, damaged):
    # zstd compressing a file states its content size (24.6 MiB) with a 2 MiB window
    wd = _window_descriptor(fx / "single.tar.zst")
    original = (fx / "single.tar.zst").read_bytes()[wd]
    path = damaged("single.tar.zst", at=wd, data=bytes([(20 << 3) | (original & 7)]))  # a 1 GiB window
    result = api.verify(path, state=tmp_path / "s")
    [bad] = [f for f in result.findings if f.code == "ZSTD_BAD_WINDOW"]
    assert "asks for a 1 GiB window, while the frame holds 24.6 MiB" in bad.message and bad.location.frame == 0
    assert result.verdict == "corrupt"
    clean = api.verify(fx / "single.tar.zst", state=tmp_path / "c")
    assert list(result.members()) == list(clean.members())  # decoded and checked all the same
    assert [f.code for f in result.findings if f.category.value == "corruption"] == ["ZSTD_BAD_WINDOW"]


# --- case 3: a torn ledger never hides a verdict --------------------------------------------------

def test_a_torn_ledger_line_is_set_aside_and_later_drills_report_and_seal(fx, tmp_path, damaged):
    state = tmp_path / "s"
    assert cli("verify", fx / "pax.tar", "--state-dir", state).returncode == 0
    ledger = state / "audit" / "ledger.jsonl"
    with open(ledger, "ab") as f:
        f.write(b'{"seq":2,"time":"2026-12-0')  # a crash mid-append
    audit = cli("audit", "verify", "--state-dir", state)
    assert audit.returncode == 0 and "crash" in audit.stdout and "TAMPERED" not in audit.stdout
    bad = damaged("multi.tar.zst", at=5000, xor=0x40)
    run = cli("verify", bad, "--state-dir", state, "--report", tmp_path / "r.json")
    assert run.returncode == 1 and "verdict   CORRUPT" in run.stdout and "set aside a torn ledger line" in run.stderr
    assert json.loads((tmp_path / "r.json").read_text())["verdict"] == "corrupt"
    assert cli("audit", "verify", "--state-dir", state).returncode == 0
    assert list((state / "audit" / "torn").iterdir())


def test_when_sealing_fails_the_verdict_is_still_printed_and_reported(fx, tmp_path, damaged):
    state = tmp_path / "s"
    assert cli("verify", fx / "pax.tar", "--state-dir", state).returncode == 0
    ledger = state / "audit" / "ledger.jsonl"
    ledger.write_bytes(ledger.read_bytes() + b"garbage that is not an entry\n")  # damage, not a crash
    bad = damaged("multi.tar.zst", at=5000, xor=0x40)
    run = cli("verify", bad, "--state-dir", state, "--report", tmp_path / "r.json")
    assert run.returncode == 1  # corruption outranks the failed seal
    assert "verdict   CORRUPT" in run.stdout and "ZSTD_" in run.stdout and "not sealed" in run.stderr
    assert json.loads((tmp_path / "r.json").read_text())["verdict"] == "corrupt"
    run = cli("verify", fx / "ustar.tar", "--state-dir", state)
    assert run.returncode == ExitCode.SEAL_FAILED and "verdict   INTACT" in run.stdout
    assert cli("audit", "repair", "--state-dir", state).returncode == 1  # damage is never repaired away


# --- case 7: exit codes that can be told apart ----------------------------------------------------

def test_exit_codes_in_the_readme_and_help_match_the_code():
    readme = (ROOT / "README.md").read_text()
    table = dict(re.findall(r"^\| (\d+) \| ([^|]+?) \|", readme.split("### Exit codes", 1)[1], re.M))
    assert {int(k): v for k, v in table.items()} == {int(c): c.meaning for c in ExitCode}
    assert f"first of {' > '.join(str(int(c)) for c in PRECEDENCE)}" in readme.replace("\n", " ")
    shown = cli("--help").stdout
    listed = dict(re.findall(r"^\s+(\d+)\s{2}(.+?)\s*$", shown.split("Exit codes:", 1)[1].split("When several")[0], re.M))
    assert {int(k): v for k, v in listed.items()} == {int(c): c.meaning for c in ExitCode}
    assert " > ".join(str(int(c)) for c in PRECEDENCE) in shown


def test_precedence_ranks_every_code_once():
    assert sorted(PRECEDENCE) == sorted(ExitCode) and PRECEDENCE[0] is ExitCode.CORRUPT


# --- case 6: resume reads again what it would otherwise trust ---------------------------------------

def _interrupted(tmp_path: Path, source: Path, at: float, wanted) -> tuple[Path, Path, object, object]:
    """Stop a run by SIGINT once its progress passes ``at``, until the stop lands where
    ``wanted(archive, manifest)`` finds what the test needs (its answer is returned too): where
    raw hashing and the stream stand at a stop depends on how busy the machine is, so a stop is
    tried at a few points near ``at`` rather than trusted to land right once."""
    from archcheck.manifest import load
    landed = []
    for attempt, moment in enumerate((at, at - 0.03, at + 0.05, at - 0.05, at + 0.1)):
        folder = tmp_path / f"try{attempt}"
        folder.mkdir()
        archive, state = folder / source.name, folder / "s"
        shutil.copyfile(source, archive)
        [outcome] = drive([{"archive": str(archive), "state": str(state), "kind": "interrupt", "at": moment}],
                          ARCHCHECK_SAVE_INTERVAL="0.01")  # checkpoints all along the short run
        if outcome["drill"] != "interrupted":
            landed.append((moment, outcome["drill"]))
            continue
        manifest = load(state / "drills" / "drill-1" / "archives" / "0001" / "manifest.json")
        found = wanted(archive, manifest)
        if found is not None:
            return archive, state, manifest, found
        landed.append((moment, manifest.stream.covered(manifest.archive.size),
                       [s.status for s in manifest.segments]))
    raise AssertionError(f"no stop landed where the test needs it: {landed}")


def _past_the_prefix(archive: Path, manifest):
    """A segment the raw layer verified, and a spot in it the stream has yet to walk (away from
    the first and last 64 KiB, which the archive's identity covers); None if there is none."""
    size = archive.stat().st_size
    covered = manifest.stream.covered(size)
    for segment in manifest.segments:
        spot = max(covered, segment.offset, 65536) + 200_000
        if segment.status == "done" and spot < min(segment.offset + segment.length, size - 65536):
            return segment, spot
    return None


def _rot(path: Path, offset: int) -> None:
    """Flip a bit and put the times back: size, mtime, head and tail unchanged."""
    st = os.stat(path)
    with open(path, "r+b") as f:
        f.seek(offset)
        byte = f.read(1)[0]
        f.seek(offset)
        f.write(bytes([byte ^ 0x08]))
    os.utime(path, ns=(st.st_atime_ns, st.st_mtime_ns))


def _in_the_prefix(archive: Path, manifest) -> int | None:
    """A spot inside a member's content (no tar checksum covers it) that the stream walked and
    the raw layer hashed before the stop; None if there is none."""
    import tarfile
    covered = manifest.stream.covered(archive.stat().st_size)  # to its checkpoint, or all of it
    with tarfile.open(archive) as t:
        contents = [(m.offset_data, m.offset_data + m.size) for m in t if m.size]
    spots = [spot for segment in manifest.segments if segment.status == "done"
             for spot in [max(segment.offset, 65536) + 4096]
             if spot < min(segment.offset + segment.length, covered - 100)
             and any(start <= spot < end for start, end in contents)]
    return spots[-1] if spots else None


def test_rot_in_the_verified_prefix_is_found_on_resume_and_located(big_multi, tmp_path):
    archive, state, manifest, spot = _interrupted(tmp_path, big_multi / "big.tar", 0.5, _in_the_prefix)
    done = [s for s in manifest.segments if s.offset <= spot < s.offset + s.length]
    _rot(archive, spot)
    run = cli("resume", "drill-1", "--state-dir", state, "--report", tmp_path / "r.json")
    assert run.returncode == 1, run.stdout + run.stderr
    report = json.loads((tmp_path / "r.json").read_text())
    [changed] = [f for a in report["archives"] for f in a["findings"] if f["code"] == "RAW_CHANGED"]
    leaf = spot - spot % (8 * MiB)
    assert changed["location"]["byte_range"] == [leaf, leaf + 8 * MiB] and changed["category"] == "corruption"
    assert changed["details"]["first_read"] == done[0].read_at
    assert report["archives"][0]["summary"]["resumes"][0]["changed_segments"] == 1
    fresh = api.verify(archive, state=tmp_path / "fresh", segment_size=64 * MiB)
    assert report["archives"][0]["tree_root"] == fresh.manifest.tree_root  # the file as it is now


def test_rot_past_the_prefix_is_corruption_at_the_deepest_layer_not_unstable(dense, tmp_path):
    archive, state, manifest, (segment, spot) = _interrupted(tmp_path, dense, 0.55, _past_the_prefix)
    _rot(archive, spot)
    run = cli("resume", "drill-1", "--state-dir", state, "--report", tmp_path / "r.json")
    assert run.returncode == 1 and "SOURCE_UNSTABLE" not in run.stdout, run.stdout
    findings = json.loads((tmp_path / "r.json").read_text())["archives"][0]["findings"]
    deep = [f for f in findings if f["code"].startswith("ZSTD_") and f["category"] == "corruption"]
    assert deep and all(f["details"]["changed_since"] == segment.read_at for f in deep)
    assert not [f for f in findings if f["code"] == "RAW_CHANGED"]  # folded into the deeper finding


def test_trust_verified_skips_the_reread_and_the_report_says_so(dense, tmp_path):
    archive, state, manifest, (segment, spot) = _interrupted(tmp_path, dense, 0.55, _past_the_prefix)
    _rot(archive, spot)  # where the stream has yet to go
    run = cli("resume", "drill-1", "--state-dir", state, "--trust-verified", "--report", tmp_path / "r.json")
    assert "trusted   what earlier runs verified was not read again" in run.stdout
    report = json.loads((tmp_path / "r.json").read_text())["archives"][0]
    assert report["trusted_without_recheck"] is True and report["summary"]["resumes"][0]["rechecked"] is False
    # the stream still meets the damage; the confirming reads agree with each other, not with
    # what the earlier run hashed: the bytes changed since, and stay changed
    assert run.returncode == 1 and "SOURCE_UNSTABLE" not in run.stdout
    deep = [f for f in report["findings"] if f["category"] == "corruption"]
    assert deep and all(f["details"]["changed_since"] == segment.read_at for f in deep)


# --- case 8: the smaller ones -----------------------------------------------------------------------

def test_paths_a_restore_would_not_create_as_written_are_warnings(tmp_path):
    root = tmp_path / "src"
    (root / "a" / "b").mkdir(parents=True)
    (root / "a" / "f").write_text("x")
    os.link(root / "a" / "f", root / "a" / "b" / "g")
    tar = tmp_path / "unsafe.tar"
    # -P keeps what GNU tar would otherwise strip: an absolute name, '..' components
    subprocess.run(["tar", "-P", "--format=gnu", "-C", root / "a" / "b", "-cf", tar, "../f", "g", str(root / "a" / "f")],
                   check=True)
    result = api.verify(tar, state=tmp_path / "s")
    hazards = sorted((dict(f.details)["what"], dict(f.details)["path"], f.location.member, f.location.byte_range)
                     for f in result.findings if f.code == "TAR_UNSAFE_PATH")
    offsets = {name: header for name, (header, _) in _raw_members(tar).items()}
    assert hazards == sorted([
        ("member name", "../f", "../f", (offsets["../f"], offsets["../f"] + 512)),
        ("hard link target", "../f", "g", (offsets["g"], offsets["g"] + 512)),
        ("member name", str(root / "a" / "f"), str(root / "a" / "f"),
         (offsets[str(root / "a" / "f")], offsets[str(root / "a" / "f")] + 512)),
    ])
    assert all(f.category.value == "warning" for f in result.findings if f.code == "TAR_UNSAFE_PATH")
    assert result.verdict == "intact" and result.exit_code == 0  # a hazard, not damage
    run = cli("verify", tar, "--state-dir", tmp_path / "c")
    assert run.returncode == 0 and "TAR_UNSAFE_PATH" in run.stdout and "3 members" in run.stdout


def _raw_members(path: Path) -> dict:
    import tarfile
    with tarfile.open(path) as t:  # tarfile keeps names as written
        return {m.name: (m.offset, m.offset_data) for m in t}


def test_one_member_is_one_member(tmp_path):
    (tmp_path / "only.txt").write_text("x")
    tar = tmp_path / "one.tar"
    subprocess.run(["tar", "-C", tmp_path, "-cf", tar, "only.txt"], check=True)
    run = cli("verify", tar, "--state-dir", tmp_path / "s")
    assert run.returncode == 0 and "1 member)" in run.stdout and "1 members" not in run.stdout
