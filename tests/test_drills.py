"""Drills: resume that cannot lie, locks, deadlines, budgets across nights, sealed reports."""
from __future__ import annotations

import json
import os
import random
import shutil
import signal
import subprocess
import tarfile
import time
from datetime import datetime, timedelta, timezone
from pathlib import Path

import pytest

from archcheck import api
from archcheck.drills import DrillLock, load_drill
from archcheck.layers.stream import StreamCheck
from archcheck.manifest import load
from archcheck.layers.zstd import walk_frames
from archcheck.sources import open_source
from archcheck.units import Budget
from conftest import ARCHCHECK, cli

MiB = 1024 * 1024


# --- the stream check's checkpoints, in process -------------------------------------------------

def _stream(path: Path, *, resume=None, checkpoints=None, members=None, rows=None):
    """The stream check alone; members and frame-table rows go to lists, as the pipeline's logs
    would take them, and a checkpoint records how much of each it covers."""
    reader = open_source(path).ref().open()
    out = members if members is not None else []
    table = rows if rows is not None else []
    check = StreamCheck(reader, str(path), codec="zstd" if path.suffix == ".zst" else "tar", check_tar=True,
                        on_members=lambda line, count: out.extend(json.loads(line)), on_frames=table.extend,
                        resume_from=resume, checkpoint_every=0, checkpoint_from=0,
                        on_checkpoint=(lambda cp: checkpoints.append((json.loads(json.dumps(cp)), len(out), len(table))))
                        if checkpoints is not None else None)
    try:
        return check.run(), out, table
    finally:
        reader.close()


def _flip(src: Path, dst: Path, seed: int) -> Path:
    data = bytearray(src.read_bytes())
    rnd = random.Random(seed)
    for _ in range(3):
        data[rnd.randrange(len(data))] ^= 1 << rnd.randrange(8)
    dst.write_bytes(bytes(data))
    return dst


@pytest.mark.parametrize("name", ["multi.tar.zst", "single.tar.zst", "seekable.tar.zst", "pax.tar"])
@pytest.mark.parametrize("damage", [None, 1, 2])
def test_resuming_from_any_checkpoint_gives_the_uninterrupted_result(fx, tmp_path, name, damage):
    path = fx / name if damage is None else _flip(fx / name, tmp_path / name, damage)
    checkpoints = []
    whole, members, rows = _stream(path, checkpoints=checkpoints)
    assert checkpoints
    for checkpoint, written, rows_written in checkpoints:
        again, members_again, rows_again = _stream(path, resume=checkpoint, members=list(members[:written]),
                                                   rows=list(rows[:rows_written]))
        assert sorted(map(repr, again.findings)) == sorted(map(repr, whole.findings))
        assert members_again == members
        assert rows_again == rows and again.member_count == whole.member_count


def test_a_resume_keeps_the_member_named_on_a_frame_walk_finding(tmp_path):
    """A frame whose header the walk finds broken is named, while decoding, with the member its
    lost content cuts; a resume walks again, and must put that name back (it used to drop it)."""
    tree = tmp_path / "tree"
    tree.mkdir()
    rnd = random.Random(3)
    for i in range(100):  # frames of 2 MiB: five
        (tree / f"f{i:03d}.bin").write_bytes(rnd.randbytes(rnd.randrange(50_000, 150_000)))
    subprocess.run(["tar", "-C", tree, "-cf", tmp_path / "small.tar", "."], check=True)
    subprocess.run(["pzstd", "-q", "-f", "-p", "2", "-1", tmp_path / "small.tar", "-o", tmp_path / "small.tar.zst"],
                   check=True)
    data = bytearray((tmp_path / "small.tar.zst").read_bytes())
    reader = open_source(tmp_path / "small.tar.zst").ref().open()
    try:
        second = [f for f in walk_frames(reader, "x", 1 << 27, []) if f.kind == "zstd"][1]
    finally:
        reader.close()
    data[second.offset + 4] ^= 0x08  # a reserved bit of its frame header descriptor
    path = tmp_path / "damaged.tar.zst"
    path.write_bytes(bytes(data))
    checkpoints = []
    whole, members, rows = _stream(path, checkpoints=checkpoints)
    [broken] = [f for f in whole.findings if f.code == "ZSTD_RESERVED_BIT"]
    with tarfile.open(tmp_path / "small.tar") as tar:  # the member holding the frame's first byte
        cut = next(m for m in tar if m.offset <= 2 * MiB < m.offset_data + m.size)
    assert broken.location.byte_range == (second.offset, second.offset + 6)
    assert (broken.location.uncompressed_offset, broken.location.member) == (2 * MiB, cut.name)
    later = [(cp, written, rows_written) for cp, written, rows_written in checkpoints if cp["frame"] > second.index]
    assert later and all(cp["walk_named"] for cp, _, _ in later)
    for checkpoint, written, rows_written in later:
        again, _, _ = _stream(path, resume=checkpoint, members=list(members[:written]), rows=list(rows[:rows_written]))
        assert sorted(map(repr, again.findings)) == sorted(map(repr, whole.findings))


