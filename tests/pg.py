"""Real PostgreSQL clusters and base backups for tests (no mocks).

    from pg import pg_bin, pg_unavailable_reason, Cluster, make_pg_fixtures, copy_datadir

PostgreSQL refuses to run as root, so when the tests run as root every tool runs as the
`postgres` user (`runuser -u postgres -- ...`) in directories that user owns; when the tests run
as an ordinary user, the tools run as that user.  Servers listen only on a Unix socket in a
directory of their own and are always stopped (also on failure).
"""
from __future__ import annotations

import glob
import json
import os
import pwd
import re
import shutil
import subprocess
import tarfile
import tempfile
import time
from pathlib import Path

PG_USER = "postgres"
BLCKSZ = 8192
_SOCKET_PATH_MAX = 90  # sun_path is 108 bytes; leave room for "/.s.PGSQL.NNNNN.lock"


# --------------------------------------------------------------------------- locating binaries

def _version_key(path: str) -> tuple:
    """Sort key for /usr/lib/postgresql/<version>/bin: numeric version, newest last."""
    ver = Path(path).parent.name
    return tuple(int(p) if p.isdigit() else -1 for p in re.split(r"[.]", ver))


def _bindirs() -> list[str]:
    dirs: list[str] = []
    pg_config = shutil.which("pg_config")
    if pg_config:
        try:
            out = subprocess.run([pg_config, "--bindir"], capture_output=True, text=True, timeout=10)
            if out.returncode == 0 and out.stdout.strip():
                dirs.append(out.stdout.strip())
        except (OSError, subprocess.SubprocessError):
            pass
    dirs += sorted(glob.glob("/usr/lib/postgresql/*/bin"), key=_version_key, reverse=True)
    return dirs


def pg_bin(name: str) -> str | None:
    """Path of PostgreSQL tool `name`: `pg_config --bindir`, then the newest
    /usr/lib/postgresql/*/bin, then PATH; None if none has it."""
    for d in _bindirs():
        p = os.path.join(d, name)
        if os.path.isfile(p) and os.access(p, os.X_OK):
            return p
    return shutil.which(name)


_NEEDED = ("initdb", "pg_ctl", "postgres", "psql", "pgbench", "pg_basebackup", "pg_checksums",
           "pg_verifybackup", "pg_controldata")


def pg_unavailable_reason() -> str | None:
    """None if real-PostgreSQL tests can run here, else why not (for pytest.skip)."""
    missing = [n for n in _NEEDED if pg_bin(n) is None]
    if missing:
        return "PostgreSQL server binaries not found (pg_config --bindir, " \
               "/usr/lib/postgresql/*/bin, PATH): missing " + ", ".join(missing)
    if os.geteuid() == 0:
        try:
            pwd.getpwnam(PG_USER)
        except KeyError:
            return f"running as root and there is no '{PG_USER}' user to run PostgreSQL as"
        if shutil.which("runuser") is None:
            return "running as root and `runuser` is not available"
    return None


# --------------------------------------------------------------------------- running as postgres

def _as_pg() -> list[str]:
    return ["runuser", "-u", PG_USER, "--"] if os.geteuid() == 0 else []


def _pg_ids() -> tuple[int, int]:
    if os.geteuid() != 0:
        return os.getuid(), os.getgid()
    pw = pwd.getpwnam(PG_USER)
    return pw.pw_uid, pw.pw_gid


def _env() -> dict:
    env = {k: v for k, v in os.environ.items() if not k.startswith("PG")}
    env.update(LC_ALL="C", LANG="C", PGTZ="UTC")
    return env


def run_pg(name: str, *args, cwd: Path | str | None = None, check: bool = True,
           timeout: float = 300, **kw) -> subprocess.CompletedProcess:
    """Run PostgreSQL tool `name` (as the postgres user when root); text output captured."""
    exe = pg_bin(name)
    if exe is None:
        raise FileNotFoundError(f"PostgreSQL tool {name!r} not found")
    cmd = _as_pg() + [exe, *map(str, args)]
    cp = subprocess.run(cmd, cwd=str(cwd) if cwd else "/", env=_env(), capture_output=True,
                        text=True, timeout=timeout, **kw)
    if check and cp.returncode != 0:
        raise RuntimeError(f"{' '.join(cmd)} failed ({cp.returncode}):\n{cp.stdout}\n{cp.stderr}")
    return cp


