"""The command line: options, progress, rendering, exit codes. The only module that prints
or exits; everything else is archcheck's library API."""
from __future__ import annotations

import functools
import os
import re
import time
from datetime import datetime, timezone
from pathlib import Path
from typing import Callable, Optional

import typer
from rich.console import Console
from rich.progress import BarColumn, DownloadColumn, Progress, TimeRemainingColumn, TransferSpeedColumn

from . import __version__
from .api import DEFAULT_MAX_MEMORY, verify
from .errors import ArchcheckError, UsageError, format_size
from .layers import ALL_LAYERS
from .layers.members import DEFAULT_DIGEST
from .layers.zstd import DEFAULT_MAX_WINDOW
from .reports import json_report, text_report
from .segments import DEFAULT_SEGMENT_SIZE

EXIT_CODES = """Exit codes: 0 intact, 1 corruption found, 2 usage or environment error,
3 incomplete (a read failed, something could not be checked, or the run was interrupted)."""

VERIFY_HELP = f"""Verify every layer of a backup archive (.tar, .tar.zst or .zst) without extracting it.

Layers: raw (BLAKE3 of every segment and a tree root), zstd (every frame decodes, checksums),
tar (headers, sizes, end marker), members (a digest of each member's content).

\b
Examples:
  archcheck verify /backups/base.tar.zst
  archcheck verify nightly.tar.zst --report report.json
  archcheck verify big.tar --layers raw            # quick pass: hash only
  archcheck verify big.tar.zst --max-memory 128M --workers 4

{EXIT_CODES}"""

app = typer.Typer(add_completion=False, no_args_is_help=True, pretty_exceptions_enable=False,
                  help=f"archcheck {__version__}: prove backup archives would restore, without restoring them.\n\n"
                       + EXIT_CODES)

SIZE_UNITS = {"": 1, "b": 1, "k": 1 << 10, "kb": 1 << 10, "kib": 1 << 10, "m": 1 << 20, "mb": 1 << 20,
              "mib": 1 << 20, "g": 1 << 30, "gb": 1 << 30, "gib": 1 << 30, "t": 1 << 40, "tb": 1 << 40, "tib": 1 << 40}
PLAIN_PROGRESS_INTERVAL = float(os.environ.get("ARCHCHECK_PROGRESS_INTERVAL", "10"))


def parse_size(text: str, option: str) -> int:
    match = re.fullmatch(r"\s*(\d+(?:\.\d+)?)\s*([a-zA-Z]*)\s*", text)
    unit = match and SIZE_UNITS.get(match.group(2).lower())
    if not match or unit is None:
        raise UsageError(f"{option}: cannot read {text!r} as a size (examples: 64M, 1G, 512KiB)")
    return int(float(match.group(1)) * unit)


@app.callback()
def _root() -> None:
    """archcheck: prove backup archives would restore, without restoring them."""


def _exits(command: Callable) -> Callable:
    """Library failures become one line on stderr and a documented exit code."""
    @functools.wraps(command)
    def wrapper(*args, **kwargs):
        err = Console(stderr=True, highlight=False, soft_wrap=True)
        try:
            return command(*args, **kwargs)
        except ArchcheckError as exc:
            err.print(f"archcheck: {exc}", markup=False)
            raise typer.Exit(exc.exit_code) from None
        except KeyboardInterrupt:
            err.print("archcheck: interrupted; the manifest keeps what was verified", markup=False)
            raise typer.Exit(3) from None
        except (typer.Exit, typer.Abort):
            raise
        except Exception as exc:  # noqa: BLE001 - the CLI's last line of defence
            if os.environ.get("ARCHCHECK_DEBUG"):
                raise
            err.print(f"archcheck: internal error: {type(exc).__name__}: {exc} "
                      "(set ARCHCHECK_DEBUG=1 for details)", markup=False)
            raise typer.Exit(3) from None
    return wrapper


