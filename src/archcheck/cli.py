"""The command line: options, progress, rendering, exit codes. The only module that prints
or exits; everything else is archcheck's library API."""
from __future__ import annotations

import functools
import os
import sys
import time
from dataclasses import dataclass
from datetime import datetime, timedelta, timezone
from pathlib import Path
from typing import Any, Callable, Optional

import typer
from rich.console import Console
from rich.text import Text

from . import __version__
from .errors import ArchcheckError, UsageError, format_size
from .status import ExitCode, combine, help_text
from .layers import ALL_LAYERS, DEFAULT_DIGEST, DEFAULT_MAX_WINDOW
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
    """Library failures become one line on stderr (an event, when the log is there) and a
    documented exit code."""
    @functools.wraps(command)
    def wrapper(*args, **kwargs):
        try:
            return command(*args, **kwargs)
        except ArchcheckError as exc:
            _failed(str(exc), exc.exit_code)
        except KeyboardInterrupt:
            _failed("interrupted; what was verified is kept: archcheck drill list shows the drill to resume, "
                    "if it had begun", ExitCode.INCOMPLETE)
        except (typer.Exit, typer.Abort):
            raise
        except Exception as exc:  # noqa: BLE001 - the CLI's last line of defence
            if os.environ.get("ARCHCHECK_DEBUG"):
                raise
            _failed(f"internal error: {type(exc).__name__}: {exc} (set ARCHCHECK_DEBUG=1 for details)",
                    ExitCode.INTERNAL)
        finally:
            Output.close_log()
    return wrapper


def _failed(message: str, code: int) -> None:
    """The command's one line of failure (messages may quote paths: untrusted), and its exit."""
    Output.say_error(message, code)
    raise typer.Exit(code) from None


STATE_DIR = typer.Option(None, "--state-dir", envvar="ARCHCHECK_STATE_DIR",
                         help="State directory (default: $XDG_STATE_HOME/archcheck).")
REPORT = typer.Option(None, "--report", help="Write the JSON report here; - for stdout (the summary then goes "
                                               "to stderr).")
JUNIT = typer.Option(None, "--junit", help="Write JUnit XML here: a suite per archive, a case per layer and gate rule; "
                                           "- for stdout.")
PROMETHEUS = typer.Option(None, "--prometheus",
                          help="Write Prometheus textfile-collector metrics here (a .prom file, atomically); "
                               "- for stdout.")
REPORT_MEMBERS = typer.Option(False, "--report-members",
                              help="List every member in the JSON report (by default it names the members log, "
                                   "with its digests: a million members make a report of hundreds of MB).")
PROGRESS = typer.Option(None, "--progress/--no-progress",
                        help="Progress display (default: a bar on a terminal, plain timestamped lines otherwise).")
QUIET = typer.Option(False, "--quiet", "-q", help="Print only findings and the verdict line.")
DEADLINE = typer.Option(None, "--deadline", help="Stop cleanly after this long (90s, 45m, 2h); exit 3, resumable.")
UNTIL = typer.Option(None, "--until", help="Stop cleanly at this local time (06:00) or ISO 8601 instant.")
LOG_FORMAT = typer.Option(None, "--log-format", envvar="ARCHCHECK_LOG_FORMAT",
                          help="Log events as they happen (segments, stream, findings, verdicts): json (JSON Lines) "
                               "or text (logfmt), on stderr or into --log-file. See docs/outputs.md.")
LOG_LEVEL = typer.Option("info", "--log-level", envvar="ARCHCHECK_LOG_LEVEL", help="debug, info, warning or error.")
LOG_FILE = typer.Option(None, "--log-file", envvar="ARCHCHECK_LOG_FILE",
                        help="Append the log to this file instead of stderr (JSON Lines unless --log-format text).")
EXECUTOR = typer.Option(None, "--executor", envvar="ARCHCHECK_EXECUTOR",
                        help="Where the work runs: local (this machine's processes, the default), "
                             "dask://HOST:PORT (a Dask scheduler) or dask-local[:N] (N Dask worker processes "
                             "here); Dask needs pip install 'archcheck[dask]'.")
