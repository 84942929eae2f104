"""The command line as a user meets it: exit codes, one clear line, safe output, the report."""
from __future__ import annotations

import json
from pathlib import Path
import os
import subprocess

import pytest

from conftest import ARCHCHECK, ROOT, cli


def test_intact_archive_exits_0_and_says_so(fx, state):
    run = cli("verify", fx / "multi.tar.zst", "--state-dir", state)
    assert run.returncode == 0, run.stderr
    assert "verdict   INTACT" in run.stdout and "62 members" in run.stdout
    assert "manifest  " + str(state) in run.stdout
    sealed = f"sealed    {state}/reports/drill-1.json (ledger entry 1)"  # a path that opens from anywhere
    assert sealed in run.stdout and (state / "reports" / "drill-1.json").is_file()


def test_state_dir_from_environment(fx, tmp_path):
    run = cli("verify", fx / "gnu.tar", env={"ARCHCHECK_STATE_DIR": str(tmp_path / "envstate")})
    assert run.returncode == 0
    assert list((tmp_path / "envstate" / "drills").glob("drill-1/archives/*/manifest.json"))


def test_corruption_exits_1_with_location(fx, state, damaged):
    size = (fx / "single.tar.zst").stat().st_size
    run = cli("verify", damaged("single.tar.zst", at=size - 2, xor=1), "--state-dir", state)
    assert run.returncode == 1
    assert "ZSTD_CHECKSUM_MISMATCH" in run.stdout and f"bytes 0-{size}, frame 0" in run.stdout


@pytest.mark.parametrize("setup,expected", [
    (lambda p: None, "no such file"),
    (lambda p: p.write_bytes(b""), "is empty"),
    (lambda p: p.mkdir(), "is a directory"),
    (lambda p: p.write_bytes(b"just some text, not an archive\n" * 40), "is not an archive archcheck knows"),
])
def test_an_unusable_archive_is_one_clear_line_and_exit_5(tmp_path, state, setup, expected):
    target = tmp_path / "backup.tar.zst"
    setup(target)
    run = cli("verify", target, "--state-dir", state)
    assert run.returncode == 5
    assert run.stderr.count("\n") == 1 and expected in run.stderr and "Traceback" not in run.stderr
    assert run.stdout == ""


def test_unreadable_file_is_exit_5(state):
    # reading /proc/self/mem at offset 0 fails with EIO, even for root
    run = cli("verify", "/proc/self/mem", "--state-dir", state)
    assert run.returncode == 5
    assert "cannot read: Input/output error" in run.stderr and run.stderr.count("\n") == 1


def test_a_format_archcheck_does_not_verify_is_named(tmp_path, state):
    archive = tmp_path / "backup.tar.bz2"
    archive.write_bytes(b"7z\xbc\xaf\x27\x1c" + bytes(100))
    run = cli("verify", archive, "--state-dir", state)
    assert run.returncode == 5 and run.stderr == (
        f"archcheck: {archive} is 7-Zip, not a format archcheck reads; archcheck verifies tar, alone or "
        "compressed with zstd, gzip, xz, lz4 or bzip2, each also encrypted with age\n")


def test_window_over_max_window_is_incomplete_naming_the_option(fx, state):
    run = cli("verify", fx / "long.tar.zst", "--max-window", "64M", "--state-dir", state)
    assert run.returncode == 3
    assert "ZSTD_WINDOW_OVER_LIMIT" in run.stdout and "needs a 2 GiB window, over --max-window 64 MiB" in run.stdout


@pytest.mark.parametrize("args,expected", [
    (["--layers", "raw,bogus"], "unknown layer bogus"),
    (["--segment-size", "5M"], "multiple of 8 MiB"),
    (["--segment-size", "lots"], "cannot read 'lots' as a size"),
    (["--workers", "0"], "--workers must be between 1 and 1024, not 0"),
    (["--workers", "99999999999999999999"], "--workers must be between 1 and 1024, not 99999999999999999999"),
    (["--digest", "md5"], "unknown digest md5"),
    (["--max-memory", "1M"], "--max-memory must be at least"),
])
def test_bad_usage_is_exit_2(fx, state, args, expected):
    run = cli("verify", fx / "gnu.tar", "--state-dir", state, *args)
    assert run.returncode == 2 and expected in run.stderr and "Traceback" not in run.stderr


