"""Drill plans and the human quantities in them: every example loads, every mistake is one
line naming the file and line, and nothing in a plan is ever executed."""
from __future__ import annotations

import textwrap
from datetime import datetime, timedelta, timezone
from pathlib import Path

import pytest

from archcheck.errors import UsageError
from archcheck.plans import KEYS, Plan, PlanError, expand_archives, load_plan
from archcheck.units import (Budget, format_duration, parse_budget, parse_duration, parse_size, parse_until,
                             parse_window)

DRILLS = Path(__file__).resolve().parents[1] / "drills"
CET = timezone(timedelta(hours=1))
NOW = datetime(2026, 11, 26, 22, 15, tzinfo=CET)  # a Thursday evening, UTC+1
MiB, GiB = 1 << 20, 1 << 30
KNOWN = ", ".join(sorted(KEYS))


def at(day: int, hour: int, minute: int = 0, second: int = 0) -> datetime:
    return datetime(2026, 11, day, hour, minute, second, tzinfo=CET)


def write(tmp_path: Path, text: str, name: str = "plan.yaml") -> Path:
    path = tmp_path / name
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(textwrap.dedent(text))
    return path


def refused(path: Path) -> str:
    with pytest.raises(PlanError) as info:
        load_plan(path)
    assert info.value.exit_code == 2 and isinstance(info.value, UsageError)
    assert "\n" not in str(info.value)
    return str(info.value)


# -- the examples in drills/

def test_every_example_plan_loads():
    names = sorted(path.name for path in DRILLS.glob("*.yaml"))
    assert names == ["ci-gate.yaml", "monthly-full.yaml", "nightly.yaml"]
    for path in DRILLS.glob("*.yaml"):
        assert isinstance(load_plan(path), Plan)


def test_nightly_example():
    plan = load_plan(DRILLS / "nightly.yaml")
    assert plan == Plan(
        path=DRILLS / "nightly.yaml", name="nightly",
        archives=("/backups/postgres/*.tar.zst", "/backups/files/**/*.tar.zst"),
        window="01:00-05:00", budget=Budget(seconds=3 * 3600), skip_verified_within=7 * 86400,
        workers=4, max_memory=512 * MiB, state_dir=Path("/var/lib/archcheck"),
        report="/var/log/archcheck/{plan}-{date}-{drill}.json")
    assert plan.line_of["budget"] == 18 and plan.line_of["archives[1]"] == 9


def test_monthly_full_example():
    plan = load_plan(DRILLS / "monthly-full.yaml")
    assert plan == Plan(
        path=DRILLS / "monthly-full.yaml", name="monthly-full",
        archives=("/backups/postgres/*.tar.zst", "/backups/files/**/*.tar.zst"),
        layers=("raw", "zstd", "tar", "members"), digest="blake3", deadline=12 * 3600,
        workers=8, max_memory=2 * GiB, max_window=2 * GiB, state_dir=Path("/var/lib/archcheck"),
        report="/var/log/archcheck/{drill}-{date}.json")
    assert plan.budget is None and plan.skip_verified_within is None


def test_ci_gate_example_reads_relative_paths_from_its_directory():
    plan = load_plan(DRILLS / "ci-gate.yaml")
    assert plan == Plan(
        path=DRILLS / "ci-gate.yaml", name="ci-gate", archives=("./out/backup.tar.zst",),
        deadline=20 * 60, workers=2, max_memory=256 * MiB,
        report=str(DRILLS / "out" / "archcheck-{drill}.json"), baseline=DRILLS / "out" / "baseline.catalog",
        policy=DRILLS / "policies" / "prod.yaml", save_catalog=DRILLS / "out" / "backup.catalog")


def test_the_example_policy_loads():
    from archcheck.policies import load_policy
    policy = load_policy(DRILLS / "policies" / "prod.yaml")
    assert policy.required == ("PG_VERSION", "global/pg_control", "base/*")
    assert (policy.max_growth.bytes, policy.max_growth.members) == (300, 200) and policy.max_shrink.bytes == 50
    assert [w.code for w in policy.waivers] == ["POLICY_SHRINK"] and policy.max_age == 2 * 86400


