"""Sealed reports and the hash-chained audit ledger, on real files: every kind of tampering the
issue names is made by hand here and must be named by verify_ledger, line and drill."""
from __future__ import annotations

import errno
import json
import multiprocessing
import os
import re
import stat
from datetime import datetime, timedelta, timezone
from pathlib import Path

import blake3
import pytest

from archcheck import ledger
from archcheck.errors import StateError
from archcheck.ledger import (GENESIS, AuditResult, RepairResult, entry_hash, repair_ledger, seal_report,
                              set_aside_torn_tail, verify_ledger)

T0 = datetime(2024, 5, 1, 12, 0, tzinfo=timezone.utc)


def report(n: int) -> bytes:
    return json.dumps({"drill": f"drill-{n}", "status": "complete", "findings": []}).encode()


def seal(root: Path, n: int) -> ledger.LedgerEntry:
    return seal_report(root, f"drill-{n}", report(n), now=T0 + timedelta(minutes=n))


def chain(root: Path, count: int) -> list[ledger.LedgerEntry]:
    return [seal(root, n) for n in range(1, count + 1)]


def ledger_lines(root: Path) -> list[str]:
    return (root / "audit" / "ledger.jsonl").read_text().splitlines(keepends=True)


def write_lines(root: Path, lines: list[str]) -> None:
    (root / "audit" / "ledger.jsonl").write_text("".join(lines))


def edit_entry(root: Path, lineno: int, rehash: bool = False, **changes) -> None:
    lines = ledger_lines(root)
    entry = json.loads(lines[lineno - 1])
    entry.update(changes)
    if rehash:  # the smarter attacker: the entry is consistent in itself again
        entry["hash"] = entry_hash(entry)
    lines[lineno - 1] = json.dumps(entry, separators=(",", ":")) + "\n"
    write_lines(root, lines)


def problems(root: Path) -> list[str]:
    return verify_ledger(root).problems


def ledger_bytes(root: Path) -> bytes:
    return (root / "audit" / "ledger.jsonl").read_bytes()


def append_raw(root: Path, data: bytes) -> None:
    with open(root / "audit" / "ledger.jsonl", "ab") as f:
        f.write(data)


def line_of(entry: ledger.LedgerEntry) -> bytes:
    return (json.dumps(entry.to_json(), separators=(",", ":")) + "\n").encode()


def files(root: Path) -> dict[str, bytes]:
    """Every file under ``root`` and its bytes: to show a refusal changed nothing."""
    return {str(p.relative_to(root)): p.read_bytes() for p in sorted(root.rglob("*")) if p.is_file()}


def keep_pending(root: Path, n: int, data: bytes | None = None) -> None:
    """What the runner does before sealing: the report's bytes kept in the drill folder."""
    folder = root / "drills" / f"drill-{n}"
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "sealed-report.json").write_bytes(report(n) if data is None else data)


def crash_before_entry(root: Path, n: int, monkeypatch) -> None:
    """Seal drill-n, the process dying after its report is written and before its entry."""
    def crash(*args):
        raise KeyboardInterrupt  # stands for the process dying: nothing after it runs

    with monkeypatch.context() as m:
        m.setattr(ledger, "_append", crash)
        with pytest.raises(KeyboardInterrupt):
            seal(root, n)


def torn_note(lineno: int, size: int) -> str:
    return (f"line {lineno}: an append was cut off by a crash ({size} bytes, no end of line); "
            f"the next seal or `archcheck audit repair` sets it aside")


def cut_off_note(n: int) -> str:
    return (f"reports/drill-{n}.json has no ledger entry, but drills/drill-{n}/sealed-report.json holds "
            f"the same bytes: its seal was cut off by a crash; sealing it again or `archcheck audit "
            f"repair` appends the entry")


def the_torn_file(root: Path) -> Path:
    kept, = (root / "audit" / "torn").iterdir()
    return kept


PARTIAL = b'{"seq":4,"time":"2024-05'  # a crash in the middle of an append


