"""The library entry point: wires one run, source -> plan -> pipeline -> manifest."""
from __future__ import annotations

import asyncio
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Iterable, Iterator

from .errors import UsageError
from .findings import VERDICTS, Finding, verdict
from .layers import ALL_LAYERS
from .layers.detect import detect_format
from .layers.members import DEFAULT_DIGEST, DIGESTS
from .layers.raw import LEAF_SIZE
from .layers.zstd import DEFAULT_MAX_WINDOW
from .manifest import Manifest, SegmentRecord, iter_members
from .pipeline import ProgressCallback, Run, RunOptions
from .segments import DEFAULT_SEGMENT_SIZE, plan_segments
from .sources import open_source
from .state import new_run_id, run_manifest_path, state_dir

MiB = 1024 * 1024
DEFAULT_MAX_MEMORY = 256 * MiB
MIN_MAX_MEMORY = 32 * MiB


@dataclass(frozen=True)
class Verification:
    """The outcome of one run; everything in it is read from the manifest."""

    manifest: Manifest
    manifest_path: Path

    @property
    def findings(self) -> list[Finding]:
        return self.manifest.findings

    @property
    def verdict(self) -> str:
        return verdict(self.findings, complete=self.manifest.status == "complete")

    @property
    def exit_code(self) -> int:
        return VERDICTS[self.verdict]

    def members(self) -> Iterator[dict]:
        """Every member with its digest, read from the run's members file."""
        return iter_members(self.manifest, self.manifest_path)


def verify(archive: str | os.PathLike, *, layers: Iterable[str] = ALL_LAYERS,
           segment_size: int = DEFAULT_SEGMENT_SIZE, max_memory: int = DEFAULT_MAX_MEMORY,
           workers: int | None = None, max_window: int = DEFAULT_MAX_WINDOW, digest: str = DEFAULT_DIGEST,
           state: str | os.PathLike | None = None,
           on_progress: ProgressCallback | None = None) -> Verification:
    """Verify every requested layer of one archive. Damage comes back as findings; only
    archcheck's own failures (usage, unreadable source, state) raise ArchcheckError."""
    options = RunOptions(_check_layers(layers), segment_size, _check_memory(max_memory),
                         _check_workers(workers), max_window, _check_digest(digest))
    return asyncio.run(_verify(archive, options, state, on_progress))


async def _verify(archive, options: RunOptions, state, on_progress) -> Verification:
    source = open_source(archive)
    head = await source.read(0, 1024)
    fmt = detect_format(head, str(archive))
    identity = await source.identity()
    segments = plan_segments(source.size, options.segment_size) if "raw" in options.layers else []
    run_id = new_run_id()
    manifest = Manifest(run_id, identity, fmt, _config(options), [SegmentRecord.planned(s) for s in segments])
    path = run_manifest_path(state_dir(state), run_id)
    await Run(source, manifest, path, options, on_progress).run()
    return Verification(manifest, path)


def _config(options: RunOptions) -> dict:
    return {"layers": list(options.layers), "segment_size": options.segment_size, "leaf_size": LEAF_SIZE,
            "digest": options.digest, "max_window": options.max_window, "workers": options.workers,
            "max_memory": options.max_memory}


def _check_layers(layers: Iterable[str]) -> tuple[str, ...]:
    chosen = tuple(dict.fromkeys(layers))
    unknown = [layer for layer in chosen if layer not in ALL_LAYERS]
    if unknown or not chosen:
        raise UsageError(f"unknown layer {', '.join(unknown) or '(none)'}; choose from {', '.join(ALL_LAYERS)}")
    return chosen


def _check_memory(max_memory: int) -> int:
    if max_memory < MIN_MAX_MEMORY:
        raise UsageError(f"--max-memory must be at least {MIN_MAX_MEMORY // MiB} MiB")
    return max_memory


def _check_workers(workers: int | None) -> int:
    if workers is None:
        return os.cpu_count() or 1
    if workers < 1:
        raise UsageError("--workers must be at least 1")
    return workers


def _check_digest(digest: str) -> str:
    if digest not in DIGESTS:
        raise UsageError(f"unknown digest {digest}; choose from {', '.join(DIGESTS)}")
    return digest
