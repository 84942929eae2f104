"""How worker processes start: a forkserver, preloaded with the worker's modules.

Workers fork from a server process that has imported them once, so each starts warm and
inherits nothing of the coordinator (its event loop, threads, signal handlers). The server
takes about 0.1 s to start; `start_early` launches it while the coordinator is still loading
its own modules, so that time overlaps instead of adding to every run."""
from __future__ import annotations

import multiprocessing
import multiprocessing.context

PRELOAD = ["__main__", "archcheck.worker"]


def warm_modules(archives: tuple[str, ...]) -> tuple[str, ...]:
    """What a worker should load before its first task, for these archives."""
    return ("archcheck.sources.warm_s3",) if any(str(a).startswith("s3://") for a in archives) else ()


def context(preload: tuple[str, ...] = ()) -> multiprocessing.context.BaseContext:
    ctx = multiprocessing.get_context("forkserver")
    ctx.set_forkserver_preload([*PRELOAD, *preload])
    return ctx


def start_early(archives: tuple[str, ...] = ()) -> None:
    """Start the server now (it loads its modules on its own core); harmless if it never
    forks, and a failure here only means the pool starts it later. For s3:// archives it
    loads botocore too (0.3 s a worker would otherwise spend before its first read)."""
    context(warm_modules(archives))
    try:
        from multiprocessing import forkserver
        forkserver.ensure_running()
    except OSError:
        pass