def test_line_numbers_are_not_part_of_equality(tmp_path):
    one = load_plan(write(tmp_path, "archives: [a.tar.zst]\nworkers: 2\n"))
    two = load_plan(write(tmp_path, "\n\nworkers: 2\narchives: [a.tar.zst]\n"))
    assert one == two and hash(one) == hash(two) and one.line_of != two.line_of
    assert two.line_of == {"workers": 3, "archives": 4, "archives[0]": 4}


# -- values

def test_plain_yaml_scalars_are_read_as_written(tmp_path):
    # YAML 1.1 reads 6:00 as the sexagesimal integer 360 and an ISO time as a timestamp.
    plan = load_plan(write(tmp_path, """\
        name: "2026"
        archives: [2026.tar.zst, "b.tar.zst"]
        until: 6:00
        digest: xxh3-128
        max_memory: 1048576
        segment_size: 128MiB
        """))
    assert (plan.name, plan.archives, plan.until) == ("2026", ("2026.tar.zst", "b.tar.zst"), "6:00")
    assert (plan.max_memory, plan.segment_size, plan.digest) == (MiB, 128 * MiB, "xxh3-128")
    future = (datetime.now(timezone.utc) + timedelta(days=3)).strftime("%Y-%m-%dT%H:%M:%SZ")
    assert load_plan(write(tmp_path, f"archives: [a]\nuntil: {future}\n")).until == future


def test_relative_state_dir_and_report_are_read_from_the_plan_directory(tmp_path, monkeypatch):
    write(tmp_path, "archives: [a]\nstate_dir: state\nreport: reports/{drill}-{date}.json\n", "drills/x.yaml")
    monkeypatch.chdir(tmp_path)
    plan = load_plan("drills/x.yaml")
    assert plan.path == Path("drills/x.yaml") and plan.name == "x"
    assert plan.state_dir == tmp_path / "drills" / "state"
    assert plan.report == str(tmp_path / "drills" / "reports" / "{drill}-{date}.json")


# -- every mistake, one line with file and line