def test_a_checkpoint_of_another_core_version_is_not_restored(fx):
    from archcheck.layers.stream import CheckpointMismatch
    checkpoints = []
    _stream(fx / "multi.tar.zst", checkpoints=checkpoints)
    checkpoint, written, rows_written = checkpoints[-1]
    checkpoint["walker"]["version"] += 1  # written by a later core, or by the Python walker (none)
    with pytest.raises(CheckpointMismatch, match="checkpoint"):
        _stream(fx / "multi.tar.zst", resume=checkpoint)
    del checkpoint["walker"]["version"]
    with pytest.raises(CheckpointMismatch, match="a version 0 checkpoint"):
        _stream(fx / "multi.tar.zst", resume=checkpoint)


@pytest.mark.parametrize("level", [None, "-1"])
def test_a_checkpoint_of_frames_this_archive_lacks_is_not_restored_and_nothing_is_written(fx, tmp_path, level):
    """A resume walks the frames beside the decoders: the checkpoint's frame is checked as the
    walk reaches it (there is none in one frame; pzstd -1 puts it at another offset), before
    any output or checkpoint."""
    from archcheck.layers.stream import CheckpointMismatch
    checkpoints = []
    _stream(fx / "multi.tar.zst", checkpoints=checkpoints)
    checkpoint = next(cp for cp, _, _ in checkpoints if cp["frame"] >= 3)
    path = fx / "single.tar.zst"
    if level:
        path = tmp_path / "other.tar.zst"
        subprocess.run(["pzstd", "-q", "-p", "2", level, fx / "gnu.tar", "-o", path], check=True)
    members, rows, later = [], [], []
    with pytest.raises(CheckpointMismatch, match=f"frame {checkpoint['frame']} "):
        _stream(path, resume=checkpoint, members=members, rows=rows, checkpoints=later)
    assert (members, rows, later) == ([], [], [])


# --- kill -9 at random instants -----------------------------------------------------------------