IDENTITY = typer.Option(None, "--identity", "-i",
                        help="An age identity file (as age-keygen writes it) for age-encrypted archives; "
                             "default: AGE_IDENTITY (a path, or the key itself). Never logged or saved.")
TRUST = typer.Option(False, "--trust-verified",
                     help="Going on with an earlier run: do not read again what it verified (faster; the "
                          "report says so). By default it is hashed again, and bytes that changed are reported.")


@app.command("verify", help=VERIFY_HELP, no_args_is_help=True)
@_exits
def verify_command(
    archives: list[str] = typer.Argument(..., help="The archives to verify: files, s3://BUCKET/KEY, gs://BUCKET/OBJECT or https:// URLs."),
    layers: str = typer.Option(",".join(ALL_LAYERS), help="Comma-separated layers to check."),
    segment_size: str = typer.Option(format_size(DEFAULT_SEGMENT_SIZE).replace(" ", ""),
                                     help="Size of the byte-range segments (a multiple of 8 MiB)."),
    max_memory: str = typer.Option(format_size(DEFAULT_MAX_MEMORY).replace(" ", ""),
                                   help="Budget for archcheck's buffers (queued segments, decode buffers)."),
    workers: Optional[int] = typer.Option(None, help="Worker processes (default: the CPU count)."),
    max_window: str = typer.Option(format_size(DEFAULT_MAX_WINDOW).replace(" ", ""),
                                   help="Largest zstd window to decode; a frame that needs more is not decoded (ZSTD_WINDOW_OVER_LIMIT, exit 3)."),
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
    junit: Optional[Path] = JUNIT,
    prometheus: Optional[Path] = PROMETHEUS,
    log_format: Optional[str] = LOG_FORMAT,
    log_level: str = LOG_LEVEL,
    log_file: Optional[Path] = LOG_FILE,
    baseline: Optional[Path] = typer.Option(
        None, "--baseline", help="Compare the content with a baseline: a catalog (archcheck catalog) or an archive."),
    policy: Optional[Path] = typer.Option(
        None, "--policy", help="The gate's policy (YAML): required paths, shrink and growth limits, drift allowed, "
                               "waivers; a broken rule exits 4."),
    expect: Optional[list[str]] = typer.Option(
        None, "--expect", help="The archive's expected digest, ALGORITHM:HEX (sha256, sha512, sha1, md5, blake3, "
                               "xxh3-128), checked in the same run; repeatable."),
    expect_file: Optional[Path] = typer.Option(
        None, "--expect-file", help="Expected digests in the format sha256sum -c reads (SHA256SUMS)."),
    save_catalog: Optional[Path] = typer.Option(
        None, "--save-catalog", help="Record the verified content here: a baseline for later backups."),
    retries: Optional[int] = typer.Option(
        None, "--retries", help="Object stores: retries of a failing range request (default 5), with backoff."),
    in_flight: Optional[int] = typer.Option(
        None, "--in-flight", help="Object stores: range requests at once per reading process (default 4)."),
    request_timeout: Optional[str] = typer.Option(
        None, "--request-timeout", help="Object stores: connect and read timeout per request (default 30s)."),
    retry_max_elapsed: Optional[str] = typer.Option(
        None, "--retry-max-elapsed", help="Object stores: give a range up after this long (default 2m); "
                                          "it is left for resume."),
    breaker_threshold: Optional[int] = typer.Option(
        None, "--breaker-threshold", help="Object stores: consecutive failures that open an endpoint's circuit "
                                          "breaker (default 5)."),
    breaker_cooldown: Optional[str] = typer.Option(
        None, "--breaker-cooldown", help="Object stores: how long an open breaker waits before a probe "
                                         "(default 10s)."),
    executor: Optional[str] = EXECUTOR,
    identity: Optional[Path] = IDENTITY,
) -> None:
    from .processes import start_early
    start_early(tuple(archives))  # the worker server loads while the library does
    from . import api
    gate = api.GateSpec(baseline, policy, tuple(expect or ()), expect_file, save_catalog)
    with Output(progress, quiet, report_members, junit, prometheus,
                logs=LogSpec(log_format, log_level, log_file), report=report) as out:
        result = api.run_drill(
            archives, layers=[x.strip() for x in layers.split(",") if x.strip()],
            segment_size=parse_size(segment_size, "--segment-size"),
            max_memory=parse_size(max_memory, "--max-memory"), workers=workers,
            max_window=parse_size(max_window, "--max-window"), digest=digest, state=state_dir, drill_id=drill,
            deadline=_deadline(deadline, until), budget=budget and parse_budget(budget, "--budget"),
            skip_verified_within=skip_verified_within and parse_duration(skip_verified_within,
                                                                         "--skip-verified-within"),
            on_progress=out.progress, on_notice=out.notice, recheck=not trust_verified,
            gate=gate if gate != api.GateSpec() else None,
            remote=api.remote_options(
                retries=retries, in_flight=in_flight,
                timeout=request_timeout and parse_duration(request_timeout, "--request-timeout"),
                max_elapsed=retry_max_elapsed and parse_duration(retry_max_elapsed, "--retry-max-elapsed"),
                breaker_threshold=breaker_threshold,
                breaker_cooldown=breaker_cooldown and parse_duration(breaker_cooldown, "--breaker-cooldown")),
            executor=executor, identity=identity)
    out.finish(result, report)