ERRORS = [
    ("", ": the plan is empty; it needs at least 'archives'"),
    ("# only a comment\n", ": the plan is empty; it needs at least 'archives'"),
    ("archives: [a, b\nworkers: 2\n", ":2: not valid YAML: expected ',' or ']', but got ':'"),
    ("a: b: c\n", ":1: not valid YAML: mapping values are not allowed here"),
    ("archives: [a]\n\tworkers: 2\n", ":2: not valid YAML: found character '\\t' that cannot start any token"),
    ("archives: [a]\n---\narchives: [b]\n",
     ":2: not valid YAML: expected a single document in the stream, but found another document"),
    ("archives: [a]\nname: '\x07'\n",
     ":2: not valid YAML: character #x0007: special characters are not allowed"),
    ("- a.tar.zst\n- b.tar.zst\n", ":1: a plan is a mapping of keys (archives: ..., budget: ...), not a list"),
    ("just words\n", ":1: a plan is a mapping of keys (archives: ..., budget: ...), not 'just words'"),
    ("archives: [a]\nworkers: 2\nbudget: 2h\nworkers: 3\n", ":4: duplicate key 'workers' (first at line 2)"),
    ("archives: [a]\n\n\n\n\n\nbudjet: 3h\n", f":7: unknown key 'budjet' (known keys: {KNOWN})"),
    ("archives: [a]\n[x]: 1\n", f":2: unknown key a list (known keys: {KNOWN})"),
    ("workers: 2\n", ": no 'archives': list the archives to verify (archives: [/backups/*.tar.zst])"),
    ("archives: []\n", ":1: 'archives' is empty: list at least one archive"),
    ("archives:\n", ":1: 'archives' has no value; give one or leave the key out"),
    ("archives: /backups/a.tar.zst\n", ":1: 'archives' must be a list, not '/backups/a.tar.zst'"),
    ("archives: {a: b}\n", ":1: 'archives' must be a list, not a mapping"),
    ("archives:\n  - a.tar.zst\n  - ''\n", ":3: 'archives' entries must not be empty"),
    ("archives:\n  - a.tar.zst\n  -\n", ":3: 'archives' entries must not be empty"),
    ("archives:\n  - [a, b]\n", ":2: 'archives' entries must be a single value, not a list"),
    ("archives: [a]\nworkers: two\n", ":2: 'workers' must be a positive integer, not 'two'"),
    ("archives: [a]\nworkers: true\n", ":2: 'workers' must be a positive integer, not 'true'"),
    ("archives: [a]\nworkers: 0\n", ":2: 'workers' must be a positive integer, not '0'"),
    ("archives: [a]\nworkers: -3\n", ":2: 'workers' must be a positive integer, not '-3'"),
    ("archives: [a]\nworkers: 2.5\n", ":2: 'workers' must be a positive integer, not '2.5'"),
    ("archives: [a]\nworkers: \"4\"\n", ":2: 'workers' must be a positive integer, not the string '4'"),
    ("archives: [a]\nworkers: [4]\n", ":2: 'workers' must be a positive integer, not a list"),
    ("archives: [a]\nlayers:\n  - raw\n  - zst\n", ":4: 'layers' entries must be one of raw, zstd, tar, members, pages, not 'zst'"),
    ("archives: [a]\nlayers: raw,zstd\n", ":2: 'layers' must be a list, not 'raw,zstd'"),
    ("archives: [a]\nlayers: []\n", ":2: 'layers' is empty: leave it out"),
    ("archives: [a]\ndigest: md5\n", ":2: 'digest' must be one of xxh3-128, blake3, not 'md5'"),
    ("archives: [a]\ndigest: [blake3]\n", ":2: 'digest' must be a single value, not a list"),
    ("archives: [a]\n\n\n\n\n\n\n\n\n\n\nbudget: 30x\n",
     ":12: 'budget': cannot read '30x' as a budget (examples: 30m, 2h, 500G; 30m is 30 minutes, 30M is 30 MiB)"),
    ("archives: [a]\nbudget: 500\n",
     ":2: 'budget': cannot read '500' as a budget (examples: 30m, 2h, 500G; 30m is 30 minutes, 30M is 30 MiB)"),
    ("archives: [a]\ndeadline: 3x\n",
     ":2: 'deadline': cannot read '3x' as a duration (examples: 90s, 45m, 2h, 1h30m, 7d)"),
    ("archives: [a]\nskip_verified_within: 0d\n",
     ":2: 'skip_verified_within': '0d' is no time at all; give a duration (examples: 90s, 45m, 2h, 1h30m, 7d)"),
    ("archives: [a]\ndeadline: 2h\nbudget: 1h\nuntil: '06:00'\n",
     ":4: 'until' conflicts with 'deadline' (line 2): set at most one of deadline, until, window"),
    ("archives: [a]\nwindow: 01:00-05:00\ndeadline: 2h\n",
     ":3: 'deadline' conflicts with 'window' (line 2): set at most one of deadline, until, window"),
    ("archives: [a]\nuntil: 2020-01-01T06:00:00Z\n", ":2: 'until': '2020-01-01T06:00:00Z' is in the past"),
    ("archives: [a]\nuntil: 25:00\n",
     ":2: 'until': cannot read '25:00' as a time (examples: 06:00, 23:59:30, 2026-11-27T06:00:00+01:00)"),
    ("archives: [a]\nwindow: 01:00\n",
     ":2: 'window': cannot read '01:00' as a time window (examples: 01:00-05:00, 22:00-06:00)"),
    ("archives: [a]\nmax_memory: 0\n", ":2: 'max_memory' must be more than zero, not '0'"),
    ("archives: [a]\nmax_window: 2 gigs\n",
     ":2: 'max_window': cannot read '2 gigs' as a size (examples: 64M, 1G, 512KiB)"),
    ("archives: [a]\nname: nightly/../../etc\n",
     ":2: 'name' must be letters, digits, '.', '_' or '-', not 'nightly/../../etc'"),
    ("archives: [a]\nreport: /var/log/{host}.json\n",
     ":2: 'report' may contain {drill}, {plan} and {date} and no other braces, not '/var/log/{host}.json'"),
    ("archives: [a]\nreport: /var/log/{drill.json\n",
     ":2: 'report' may contain {drill}, {plan} and {date} and no other braces, not '/var/log/{drill.json'"),
    ("archives: [a]\nstate_dir: ''\n", ":2: 'state_dir' must not be empty"),
    ("archives: [a]\nbase: &b {workers: 2}\n", f":2: unknown key 'base' (known keys: {KNOWN})"),
    ("archives: [a]\n<<: {workers: 2}\n", ":2: YAML tag '!!merge' is not allowed in a plan"),
    ("archives: [a]\nname: !env HOSTNAME\n", ":2: YAML tag '!env' is not allowed in a plan"),
    ("archives: !!set {a, b}\n", ":1: YAML tag '!!set' is not allowed in a plan"),
]