def grant_traverse(path: Path) -> None:
    """Let the postgres user reach `path`: add o+x (search only, not listing) to every
    ancestor that lacks it (pytest's /tmp/pytest-of-root/... dirs are 0700)."""
    if os.geteuid() != 0:
        return
    for anc in reversed(Path(path).resolve().parents):
        st = anc.stat()
        if not st.st_mode & 0o001:
            os.chmod(anc, (st.st_mode & 0o7777) | 0o001)


def pg_dir(path: Path, mode: int = 0o700) -> Path:
    """Create (if needed) a directory owned by the postgres user and reachable by it."""
    path = Path(path)
    path.mkdir(parents=True, exist_ok=True)
    grant_traverse(path)
    uid, gid = _pg_ids()
    os.chown(path, uid, gid)
    os.chmod(path, mode)
    return path


def chown_tree(path: Path) -> None:
    uid, gid = _pg_ids()
    for dirpath, dirnames, filenames in os.walk(path):
        os.chown(dirpath, uid, gid)
        for n in filenames + dirnames:
            os.lchown(os.path.join(dirpath, n), uid, gid)


def copy_datadir(src: Path, dest: Path) -> Path:
    """Copy a stopped data directory (a directory, or a tar of one such as cold-datadir.tar)
    to `dest`, owned by the postgres user with mode 0700, ready for `pg_checksums -D dest`."""
    src, dest = Path(src), Path(dest)
    if dest.exists():
        raise FileExistsError(dest)
    if src.is_dir():
        shutil.copytree(src, dest, symlinks=True)
    else:
        dest.mkdir(parents=True)
        subprocess.run(["tar", "-C", str(dest), "-xf", str(src)], check=True)
    chown_tree(dest)
    os.chmod(dest, 0o700)
    grant_traverse(dest)
    return dest


def parse_lsn(text: str) -> int:
    hi, lo = text.strip().split("/")
    return (int(hi, 16) << 32) | int(lo, 16)


# --------------------------------------------------------------------------- a cluster