@app.command("catalog", no_args_is_help=True)
@_exits
def catalog_command(
    archive: Path = typer.Argument(..., help="The archive to verify and catalog."),
    output: Path = typer.Option(..., "--output", "-o", help="Where to write the catalog (JSON Lines)."),
    digest: str = typer.Option(DEFAULT_DIGEST, help="Member digest: xxh3-128 or blake3 (compare like with like)."),
    workers: Optional[int] = typer.Option(None, help="Worker processes (default: the CPU count)."),
    state_dir: Optional[Path] = STATE_DIR,
    progress: Optional[bool] = PROGRESS,
    quiet: bool = QUIET,
    log_format: Optional[str] = LOG_FORMAT,
    log_level: str = LOG_LEVEL,
    log_file: Optional[Path] = LOG_FILE,
) -> None:
    """Verify an archive and record what it holds (per member: name, type, size, mode, owner, mtime,
    link target, digest; the tree root and frame layout) as a catalog, the baseline that
    `verify --baseline` and `diff` compare later backups with. Written only when the
    verification is complete; exit codes as for verify."""
    from .processes import start_early
    start_early()
    from . import api
    with Output(progress, quiet, logs=LogSpec(log_format, log_level, log_file)) as out:
        result = api.catalog(archive, output, digest=digest, workers=workers, state=state_dir,
                             on_progress=out.progress, on_notice=out.notice)
    if any(gate.catalog for gate in result.gates):
        out.say(f"catalog written to {output}")
    else:
        out.say("no catalog written: the verification did not complete")
    out.finish(result, None)


