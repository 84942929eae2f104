#!/usr/bin/env python3
"""Benchmark verifying an archive in S3 beside a plain parallel ranged download of it, in one run.

Usage:
    python3 bench/bench_s3.py [--data DIR] [--archive usr-share-mf.tar.zst] [--rounds 3]

A local S3 server (moto's, `moto_server`, on 127.0.0.1) holds the archive. The default,
usr-share-mf.tar.zst, is made here when missing: a tar of /usr/share through `pzstd -p 2 -3`
(about 250 MB in some 80 frames); so is usr-share.tar.zst, the same through `zstd -T2 -3` (one
frame, as `zstd` and `tar --zstd` write: decoded on one core while the walk finds its end). moto serves each ranged GET slower the larger the object (a
round over the 1.2 GB data-mf.tar.zst of make-anchor-data.sh took over five minutes), so the
anchor archive is a choice (--archive data-mf.tar.zst), not the default. Each round runs, in an order that
rotates (run_bench's scheme):

    download       8 MiB ranged GETs through botocore, --in-flight per process, as many
                   processes as archcheck has workers: the bytes are read and dropped
    archcheck raw  archcheck verify --layers raw s3://...
    archcheck all  archcheck verify s3://... (default layers)
    dask-local:2   the same on a LocalCluster of two Dask worker processes (issue 13: within 20%
                   of the local executor)

and prints medians, throughput, each archcheck run's throughput as a share of the download's
(median over rounds; issue 13's target: at least 80% for the default layers) and peak RSS of each
command's process tree. The server shares the machine's cores with what it serves: compare
ratios within one run only.
"""
from __future__ import annotations

import argparse
import os
import shlex
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))
from bench_native import compile_bytecode  # noqa: E402
from run_bench import MiB, default_archcheck, run_rounds  # noqa: E402

BUCKET, KEY = "bench", "archive.tar.zst"
USR_SHARE = "usr-share-mf.tar.zst"
MADE_HERE = {USR_SHARE: ["pzstd", "-q", "-p", "2", "-3", "-c"],  # archives of /usr/share: how each is compressed
             "usr-share.tar.zst": ["zstd", "-q", "-T2", "-3", "-c"]}
CREDENTIALS = {"AWS_ACCESS_KEY_ID": "AKIABENCH", "AWS_SECRET_ACCESS_KEY": "bench-secret", "AWS_REGION": "us-east-1",
               "AWS_ALLOW_HTTP": "true"}

