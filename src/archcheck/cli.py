"""The command line: options, progress, rendering, exit codes. The only module that prints
or exits; everything else is archcheck's library API."""
from __future__ import annotations

import functools
import os
import time
from datetime import datetime, timedelta, timezone
from pathlib import Path
from typing import Any, Callable, Optional

import typer
from rich.console import Console
from rich.text import Text

from . import __version__
from .errors import ArchcheckError, UsageError, format_size
from .status import ExitCode, combine, help_text
from .layers import ALL_LAYERS
from .layers.members import DEFAULT_DIGEST
from .layers.zstd import DEFAULT_MAX_WINDOW
from .reports import safe_text
from .segments import DEFAULT_SEGMENT_SIZE
from .units import DEFAULT_MAX_MEMORY, parse_budget, parse_duration, parse_size, parse_until

# The library (api, pipeline, reports) and rich's progress bar load on use, inside the commands:
# `archcheck --help` and `--version` start without them.

EXIT_CODES = "\b\n" + help_text()  # \b: click keeps the table's lines as they are

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

app = typer.Typer(add_completion=False, no_args_is_help=True, pretty_exceptions_enable=False, rich_markup_mode=None,
                  help=f"archcheck {__version__}: prove backup archives would restore, without restoring them.\n\n"
                       + EXIT_CODES)

PLAIN_PROGRESS_INTERVAL = float(os.environ.get("ARCHCHECK_PROGRESS_INTERVAL", "10"))


def _version(value: bool) -> None:
    if value:
        typer.echo(f"archcheck {__version__}")
        raise typer.Exit(0)


@app.callback()
def _root(version: bool = typer.Option(False, "--version", callback=_version, is_eager=True,
                                       help="Print the version and exit.")) -> None:
    """archcheck: prove backup archives would restore, without restoring them."""


def _exits(command: Callable) -> Callable:
    """Library failures become one line on stderr and a documented exit code."""
    @functools.wraps(command)
    def wrapper(*args, **kwargs):
        err = Console(stderr=True, highlight=False, soft_wrap=True)
        try:
            return command(*args, **kwargs)
        except ArchcheckError as exc:
            err.print(Text(f"archcheck: {safe_text(str(exc))}"))  # messages may quote paths: untrusted
            raise typer.Exit(exc.exit_code) from None
        except KeyboardInterrupt:
            err.print("archcheck: interrupted; the manifest keeps what was verified", markup=False)
            raise typer.Exit(ExitCode.INCOMPLETE) from None
        except (typer.Exit, typer.Abort):
            raise
        except Exception as exc:  # noqa: BLE001 - the CLI's last line of defence
            if os.environ.get("ARCHCHECK_DEBUG"):
                raise
            err.print(Text(f"archcheck: internal error: {type(exc).__name__}: {safe_text(str(exc))} "
                           "(set ARCHCHECK_DEBUG=1 for details)"))
            raise typer.Exit(ExitCode.INTERNAL) from None
    return wrapper


STATE_DIR = typer.Option(None, "--state-dir", envvar="ARCHCHECK_STATE_DIR",
                         help="State directory (default: $XDG_STATE_HOME/archcheck).")
REPORT = typer.Option(None, "--report", help="Write the JSON report here.")
REPORT_MEMBERS = typer.Option(False, "--report-members",
                              help="List every member in the JSON report (by default it names the members log, "
                                   "with its digests: a million members make a report of hundreds of MB).")
PROGRESS = typer.Option(None, "--progress/--no-progress",
                        help="Progress display (default: a bar on a terminal, plain timestamped lines otherwise).")
QUIET = typer.Option(False, "--quiet", "-q", help="Print only findings and the verdict line.")
DEADLINE = typer.Option(None, "--deadline", help="Stop cleanly after this long (90s, 45m, 2h); exit 3, resumable.")
UNTIL = typer.Option(None, "--until", help="Stop cleanly at this local time (06:00) or ISO 8601 instant.")
TRUST = typer.Option(False, "--trust-verified",
                     help="Going on with an earlier run: do not read again what it verified (faster; the "
                          "report says so). By default it is hashed again, and bytes that changed are reported.")