@pytest.mark.parametrize("text, message", ERRORS, ids=[f"{i}:{m[:40]}" for i, (_, m) in enumerate(ERRORS)])
def test_each_mistake_is_one_line_with_file_and_line(tmp_path, text, message):
    path = tmp_path / "nightly.yaml"
    path.write_text(text)
    assert refused(path) == f"{path}{message}"


def test_a_missing_or_unreadable_plan(tmp_path):
    missing = tmp_path / "nope.yaml"
    assert refused(missing) == f"{missing}: cannot read the plan: No such file or directory (errno 2)"
    assert refused(tmp_path) == f"{tmp_path}: cannot read the plan: Is a directory (errno 21)"
    binary = tmp_path / "binary.yaml"
    binary.write_bytes(b"\xff\xfe archives")
    assert refused(binary).startswith(f"{binary}: cannot read the plan: 'utf-8' codec can't decode byte 0xff")


def test_a_python_tag_is_refused_and_never_executed(tmp_path):
    marker = tmp_path / "executed"
    path = write(tmp_path, f"""\
        archives: [a]
        name: !!python/object/apply:os.system ["touch {marker}"]
        """)
    assert refused(path) == f"{path}:2: YAML tag '!!python/object/apply:os.system' is not allowed in a plan"
    assert not marker.exists()
    nested = write(tmp_path, "archives:\n  - a\n  - !!python/object:pathlib.Path {}\n")
    assert refused(nested) == f"{nested}:3: YAML tag '!!python/object:pathlib.Path' is not allowed in a plan"


def test_aliases_that_loop_are_refused_not_followed_forever(tmp_path):
    path = write(tmp_path, "archives: &loop [a, *loop]\n")
    assert refused(path) == f"{path}:1: 'archives' entries must be a single value, not a list"


# -- expanding archive patterns

def test_expand_archives_from_the_plan_directory(tmp_path, monkeypatch):
    backups = tmp_path / "backups"
    for name in ("b.tar.zst", "a.tar.zst", "sub/deep/c.tar.zst", "sub/d.tar.zst", "notes.txt"):
        (backups / name).parent.mkdir(parents=True, exist_ok=True)
        (backups / name).write_bytes(b"x")
    (backups / "dir.tar.zst").mkdir()  # matches the pattern but is not a regular file
    write(tmp_path, f"""\
        archives:
          - ../backups/*.tar.zst
          - ../backups/**/*.tar.zst
          - ../backups/dir.tar.zst
          - ../missing/*.tar.zst
          - {backups}/a.tar.zst
        """, "drills/plan.yaml")
    monkeypatch.chdir("/")  # as under cron
    paths, unmatched = expand_archives(load_plan(tmp_path / "drills" / "plan.yaml"))
    assert paths == [backups / "a.tar.zst", backups / "b.tar.zst",
                     backups / "sub/d.tar.zst", backups / "sub/deep/c.tar.zst"]
    assert unmatched == ["../backups/dir.tar.zst", "../missing/*.tar.zst"]


def test_expand_archives_when_the_plan_directory_looks_like_a_glob(tmp_path):
    odd = tmp_path / "[drills]"
    (odd / "x.tar.zst").parent.mkdir()
    (odd / "x.tar.zst").write_bytes(b"x")
    paths, unmatched = expand_archives(load_plan(write(odd, "archives: ['*.tar.zst']\n")))
    assert (paths, unmatched) == ([odd / "x.tar.zst"], [])


# -- units

def test_parse_size_is_the_cli_one():
    from archcheck import cli
    for text in ("4096", "64M", "64m", "1.5GiB", " 512 kb ", "2T", "1tib", "8b", "0"):
        assert parse_size(text, "--x") == cli.parse_size(text, "--x"), text
    assert parse_size("1.5GiB", "--x") == 3 * GiB // 2
    for text in ("1x", "", "-1M", "1 2M", "M"):
        with pytest.raises(UsageError) as info:
            parse_size(text, "--max-memory")
        assert str(info.value) == f"--max-memory: cannot read {text!r} as a size (examples: 64M, 1G, 512KiB)"