@pytest.fixture(scope="module")
def drill_archives(tmp_path_factory):
    """A ~300 MB tar of random and text members, as ~35 segments of 8 MiB: multi-frame,
    single-frame, and multi-frame with a damaged frame."""
    out = tmp_path_factory.mktemp("drill")
    tree = out / "tree"
    tree.mkdir()
    rnd = random.Random(7)
    for i in range(48):
        size = rnd.randrange(1, 12 * MiB)
        data = rnd.randbytes(size) if i % 3 else (f"line {i}\n" * (size // 8)).encode()
        (tree / f"file-{i:02d}.bin").write_bytes(data)
    tar = out / "data.tar"
    subprocess.run(["tar", "-C", tree, "-cf", tar, "."], check=True)
    subprocess.run(["pzstd", "-q", "-f", "-p", "2", "-1", tar, "-o", out / "multi.tar.zst"], check=True)
    subprocess.run(["zstd", "-q", "-f", "-1", tar, "-o", out / "single.tar.zst"], check=True)
    damaged = bytearray((out / "multi.tar.zst").read_bytes())
    damaged[len(damaged) // 3] ^= 0x10
    (out / "damaged.tar.zst").write_bytes(bytes(damaged))
    return out


def _verdict(state: Path, drill: str) -> dict:
    """What must not depend on interruptions: findings, members, tree root, coverage."""
    result = api.drill_status(drill, state=state)
    [(_, verification)] = result.verifications
    manifest = verification.manifest
    findings = sorted(json.dumps(f.to_json(), sort_keys=True) for f in manifest.findings)
    return {"status": manifest.status, "findings": findings, "tree_root": manifest.tree_root,
            "members": list(verification.members()), "verdict": result.verdict,
            "coverage": (result.coverage["bytes"], result.coverage["verified_bytes"])}


def _done_segments(manifest_path: Path) -> dict:
    if not manifest_path.exists():
        return {}
    manifest = load(manifest_path)  # always readable: a torn or half-written file would raise
    return {s.index: (s.nonce, s.attempt, tuple(s.leaves)) for s in manifest.segments if s.status == "done"}


@pytest.mark.parametrize("name", ["multi.tar.zst", "single.tar.zst", "damaged.tar.zst"])
def test_sigkill_at_random_instants_then_resume_equals_an_uninterrupted_run(drill_archives, tmp_path, name):
    archive = drill_archives / name
    env = {**os.environ, "ARCHCHECK_SAVE_INTERVAL": "0.05"}
    args = ["--segment-size", "8M", "--workers", "1", "--no-progress"]
    clean = cli("verify", archive, *args, "--state-dir", tmp_path / "clean", "--drill", "d", env=env)
    assert clean.returncode in (0, 1), clean.stderr
    expected = _verdict(tmp_path / "clean", "d")

    state = tmp_path / "killed"
    manifest_path = state / "drills" / "d" / "archives" / "0001" / "manifest.json"
    rnd = random.Random(name)
    seen: dict = {}
    command = [*ARCHCHECK, "verify", str(archive), *args, "--state-dir", str(state), "--drill", "d"]
    kills = 0
    for _ in range(15):
        slow = {**env, "ARCHCHECK_FAILPOINT": "slow-read"}  # killed mid-run however fast the machine
        proc = subprocess.Popen(command, env=slow, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
        time.sleep(rnd.uniform(0.05, 0.35))
        if proc.poll() is not None:
            break
        proc.kill()  # SIGKILL: no handler, no cleanup, possibly mid-write
        proc.wait()
        kills += 1
        done = _done_segments(manifest_path)
        for index, record in seen.items():  # a finished segment is never verified again
            assert done.get(index) == record, f"segment {index} changed after it was done"
        seen.update(done)
        if (state / "drills" / "d").exists():
            command = [*ARCHCHECK, "resume", "d", "--state-dir", str(state), "--no-progress"]
    else:  # a single frame re-decodes its prefix on every resume: let the last run finish
        proc = subprocess.run(command, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, timeout=120)
    assert proc.returncode in (0, 1)
    assert kills >= 3
    for index, record in seen.items():
        assert _done_segments(manifest_path)[index] == record
    assert _verdict(state, "d") == expected


# --- refusals -------------------------------------------------------------------------------------

def _stopped_drill(archive: Path, state: Path) -> str:
    """A drill killed as soon as its manifest exists, so that it has something left to resume."""
    manifest = state / "drills" / "drill-1" / "archives" / "0001" / "manifest.json"
    proc = subprocess.Popen([*ARCHCHECK, "verify", archive, "--segment-size", "8M", "--workers", "1",
                             "--state-dir", state], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    while not manifest.exists() and proc.poll() is None:
        time.sleep(0.005)
    proc.kill()
    assert proc.wait() == -signal.SIGKILL
    assert load(manifest).status == "running"
    return "drill-1"


def test_an_archive_gone_before_a_resume_fails_alone(drill_archives, tmp_path):
    """Removed between two runs of a drill: that archive is failed (and said), the others are
    verified; it used to stop the resume before anything ran, every time."""
    gone = tmp_path / "gone.tar.zst"
    shutil.copyfile(drill_archives / "single.tar.zst", gone)
    run = cli("verify", drill_archives / "multi.tar.zst", gone, "--segment-size", "8M", "--workers", "1",
              "--deadline", "0.1s", "--state-dir", tmp_path / "s", "--no-progress",
              env={"ARCHCHECK_FAILPOINT": "slow-read"})
    assert run.returncode == 3, run.stderr
    gone.unlink()
    again = cli("resume", "drill-1", "--state-dir", tmp_path / "s", "--no-progress", "--deadline", "10m")
    assert again.returncode == 5, again.stderr
    assert f"archcheck: {gone}: no such file\n" in again.stderr
    status = api.drill_status("drill-1", state=tmp_path / "s")
    assert [(entry.status, verification is not None) for entry, verification in status.verifications] == [
        ("complete", True), ("failed", False)]
    assert status.verifications[0][1].verdict == "intact"


def test_deadline_stops_cleanly_and_resume_finishes(drill_archives, tmp_path):
    run = cli("verify", drill_archives / "multi.tar.zst", "--segment-size", "8M", "--workers", "1",
              "--deadline", "0.1s", "--state-dir", tmp_path, "--no-progress", env={"ARCHCHECK_FAILPOINT": "slow-read"})
    assert run.returncode == 3, run.stderr
    assert "time is up; what was verified is kept: archcheck resume drill-1" in run.stderr
    assert "coverage  " in run.stdout and "resume    archcheck resume drill-1" in run.stdout
    assert load_drill(tmp_path, "drill-1").status == "stopped"
    late = cli("resume", "drill-1", "--state-dir", tmp_path, "--no-progress")  # a window as long as the first
    assert late.returncode in (0, 3) and "drill-1's deadline (" in late.stderr  # 1s: it may even finish
    assert "has passed; this run gets a new window as long as its first (1s), until " in late.stderr
    assert load_drill(tmp_path, "drill-1").limits["window_seconds"] == 1.0
    again = cli("resume", "drill-1", "--deadline", "10m", "--state-dir", tmp_path, "--no-progress")
    assert again.returncode == 0, again.stderr
    status = api.drill_status("drill-1", state=tmp_path)
    assert status.drill.status == "complete" and status.verdict == "intact" and status.coverage["verified_bytes"] == \
        status.coverage["bytes"]


def test_resume_of_a_changed_archive_mixes_nothing_and_says_what_changed(drill_archives, tmp_path):
    archive = tmp_path / "a.tar.zst"
    shutil.copyfile(drill_archives / "multi.tar.zst", archive)  # big enough to be stopped mid-way
    drill = _stopped_drill(archive, tmp_path / "s")
    with open(archive, "r+b") as f:
        f.seek(-10, 2)
        f.write(b"0123456789")
    run = cli("resume", drill, "--state-dir", tmp_path / "s")
    assert run.returncode == 3  # incomplete: never a verdict on the new content, never corruption
    assert run.stderr.splitlines()[-1] == (
        f"archcheck: {archive}: it changed since {drill} began (its modification time and last 64 KiB differ); "
        "its results cannot be mixed with new ones: verify it in a new drill")
    assert f"{drill}  complete, INCOMPLETE  (1 changed)" in run.stdout and "CORRUPT" not in run.stdout


def test_a_hand_edited_manifest_is_refused(drill_archives, tmp_path):
    drill = _stopped_drill(drill_archives / "multi.tar.zst", tmp_path)
    path = tmp_path / "drills" / drill / "archives" / "0001" / "manifest.json"
    path.write_text(path.read_text().replace('"status":"running"', '"status":"complete"', 1))
    run = cli("resume", drill, "--state-dir", tmp_path)
    assert run.returncode == 8  # state that cannot be trusted
    assert run.stderr.splitlines()[-1].endswith(f": manifest {path} is damaged or was edited (its integrity digest "
                                                "does not match); it cannot be trusted")
    path.write_bytes(path.read_bytes()[:100])  # torn
    assert "is damaged (not valid JSON)" in cli("resume", drill, "--state-dir", tmp_path).stderr


def test_a_lock_that_cannot_be_taken_is_a_state_error_not_a_crash(drill_archives, tmp_path):
    """A state directory made read-only (or a lock path that is a directory): one line, exit 8."""
    drill_id = _stopped_drill(drill_archives / "multi.tar.zst", tmp_path)
    lock = tmp_path / "drills" / drill_id / "lock"
    lock.unlink(missing_ok=True)
    lock.mkdir()
    run = cli("resume", drill_id, "--state-dir", tmp_path, "--no-progress")
    assert run.returncode == 8, run.stderr
    assert run.stderr == f"archcheck: cannot lock {drill_id}: {lock}: Is a directory\n"


def test_a_second_runner_is_refused_and_a_dead_runners_lock_is_taken_over(drill_archives, tmp_path):
    drill_id = _stopped_drill(drill_archives / "multi.tar.zst", tmp_path)
    drill = load_drill(tmp_path, drill_id)
    with DrillLock(drill):
        run = cli("resume", drill_id, "--state-dir", tmp_path)
        assert run.returncode == 6
        assert run.stderr.startswith(f"archcheck: {drill_id} is being run by pid {os.getpid()} on ")
    (drill.folder / "lock").write_text("pid 999999 on elsewhere since 2026-11-26T03:10:00Z\n")  # no flock held
    run = cli("resume", drill_id, "--state-dir", tmp_path, "--no-progress")
    assert run.returncode == 0, run.stderr
    assert (f"archcheck: took over {drill_id} from a runner that is gone "
            "(pid 999999 on elsewhere since 2026-11-26T03:10:00Z)") in run.stderr


# --- budgets over simulated nights ------------------------------------------------------------------

class Clock:
    def __init__(self):
        self.now = datetime(2026, 11, 1, 1, 0, tzinfo=timezone.utc)

    def __call__(self) -> datetime:
        return self.now


def test_budgeted_nights_cover_everything_new_first_then_least_recently_verified(
        drill_archives, fx, tmp_path, monkeypatch):
    from archcheck import pipeline
    monkeypatch.setattr(pipeline, "SAVE_INTERVAL", 0.05)
    archives = [fx / "single.tar.zst", fx / "multi.tar.zst", drill_archives / "multi.tar.zst"]
    total = sum(a.stat().st_size for a in archives)
    clock, state = Clock(), tmp_path / "state"
    budget = 12 * MiB

    last_verified = {}  # archive -> the last night it was verified on (in part or in full)

    def night() -> tuple[list[str], dict]:
        result = api.run_drill(archives, state=state, segment_size=8 * MiB, workers=1,
                               budget=Budget(bytes=budget), now=clock)
        assert result.exit_code == 0 and result.drill.status in ("partial", "complete") and result.drill.sealed
        for i, entry in enumerate(result.drill.archives):
            if entry.status in ("complete", "partial"):
                last_verified[i] = clock.now
        clock.now += timedelta(days=1)
        return [e.status for e in result.drill.archives], result.coverage

    # night 1: new archives in the order first seen; the budget runs out in the second
    assert night()[0] == ["complete", "partial", "deferred"]
    # night 2: the unfinished one goes on where it stopped, then the one never verified starts;
    # the one verified on night 1 waits
    assert night()[0] == ["deferred", "complete", "partial"]
    nights = 2
    while (coverage := night()[1])["verified_bytes"] < total:
        nights += 1
        assert nights < 20
    nights += 1
    assert nights <= -(-total // budget) + 1  # every byte covered within what the budget allows
    # once all is covered, the least recently verified goes first (the night that finished the
    # last one may have spent what was left on another)
    oldest = min(last_verified, key=last_verified.get)
    statuses, coverage = night()
    assert statuses[oldest] == "complete"
    assert coverage["verified_bytes"] == total and coverage["oldest_unverified_age_seconds"] >= 86400


def test_skip_policy_skips_archives_verified_in_full_recently(fx, tmp_path):
    clock = Clock()
    first = api.run_drill([fx / "multi.tar.zst"], state=tmp_path, skip_verified_within=7 * 86400, now=clock)
    assert first.drill.archives[0].status == "complete"
    clock.now += timedelta(days=2)
    second = api.run_drill([fx / "multi.tar.zst"], state=tmp_path, skip_verified_within=7 * 86400, now=clock)
    assert second.drill.archives[0].status == "skipped"
    assert second.drill.archives[0].note == "unchanged and verified in full 2d 0h ago (policy: within 7d 0h)"
    clock.now += timedelta(days=6)
    third = api.run_drill([fx / "multi.tar.zst"], state=tmp_path, skip_verified_within=7 * 86400, now=clock)
    assert third.drill.archives[0].status == "complete"


# --- plans, reports, the ledger ------------------------------------------------------------------------

def test_drill_run_from_a_plan_seals_its_report_and_audit_detects_an_edit(fx, tmp_path):
    plan = tmp_path / "plan.yaml"
    shutil.copyfile(fx / "multi.tar.zst", tmp_path / "a.tar.zst")
    shutil.copyfile(fx / "single.tar.zst", tmp_path / "b.tar.zst")
    plan.write_text("name: weekly\narchives: ['*.tar.zst', 'missing-*.tar.zst']\nstate_dir: state\n"
                    "report: out/{plan}-{drill}.json\ndeadline: 10m\n")
    run = cli("drill", "run", plan, "--no-progress")
    assert run.returncode == 0, run.stderr
    assert "archcheck: warning: missing-*.tar.zst matches no archive" in run.stderr
    report = json.loads((tmp_path / "out" / "weekly-drill-1.json").read_text())  # the plan's name, the drill's id
    assert report["schema"] == "archcheck.report" and report["version"] == 3
    assert [Path(a["path"]).name for a in report["archives"]] == ["a.tar.zst", "b.tar.zst"]
    assert all(a["verdict"] == "intact" and a["members_log"]["count"] for a in report["archives"])
    state = tmp_path / "state"
    listed = cli("drill", "list", "--state-dir", state)
    assert listed.stdout.startswith("drill-1      complete     2/2 archives")
    audit = cli("audit", "verify", "--state-dir", state)
    assert audit.returncode == 0 and "1 entries, INTACT" in audit.stdout
    sealed = state / "reports" / "drill-1.json"
    sealed.chmod(0o644)
    sealed.write_text(sealed.read_text().replace('"intact"', '"corrupt"', 1))
    audit = cli("audit", "verify", "--state-dir", state)
    assert audit.returncode == 1
    assert "line 1 (drill-1): report reports/drill-1.json was edited (digest differs)" in audit.stdout


def test_a_bad_plan_is_one_line_with_file_and_line(tmp_path):
    plan = tmp_path / "bad.yaml"
    plan.write_text("archives: [x.tar.zst]\nbudjet: 2h\n")
    run = cli("drill", "run", plan)
    assert run.returncode == 2
    assert run.stderr.startswith(f"archcheck: {plan}:2: unknown key 'budjet'") and run.stderr.count("\n") == 1


def test_sigterm_stops_cleanly_and_resume_gives_the_uninterrupted_result(drill_archives, tmp_path):
    archive = drill_archives / "damaged.tar.zst"
    args = ["--segment-size", "8M", "--workers", "1", "--no-progress"]
    assert cli("verify", archive, *args, "--state-dir", tmp_path / "clean", "--drill", "d").returncode == 1
    state = tmp_path / "s"
    manifest = state / "drills" / "d" / "archives" / "0001" / "manifest.json"
    proc = subprocess.Popen([*ARCHCHECK, "verify", archive, *args, "--state-dir", state, "--drill", "d"],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                            env={**os.environ, "ARCHCHECK_SAVE_INTERVAL": "0.05", "ARCHCHECK_FAILPOINT": "slow-read"})
    while not manifest.exists() and proc.poll() is None:
        time.sleep(0.005)
    time.sleep(0.1)
    proc.send_signal(signal.SIGTERM)
    out, err = proc.communicate(timeout=60)
    assert proc.returncode == 3, err
    assert err == "archcheck: interrupted; what was verified is kept: archcheck resume d\n"
    assert load(manifest).status == "interrupted" and load_drill(state, "d").status == "interrupted"
    assert cli("resume", "d", "--state-dir", state, "--no-progress").returncode == 1
    assert _verdict(state, "d") == _verdict(tmp_path / "clean", "d")


def test_a_time_budget_does_its_share_exits_0_and_the_next_drill_goes_on(drill_archives, tmp_path):
    archive = drill_archives / "multi.tar.zst"
    # reads of 0.2 s: the archive has begun when the budget ends, however busy the machine, and
    # is not done (a budget used up before it starts defers the archive instead)
    first = cli("verify", archive, "--segment-size", "8M", "--workers", "1", "--budget", "1s",
                "--state-dir", tmp_path, "--no-progress",
                env={"ARCHCHECK_FAILPOINT": "slow-read", "ARCHCHECK_SLOW_READ_SECONDS": "0.2"})
    assert first.returncode == 0, first.stderr
    assert "drill-1  partial, INTACT" in first.stdout and "(1 partial)" in first.stdout
    second = cli("verify", archive, "--segment-size", "8M", "--state-dir", tmp_path, "--no-progress")
    assert second.returncode == 0 and "(100%)" in second.stdout
    manifest = load(tmp_path / "drills" / "drill-2" / "archives" / "0001" / "manifest.json")
    assert manifest.run_id == "drill-1/0001"  # the pass of drill-1, gone on with


def test_corruption_found_before_a_budget_stops_the_stream_is_in_the_verdict(drill_archives, tmp_path):
    """The stream stops where the budget's share ends: what it found before (kept in its last
    checkpoint) is the drill's verdict and is sealed, as a whole run finds it."""
    archive = drill_archives / "damaged.tar.zst"
    whole = api.verify(archive, state=tmp_path / "whole", segment_size=8 * MiB)
    [broken] = [f for f in whole.findings if f.category.value == "corruption"]
    share = archive.stat().st_size * 2 // 3  # the damage is a third of the way in
    result = api.run_drill([archive], state=tmp_path, segment_size=8 * MiB, budget=Budget(bytes=share))
    [(entry, verification)] = result.verifications
    assert (entry.status, result.verdict, result.exit_code) == ("partial", "corrupt", 1)
    assert verification.manifest.stream.status.value == "stopped"
    assert [f for f in verification.findings if f.category.value == "corruption"] == [broken]
    sealed = json.loads((tmp_path / "reports" / f"{result.drill.id}.json").read_text())
    assert sealed["verdict"] == "corrupt"
    manifest = verification.manifest
    manifest.status = "changed"  # as a run that found the file changed under it leaves it
    assert manifest.stream.found_so_far() and not [f for f in manifest.findings if f.category.value == "corruption"]


def test_a_drill_that_will_not_fit_its_deadline_says_so(fx, tmp_path):
    (tmp_path / "throughput.json").write_text('{"bytes_per_second": 1000}')
    run = cli("verify", fx / "multi.tar.zst", "--deadline", "1h", "--state-dir", tmp_path, "--no-progress")
    assert run.returncode == 0
    assert "archcheck: warning: 8.8 MiB to verify at 1000 B/s needs about 2h 33m, more than the 1h 00m given;" in run.stderr


def test_a_complete_drill_has_nothing_to_resume(fx, tmp_path):
    assert cli("verify", fx / "multi.tar.zst", "--state-dir", tmp_path).returncode == 0
    again = cli("resume", "drill-1", "--state-dir", tmp_path, "--no-progress")
    assert again.returncode == 0 and again.stderr == "archcheck: drill-1 is complete; nothing to resume\n"
    missing = cli("resume", "drill-9", "--state-dir", tmp_path)
    assert missing.returncode == 7 and missing.stderr == f"archcheck: no drill drill-9 in {tmp_path} (recent: drill-1)\n"


def test_a_plan_run_outside_its_window_is_refused(fx, tmp_path):
    now = datetime.now()
    opens = (now + timedelta(hours=2)).strftime("%H:%M")
    closes = (now + timedelta(hours=3)).strftime("%H:%M")
    plan = tmp_path / "p.yaml"
    plan.write_text(f"archives: ['{fx / 'multi.tar.zst'}']\nwindow: '{opens}-{closes}'\nstate_dir: s\n")
    run = cli("drill", "run", plan)
    assert run.returncode == 2
    assert run.stderr == (f"archcheck: {plan}: the window {opens}-{closes} is not open now (it opens at {opens}); "
                          "give --deadline or --until to run outside it\n")


def test_a_drill_whose_archive_changed_is_sealed_incomplete_never_intact(drill_archives, fx, tmp_path):
    big = tmp_path / "big.tar.zst"
    shutil.copyfile(drill_archives / "multi.tar.zst", big)
    state = tmp_path / "s"
    second = state / "drills" / "drill-1" / "archives" / "0002" / "manifest.json"
    proc = subprocess.Popen([*ARCHCHECK, "verify", fx / "multi.tar.zst", big, "--workers", "1", "--state-dir", state],
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    while not second.exists() and proc.poll() is None:
        time.sleep(0.005)
    proc.kill()
    proc.wait()
    with open(big, "r+b") as f:
        f.write(b"X")
    run = cli("resume", "drill-1", "--state-dir", state)
    assert run.returncode == 3 and "changed since drill-1 began (its modification time and first 64 KiB differ)" in run.stderr
    drill = load_drill(state, "drill-1")  # ended: the changed archive cannot be resumed, only verified anew
    assert [a.status for a in drill.archives] == ["complete", "changed"]
    sealed = json.loads((state / "reports" / "drill-1.json").read_text())  # never sealed as a verdict on it
    assert sealed["verdict"] == "incomplete" and [a["status"] for a in sealed["archives"]] == ["complete", "changed"]


def test_a_crash_while_sealing_is_finished_with_the_same_bytes(fx, tmp_path, monkeypatch):
    from archcheck import ledger, runner
    calls = []

    def crash(*args, **kwargs):
        calls.append(args)
        raise KeyboardInterrupt  # as a kill would: after the report is kept, before the ledger
    monkeypatch.setattr(runner, "seal_report", crash)
    with pytest.raises(KeyboardInterrupt):
        api.run_drill([fx / "multi.tar.zst"], state=tmp_path)
    drill = load_drill(tmp_path, "drill-1")
    assert drill.status == "complete" and drill.sealed is None and calls
    kept = (drill.folder / "sealed-report.json").read_bytes()
    monkeypatch.setattr(runner, "seal_report", ledger.seal_report)
    result = api.resume("drill-1", state=tmp_path)
    assert result.notices == ["drill-1 is complete; nothing to resume"]
    assert (tmp_path / "reports" / "drill-1.json").read_bytes() == kept
    assert result.drill.sealed["seq"] == 1 and api.audit(state=tmp_path).ok


def test_an_ended_budgeted_drill_is_not_resumed(fx, tmp_path):
    result = api.run_drill([fx / "multi.tar.zst", fx / "single.tar.zst"], state=tmp_path,
                           budget=Budget(bytes=1), segment_size=8 * MiB)
    assert result.drill.status == "partial" and [a.status for a in result.drill.archives][1] == "deferred"
    again = api.resume(result.drill.id, state=tmp_path)
    assert again.notices == ["drill-1 has ended (partial); nothing to resume: start a new drill"]
    assert [a.status for a in again.drill.archives] == [a.status for a in result.drill.archives]


def test_usage_errors_stay_one_line_and_inert(fx, tmp_path):
    hostile = tmp_path / "evil\x1b]0;pwned\x07\x1b[2J.tar.zst"
    run = cli("verify", hostile, "--state-dir", tmp_path)
    assert run.returncode == 5 and "\x1b" not in run.stderr and "\\x1b]0;pwned" in run.stderr
    run = cli("verify", fx / "multi.tar.zst", "--deadline", "99999999999d", "--state-dir", tmp_path)
    assert run.returncode == 2 and run.stderr == "archcheck: --deadline: '99999999999d' is more than ten years\n"
    (tmp_path / "file").write_text("")
    run = cli("verify", fx / "multi.tar.zst", "--state-dir", tmp_path / "file")
    assert run.returncode == 8 and run.stderr.startswith("archcheck: cannot create ") and run.stderr.count("\n") == 1


# --- state that grows with the archive lives in logs ------------------------------------------------

def test_a_drill_going_on_with_another_pass_shares_its_logs_without_copying(drill_archives, tmp_path):
    from archcheck.logs import parts_from_json
    archive = drill_archives / "multi.tar.zst"
    api.run_drill([archive], state=tmp_path, segment_size=8 * MiB, budget=Budget(bytes=64 * MiB))
    first = tmp_path / "drills" / "drill-1" / "archives" / "0001"
    checkpoint = load(first / "manifest.json").stream.checkpoint
    shared = [p.file for p in parts_from_json(checkpoint["members"])]
    assert shared
    second = api.run_drill([archive], state=tmp_path, segment_size=8 * MiB)
    assert second.verdict == "intact"
    folder = tmp_path / "drills" / "drill-2" / "archives" / "0001"
    for name in shared:  # the same inode: a hard link, not a copy
        assert os.stat(folder / name).st_ino == os.stat(first / name).st_ino
    members = list(second.verifications[0][1].members())
    whole = api.verify(archive, state=tmp_path / "fresh", segment_size=8 * MiB)
    assert members == list(whole.members())


def test_an_edited_log_is_refused_never_trusted(fx, tmp_path):
    result = api.verify(fx / "multi.tar.zst", state=tmp_path, segment_size=8 * MiB)
    folder = result.manifest_path.parent
    [log] = folder.glob("segments-*.jsonl")
    log.write_bytes(log.read_bytes().replace(b'"done"', b'"dOne"', 1))
    run = cli("drill", "status", "drill-1", "--state-dir", tmp_path)
    assert run.returncode == 8 and "is damaged or was edited (its digest does not match the manifest)" in run.stderr