@app.command("verify", help=VERIFY_HELP, no_args_is_help=True)
@_exits
def verify_command(
    archives: list[Path] = typer.Argument(..., help="The archive files to verify."),
    layers: str = typer.Option(",".join(ALL_LAYERS), help="Comma-separated layers to check."),
    segment_size: str = typer.Option(format_size(DEFAULT_SEGMENT_SIZE).replace(" ", ""),
                                     help="Size of the byte-range segments (a multiple of 8 MiB)."),
    max_memory: str = typer.Option(format_size(DEFAULT_MAX_MEMORY).replace(" ", ""),
                                   help="Budget for archcheck's buffers (queued segments, decode buffers)."),
    workers: Optional[int] = typer.Option(None, help="Worker processes (default: the CPU count)."),
    max_window: str = typer.Option(format_size(DEFAULT_MAX_WINDOW).replace(" ", ""),
                                   help="Largest zstd window to decode; larger frames are refused (exit 2)."),
    digest: str = typer.Option(DEFAULT_DIGEST, help="Member digest: xxh3-128 or blake3."),
    drill: Optional[str] = typer.Option(None, "--drill", help="Name the drill (default: drill-N, numbered)."),
    deadline: Optional[str] = DEADLINE,
    until: Optional[str] = UNTIL,
    budget: Optional[str] = typer.Option(None, "--budget",
                                         help="Verify this much, least recently verified first: a time "
                                              "(30m, 2h) or a size (500G; 30M is 30 MiB, 30m 30 minutes)."),
    skip_verified_within: Optional[str] = typer.Option(
        None, "--skip-verified-within", help="Skip unchanged archives verified in full within this age (7d)."),
    report: Optional[Path] = REPORT,
    state_dir: Optional[Path] = STATE_DIR,
    progress: Optional[bool] = PROGRESS,
    quiet: bool = QUIET,
    trust_verified: bool = TRUST,
    report_members: bool = REPORT_MEMBERS,
) -> None:
    from .processes import start_early
    start_early()  # the worker server loads while the library does
    from . import api
    with Output(progress, quiet, report_members) as out:
        result = api.run_drill(
            archives, layers=[x.strip() for x in layers.split(",") if x.strip()],
            segment_size=parse_size(segment_size, "--segment-size"),
            max_memory=parse_size(max_memory, "--max-memory"), workers=workers,
            max_window=parse_size(max_window, "--max-window"), digest=digest, state=state_dir, drill_id=drill,
            deadline=_deadline(deadline, until), budget=budget and parse_budget(budget, "--budget"),
            skip_verified_within=skip_verified_within and parse_duration(skip_verified_within,
                                                                         "--skip-verified-within"),
            on_progress=out.progress, on_notice=out.notice, recheck=not trust_verified)
    out.finish(result, report)


@app.command("resume", no_args_is_help=True)
@_exits
def resume_command(
    drill: str = typer.Argument(..., help="The drill to continue, e.g. drill-42."),
    deadline: Optional[str] = DEADLINE,
    until: Optional[str] = UNTIL,
    report: Optional[Path] = REPORT,
    state_dir: Optional[Path] = STATE_DIR,
    progress: Optional[bool] = PROGRESS,
    quiet: bool = QUIET,
    trust_verified: bool = TRUST,
    report_members: bool = REPORT_MEMBERS,
) -> None:
    """Continue a stopped drill from its last verified segment: what was verified is hashed
    again (to catch rot since) but not checked again.

    An archive that changed since the drill began is not mixed with its earlier results: it is
    reported as changed (exit 3). Exit codes as for verify."""
    from .processes import start_early
    start_early()  # the worker server loads while the library does
    from . import api
    with Output(progress, quiet, report_members) as out:
        result = api.resume(drill, state=state_dir, deadline=_deadline(deadline, until),
                            on_progress=out.progress, on_notice=out.notice, recheck=not trust_verified)
    out.finish(result, report)