@pytest.mark.parametrize("text, seconds", [
    ("90s", 90), ("45m", 2700), ("2h", 7200), ("1h30m", 5400), ("7d", 604800), ("1d12h", 129600),
    ("90", 90), ("1.5", 1.5), ("1.5h", 5400), ("1h 30m", 5400), ("2H", 7200), ("1D", 86400), ("1m30s", 90),
])
def test_parse_duration(text, seconds):
    assert parse_duration(text, "'deadline'") == seconds


@pytest.mark.parametrize("text", ["", "s", "3x", "-5s", "30m1h", "1h30", "1h1h", "1.h", "h1"])
def test_parse_duration_refuses(text):
    with pytest.raises(UsageError) as info:
        parse_duration(text, "--deadline")
    assert str(info.value) == f"--deadline: cannot read {text!r} as a duration (examples: 90s, 45m, 2h, 1h30m, 7d)"


def test_parse_duration_refuses_zero():
    with pytest.raises(UsageError) as info:
        parse_duration("0m", "--deadline")
    assert str(info.value) == "--deadline: '0m' is no time at all; give a duration (examples: 90s, 45m, 2h, 1h30m, 7d)"


def test_parse_until_a_clock_time_is_the_next_one():
    assert parse_until("23:59:30", "--until", NOW) == at(26, 23, 59, 30)  # still ahead today
    assert parse_until("06:00", "--until", NOW) == at(27, 6)  # earlier than now: tomorrow
    assert parse_until("6:00", "--until", NOW) == at(27, 6)
    assert parse_until("22:15", "--until", NOW) == at(27, 22, 15)  # exactly now is not after now
    assert parse_until("0:00", "--until", NOW).tzinfo is CET


def test_parse_until_keeps_the_wall_clock_across_a_dst_change():
    zoneinfo = pytest.importorskip("zoneinfo")
    try:
        berlin = zoneinfo.ZoneInfo("Europe/Berlin")
    except zoneinfo.ZoneInfoNotFoundError:
        pytest.skip("no time zone database")
    now = datetime(2026, 3, 28, 23, 0, tzinfo=berlin)  # clocks go forward at 02:00
    until = parse_until("06:00", "--until", now)
    assert (until.hour, until.utcoffset()) == (6, timedelta(hours=2))
    assert until.timestamp() - now.timestamp() == 6 * 3600  # aware subtraction in one zone is wall-clock


def test_parse_until_an_iso_time():
    assert parse_until("2026-11-27T06:00:00+01:00", "--until", NOW) == at(27, 6)
    assert parse_until("2026-11-27T05:00:00Z", "--until", NOW) == at(27, 6)
    assert parse_until("2026-11-27T05:00:00Z", "--until", NOW).tzinfo is CET


@pytest.mark.parametrize("text, message", [
    ("2026-11-26T06:00:00+01:00", "'2026-11-26T06:00:00+01:00' is in the past"),
    ("2026-11-26T21:15:00Z", "'2026-11-26T21:15:00Z' is in the past"),  # exactly now
    ("2026-11-27T06:00:00", "'2026-11-27T06:00:00' needs a UTC offset (examples: 2026-11-27T06:00:00+01:00, "
                            "2026-11-27T05:00:00Z) or a plain clock time such as 06:00"),
    ("24:00", "cannot read '24:00' as a time (examples: 06:00, 23:59:30, 2026-11-27T06:00:00+01:00)"),
    ("6:60", "cannot read '6:60' as a time (examples: 06:00, 23:59:30, 2026-11-27T06:00:00+01:00)"),
    ("6am", "cannot read '6am' as a time (examples: 06:00, 23:59:30, 2026-11-27T06:00:00+01:00)"),
])
def test_parse_until_refuses(text, message):
    with pytest.raises(UsageError) as info:
        parse_until(text, "--until", NOW)
    assert str(info.value) == f"--until: {message}"