@app.command("diff", no_args_is_help=True)
@_exits
def diff_command(
    old: Path = typer.Argument(..., help="The baseline: a catalog or an archive."),
    new: Path = typer.Argument(..., help="The backup to compare with it: a catalog or an archive."),
    digest: str = typer.Option(DEFAULT_DIGEST, help="Member digest for archives given (as their catalogs')."),
    workers: Optional[int] = typer.Option(None, help="Worker processes (default: the CPU count)."),
) -> None:
    """Compare two backups by content, not bytes (archives are verified on the way, and must be
    intact). Each member is identical, drift (mtime, owner, mode only), added, removed,
    modified, or suspicious: content changed while name, size and mtime did not (bit rot or
    tampering at the source). Exit 1 when something is suspicious, else 0; 2 for bad usage."""
    from .processes import start_early
    start_early()
    from . import api
    from .reports import text_report
    comparison = api.diff(old, new, digest=digest, workers=workers)
    text_report.render_comparison(Console(highlight=False, soft_wrap=True), comparison)
    raise typer.Exit(ExitCode.CORRUPT if comparison.summary.suspicious else ExitCode.INTACT)


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
    junit: Optional[Path] = JUNIT,
    prometheus: Optional[Path] = PROMETHEUS,
    log_format: Optional[str] = LOG_FORMAT,
    log_level: str = LOG_LEVEL,
    log_file: Optional[Path] = LOG_FILE,
    identity: Optional[Path] = IDENTITY,
) -> None:
    """Continue a stopped drill from its last verified segment: what was verified is hashed
    again (to catch rot since) but not checked again.

    An archive that changed since the drill began is not mixed with its earlier results: it is
    reported as changed (exit 3). Exit codes as for verify."""
    from .processes import start_early
    start_early()  # the worker server loads while the library does
    from . import api
    with Output(progress, quiet, report_members, junit, prometheus,
                logs=LogSpec(log_format, log_level, log_file), report=report) as out:
        result = api.resume(drill, state=state_dir, deadline=_deadline(deadline, until),
                            on_progress=out.progress, on_notice=out.notice, recheck=not trust_verified,
                            identity=identity)
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
    junit: Optional[Path] = JUNIT,
    prometheus: Optional[Path] = PROMETHEUS,
    log_format: Optional[str] = LOG_FORMAT,
    log_level: str = LOG_LEVEL,
    log_file: Optional[Path] = LOG_FILE,
    executor: Optional[str] = EXECUTOR,
    identity: Optional[Path] = IDENTITY,
) -> None:
    """Start a drill from a plan file (archives, layers, window or budget, outputs)."""
    from .processes import start_early
    start_early()  # the worker server loads while the library does
    from . import api
    from .plans import load_plan
    loaded = load_plan(plan)
    if report is None and loaded.report == "-":
        report = Path("-")  # known before the run: Output refuses a second "-"
    with Output(progress, quiet, report_members, junit, prometheus,
                logs=LogSpec(log_format, log_level, log_file), report=report) as out:
        result, _ = api.run_plan(loaded, state=state_dir, deadline=_deadline(deadline, until),
                                 on_progress=out.progress, on_notice=out.notice,
                                 recheck=not trust_verified, executor=executor,
                                 identity=identity)
    if report is None and loaded.report:
        report = Path(loaded.report.format(drill=result.drill.id, plan=loaded.name,
                                           date=datetime.now().strftime("%Y-%m-%d")))
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


@app.command("report", no_args_is_help=True)
@_exits
def report_command(drill: str = typer.Argument(..., help="The drill, e.g. drill-42."),
                   fmt: str = typer.Option("json", "--format", help="json, md or html."),
                   output: Optional[Path] = typer.Option(
                       None, "--output", "-o", help="Write it here (default: stdout for json and md, "
                                                    "<drill>.html in the current directory for html)."),
                   state_dir: Optional[Path] = STATE_DIR) -> None:
    """A drill's report from its state alone, without running anything: the JSON report, Markdown
    tables, or one self-contained HTML page (inline CSS and SVG; it loads nothing). Exit codes as
    for drill status: the drill's."""
    from . import api
    from .manifest import output_file
    from .reports import html_report, markdown_report
    renderers = {"json": markdown_report.render_json, "md": markdown_report.render, "html": html_report.render}
    if fmt not in renderers:
        raise UsageError(f"--format must be json, md or html, not {fmt!r}")
    result = api.drill_status(drill, state=state_dir)
    text = renderers[fmt](result)
    out = Console(highlight=False, soft_wrap=True)
    if output is None and fmt == "html":  # a page is for a browser, not a terminal
        output = Path(f"{result.drill.id}.html")
    if output is None or str(output) == "-":
        out.print(Text(text), end="")  # a Text: never parsed for markup
    else:
        with output_file(output) as f:
            f.write(text.encode(errors="backslashreplace"))  # a path that is not UTF-8 stays readable
        out.print(Text(f"report    {safe_text(str(output))}"))
    raise typer.Exit(result.exit_code)


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


@dataclass(frozen=True)
class LogSpec:
    """The log options of a command; no format and no file: no log."""

    format: str | None
    level: str
    file: Path | None

    def open(self):
        from .events import LEVELS, LogFormat, LogSink
        if self.format is None and self.file is None:
            return None
        formats = [f.value for f in LogFormat]
        if (self.format or "json") not in formats:
            raise UsageError(f"--log-format must be {' or '.join(formats)}, not {self.format!r}")
        if self.level.lower() not in LEVELS:
            raise UsageError(f"--log-level must be one of {', '.join(LEVELS)}, not {self.level!r}")
        try:
            return LogSink(LogFormat(self.format or "json"), LEVELS[self.level.lower()], self.file)
        except OSError as exc:
            raise UsageError(f"--log-file {self.file}: {exc.strerror or exc}") from None