drill_app = typer.Typer(no_args_is_help=True, help="Drills: plans, progress and coverage.")
app.add_typer(drill_app, name="drill")


@drill_app.command("run", no_args_is_help=True)
@_exits
def drill_run_command(
    plan: Path = typer.Argument(..., help="The drill plan, e.g. drills/nightly.yaml."),
    deadline: Optional[str] = DEADLINE,
    until: Optional[str] = UNTIL,
    report: Optional[Path] = REPORT,
    state_dir: Optional[Path] = STATE_DIR,
    progress: Optional[bool] = PROGRESS,
    quiet: bool = QUIET,
    trust_verified: bool = TRUST,
    report_members: bool = REPORT_MEMBERS,
) -> None:
    """Start a drill from a plan file (archives, layers, window or budget, outputs)."""
    from .processes import start_early
    start_early()  # the worker server loads while the library does
    from . import api
    with Output(progress, quiet, report_members) as out:
        result, loaded = api.run_plan(plan, state=state_dir, deadline=_deadline(deadline, until),
                                      on_progress=out.progress, on_notice=out.notice,
                                      recheck=not trust_verified)
    template = loaded.report
    if report is None and template:
        report = Path(template.format(drill=result.drill.id, date=datetime.now().strftime("%Y-%m-%d")))
    out.finish(result, report)


@drill_app.command("list")
@_exits
def drill_list_command(state_dir: Optional[Path] = STATE_DIR) -> None:
    """Every drill in the state directory, oldest first."""
    from . import api
    out = Console(highlight=False, soft_wrap=True)
    for drill in api.list_drills(state=state_dir):
        if isinstance(drill, ArchcheckError):
            out.print(Text(f"damaged   {safe_text(str(drill))}"))
            continue
        done = sum(a.status in ("complete", "skipped") for a in drill.archives)
        out.print(Text(f"{drill.id:<12} {drill.status:<12} {done}/{len(drill.archives)} archives  "
                       f"started {drill.created}  updated {drill.updated}"))


@drill_app.command("status", no_args_is_help=True)
@_exits
def drill_status_command(drill: str = typer.Argument(..., help="The drill, e.g. drill-42."),
                         state_dir: Optional[Path] = STATE_DIR) -> None:
    """A drill's progress, coverage and what is left, without running anything."""
    from . import api
    from .reports import text_report
    result = api.drill_status(drill, state=state_dir)
    out = Console(highlight=False, soft_wrap=True)
    text_report.render_drill(out, result)
    left = api.remaining_bytes(result)
    rate = api.throughput(state=state_dir)
    if left:
        eta = f", about {left / rate:.0f}s at {format_size(rate)}/s measured" if rate else ""
        out.print(Text(f"left      {format_size(left)}{eta}"))
    raise typer.Exit(result.exit_code)


audit_app = typer.Typer(no_args_is_help=True, help="The audit ledger of sealed drill reports.")
app.add_typer(audit_app, name="audit")


@audit_app.command("verify")
@_exits
def audit_verify_command(state_dir: Optional[Path] = STATE_DIR) -> None:
    """Check the hash chain of the ledger and every sealed report: exit 0 when intact, 1 when an
    entry or report was edited, removed or reordered."""
    from . import api
    audit = api.audit(state=state_dir)
    out = _listed(("error", audit.problems), ("crash", audit.crashes))
    verdict = "INTACT" if audit.ok else "TAMPERED"
    out.print(Text(f"ledger    {audit.entries} entries, {verdict}; head {audit.head or '-'}"))
    raise typer.Exit(ExitCode.INTACT if audit.ok else ExitCode.CORRUPT)