@pytest.mark.parametrize("text, now, window", [
    ("01:00-05:00", NOW, (at(27, 1), at(27, 5))),  # after today's: tomorrow's
    ("01:00-05:00", at(27, 0, 59), (at(27, 1), at(27, 5))),  # before today's: today's
    ("01:00-05:00", at(27, 1), (at(27, 1), at(27, 5))),  # starts now: inside
    ("01:00-05:00", at(27, 4, 59), (at(27, 1), at(27, 5))),  # inside
    ("01:00-05:00", at(27, 5), (at(28, 1), at(28, 5))),  # the end is not inside
    ("22:00-06:00", NOW, (at(26, 22), at(27, 6))),  # across midnight, evening side
    ("22:00-06:00", at(27, 3), (at(26, 22), at(27, 6))),  # across midnight, morning side
    ("22:00-06:00", at(27, 12), (at(27, 22), at(28, 6))),  # between: tonight's
    ("23:30-0:30", at(27, 0, 15), (at(26, 23, 30), at(27, 0, 30))),
    ("21:00-22:15", NOW, (at(27, 21), at(27, 22, 15))),
    ("22:10:30-22:20", NOW, (at(26, 22, 10, 30), at(26, 22, 20))),
])
def test_parse_window(text, now, window):
    assert parse_window(text, "--window", now) == window


@pytest.mark.parametrize("text, message", [
    ("01:00", "cannot read '01:00' as a time window (examples: 01:00-05:00, 22:00-06:00)"),
    ("01:00-25:00", "cannot read '01:00-25:00' as a time window (examples: 01:00-05:00, 22:00-06:00)"),
    ("1-5", "cannot read '1-5' as a time window (examples: 01:00-05:00, 22:00-06:00)"),
    ("01:00-01:00", "the window '01:00-01:00' starts and ends at the same time"),
])
def test_parse_window_refuses(text, message):
    with pytest.raises(UsageError) as info:
        parse_window(text, "--window", NOW)
    assert str(info.value) == f"--window: {message}"


@pytest.mark.parametrize("text, budget", [
    ("30m", Budget(seconds=1800)), ("30M", Budget(bytes=30 * MiB)),  # case decides
    ("2h", Budget(seconds=7200)), ("1h30m", Budget(seconds=5400)), ("90s", Budget(seconds=90)),
    ("7d", Budget(seconds=7 * 86400)),
    ("500G", Budget(bytes=500 * GiB)), ("500GB", Budget(bytes=500 * GiB)), ("500GiB", Budget(bytes=500 * GiB)),
    ("1.5TiB", Budget(bytes=3 << 39)), ("200M", Budget(bytes=200 * MiB)), ("4096B", Budget(bytes=4096)),
    ("64kB", Budget(bytes=64 << 10)),
])
def test_parse_budget(text, budget):
    assert parse_budget(text, "--budget") == budget


@pytest.mark.parametrize("text", ["500", "500g", "500gb", "2H", "30x", "30Mm", "", "m", "G", "1.5.2h", "-2h"])
def test_parse_budget_refuses(text):
    with pytest.raises(UsageError) as info:
        parse_budget(text, "--budget")
    assert str(info.value) == (f"--budget: cannot read {text!r} as a budget "
                               "(examples: 30m, 2h, 500G; 30m is 30 minutes, 30M is 30 MiB)")


def test_parse_budget_refuses_nothing():
    for text in ("0m", "0G"):
        with pytest.raises(UsageError) as info:
            parse_budget(text, "--budget")
        assert str(info.value) == (f"--budget: a budget of {text!r} allows nothing "
                                   "(examples: 30m, 2h, 500G; 30m is 30 minutes, 30M is 30 MiB)")


def test_a_budget_is_time_or_bytes():
    for seconds, size in ((None, None), (60.0, 1024)):
        with pytest.raises(ValueError):
            Budget(seconds=seconds, bytes=size)


@pytest.mark.parametrize("seconds, text", [
    (0, "0s"), (0.4, "0s"), (45, "45s"), (59.6, "1m 00s"), (750, "12m 30s"), (3900, "1h 05m"),
    (7200, "2h 00m"), (3 * 86400 + 4 * 3600 + 59 * 60, "3d 4h"), (-5, "0s"),
])
def test_format_duration(seconds, text):
    assert format_duration(seconds) == text