def whole_entry_without_newline(tmp_path: Path) -> bytes:
    # The same entry drill-4 gets in a chain of the same drills: it parses, but has no newline
    return line_of(chain(tmp_path / "elsewhere", 4)[-1])[:-1]


# -- sealing -------------------------------------------------------------------------------------

def test_seal_writes_a_read_only_report_and_the_first_entry(tmp_path):
    entry = seal(tmp_path, 42)
    path = tmp_path / "reports" / "drill-42.json"
    assert path.read_bytes() == report(42)
    assert stat.S_IMODE(path.stat().st_mode) == 0o444
    assert entry == ledger.LedgerEntry(
        seq=1, time="2024-05-01T12:42:00Z", drill="drill-42", report="reports/drill-42.json",
        report_blake3=blake3.blake3(report(42)).hexdigest(), prev=GENESIS, hash=entry.hash)
    body = {k: v for k, v in entry.to_json().items() if k != "hash"}
    canonical = json.dumps(body, sort_keys=True, separators=(",", ":")).encode()
    assert entry.hash == blake3.blake3(canonical).hexdigest()
    line, = ledger_lines(tmp_path)
    assert list(json.loads(line)) == ["seq", "time", "drill", "report", "report_blake3", "prev", "hash"]
    assert json.loads(line) == entry.to_json()
    assert not [p for p in (tmp_path / "reports").iterdir() if p.name.startswith(".")]  # no temp left


def test_entries_chain_onto_each_other(tmp_path):
    entries = chain(tmp_path, 3)
    assert [e.seq for e in entries] == [1, 2, 3]
    assert [e.prev for e in entries] == [GENESIS, entries[0].hash, entries[1].hash]


def test_sealing_the_same_report_twice_is_idempotent(tmp_path):
    first = seal(tmp_path, 1)
    again = seal_report(tmp_path, "drill-1", report(1), now=T0 + timedelta(days=1))
    assert again == first
    assert len(ledger_lines(tmp_path)) == 1


def test_sealing_a_different_report_is_refused(tmp_path):
    seal(tmp_path, 1)
    with pytest.raises(StateError, match="drill-1's report is sealed already and differs: "
                                         "reports/drill-1.json has BLAKE3 "):
        seal_report(tmp_path, "drill-1", b'{"tampered": true}')
    assert (tmp_path / "reports" / "drill-1.json").read_bytes() == report(1)
    assert len(ledger_lines(tmp_path)) == 1


def test_a_crash_between_report_and_entry_recovers(tmp_path, monkeypatch):
    seal(tmp_path, 1)

    def crash(*args):
        raise KeyboardInterrupt  # stands for the process dying: nothing after it runs

    with monkeypatch.context() as m:
        m.setattr(ledger, "_append", crash)
        with pytest.raises(KeyboardInterrupt):
            seal(tmp_path, 2)
    assert (tmp_path / "reports" / "drill-2.json").read_bytes() == report(2)
    assert problems(tmp_path) == ["reports/drill-2.json has no ledger entry (entry removed?)"]
    entry = seal(tmp_path, 2)
    assert (entry.seq, entry.drill) == (2, "drill-2")
    assert verify_ledger(tmp_path) == AuditResult(entries=2, head=entry.hash, problems=[])


def test_a_clock_stepped_back_does_not_make_time_go_backwards(tmp_path):
    first = seal(tmp_path, 5)
    second = seal_report(tmp_path, "drill-6", report(6), now=T0)
    assert second.time == first.time
    assert problems(tmp_path) == []


@pytest.mark.parametrize("drill_id", ["../escape", "a/b", "/abs", "", ".", "..", ".hidden",
                                      "drill 1", "drill-1\n", "drill\x00"])
def test_hostile_drill_ids_are_refused(tmp_path, drill_id):
    root = tmp_path / "state"
    with pytest.raises(StateError, match="is not a valid drill id"):
        seal_report(root, drill_id, b"{}")
    assert not root.exists()
    assert sorted(p.name for p in tmp_path.iterdir()) == []