DOWNLOAD = r'''
import os, sys, botocore.session
from botocore.config import Config
from concurrent.futures import ThreadPoolExecutor
bucket, key, processes, in_flight, index = sys.argv[1], sys.argv[2], int(sys.argv[3]), int(sys.argv[4]), int(sys.argv[5])
client = botocore.session.get_session().create_client(
    "s3", endpoint_url=os.environ["AWS_ENDPOINT_URL"], region_name="us-east-1",
    config=Config(retries={"total_max_attempts": 1}, max_pool_connections=in_flight + 2, s3={"addressing_style": "path"}))
size = client.head_object(Bucket=bucket, Key=key)["ContentLength"]
block = 8 << 20
mine = [b for b in range(0, size, block) if (b // block) % processes == index]
def get(start):
    end = min(size, start + block) - 1
    return len(client.get_object(Bucket=bucket, Key=key, Range=f"bytes={start}-{end}")["Body"].read())
with ThreadPoolExecutor(in_flight) as pool:
    total = sum(pool.map(get, mine))
'''


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def start_server(env: dict) -> tuple[subprocess.Popen, str]:
    port = free_port()
    server = subprocess.Popen(["moto_server", "-H", "127.0.0.1", "-p", str(port)], env=env,
                              stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    endpoint = f"http://127.0.0.1:{port}"
    for _ in range(100):
        try:
            socket.create_connection(("127.0.0.1", port), timeout=0.2).close()
            return server, endpoint
        except OSError:
            time.sleep(0.1)
    server.kill()
    sys.exit("moto_server did not start")


def upload(archive: Path, env: dict) -> None:
    import botocore.session
    from botocore.config import Config
    client = botocore.session.get_session().create_client(
        "s3", endpoint_url=env["AWS_ENDPOINT_URL"], region_name="us-east-1",
        aws_access_key_id=env["AWS_ACCESS_KEY_ID"], aws_secret_access_key=env["AWS_SECRET_ACCESS_KEY"],
        config=Config(s3={"addressing_style": "path"}))
    client.create_bucket(Bucket=BUCKET)
    part = 64 * MiB  # moto keeps it in memory: a multipart upload keeps this process's small
    upload_id = client.create_multipart_upload(Bucket=BUCKET, Key=KEY)["UploadId"]
    parts = []
    with open(archive, "rb") as f:
        for number in range(1, 10_000):
            data = f.read(part)
            if not data:
                break
            etag = client.upload_part(Bucket=BUCKET, Key=KEY, UploadId=upload_id, PartNumber=number, Body=data)["ETag"]
            parts.append({"ETag": etag, "PartNumber": number})
    client.complete_multipart_upload(Bucket=BUCKET, Key=KEY, UploadId=upload_id, MultipartUpload={"Parts": parts})


def commands(archcheck: str, workers: int, in_flight: int) -> dict[str, list[str]]:
    verify = [archcheck, "verify", "--no-progress", "--state-dir", "{state}", "--workers", str(workers),
              "--in-flight", str(in_flight)]
    uri = f"s3://{BUCKET}/{KEY}"
    download = [sys.executable, "-c", "import subprocess, sys\n"
                f"procs = [subprocess.Popen([sys.executable, '-c', {DOWNLOAD!r}, {BUCKET!r}, {KEY!r}, "
                f"'{workers}', '{in_flight}', str(i)]) for i in range({workers})]\n"
                "sys.exit(max(p.wait() for p in procs))"]
    return {"download": download, "archcheck raw": [*verify, "--layers", "raw", uri], "archcheck all": [*verify, uri],
            "dask-local:2": [*verify, "--executor", "dask-local:2", uri]}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--data", type=Path, default=HERE / "out")
    parser.add_argument("--archive", default=USR_SHARE, help="the archive in --data to serve")
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--workers", type=int, default=os.cpu_count() or 2)
    parser.add_argument("--in-flight", type=int, default=4)
    parser.add_argument("--archcheck", default=default_archcheck())
    args = parser.parse_args()
    archive = args.data / args.archive
    if args.archive in MADE_HERE and not archive.exists():
        args.data.mkdir(parents=True, exist_ok=True)
        print(f"making {archive} from /usr/share ...", flush=True)
        with open(archive, "wb") as out:
            tar = subprocess.Popen(["tar", "-cf", "-", "-C", "/usr", "share"], stdout=subprocess.PIPE,
                                   stderr=subprocess.DEVNULL)
            subprocess.run(MADE_HERE[args.archive], stdin=tar.stdout, stdout=out, check=True)
            tar.wait()
    if not archive.exists():
        sys.exit(f"{archive} is missing: run ../shared/tools/make-anchor-data.sh {args.data}")
    compile_bytecode(args.archcheck)
    env = {**os.environ, **CREDENTIALS}
    server, endpoint = start_server(env)
    env["AWS_ENDPOINT_URL"] = endpoint
    os.environ.update({k: v for k, v in env.items() if k.startswith("AWS_")})  # measure() runs with this env
    try:
        print(f"uploading {archive} ({archive.stat().st_size / 1e9:.2f} GB) to {endpoint} ...", flush=True)
        upload(archive, env)
        with tempfile.TemporaryDirectory(prefix="archcheck-bench-s3-") as tmp:
            state = Path(tmp) / "state"
            cmds = {name: [a.replace("{state}", str(state)) for a in argv]
                    for name, argv in commands(args.archcheck, args.workers, args.in_flight).items()}
            for name, argv in cmds.items():
                print(f"  {name:<14} {shlex.join(argv)[:160]}")
            runs, failures, busy = run_rounds(cmds, args.rounds, state)
    finally:
        server.terminate()
        server.wait()
    size, names = archive.stat().st_size, list(runs)
    print(f"\n{'command':<14} {'median s':>9} {'MB/s':>8} {'share of download':>18} {'peak RSS MiB':>13}")
    for name in names:
        seconds = statistics.median(run["wall_s"] for run in runs[name])
        share = statistics.median(b["wall_s"] / a["wall_s"] for a, b in zip(runs[name], runs["download"]))
        rss = max(run["peak_rss_bytes"] for run in runs[name]) / MiB
        print(f"{name:<14} {seconds:>9.3f} {size / seconds / 1e6:>8.1f} {share:>17.1%} {rss:>13.1f}")
    dask = statistics.median(a["wall_s"] / b["wall_s"] for a, b in zip(runs["dask-local:2"], runs["archcheck all"]))
    print(f"\ndask-local:2 / local executor: {dask:.3f}x (median of per-round ratios)")
    print(f"CPU load from other work before each round (CPUs busy): {', '.join(f'{b:.2f}' for b in busy)}")
    sys.exit(1 if failures else 0)


if __name__ == "__main__":
    main()