@app.command("verify", help=VERIFY_HELP, no_args_is_help=True)
@_exits
def verify_command(
    archive: Path = typer.Argument(..., help="The archive file to verify."),
    layers: str = typer.Option(",".join(ALL_LAYERS), help="Comma-separated layers to check."),
    segment_size: str = typer.Option(format_size(DEFAULT_SEGMENT_SIZE).replace(" ", ""),
                                     help="Size of the byte-range segments (a multiple of 8 MiB)."),
    max_memory: str = typer.Option(format_size(DEFAULT_MAX_MEMORY).replace(" ", ""),
                                   help="Budget for archcheck's buffers (queued segments, decode buffers)."),
    workers: Optional[int] = typer.Option(None, help="Worker processes (default: the CPU count)."),
    max_window: str = typer.Option(format_size(DEFAULT_MAX_WINDOW).replace(" ", ""),
                                   help="Largest zstd window to decode; larger frames are refused (exit 2)."),
    digest: str = typer.Option(DEFAULT_DIGEST, help="Member digest: xxh3-128 or blake3."),
    report: Optional[Path] = typer.Option(None, help="Write the JSON report here."),
    state_dir: Optional[Path] = typer.Option(None, envvar="ARCHCHECK_STATE_DIR",
                                             help="State directory (default: $XDG_STATE_HOME/archcheck)."),
    progress: Optional[bool] = typer.Option(None, "--progress/--no-progress",
                                            help="Progress display (default: a bar on a terminal, "
                                                 "plain lines otherwise)."),
    quiet: bool = typer.Option(False, "--quiet", "-q", help="Print only findings and the verdict line."),
) -> None:
    err = Console(stderr=True, highlight=False, soft_wrap=True)
    out = Console(highlight=False, soft_wrap=True)
    show = progress if progress is not None else True
    with ProgressDisplay(err, enabled=show and not quiet) as on_progress:
        result = verify(
            archive, layers=[x.strip() for x in layers.split(",") if x.strip()],
            segment_size=parse_size(segment_size, "--segment-size"),
            max_memory=parse_size(max_memory, "--max-memory"), workers=workers,
            max_window=parse_size(max_window, "--max-window"), digest=digest, state=state_dir,
            on_progress=on_progress)
    if report:
        json_report.write(result.manifest, report, result.manifest_path)
    text_report.render(out, result.manifest, result.manifest_path, report, quiet=quiet)
    raise typer.Exit(result.exit_code)


class ProgressDisplay:
    """A rich bar on a terminal; plain timestamped lines every few seconds otherwise."""

    def __init__(self, console: Console, enabled: bool):
        self.console, self.enabled = console, enabled
        self.bar: Progress | None = None
        self.task = None
        self.started = self.last_line = time.monotonic()

    def __enter__(self) -> Callable[[int, int], None] | None:
        if not self.enabled:
            return None
        if self.console.is_terminal:
            self.bar = Progress("[bold]verifying",
                                BarColumn(), DownloadColumn(binary_units=True), TransferSpeedColumn(),
                                TimeRemainingColumn(), console=self.console, transient=True)
            self.bar.start()
            self.task = self.bar.add_task("verify", total=None)
        return self.update

    def update(self, done: int, total: int) -> None:
        if self.bar is not None:
            self.bar.update(self.task, completed=done, total=total)
            return
        now = time.monotonic()
        if now - self.last_line >= PLAIN_PROGRESS_INTERVAL and total and done:
            self.last_line = now
            rate = done / max(now - self.started, 1e-6)
            eta = (total - done) / rate if rate else 0
            stamp = datetime.now(timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ")
            self.console.print(f"{stamp} progress {100 * done / total:.0f}% {format_size(done)} of "
                               f"{format_size(total)} at {format_size(rate)}/s, about {eta:.0f}s left",
                               markup=False)

    def __exit__(self, *exc) -> None:
        if self.bar is not None:
            self.bar.stop()


def main() -> None:
    app()
