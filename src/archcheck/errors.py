"""archcheck's own failures. Archive damage is never an exception: it is a Finding."""
from __future__ import annotations


class ArchcheckError(Exception):
    """Base class; ``exit_code`` is what the CLI exits with."""

    exit_code = 2


class UsageError(ArchcheckError):
    """The command line or an option value is wrong."""


class SourceError(ArchcheckError):
    """The archive cannot be opened at all: missing, unreadable, empty, a directory."""


class UnsupportedArchive(ArchcheckError):
    """The file is readable but not a zstd or tar archive."""


class WindowTooLarge(ArchcheckError):
    """A zstd frame needs a larger decoding window than --max-window allows."""

    def __init__(self, frame: int, window: int, limit: int):
        self.frame, self.window, self.limit = frame, window, limit
        super().__init__(
            f"zstd frame {frame} needs a {format_size(window)} window, over --max-window "
            f"{format_size(limit)}; raise --max-window to verify it (decoding needs that much memory)")


class WorkerCrashed(ArchcheckError):
    """A worker process died (killed, out of memory): the run is incomplete."""

    exit_code = 3


class StateError(ArchcheckError):
    """The state directory or a manifest cannot be written or read."""


def format_size(n: int | float) -> str:
    for unit in ("B", "KiB", "MiB", "GiB", "TiB"):
        if abs(n) < 1024 or unit == "TiB":
            return f"{n:.0f} {unit}" if unit == "B" or float(n).is_integer() else f"{n:.1f} {unit}"
        n /= 1024
    return f"{n} TiB"


def describe_error(exc: BaseException) -> str:
    """An OS error as a short sentence with its errno, for findings."""
    if isinstance(exc, OSError) and exc.strerror:
        return f"{exc.strerror} (errno {exc.errno})"
    return str(exc) or type(exc).__name__