@pytest.mark.parametrize("args,expected", [
    (["verify", "--workers", "abc", "a.tar"], "archcheck: Invalid value for '--workers': 'abc' is not a valid int "
                                              "(see archcheck verify --help)"),
    (["verify"], "archcheck: missing arguments (see archcheck verify --help)"),
    (["verify", "--bogus", "a.tar"], "archcheck: No such option: --bogus (see archcheck verify --help)"),
    (["diff", "a.json"], "archcheck: Missing argument 'new' (see archcheck diff --help)"),
    (["drill"], "archcheck: give a command (see archcheck drill --help)"),
    (["frobnicate"], "archcheck: No such command 'frobnicate' (see archcheck --help)"),
])
def test_a_bad_command_line_is_one_line_and_exit_2(args, expected):
    run = cli(*args)
    assert (run.returncode, run.stdout, run.stderr) == (2, "", expected + "\n")


def test_unknown_option_is_exit_2(fx):
    run = cli("verify", fx / "gnu.tar", "--frobnicate")
    assert run.returncode == 2 and "frobnicate" in run.stderr


def test_help_lists_exit_codes_and_examples():
    run = cli("verify", "--help")
    assert run.returncode == 0
    assert "Exit codes:" in run.stdout and " 1  corruption found" in run.stdout
    assert "archcheck verify /backups/base.tar.zst" in run.stdout


def test_hostile_member_names_never_reach_the_terminal_raw(fx, state, tmp_path):
    bad = tmp_path / "hostile-cut.tar"  # cut inside the member, so a finding names it
    bad.write_bytes((fx / "hostile.tar").read_bytes()[:512 + 30000])
    run = cli("verify", bad, "--state-dir", state)
    assert run.returncode == 1
    assert "\x1b" not in run.stdout and "\x1b" not in run.stderr
    assert "\\x1b[31mred" in run.stdout and "[bold]markup" in run.stdout
    # escaped once, in the location line too (not "\\\\x1b")
    assert "member './evil-\\x1b[31mred\\x1b[0m-[bold]markup.txt' at +" in run.stdout and "\\\\x1b" not in run.stdout


def test_json_report(fx, state, tmp_path, damaged):
    report = tmp_path / "out" / "report.json"
    header_cut = 512 * 40
    archive = damaged("gnu.tar", truncate=header_cut + 100)
    run = cli("verify", archive, "--state-dir", state, "--report", report, "--report-members")
    assert run.returncode == 1
    data = json.loads(report.read_text())
    assert data["schema"] == "archcheck.report" and data["version"] == 3
    assert data["verdict"] == "corrupt" and data["exit_code"] == 1 and data["drill"] == "drill-1"
    [data] = data["archives"]
    assert data["verdict"] == "corrupt" and data["status"] == "complete"
    assert data["archive"]["size"] == header_cut + 100 and len(data["archive"]["head_blake3"]) == 64
    [finding] = [f for f in data["findings"] if f["category"] == "corruption"]
    assert finding["code"] == "TAR_TRUNCATED" and finding["location"]["byte_range"] == [header_cut + 100] * 2
    assert data["members"] and all("digest" in m for m in data["members"])
    assert data["manifest"].startswith(str(state))
    # without --report-members the members are named by their log, with its digests
    assert cli("verify", archive, "--state-dir", state, "--report", report).returncode == 1
    [named] = json.loads(report.read_text())["archives"]
    assert "members" not in named and named["members_log"]["count"] == len(data["members"])
    import blake3
    folder = Path(named["members_log"]["folder"])
    for part in named["members_log"]["parts"]:
        assert blake3.blake3((folder / part["file"]).read_bytes()[:part["length"]]).hexdigest() == part["blake3"]


def test_plain_progress_lines_when_not_a_terminal(fx, state):
    run = cli("verify", fx / "gnu.tar", "--state-dir", state, env={"ARCHCHECK_PROGRESS_INTERVAL": "0"})
    assert run.returncode == 0
    lines = [line for line in run.stderr.splitlines() if " progress " in line]
    assert lines and all(line[:4].isdigit() and line.split()[0].endswith("Z") for line in lines)
    assert "\x1b" not in run.stderr


def test_python_dash_m_entry_point():
    run = subprocess.run([os.sys.executable, "-m", "archcheck", "--help"], capture_output=True, text=True,
                         cwd=ROOT)
    assert run.returncode == 0 and "verify" in run.stdout


def test_quiet_prints_the_verdict_and_findings_only(fx, state, damaged):
    run = cli("verify", fx / "single.tar.zst", "--state-dir", state, "--quiet")
    assert run.returncode == 0 and run.stdout == "verdict   INTACT\n" and run.stderr == ""
    size = (fx / "single.tar.zst").stat().st_size
    run = cli("verify", damaged("single.tar.zst", at=size - 2, xor=1), "--state-dir", state, "-q")
    assert run.returncode == 1 and run.stdout.startswith("verdict   CORRUPT")
    assert "ZSTD_CHECKSUM_MISMATCH" in run.stdout and "manifest" not in run.stdout


