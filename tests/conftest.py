"""Shared fixtures: archives built once per session by fixtures/make_fixtures.py (real tar,
zstd and pzstd), and helpers to damage copies of them at known places."""
from __future__ import annotations

import importlib.util
import json
import os
import shutil
import subprocess
import sys
from datetime import datetime, timedelta, timezone
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
ARCHCHECK = [sys.executable, "-m", "archcheck"]


def _load_maker():
    spec = importlib.util.spec_from_file_location("make_fixtures", ROOT / "fixtures" / "make_fixtures.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


maker = _load_maker()

# CI runs the property tests on the same examples every time (ARCHCHECK_TEST_PROFILE=ci, set by
# .ci/run), so its verdict on a commit is that commit's; anywhere else they explore anew
from hypothesis import settings as _hypothesis  # noqa: E402

_hypothesis.register_profile("ci", derandomize=True, database=None, print_blob=True)
_hypothesis.load_profile(os.environ.get("ARCHCHECK_TEST_PROFILE", "default"))


@pytest.fixture(scope="session")
def fx(tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("fixtures")
    maker.build(out)
    return out


@pytest.fixture(scope="session")
def index(fx) -> dict:
    import json
    return json.loads((fx / "index.json").read_text())


@pytest.fixture(scope="session")
def pgfx(tmp_path_factory) -> tuple[Path, dict]:
    """Backups of a real PostgreSQL 15 cluster (tests/pg.py), built once per session."""
    from pg import make_pg_fixtures, pg_unavailable_reason
    reason = pg_unavailable_reason()
    if reason:
        pytest.skip(reason)
    out = tmp_path_factory.mktemp("pgfx")
    return out, make_pg_fixtures(out)


@pytest.fixture(scope="session")
def mixed_tar(tmp_path_factory) -> Path:
    """A tar, made by real tar, of 12 members of random bytes and of text, about 6 MiB: the
    reference that compressed copies of it (gzip, xz, lz4, bzip2) are checked against."""
    import random
    out = tmp_path_factory.mktemp("mixed")
    tree = out / "tree"
    tree.mkdir()
    rnd = random.Random(11)
    for i in range(12):
        size = rnd.randrange(1, 1024 * 1024)
        data = rnd.randbytes(size) if i % 2 else (f"row {i}\n" * (size // 6)).encode()
        (tree / f"f{i:02d}.dat").write_bytes(data)
    tar = out / "data.tar"
    # the same bytes on every machine and run: a failure found in CI is found here too
    subprocess.run(["tar", "-C", tree, "-cf", tar, "--sort=name", "--mtime=2026-01-01 00:00Z", "--owner=0",
                    "--group=0", "--numeric-owner", "."], check=True)
    return tar


@pytest.fixture(scope="session")
def mixed_reference(mixed_tar, tmp_path_factory):
    """The plain mixed tar's verification: what each compressed or encrypted copy must give."""
    from archcheck.api import verify
    return verify(mixed_tar, state=tmp_path_factory.mktemp("mixed-ref"))


def members_of(result) -> list[tuple]:
    """(name, size, digest) of each member a verification recorded."""
    return [(m["name"], m["size"], m.get("digest")) for m in result.members()]


def only(result, code: str):
    """The one finding with this code."""
    [finding] = [f for f in result.findings if f.code == code]
    return finding


def corruption(result) -> list[str]:
    return [f.code for f in result.findings if f.category.value == "corruption"]


def member_holding(tar: Path, offset: int) -> str:
    """The member of a plain tar whose header, data or padding holds ``offset``."""
    import tarfile
    with tarfile.open(tar) as t:
        return next(m.name for m in t if m.offset <= offset < m.offset_data + m.size + 512)


@pytest.fixture
def state(tmp_path) -> Path:
    return tmp_path / "state"


@pytest.fixture
def damaged(fx, tmp_path):
    """damaged("gnu.tar", at=..., data=...) or (..., truncate=N): a damaged copy."""
    def make(name: str, *, at: int | None = None, data: bytes | None = None, xor: int | None = None,
             truncate: int | None = None, insert: bytes | None = None) -> Path:
        dst = tmp_path / ("damaged-" + name)
        shutil.copyfile(fx / name, dst)
        with open(dst, "r+b") as f:
            if truncate is not None:
                f.truncate(truncate)
            if at is not None and xor is not None:
                f.seek(at)
                byte = f.read(1)[0]
                f.seek(at)
                f.write(bytes([byte ^ xor]))
            elif at is not None and data is not None:
                f.seek(at)
                f.write(data)
            elif at is not None and insert is not None:
                f.seek(at)
                rest = f.read()
                f.seek(at)
                f.write(insert + rest)
        return dst
    return make


def unhurried() -> datetime:
    """A deadline for a resume that should finish: without one, a resume after a short first run
    gets a window as long as that run's, which a loaded machine can overrun."""
    return datetime.now(timezone.utc) + timedelta(minutes=10)


def cli(*args: str, env: dict | None = None, timeout: float = 120) -> subprocess.CompletedProcess:
    full_env = {**os.environ, **(env or {})}
    return subprocess.run([*ARCHCHECK, *map(str, args)], capture_output=True, text=True,
                          timeout=timeout, env=full_env)


def verify_reported(*args, env: dict | None = None, timeout: float = 300) -> tuple[subprocess.CompletedProcess, dict]:
    """``archcheck verify`` with a JSON report (members included) in its state directory: the
    run and the report (empty when none was written)."""
    report = Path(args[args.index("--state-dir") + 1]) / "report.json"
    r = cli("verify", *args, "--report", report, "--report-members", env=env, timeout=timeout)
    return r, json.loads(report.read_text()) if report.exists() else {}


def member_offsets(tar_path: Path) -> dict[str, tuple[int, int]]:
    """name -> (header offset, data offset) as Python's tarfile sees a clean archive."""
    import tarfile
    with tarfile.open(tar_path) as t:
        return {m.name: (m.offset, m.offset_data) for m in t}


def codes(result) -> list[str]:
    return [f.code for f in result.findings if f.category.value != "info"]


def comparable(report: dict) -> list[tuple]:
    """Per archive of a JSON report (with --report-members), what must not depend on where the
    bytes came from or where the work ran."""
    out = []
    for archive in report["archives"]:
        findings = sorted((f["code"], json.dumps({k: v for k, v in f["location"].items() if k != "archive"},
                                                 sort_keys=True), json.dumps(f["details"], sort_keys=True))
                          for f in archive["findings"])
        members = [(m["name"], m.get("digest")) for m in archive.get("members", [])]
        out.append((archive["verdict"], archive["exit_code"], archive["format"], archive["tree_root"],
                    findings, members))
    return out