def test_a_garbled_last_line_with_its_newline_blocks_appending_too(tmp_path):
    chain(tmp_path, 2)
    with open(tmp_path / "audit" / "ledger.jsonl", "a") as f:
        f.write("garbage\n")
    before = files(tmp_path)
    # It ends its line, so no crash made it: damage, reported, and not set aside
    result = verify_ledger(tmp_path)
    assert (result.problems, result.crashes) == (["line 3: not a JSON object (torn or edited)"], [])
    with pytest.raises(StateError, match=r"the last line is damaged \(not a ledger entry, and not an "
                                         r"append cut off by a crash\); run `archcheck audit verify`"):
        seal(tmp_path, 3)
    assert files(tmp_path) == before


# -- crashes -------------------------------------------------------------------------------------
# These replace test_a_torn_last_line_is_reported_and_blocks_appending: a last line with no end
# of line used to be a problem that blocked every later seal; it is now a crash, set aside.

@pytest.mark.parametrize("whole", [False, True], ids=["partial", "parseable"])
def test_a_torn_last_line_is_a_crash_not_a_problem(tmp_path, whole):
    tail = whole_entry_without_newline(tmp_path) if whole else PARTIAL
    root = tmp_path / "state"
    entries = chain(root, 3)
    append_raw(root, tail)
    result = verify_ledger(root)
    assert result == AuditResult(entries=3, head=entries[-1].hash, problems=[],
                                 crashes=[torn_note(4, len(tail))])
    assert result.ok


@pytest.mark.parametrize("whole", [False, True], ids=["partial", "parseable"])
def test_sealing_after_a_torn_line_sets_it_aside_and_chains_onto_the_last_whole_entry(tmp_path, whole):
    tail = whole_entry_without_newline(tmp_path) if whole else PARTIAL
    root = tmp_path / "state"
    entries = chain(root, 3)
    before = ledger_bytes(root)
    append_raw(root, tail)
    notices = []
    entry = seal_report(root, "drill-4", report(4), now=T0 + timedelta(minutes=4), on_notice=notices.append)
    assert (entry.seq, entry.prev) == (4, entries[-1].hash)
    kept = the_torn_file(root)
    assert re.fullmatch(rf"\d{{8}}T\d{{6}}Z-{len(before)}\.bin", kept.name)
    assert kept.read_bytes() == tail
    assert notices == [f"set aside a torn ledger line left by a crash ({len(tail)} bytes) in "
                       f"audit/torn/{kept.name}"]
    assert ledger_bytes(root) == before + line_of(entry)
    assert verify_ledger(root) == AuditResult(entries=4, head=entry.hash, problems=[], crashes=[])


def test_a_torn_first_line_is_set_aside_and_the_chain_starts_again(tmp_path):
    (tmp_path / "audit").mkdir()
    append_raw(tmp_path, PARTIAL)
    assert verify_ledger(tmp_path) == AuditResult(crashes=[torn_note(1, len(PARTIAL))])
    entry = seal(tmp_path, 1)
    assert (entry.seq, entry.prev) == (1, GENESIS)
    assert ledger_bytes(tmp_path) == line_of(entry)
    assert the_torn_file(tmp_path).read_bytes() == PARTIAL