@pytest.mark.parametrize("damaged", [False, True])
def test_a_reader_that_stops_reading_leaves_the_verdict_s_exit_code(tmp_path, damaged):
    """`archcheck verify ... | head`: the pipe breaks, the rest of the output is dropped, and the
    exit code is the verdict's (click would make it 1, corruption's), with no traceback."""
    archive = ROOT / "fixtures" / "sample.tar.zst"
    if damaged:
        data = bytearray(archive.read_bytes())
        data[len(data) // 2] ^= 0x10
        archive = tmp_path / "damaged.tar.zst"
        archive.write_bytes(bytes(data))
    run = subprocess.Popen([*ARCHCHECK, "verify", str(archive), "--state-dir", str(tmp_path / "s"),
                            "--report-members", "--report", str(tmp_path / "report.json"), "--no-progress"],
                           stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    run.stdout.close()  # gone before the first line
    _, errors = run.communicate(timeout=120)
    assert (run.returncode, errors) == (1 if damaged else 0, b"")
    assert json.loads((tmp_path / "s" / "reports" / "drill-1.json").read_text())["verdict"] == (
        "corrupt" if damaged else "intact")


def test_a_report_to_standard_output_is_the_report_alone(fx, state, damaged):
    """`--report -`: standard output is the JSON report and nothing else (for jq), the summary goes
    to stderr; the exit code is still the verdict's."""
    size = (fx / "single.tar.zst").stat().st_size
    run = cli("verify", damaged("single.tar.zst", at=size - 2, xor=1), "--state-dir", state, "--report", "-",
              "--junit", state / "junit.xml", env={"GITHUB_ACTIONS": "true", "GITHUB_STEP_SUMMARY": ""})
    assert run.returncode == 1
    report = json.loads(run.stdout)  # GitHub's workflow commands went to stderr too
    assert "::error " in run.stderr
    assert report["verdict"] == "corrupt"
    [archive] = report["archives"]
    assert [f["code"] for f in archive["findings"]] == ["ZSTD_CHECKSUM_MISMATCH"]
    assert "verdict   CORRUPT" in run.stderr and "report    -" in run.stderr
    assert (state / "junit.xml").read_text().startswith("<?xml")
    assert not (Path.cwd() / "-").exists()
    shown = cli("report", "drill-1", "--state-dir", state, "-o", "-")
    assert json.loads(shown.stdout)["verdict"] == "corrupt" and shown.returncode == 1


def test_only_one_output_can_be_standard_output(fx, state):
    run = cli("verify", fx / "gnu.tar", "--state-dir", state, "--report", "-", "--prometheus", "-")
    assert run.returncode == 2 and run.stdout == ""
    assert run.stderr == "archcheck: only one of --report, --junit and --prometheus can be - (standard output)\n"
    assert not (state / "drills").exists()  # refused before anything ran


def test_an_archive_path_that_is_not_utf8_is_shown_escaped_and_reported(fx, state, tmp_path):
    """The byte 0x9b (a terminal's CSI) in a file's name reaches no terminal raw, and the HTML
    and Markdown reports of it are written (they failed on the name's undecodable byte)."""
    name = os.fsencode(tmp_path) + b"/c1\x9b31mRED.tar"
    with open(name, "wb") as f:
        f.write((fx / "gnu.tar").read_bytes())
    run = subprocess.run([*ARCHCHECK, "verify", name, "--state-dir", str(state), "--no-progress"], capture_output=True)
    assert run.returncode == 0, run.stderr
    assert b"\x9b" not in run.stdout and b"c1\\x9b31mRED.tar" in run.stdout
    for fmt in ("html", "md"):
        out = tmp_path / f"r.{fmt}"
        shown = cli("report", "drill-1", "--state-dir", state, "--format", fmt, "-o", out)
        assert shown.returncode == 0, shown.stderr
        text = out.read_text()
        assert "x9b31mRED.tar" in text and "\x9b" not in text and "\udc9b" not in text


def test_a_plans_report_to_standard_output(fx, state, tmp_path):
    """`report: -` in a plan is standard output, as `--report -` is (not a file named - beside the
    plan); with `--junit -` as well, the run is refused before it starts."""
    plan = tmp_path / "plan.yaml"
    plan.write_text(f"archives: [{fx / 'gnu.tar'}]\nreport: '-'\nstate_dir: {state}\n")
    run = cli("drill", "run", plan)
    assert run.returncode == 0, run.stderr
    assert json.loads(run.stdout)["verdict"] == "intact" and "verdict   INTACT" in run.stderr
    assert not (tmp_path / "-").exists()
    both = cli("drill", "run", plan, "--junit", "-")
    assert both.returncode == 2 and both.stdout == ""
    assert both.stderr == "archcheck: only one of --report, --junit and --prometheus can be - (standard output)\n"
    assert [p.name for p in (state / "drills").iterdir()] == ["drill-1"]  # the second never started


def test_an_output_that_is_no_regular_file_is_written_into_never_replaced(fx, state, tmp_path):
    """A pipe (or /dev/stdout, /dev/null) is opened and written; renaming a file over it, as an
    atomic write of a regular file does, would replace it (as root, /dev/null itself)."""
    import stat
    import threading
    fifo = tmp_path / "report.pipe"
    os.mkfifo(fifo)
    got: list[bytes] = []
    reader = threading.Thread(target=lambda: got.append(fifo.read_bytes()), daemon=True)  # (never holds pytest)
    reader.start()
    run = cli("verify", fx / "gnu.tar", "--state-dir", state, "--report", fifo)
    reader.join(timeout=60)
    assert run.returncode == 0, run.stderr
    assert json.loads(got[0])["verdict"] == "intact"
    assert stat.S_ISFIFO(os.lstat(fifo).st_mode) and not list(tmp_path.glob(".report.pipe.*"))


def test_a_symlinked_output_is_written_through_and_metrics_go_to_a_pipe(fx, state, tmp_path):
    """`--report /dev/stdout > out.json` hands archcheck a symlink to a regular file: it is written
    through, the link stays (renaming over it replaced /dev/stdout). Metrics to a pipe are written
    without reading an earlier file from it first (that waited for a writer forever)."""
    import threading
    target, link = tmp_path / "target.json", tmp_path / "link.json"
    target.write_text("old")
    link.symlink_to(target)
    fifo = tmp_path / "metrics.pipe"
    os.mkfifo(fifo)
    got: list[bytes] = []
    reader = threading.Thread(target=lambda: got.append(fifo.read_bytes()), daemon=True)
    reader.start()
    run = cli("verify", fx / "gnu.tar", "--state-dir", state, "--report", link, "--prometheus", fifo, timeout=60)
    reader.join(timeout=60)
    assert run.returncode == 0, run.stderr
    assert link.is_symlink() and json.loads(target.read_text())["verdict"] == "intact"
    assert b"archcheck_last_success_timestamp_seconds" in got[0]


@pytest.mark.skipif(not os.path.exists("/dev/full"), reason="Linux's /dev/full")
def test_standard_output_on_a_full_disk_is_one_line_and_the_verdict_s_exit(fx, state, damaged):
    """`verify ... > /dev/full` (cron appending to a full /var/log): the verdict's exit, corruption
    first, then 8; never an internal error."""
    size = (fx / "single.tar.zst").stat().st_size
    for archive, code in ((damaged("single.tar.zst", at=size - 2, xor=1), 1), (fx / "gnu.tar", 8)):
        with open("/dev/full", "w") as full:
            run = subprocess.run([*ARCHCHECK, "verify", str(archive), "--state-dir", str(state)], stdout=full,
                                 stderr=subprocess.PIPE, text=True)
        assert (run.returncode, run.stderr) == (code, "archcheck: cannot write standard output: "
                                                      "No space left on device\n")
    with open("/dev/full", "w") as full:  # the report itself to standard output
        run = subprocess.run([*ARCHCHECK, "verify", str(fx / "gnu.tar"), "--state-dir", str(state), "--report", "-"],
                             stdout=full, stderr=subprocess.PIPE, text=True)
    assert run.returncode == 8 and "cannot write standard output: No space left on device" in run.stderr
    assert "internal error" not in run.stderr


@pytest.mark.skipif(not os.path.exists("/dev/full"), reason="Linux's /dev/full")
def test_an_output_that_cannot_be_written_is_one_line_after_the_verdict(fx, state):
    run = cli("verify", fx / "gnu.tar", "--state-dir", state, "--report", "/dev/full")
    assert run.returncode == 8 and "verdict   INTACT" in run.stdout
    assert run.stderr == "archcheck: cannot write /dev/full: No space left on device\n"
    assert Path("/dev/full").is_char_device()