class Output:
    """Progress while a drill runs, notices as they come, then the summary and the report.
    With the log on stderr, stderr holds log lines only: no bar, and notices are events."""

    log = None  # the command's LogSink: one per process, as a command is

    def __init__(self, progress: bool | None, quiet: bool, report_members: bool = False,
                 junit: Path | None = None, prometheus: Path | None = None, logs: LogSpec | None = None,
                 report: Path | None = None):
        self.report_members, self.junit, self.prometheus = report_members, junit, prometheus
        if len(self._on_stdout(report)) > 1:
            raise UsageError("only one of --report, --junit and --prometheus can be - (standard output)")
        self.err = Console(stderr=True, highlight=False, soft_wrap=True)
        self.out = Console(highlight=False, soft_wrap=True)
        self.lines = self.out  # where the summary goes: stderr when a document takes stdout
        self.quiet = quiet
        Output.log = logs.open() if logs else None
        bar = (progress if progress is not None else True) and not quiet and not Output._log_on_stderr()
        self.display = ProgressDisplay(self.err, enabled=bar)
        self.progress = None

    def __enter__(self) -> "Output":
        self.progress = self.display.__enter__()
        return self

    def __exit__(self, *exc) -> None:
        self.display.__exit__(*exc)

    @classmethod
    def _log_on_stderr(cls) -> bool:
        return cls.log is not None and cls.log.on_stderr

    @classmethod
    def close_log(cls) -> None:
        if cls.log is not None:
            cls.log.close()
            cls.log = None

    @classmethod
    def say_error(cls, message: str, code: int) -> None:
        if cls.log is not None:
            from . import events
            events.emit(events.Event.COMMAND_FAILED, events.logging.ERROR, status="failed", message=message,
                        exit_code=int(code))
        if not cls._log_on_stderr():
            Console(stderr=True, highlight=False, soft_wrap=True).print(Text(f"archcheck: {safe_text(message)}"))

    def notice(self, text: str) -> None:
        """The library's notices: with the log on stderr, its events say them."""
        if not Output._log_on_stderr():
            self.err.print(Text(f"archcheck: {safe_text(text)}"))

    def say(self, text: str, error: bool = False) -> None:
        """The command's own lines to stderr (an event when the log is there)."""
        if Output.log is not None:
            from . import events
            events.emit(events.Event.NOTICE, events.logging.ERROR if error else events.logging.INFO, message=text)
        if not Output._log_on_stderr():
            self.err.print(Text(f"archcheck: {safe_text(text)}"))

    def finish(self, result, report: Path | None) -> None:
        """The verdict first, whatever fails after it: the report, the seal."""
        from .events import bound
        with bound(drill=result.drill.id):
            self._finish(result, report)

    def _finish(self, result, report: Path | None) -> None:
        from .reports import text_report
        drill = result.drill
        why = {"interrupted": "interrupted", "stopped": "time is up",
               "failed": "an archive could not be verified"}.get(drill.status)
        if why:
            self.say(f"{why}; what was verified is kept: archcheck resume {drill.id}", error=True)
        # standard output carries a report as it is: the summary (and GitHub's lines) go to stderr then
        self.lines = self.err if self._on_stdout(report) else self.out
        text_report.render_drill(self.lines, result, report, quiet=self.quiet)
        codes = [result.exit_code]
        for write in self._outputs(report):
            try:
                write(result)
            except ArchcheckError as exc:
                self.say(str(exc), error=True)
                codes.append(exc.exit_code)
            except BrokenPipeError:  # a reader of "-" that stopped reading: as for the text
                _reader_gone()
        for problem in (result.seal_error and f"not sealed: {result.seal_error}", result.state_error,
                        result.gate_failure and result.gate_failure[0]):
            if problem:
                self.say(problem, error=True)
        raise typer.Exit(combine(codes))

    def _on_stdout(self, report: Path | None) -> list[Path]:
        return [p for p in (report, self.junit, self.prometheus) if p is not None and str(p) == "-"]

    def _outputs(self, report: Path | None) -> list[Callable]:
        """The files CI systems and monitoring read, each written atomically; on GitHub Actions,
        workflow commands on stdout and the step summary."""
        from .reports import json_report, junit_report, prometheus_report
        outputs: list[Callable] = []
        if report:
            outputs.append(lambda r: json_report.write(r, report, members=self.report_members))
        if self.junit:
            outputs.append(lambda r: junit_report.write(r, r.gates, self.junit))
        if self.prometheus:
            outputs.append(lambda r: prometheus_report.write(r, r.gates, self.prometheus))
        if os.environ.get("GITHUB_ACTIONS") == "true":
            outputs.append(self._github)
        return outputs

    def _github(self, result) -> None:
        from .reports import github_report
        for line in github_report.commands(result, result.gates):  # (the runner reads stderr's too)
            self.lines.print(Text(line), highlight=False)  # escaped by github_report: no command injection
        summary = os.environ.get("GITHUB_STEP_SUMMARY")
        if summary:
            github_report.write_summary(result, result.gates, Path(summary))


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
    """Click's usage errors (an unknown option, a value of the wrong type, a missing argument)
    as one line, like the library's; a bare ``archcheck`` shows its help."""
    errors = _click_exceptions()
    sys.stdout = _Unread(sys.stdout)
    try:
        code = app(standalone_mode=False, prog_name="archcheck")
    except errors.NoArgsIsHelpError as exc:
        if exc.ctx is None or exc.ctx.parent is None:
            typer.echo(exc.format_message(), err=True)
            sys.exit(ExitCode.USAGE)
        group = hasattr(exc.ctx.command, "list_commands")
        _usage_line(exc.ctx, "give a command" if group else "missing arguments")
    except errors.UsageError as exc:
        _usage_line(exc.ctx, exc.format_message())
    except errors.ClickException as exc:
        _failed_line(exc.format_message(), exc.exit_code)
    except typer.Abort:
        _failed_line("interrupted", ExitCode.INCOMPLETE)
    code = code if isinstance(code, int) else 0
    unwritten = sys.stdout.error if isinstance(sys.stdout, _Unread) else None
    if unwritten:  # the verdict's code still wins over it, by the documented precedence
        Output.say_error(f"cannot write standard output: {unwritten}", ExitCode.STATE)
        code = combine([code, ExitCode.STATE])
    sys.exit(code)