def test_set_aside_torn_tail_on_its_own(tmp_path):
    assert set_aside_torn_tail(tmp_path) is None  # no ledger
    assert not (tmp_path / "audit").exists()
    entries = chain(tmp_path, 2)
    before = ledger_bytes(tmp_path)
    assert set_aside_torn_tail(tmp_path) is None
    append_raw(tmp_path, PARTIAL)
    notice = set_aside_torn_tail(tmp_path)
    kept = the_torn_file(tmp_path)
    assert notice == (f"set aside a torn ledger line left by a crash ({len(PARTIAL)} bytes) in "
                      f"audit/torn/{kept.name}")
    assert kept.read_bytes() == PARTIAL and stat.S_IMODE(kept.stat().st_mode) == 0o444
    assert ledger_bytes(tmp_path) == before
    # A second crash at the same place in the same second keeps both, never one over the other
    append_raw(tmp_path, b"{")
    assert set_aside_torn_tail(tmp_path).startswith("set aside a torn ledger line left by a crash (1 bytes)")
    assert sorted(p.read_bytes() for p in (tmp_path / "audit" / "torn").iterdir()) == [b"{", PARTIAL]
    assert verify_ledger(tmp_path) == AuditResult(entries=2, head=entries[-1].hash)


def test_a_tail_longer_than_any_entry_is_damage_not_a_crash(tmp_path):
    chain(tmp_path, 3)
    append_raw(tmp_path, b"x" * (ledger.LINE_LIMIT + 1))
    before = files(tmp_path)
    result = verify_ledger(tmp_path)
    assert (result.problems, result.crashes) == (["line 4: not a JSON object (torn or edited)"], [])
    with pytest.raises(StateError, match="the last line is damaged"):
        seal(tmp_path, 4)
    assert set_aside_torn_tail(tmp_path) is None
    assert repair_ledger(tmp_path).refused == [
        "line 4: not a JSON object (torn or edited): not repaired: a crash leaves at most part of one "
        "entry, at the very end and without its end of line; removing this line would hide tampering"]
    assert files(tmp_path) == before


@pytest.mark.parametrize("failure", ["enospc", "short"])
def test_a_failed_append_leaves_the_ledger_as_it_was(tmp_path, monkeypatch, failure):
    entries = chain(tmp_path, 2)
    before = ledger_bytes(tmp_path)
    real_write = os.write

    def failing_write(fd, data):
        if not data.startswith(b'{"seq":'):
            return real_write(fd, data)
        written = real_write(fd, data[:len(data) // 2])  # half the line lands on disk
        if failure == "enospc":
            raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))
        return written

    with monkeypatch.context() as m:
        m.setattr(ledger.os, "write", failing_write)
        why = ("No space left on device" if failure == "enospc"
               else r"short write, \d+ of \d+ bytes \(disk full\?\)")
        with pytest.raises(StateError, match=rf"^sealing drill-3 failed \({why}\); nothing was appended "
                                             rf"to .*ledger\.jsonl; its report was not kept$"):
            seal(tmp_path, 3)
    assert ledger_bytes(tmp_path) == before
    assert not (tmp_path / "reports" / "drill-3.json").exists()
    assert verify_ledger(tmp_path) == AuditResult(entries=2, head=entries[-1].hash)
    entry = seal(tmp_path, 3)  # the disk has room again
    assert (entry.seq, entry.prev) == (3, entries[-1].hash)
    assert verify_ledger(tmp_path) == AuditResult(entries=3, head=entry.hash)


def test_a_failed_append_keeps_a_report_sealed_before(tmp_path, monkeypatch):
    # The report was written by a seal that crashed earlier: it is not this seal's to remove
    seal(tmp_path, 1)
    crash_before_entry(tmp_path, 2, monkeypatch)
    before = ledger_bytes(tmp_path)

    def enospc(fd, data):
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))

    with monkeypatch.context() as m:
        m.setattr(ledger.os, "write", enospc)
        with pytest.raises(StateError, match=r"^sealing drill-2 failed \(No space left on device\); "
                                             r"nothing was appended to .*ledger\.jsonl$"):
            seal(tmp_path, 2)
    assert ledger_bytes(tmp_path) == before
    assert (tmp_path / "reports" / "drill-2.json").read_bytes() == report(2)


# -- repairing -----------------------------------------------------------------------------------