class Cluster:
    """A throw-away PostgreSQL cluster under `root` (root/data, root/sock, root/server.log).

        with Cluster(tmp / "c1") as c:
            c.pgbench("-i", "-s", "1")
            c.sql("SELECT 1")                       # -> "1"
            c.basebackup(tmp / "bb", "--compress=client-zstd")
        # stopped here, also on error
    """

    def __init__(self, root: Path, checksums: bool = True, port: int = 5432):
        self.root = Path(root)
        self.checksums = checksums
        self.port = port
        self.datadir = self.root / "data"
        self.logfile = self.root / "server.log"
        self._sockdir: Path | None = None
        self._tmp_sock: str | None = None
        self.running = False

    # -- lifecycle
    def __enter__(self) -> "Cluster":
        try:
            self.init()
            self.start()
        except BaseException:
            self.stop()
            raise
        return self

    def __exit__(self, *exc) -> None:
        self.stop()

    def init(self) -> None:
        pg_dir(self.root, 0o755)
        args = ["-D", self.datadir, "-U", PG_USER, "-E", "UTF8", "--locale=C", "--auth=trust",
                "--no-instructions"]
        if self.checksums:
            args.append("--data-checksums")
        run_pg("initdb", *args, cwd=self.root)

    @property
    def sockdir(self) -> Path:
        if self._sockdir is None:
            cand = self.root / "sock"
            if len(str(cand)) > _SOCKET_PATH_MAX:  # Unix socket paths are short
                self._tmp_sock = tempfile.mkdtemp(prefix="pgsock-")
                cand = Path(self._tmp_sock)
            self._sockdir = pg_dir(cand)
        return self._sockdir

    def start(self) -> None:
        opts = (f"-c listen_addresses='' -c unix_socket_directories='{self.sockdir}' "
                f"-c port={self.port} -c fsync=off -c max_wal_senders=10 -c wal_level=replica")
        self.running = True  # so stop() is attempted even if start half-succeeds
        run_pg("pg_ctl", "-D", self.datadir, "-l", self.logfile, "-w", "-t", "60", "-o", opts,
               "start", cwd=self.root)

    def stop(self) -> None:
        if self.running:
            self.running = False
            cp = run_pg("pg_ctl", "-D", self.datadir, "-m", "fast", "-w", "stop", cwd=self.root,
                        check=False)
            if cp.returncode != 0 and (self.datadir / "postmaster.pid").exists():
                run_pg("pg_ctl", "-D", self.datadir, "-m", "immediate", "-w", "stop",
                       cwd=self.root, check=False)
        if self._tmp_sock:
            shutil.rmtree(self._tmp_sock, ignore_errors=True)
            self._tmp_sock = None
            self._sockdir = None

    # -- clients
    def _conn(self) -> list[str]:
        return ["-h", str(self.sockdir), "-p", str(self.port), "-U", PG_USER]

    def sql(self, query: str, db: str = "postgres") -> str:
        cp = run_pg("psql", *self._conn(), "-d", db, "-X", "-v", "ON_ERROR_STOP=1", "-Atc", query,
                    cwd=self.root)
        return cp.stdout.strip()

    def pgbench(self, *args, check: bool = True) -> subprocess.CompletedProcess:
        return run_pg("pgbench", *self._conn(), *args, "postgres", cwd=self.root, check=check)

    def pgbench_async(self, *args) -> subprocess.Popen:
        """Start pgbench in the background (wait() on the result)."""
        cmd = _as_pg() + [pg_bin("pgbench"), *self._conn(), *map(str, args), "postgres"]
        return subprocess.Popen(cmd, cwd=self.root, env=_env(), stdout=subprocess.PIPE,
                                stderr=subprocess.PIPE, text=True)

    def basebackup(self, dest_dir: Path, *extra: str, fmt: str = "t") -> Path:
        """pg_basebackup -D dest -F<fmt> -Xstream --checkpoint=fast --manifest-checksums=CRC32C."""
        dest_dir = Path(dest_dir)
        if dest_dir.exists() and any(dest_dir.iterdir()):
            raise FileExistsError(f"{dest_dir} is not empty")
        pg_dir(dest_dir)
        run_pg("pg_basebackup", *self._conn(), "-D", dest_dir, f"-F{fmt}", "-Xstream",
               "--checkpoint=fast", "--manifest-checksums=CRC32C", "--no-sync", *extra,
               cwd=self.root)
        return dest_dir

    def relation_path(self, table: str, db: str = "postgres") -> str:
        """Main-fork path relative to the data directory, e.g. 'base/5/16397'."""
        return self.sql(f"SELECT pg_relation_filepath('{table}')", db=db)

    def run_tool(self, name: str, *args) -> subprocess.CompletedProcess:
        """Run any PostgreSQL tool as the postgres user (check=False; look at returncode)."""
        return run_pg(name, *args, cwd=self.root, check=False)

    def controldata(self) -> dict[str, str]:
        out = run_pg("pg_controldata", "-D", self.datadir, cwd=self.root).stdout
        return {k.strip(): v.strip() for k, _, v in (l.partition(":") for l in out.splitlines()) if v}


# --------------------------------------------------------------------------- the fixture set

def _backup_label_from_tar(base_tar: Path) -> dict:
    with tarfile.open(base_tar) as tf:
        label = tf.extractfile("backup_label").read().decode()
    m = re.search(r"^START WAL LOCATION: ([0-9A-F]+/[0-9A-F]+) \(file ([0-9A-F]{24})\)", label, re.M)
    tl = re.search(r"^START TIMELINE: (\d+)", label, re.M)
    return {"start_lsn": m.group(1), "start_lsn_int": parse_lsn(m.group(1)),
            "start_wal_file": m.group(2), "start_timeline": int(tl.group(1)) if tl else None,
            "backup_label": label}


