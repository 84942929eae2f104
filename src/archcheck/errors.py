"""archcheck's own failures. Archive damage is never an exception: it is a Finding.

Each class carries the exit code the CLI ends with (status.ExitCode)."""
from __future__ import annotations

from .status import ExitCode


class ArchcheckError(Exception):
    """Base class; ``exit_code`` is what the CLI exits with."""

    exit_code = ExitCode.USAGE


class UsageError(ArchcheckError):
    """The command line or an option value is wrong."""


class SourceError(ArchcheckError):
    """The archive cannot be opened at all: missing, unreadable, empty, a directory."""

    exit_code = ExitCode.UNUSABLE


class UnsupportedArchive(ArchcheckError):
    """The file is readable but not a zstd or tar archive."""

    exit_code = ExitCode.UNUSABLE


class SourceChanged(ArchcheckError):
    """The archive is no longer the file the run began with (replaced, rewritten, appended to,
    truncated or touched): what is read now cannot be judged against what was read before."""

    exit_code = ExitCode.INCOMPLETE

    def __init__(self, what: str):
        self.what = what
        super().__init__(what)


class WorkerCrashed(ArchcheckError):
    """A worker process died (killed, out of memory): the run is incomplete."""

    exit_code = ExitCode.WORKER_FAILED


class StateError(ArchcheckError):
    """The state directory or a manifest cannot be written or read."""

    exit_code = ExitCode.STATE


class DrillBusy(StateError):
    """Another live process holds the drill's lock."""

    exit_code = ExitCode.BUSY


class ResumeRefused(StateError):
    """No such drill, or a drill that has ended."""

    exit_code = ExitCode.REFUSED


class SealFailed(StateError):
    """The drill's report could not be sealed in the audit ledger; its verdict stands."""

    exit_code = ExitCode.SEAL_FAILED


def format_size(n: int | float) -> str:
    for unit in ("B", "KiB", "MiB", "GiB", "TiB"):
        if abs(n) < 1024 or unit == "TiB":
            return f"{n:.0f} {unit}" if unit == "B" or float(n).is_integer() else f"{n:.1f} {unit}"
        n /= 1024
    return f"{n} TiB"


def plural(n: int, word: str, many: str | None = None) -> str:
    """'1 member', '2 members', '12,345 members'."""
    return f"{n:,} {word if n == 1 else many or word + 's'}"


def describe_error(exc: BaseException) -> str:
    """An OS error as a short sentence with its errno, for findings."""
    if isinstance(exc, OSError) and exc.strerror:
        return f"{exc.strerror} (errno {exc.errno})"
    return str(exc) or type(exc).__name__