def test_repair_sets_a_torn_line_aside(tmp_path):
    entries = chain(tmp_path, 3)
    before = ledger_bytes(tmp_path)
    append_raw(tmp_path, PARTIAL)
    result = repair_ledger(tmp_path)
    kept = the_torn_file(tmp_path)
    assert result == RepairResult(actions=[
        f"set aside a torn ledger line left by a crash ({len(PARTIAL)} bytes) in audit/torn/{kept.name}"])
    assert result.ok
    assert kept.read_bytes() == PARTIAL
    assert ledger_bytes(tmp_path) == before
    assert verify_ledger(tmp_path) == AuditResult(entries=3, head=entries[-1].hash)
    assert repair_ledger(tmp_path) == RepairResult()  # nothing left to do


def test_repair_finishes_a_seal_cut_off_before_its_entry(tmp_path, monkeypatch):
    entries = chain(tmp_path, 2)
    keep_pending(tmp_path, 3)
    crash_before_entry(tmp_path, 3, monkeypatch)
    assert verify_ledger(tmp_path) == AuditResult(entries=2, head=entries[-1].hash, problems=[],
                                                  crashes=[cut_off_note(3)])
    result = repair_ledger(tmp_path, now=T0 + timedelta(hours=1))
    assert result == RepairResult(actions=[
        "appended ledger entry 3 for reports/drill-3.json, whose seal a crash cut off "
        "(drills/drill-3/sealed-report.json holds the same bytes)"])
    entry = json.loads(ledger_lines(tmp_path)[-1])
    body = {"seq": 3, "time": "2024-05-01T13:00:00Z", "drill": "drill-3", "report": "reports/drill-3.json",
            "report_blake3": blake3.blake3(report(3)).hexdigest(), "prev": entries[-1].hash}
    assert entry == {**body, "hash": entry_hash(body)}
    assert verify_ledger(tmp_path) == AuditResult(entries=3, head=entry["hash"])
    assert repair_ledger(tmp_path) == RepairResult()
    assert seal(tmp_path, 3).seq == 3  # sealing it again finds the entry


def test_repair_after_a_crash_mid_append_sets_aside_and_appends(tmp_path):
    # What a kill in the middle of the write leaves: the report, its kept bytes, half its line
    entries = chain(tmp_path, 2)
    keep_pending(tmp_path, 3)
    (tmp_path / "reports" / "drill-3.json").write_bytes(report(3))
    append_raw(tmp_path, PARTIAL)
    assert verify_ledger(tmp_path) == AuditResult(entries=2, head=entries[-1].hash, problems=[],
                                                  crashes=[torn_note(3, len(PARTIAL)), cut_off_note(3)])
    result = repair_ledger(tmp_path)
    assert [a.split(" (")[0] for a in result.actions] == [
        "set aside a torn ledger line left by a crash", "appended ledger entry 3 for reports/drill-3.json, "
                                                        "whose seal a crash cut off"]
    assert result.refused == []
    audit = verify_ledger(tmp_path)
    assert (audit.entries, audit.problems, audit.crashes) == (3, [], [])


def test_repair_on_an_empty_state_creates_nothing(tmp_path):
    assert repair_ledger(tmp_path / "absent") == RepairResult()
    assert repair_ledger(tmp_path) == RepairResult()
    assert list(tmp_path.iterdir()) == []


def _edit(root, monkeypatch):
    edit_entry(root, 2, time="2024-05-01T12:02:30Z")


def _missing_report(root, monkeypatch):
    (root / "reports" / "drill-2.json").unlink()


def _removed_entry(root, monkeypatch):
    write_lines(root, ledger_lines(root)[:-1])


def _other_pending_bytes(root, monkeypatch):
    keep_pending(root, 4, data=b'{"other": true}')
    crash_before_entry(root, 4, monkeypatch)


def _sealed_in_drill_state(root, monkeypatch):
    keep_pending(root, 3)
    entry = json.loads(ledger_lines(root)[-1])
    state = {"id": "drill-3", "sealed": entry}  # as the runner records it once sealed
    (root / "drills" / "drill-3" / "drill.json").write_text(json.dumps(state))
    write_lines(root, ledger_lines(root)[:-1])