def _tar_datadir(datadir: Path, dest: Path) -> None:
    subprocess.run(["tar", "-C", str(datadir), "-cf", str(dest), "."], check=True)


def make_pg_fixtures(out: Path) -> dict:
    """Build the PostgreSQL fixtures into `out` once (re-use pg-index.json if present) and
    return the facts (also written to out/pg-index.json).  Layout:

      backup-tar/   base.tar  pg_wal.tar  backup_manifest        (quiet cluster, checksums on)
      backup-zst/   base.tar.zst  pg_wal.tar.zst  backup_manifest (same, --compress=client-zstd)
      backup-plain/ a -Fp backup of the same cluster (for pg_verifybackup parity)
      backup-busy/  base.tar  pg_wal.tar  backup_manifest        (taken while pgbench writes)
      cold-datadir.tar   the same cluster's datadir after a clean shutdown (GNU tar -C data .)
      nochecksums.tar    a cluster initialised without data checksums, stopped cleanly
      clusters/main/data, clusters/nock/data   the stopped datadirs themselves (postgres-owned)
    """
    out = Path(out)
    idx_path = out / "pg-index.json"
    if idx_path.exists():
        return json.loads(idx_path.read_text())
    t0 = time.monotonic()
    out.mkdir(parents=True, exist_ok=True)
    pg_dir(out, 0o755)
    clusters = pg_dir(out / "clusters", 0o755)
    facts: dict = {"out": str(out)}

    # a + b + d: one cluster with data checksums
    with Cluster(clusters / "main", checksums=True) as c:
        facts["server_version"] = c.sql("SHOW server_version")
        facts["server_version_num"] = int(c.sql("SHOW server_version_num"))
        c.pgbench("-i", "-s", "2", "-q")
        c.sql("CREATE INDEX pgbench_accounts_abalance_idx ON pgbench_accounts (abalance)")
        c.sql("VACUUM (ANALYZE) pgbench_accounts")
        c.sql("VACUUM pgbench_branches")
        c.sql("CHECKPOINT")
        rels = {}
        for name in ("pgbench_accounts", "pgbench_accounts_pkey", "pgbench_accounts_abalance_idx",
                     "pgbench_branches", "pgbench_tellers", "pgbench_history"):
            rels[name] = c.relation_path(name)
        facts["relations"] = rels
        facts["db_name"] = "postgres"
        facts["db_oid"] = int(c.sql("SELECT oid FROM pg_database WHERE datname = 'postgres'"))
        facts["blocks"] = {name: int(c.sql(f"SELECT pg_relation_size('{name}') / {BLCKSZ}"))
                           for name in ("pgbench_accounts", "pgbench_accounts_pkey",
                                        "pgbench_accounts_abalance_idx", "pgbench_branches")}
        facts["fsm_blocks"] = {"pgbench_accounts": int(c.sql(
            f"SELECT pg_relation_size('pgbench_accounts', 'fsm') / {BLCKSZ}"))}
        facts["vm_blocks"] = {"pgbench_accounts": int(c.sql(
            f"SELECT pg_relation_size('pgbench_accounts', 'vm') / {BLCKSZ}"))}
        facts["accounts_rows"] = int(c.sql("SELECT count(*) FROM pgbench_accounts"))
        facts["data_checksums"] = c.sql("SHOW data_checksums")
        facts["block_size"] = int(c.sql("SHOW block_size"))
        facts["segment_size"] = c.sql("SHOW segment_size")

        c.basebackup(out / "backup-tar")
        c.basebackup(out / "backup-zst", "--compress=client-zstd")
        # PostgreSQL 15's tar WAL method compresses only with gzip: with client-zstd it still
        # writes pg_wal.tar.  Compress it with the zstd CLI so the layout matches newer releases.
        facts["pg_wal_zst_by"] = "pg_basebackup"
        plain_wal = out / "backup-zst" / "pg_wal.tar"
        if plain_wal.exists() and shutil.which("zstd"):
            subprocess.run(["zstd", "-q", "--rm", str(plain_wal), "-o", str(plain_wal) + ".zst"],
                           check=True)
            facts["pg_wal_zst_by"] = "zstd CLI"
        c.basebackup(out / "backup-plain", fmt="p")

        # d: a backup while pgbench writes
        # rate-limited, so the WAL of the backup's window stays well within one segment
        bench = c.pgbench_async("-T", "5", "-c", "2", "-n", "-R", "2000")
        try:
            time.sleep(1.0)
            c.basebackup(out / "backup-busy")
        finally:
            bout, berr = bench.communicate(timeout=120)
        if bench.returncode != 0:
            raise RuntimeError(f"pgbench -T 5 failed:\n{bout}\n{berr}")
        m = re.search(r"number of transactions actually processed: (\d+)", bout)
        facts["busy_pgbench_transactions"] = int(m.group(1)) if m else None
        facts["system_identifier"] = c.controldata()["Database system identifier"]
        c.stop()  # clean shutdown, so the datadir is consistent for pg_checksums
        ctl = c.controldata()
        facts["cold_state"] = ctl["Database cluster state"]
        facts["main_datadir"] = str(c.datadir)

    for name in ("backup-tar", "backup-zst", "backup-busy"):
        facts[name.replace("-", "_")] = {
            "dir": str(out / name),
            "files": sorted(p.name for p in (out / name).iterdir()),
        }
    facts["backup_plain"] = {"dir": str(out / "backup-plain")}
    lbl = _backup_label_from_tar(out / "backup-tar" / "base.tar")
    facts["backup_tar"].update({k: lbl[k] for k in ("start_lsn", "start_lsn_int", "start_wal_file",
                                                    "start_timeline")})
    busy = _backup_label_from_tar(out / "backup-busy" / "base.tar")
    facts["backup_busy"].update({k: busy[k] for k in ("start_lsn", "start_lsn_int",
                                                      "start_wal_file", "start_timeline")})
    facts["start_lsn"] = lbl["start_lsn"]

    _tar_datadir(clusters / "main" / "data", out / "cold-datadir.tar")
    facts["cold_datadir_tar"] = str(out / "cold-datadir.tar")
    facts["cold_blocks"] = {"pgbench_accounts": os.path.getsize(
        clusters / "main" / "data" / rels["pgbench_accounts"]) // BLCKSZ}

    # c: no data checksums
    with Cluster(clusters / "nock", checksums=False) as n:
        n.pgbench("-i", "-s", "1", "-q")
        n.sql("CHECKPOINT")
        facts["nochecksums"] = {
            "tar": str(out / "nochecksums.tar"),
            "datadir": str(n.datadir),
            "data_checksums": n.sql("SHOW data_checksums"),
            "relations": {"pgbench_accounts": n.relation_path("pgbench_accounts")},
            "blocks": {"pgbench_accounts": int(n.sql(
                f"SELECT pg_relation_size('pgbench_accounts') / {BLCKSZ}"))},
        }
        n.stop()
    _tar_datadir(clusters / "nock" / "data", out / "nochecksums.tar")

    # postgres wrote the backups; make sure everything is world-readable (root can anyway)
    for name in ("backup-tar", "backup-zst", "backup-plain", "backup-busy"):
        subprocess.run(["chmod", "-R", "a+rX", str(out / name)], check=True)

    facts["build_seconds"] = round(time.monotonic() - t0, 1)
    idx_path.write_text(json.dumps(facts, indent=2, sort_keys=True) + "\n")
    return facts


if __name__ == "__main__":  # python tests/pg.py OUT_DIR
    import sys
    print(json.dumps(make_pg_fixtures(Path(sys.argv[1])), indent=2, sort_keys=True))