def _reader_gone() -> None:
    if isinstance(sys.stdout, _Unread):
        sys.stdout.leave()


class _Unread:
    """stdout, whose reader may stop reading (``| head``): what it no longer takes is dropped
    and the run goes on to its verdict's exit code. (Click ends a run whose pipe broke with
    exit 1, which here means corruption found.) A write that fails otherwise (a full disk
    under ``> log``) is dropped too, and said once at the end (``error``)."""

    def __init__(self, stream: Any):
        self._stream, self._gone = stream, False
        self.error: str | None = None

    def write(self, text: str) -> int:
        if not self._gone:
            try:
                return self._stream.write(text)
            except OSError as exc:
                self._failed(exc)
        return len(text)

    def flush(self) -> None:
        if not self._gone:
            try:
                self._stream.flush()
            except OSError as exc:
                self._failed(exc)

    def _failed(self, exc: OSError) -> None:
        if not isinstance(exc, BrokenPipeError):
            self.error = exc.strerror or str(exc)
        self.leave()

    def leave(self) -> None:
        """Nothing more goes to the reader, not even what is buffered at exit."""
        self._gone = True
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, self._stream.fileno())
        os.close(devnull)

    def __getattr__(self, name: str) -> Any:
        return getattr(self._stream, name)


def _click_exceptions():
    """typer 0.28 carries a click of its own; earlier ones use click's."""
    try:
        from typer._click import exceptions
    except ImportError:
        from click import exceptions
    return exceptions


def _usage_line(ctx, message: str) -> None:
    command = ctx.command_path if ctx is not None else "archcheck"
    _failed_line(f"{message.rstrip('.')} (see {command} --help)", ExitCode.USAGE)


def _failed_line(message: str, code: int) -> None:
    Output.say_error(message, code)
    sys.exit(code)