@pytest.mark.parametrize("damage, verdict", [
    (_edit, "line 2 (drill-2): entry was edited (hash does not match its content): not repaired: "
            "rewriting the entry would hide the edit"),
    (_missing_report, "line 2 (drill-2): report reports/drill-2.json is missing: not repaired: only a "
                      "copy of the original report can restore it; re-sealing would vouch for what is "
                      "there now"),
    (_removed_entry, "reports/drill-3.json has no ledger entry (entry removed?): not repaired: nothing "
                     "proves its seal was merely cut off (drills/drill-3/sealed-report.json does not exist)"),
    (_other_pending_bytes, "reports/drill-4.json has no ledger entry (entry removed?): not repaired: "
                           "drills/drill-4/sealed-report.json holds other bytes than the report"),
    (_sealed_in_drill_state, "reports/drill-3.json has no ledger entry (entry removed?): not repaired: "
                             "drills/drill-3/drill.json records its ledger entry (seq 3): the entry was "
                             "removed, not cut off by a crash"),
], ids=["edited-entry", "missing-report", "no-entry-no-pending", "pending-differs", "recorded-seal"])
def test_repair_refuses_what_would_hide_tampering(tmp_path, monkeypatch, damage, verdict):
    chain(tmp_path, 3)
    damage(tmp_path, monkeypatch)
    audit = verify_ledger(tmp_path)
    before = files(tmp_path)
    result = repair_ledger(tmp_path)
    assert result == RepairResult(actions=[], refused=[verdict])
    assert not result.ok
    assert files(tmp_path) == before
    assert verify_ledger(tmp_path) == audit and not audit.ok and audit.crashes == []


def test_repair_does_what_a_crash_explains_and_refuses_the_rest(tmp_path, monkeypatch):
    chain(tmp_path, 3)
    edit_entry(tmp_path, 1, rehash=True, time="2024-05-01T12:00:30Z")
    keep_pending(tmp_path, 4)
    crash_before_entry(tmp_path, 4, monkeypatch)
    append_raw(tmp_path, PARTIAL)
    result = repair_ledger(tmp_path)
    assert len(result.actions) == 2 and result.refused == [
        "line 2 (drill-2): previous hash does not match line 1: an entry was removed or reordered: "
        "not repaired: re-chaining the ledger would hide the removed or reordered entries"]
    audit = verify_ledger(tmp_path)
    assert (audit.entries, audit.crashes) == (4, [])
    assert audit.problems == ["line 2 (drill-2): previous hash does not match line 1: an entry was "
                              "removed or reordered"]


# -- verifying -----------------------------------------------------------------------------------

def test_a_missing_ledger_with_no_reports_is_fine(tmp_path):
    assert verify_ledger(tmp_path) == AuditResult(entries=0, head=None, problems=[])
    assert verify_ledger(tmp_path / "absent") == AuditResult(entries=0, head=None, problems=[])
    assert not (tmp_path / "audit").exists()  # verifying creates nothing


def test_a_clean_chain_verifies_with_its_head(tmp_path):
    entries = chain(tmp_path, 5)
    assert verify_ledger(tmp_path) == AuditResult(entries=5, head=entries[-1].hash, problems=[])


@pytest.mark.parametrize("change", [{"report_blake3": "0" * 64}, {"time": "2024-05-01T12:03:30Z"},
                                    {"drill": "drill-33"}, {"seq": 3, "prev": GENESIS}])
def test_an_edited_entry_is_detected(tmp_path, change):
    chain(tmp_path, 5)
    edit_entry(tmp_path, 3, **change)
    drill = change.get("drill", "drill-3")
    expected = [f"line 3 ({drill}): entry was edited (hash does not match its content)"]
    if "prev" in change:
        expected.append(f"line 3 ({drill}): previous hash does not match line 2: "
                        f"an entry was removed or reordered")
    assert problems(tmp_path) == expected