@audit_app.command("repair")
@_exits
def audit_repair_command(state_dir: Optional[Path] = STATE_DIR) -> None:
    """Repair what crashes left, and only that: a cut-off last line is set aside into
    audit/torn/ (kept), and a seal cut off before its ledger entry gets its entry, when the
    drill's own pending copy proves the report's bytes. Edited, removed or reordered entries and
    edited or missing reports are never repaired: exit 1, as audit verify."""
    from . import api
    repair = api.audit_repair(state=state_dir)
    out = _listed(("repaired", repair.actions), ("refused", repair.refused))
    if not repair.actions and not repair.refused:
        out.print(Text("ledger    nothing to repair"))
    raise typer.Exit(ExitCode.INTACT if repair.ok else ExitCode.CORRUPT)


def _listed(*groups: tuple[str, list[str]]) -> Console:
    """Untrusted sentences (they quote paths), each under its label; the console, to go on."""
    out = Console(highlight=False, soft_wrap=True)
    for label, lines in groups:
        for line in lines:
            out.print(Text(f"  {label:<7} {safe_text(line)}"))
    return out


def _deadline(deadline: str | None, until: str | None) -> datetime | None:
    if deadline and until:
        raise UsageError("give --deadline or --until, not both")
    now = datetime.now(timezone.utc)
    if deadline:
        return now + timedelta(seconds=parse_duration(deadline, "--deadline"))
    if until:
        return parse_until(until, "--until", now.astimezone())
    return None


class Output:
    """Progress while a drill runs, notices as they come, then the summary and the report."""

    def __init__(self, progress: bool | None, quiet: bool, report_members: bool = False):
        self.report_members = report_members
        self.err = Console(stderr=True, highlight=False, soft_wrap=True)
        self.out = Console(highlight=False, soft_wrap=True)
        self.quiet = quiet
        self.display = ProgressDisplay(self.err, enabled=(progress if progress is not None else True) and not quiet)
        self.progress = None

    def __enter__(self) -> "Output":
        self.progress = self.display.__enter__()
        return self

    def __exit__(self, *exc) -> None:
        self.display.__exit__(*exc)

    def notice(self, text: str) -> None:
        self.err.print(Text(f"archcheck: {safe_text(text)}"))

    def finish(self, result, report: Path | None) -> None:
        """The verdict first, whatever fails after it: the report, the seal."""
        from .reports import json_report, text_report
        drill = result.drill
        why = {"interrupted": "interrupted", "stopped": "time is up",
               "failed": "an archive could not be verified"}.get(drill.status)
        if why:
            self.err.print(Text(f"archcheck: {why}; what was verified is kept: archcheck resume {drill.id}"))
        text_report.render_drill(self.out, result, report, quiet=self.quiet)
        codes = [result.exit_code]
        if report:
            try:
                json_report.write(result, report, members=self.report_members)
            except ArchcheckError as exc:
                self.err.print(Text(f"archcheck: {safe_text(str(exc))}"))
                codes.append(exc.exit_code)
        if result.seal_error:
            self.err.print(Text(f"archcheck: not sealed: {safe_text(result.seal_error)}"))
        if result.state_error:
            self.err.print(Text(f"archcheck: {safe_text(result.state_error)}"))
        raise typer.Exit(combine(codes))


class ProgressDisplay:
    """A rich bar on a terminal; plain timestamped lines every few seconds otherwise."""

    def __init__(self, console: Console, enabled: bool):
        self.console, self.enabled = console, enabled
        self.bar: Any = None  # a rich Progress, on a terminal
        self.task = None
        self.started = self.last_line = time.monotonic()

    def __enter__(self) -> Callable[[int, int], None] | None:
        if not self.enabled:
            return None
        if self.console.is_terminal:
            from rich.progress import BarColumn, DownloadColumn, Progress, TimeRemainingColumn, TransferSpeedColumn
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