def test_an_edited_entry_with_its_hash_recomputed_breaks_the_next_link(tmp_path):
    chain(tmp_path, 5)
    edit_entry(tmp_path, 3, rehash=True, time="2024-05-01T12:03:30Z")
    assert problems(tmp_path) == [
        "line 4 (drill-4): previous hash does not match line 3: an entry was removed or reordered"]


def test_a_rehashed_entry_with_a_forged_digest_is_caught_twice(tmp_path):
    chain(tmp_path, 5)
    edit_entry(tmp_path, 3, rehash=True, report_blake3="0" * 64)
    assert problems(tmp_path) == [
        "line 3 (drill-3): report reports/drill-3.json was edited (digest differs)",
        "line 4 (drill-4): previous hash does not match line 3: an entry was removed or reordered"]


def test_time_going_backwards_is_detected(tmp_path):
    chain(tmp_path, 3)
    edit_entry(tmp_path, 2, rehash=True, time="2024-05-01T11:00:00Z")
    assert problems(tmp_path) == [
        "line 2 (drill-2): time goes backwards (2024-05-01T11:00:00Z is before line 1's "
        "2024-05-01T12:01:00Z)",
        "line 3 (drill-3): previous hash does not match line 2: an entry was removed or reordered"]


def test_a_removed_middle_entry_is_detected(tmp_path):
    chain(tmp_path, 5)
    lines = ledger_lines(tmp_path)
    write_lines(tmp_path, lines[:2] + lines[3:])
    assert problems(tmp_path) == [
        "line 3 (drill-4): sequence number 4, expected 3",
        "line 3 (drill-4): previous hash does not match line 2: an entry was removed or reordered",
        "reports/drill-3.json has no ledger entry (entry removed?)"]


def test_a_removed_first_entry_is_detected(tmp_path):
    chain(tmp_path, 3)
    write_lines(tmp_path, ledger_lines(tmp_path)[1:])
    assert problems(tmp_path) == [
        "line 1 (drill-2): sequence number 2, expected 1",
        "line 1 (drill-2): previous hash does not match the start of the chain: "
        "an entry was removed or reordered",
        "reports/drill-1.json has no ledger entry (entry removed?)"]


def test_swapped_entries_are_detected(tmp_path):
    chain(tmp_path, 4)
    lines = ledger_lines(tmp_path)
    lines[1], lines[2] = lines[2], lines[1]
    write_lines(tmp_path, lines)
    assert problems(tmp_path) == [
        "line 2 (drill-3): sequence number 3, expected 2",
        "line 2 (drill-3): previous hash does not match line 1: an entry was removed or reordered",
        "line 3 (drill-2): sequence number 2, expected 4",
        "line 3 (drill-2): previous hash does not match line 2: an entry was removed or reordered",
        "line 3 (drill-2): time goes backwards (2024-05-01T12:02:00Z is before line 2's "
        "2024-05-01T12:03:00Z)",
        "line 4 (drill-4): sequence number 4, expected 3",
        "line 4 (drill-4): previous hash does not match line 3: an entry was removed or reordered"]


def test_an_edited_report_is_detected(tmp_path):
    chain(tmp_path, 3)
    path = tmp_path / "reports" / "drill-2.json"
    path.chmod(0o644)
    path.write_bytes(report(2).replace(b"complete", b"failed"))
    assert problems(tmp_path) == ["line 2 (drill-2): report reports/drill-2.json was edited (digest differs)"]


def test_a_deleted_report_is_detected(tmp_path):
    chain(tmp_path, 3)
    (tmp_path / "reports" / "drill-2.json").unlink()
    assert problems(tmp_path) == ["line 2 (drill-2): report reports/drill-2.json is missing"]


def test_a_removed_last_entry_is_a_report_without_entry(tmp_path):
    chain(tmp_path, 3)
    write_lines(tmp_path, ledger_lines(tmp_path)[:-1])
    result = verify_ledger(tmp_path)
    assert (result.entries, result.problems) == (2, ["reports/drill-3.json has no ledger entry (entry removed?)"])


def test_removing_the_last_entry_and_its_report_shows_only_in_the_head(tmp_path):
    entries = chain(tmp_path, 3)
    write_lines(tmp_path, ledger_lines(tmp_path)[:-1])
    (tmp_path / "reports" / "drill-3.json").unlink()
    # The documented limit: consistent in itself; only a head recorded elsewhere tells
    assert verify_ledger(tmp_path) == AuditResult(entries=2, head=entries[1].hash, problems=[])
    assert entries[1].hash != entries[2].hash


def test_a_report_path_outside_the_state_directory_is_not_read(tmp_path):
    root = tmp_path / "state"
    chain(root, 3)
    (tmp_path / "outside.json").write_bytes(report(3))
    edit_entry(root, 3, rehash=True, report="../outside.json")
    edit_entry(root, 2, rehash=True, report="/etc/passwd")
    assert problems(root) == [
        "line 2 (drill-2): report path '/etc/passwd' leaves the state directory (not read)",
        "line 3 (drill-3): previous hash does not match line 2: an entry was removed or reordered",
        "line 3 (drill-3): report path '../outside.json' leaves the state directory (not read)",
        "reports/drill-2.json has no ledger entry (entry removed?)",
        "reports/drill-3.json has no ledger entry (entry removed?)"]


def test_a_report_symlinked_outside_is_not_read(tmp_path):
    root = tmp_path / "state"
    chain(root, 1)
    (tmp_path / "outside.json").write_bytes(report(1))
    path = root / "reports" / "drill-1.json"
    path.unlink()
    path.symlink_to(tmp_path / "outside.json")
    assert problems(root) == [
        "line 1 (drill-1): report reports/drill-1.json links outside the state directory (not read)"]


def test_garbage_lines_are_named_and_the_rest_still_checked(tmp_path):
    chain(tmp_path, 4)
    lines = ledger_lines(tmp_path)
    lines[1] = "hello\n"
    lines[2] = json.dumps({"seq": "3"}) + "\n"
    write_lines(tmp_path, lines[:3] + ["x" * 100_000 + "\n"] + lines[3:])
    result = verify_ledger(tmp_path)
    assert result.problems == [
        "line 2: not a JSON object (torn or edited)",
        "line 3: not a ledger entry (bad or missing fields: drill, hash, prev, report, "
        "report_blake3, time, seq)",
        "line 4: not a JSON object (torn or edited)",
        "line 5 (drill-4): sequence number 4, expected 5",
        "reports/drill-2.json has no ledger entry (entry removed?)",
        "reports/drill-3.json has no ledger entry (entry removed?)"]
    assert result.entries == 2


# -- concurrency ---------------------------------------------------------------------------------

def _seal_many(root: str, prefix: str, count: int, start) -> None:
    start.wait()
    for i in range(count):
        seal_report(Path(root), f"{prefix}-{i}", f'{{"n": {i}}}'.encode())


def test_two_processes_appending_at_once_keep_the_chain_unbroken(tmp_path):
    ctx = multiprocessing.get_context("fork")
    start = ctx.Event()
    workers = [ctx.Process(target=_seal_many, args=(str(tmp_path), p, 20, start)) for p in ("a", "b")]
    for w in workers:
        w.start()
    start.set()
    for w in workers:
        w.join(60)
    assert [w.exitcode for w in workers] == [0, 0]
    result = verify_ledger(tmp_path)
    assert (result.entries, result.problems) == (40, [])
    entries = [json.loads(line) for line in ledger_lines(tmp_path)]
    assert [e["seq"] for e in entries] == list(range(1, 41))
    assert {e["drill"] for e in entries} == {f"{p}-{i}" for p in "ab" for i in range(20)}
    assert result.head == entries[-1]["hash"]
