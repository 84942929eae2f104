"""Human quantities: sizes, durations, clock times, windows and budgets (pure functions).

Every parser takes the option's name (``--max-memory``, ``'budget'``) so that its UsageError
is one line a user can act on, with examples.
"""
from __future__ import annotations

import re
from dataclasses import dataclass
from datetime import datetime, time, timedelta

from .errors import UsageError

DEFAULT_MAX_MEMORY = 256 * 1024 * 1024  # what a run may use: queues, chunks, workers' buffers
MIN_MAX_MEMORY = 32 * 1024 * 1024

SIZE_UNITS = {"": 1, "b": 1, "k": 1 << 10, "kb": 1 << 10, "kib": 1 << 10, "m": 1 << 20, "mb": 1 << 20,
              "mib": 1 << 20, "g": 1 << 30, "gb": 1 << 30, "gib": 1 << 30, "t": 1 << 40, "tb": 1 << 40, "tib": 1 << 40}
DURATION_UNITS = {"d": 86400, "h": 3600, "m": 60, "s": 1}

_NUMBER = r"\d+(?:\.\d+)?"
# Units largest first, each at most once: "1h30m", "1d 12h", "90s".
_DURATION = re.compile(r"\s*" + r"\s*".join(rf"(?:(?P<{u}>{_NUMBER})\s*{u})?" for u in DURATION_UNITS) + r"\s*",
                       re.IGNORECASE)
_CLOCK = re.compile(r"\s*(\d{1,2}):(\d{2})(?::(\d{2}))?\s*")

DURATION_EXAMPLES = "examples: 90s, 45m, 2h, 1h30m, 7d"
UNTIL_EXAMPLES = "examples: 06:00, 23:59:30, 2026-11-27T06:00:00+01:00"
WINDOW_EXAMPLES = "examples: 01:00-05:00, 22:00-06:00"
BUDGET_EXAMPLES = "examples: 30m, 2h, 500G; 30m is 30 minutes, 30M is 30 MiB"


def parse_size(text: str, option: str) -> int:
    """Bytes from "4096", "64M", "1.5GiB", "512kb": K, M, G, T are powers of 1024, any case."""
    size = _size(text)
    if size is None:
        raise UsageError(f"{option}: cannot read {text!r} as a size (examples: 64M, 1G, 512KiB)")
    return size


def _size(text: str) -> int | None:
    match = re.fullmatch(rf"\s*({_NUMBER})\s*([a-zA-Z]*)\s*", text)
    unit = match and SIZE_UNITS.get(match.group(2).lower())
    return None if not match or unit is None else int(float(match.group(1)) * unit)


MAX_DURATION = 3650 * 86400  # beyond this a date overflows long before it matters


def parse_duration(text: str, option: str) -> float:
    """Seconds from "90s", "45m", "2h", "1h30m", "7d", "1d12h" or a plain number of seconds."""
    seconds = _seconds(text)
    if seconds is None:
        raise UsageError(f"{option}: cannot read {text!r} as a duration ({DURATION_EXAMPLES})")
    if seconds <= 0:
        raise UsageError(f"{option}: {text!r} is no time at all; give a duration ({DURATION_EXAMPLES})")
    if seconds > MAX_DURATION:
        raise UsageError(f"{option}: {text!r} is more than ten years")
    return seconds


def _seconds(text: str) -> float | None:
    if re.fullmatch(rf"\s*{_NUMBER}\s*", text):
        return float(text)
    match = _DURATION.fullmatch(text)
    if not match or not any(match.groupdict().values()):
        return None
    return sum(float(value) * DURATION_UNITS[unit.lower()] for unit, value in match.groupdict().items() if value)


def _clock(text: str) -> time | None:
    match = _CLOCK.fullmatch(text)
    if not match:
        return None
    hour, minute, second = (int(part or 0) for part in match.groups())
    if hour > 23 or minute > 59 or second > 59:
        return None
    return time(hour, minute, second)


def _next(clock: time, now: datetime) -> datetime:
    """The first moment after ``now`` that the wall clock in now's zone shows ``clock``."""
    today = datetime.combine(now.date(), clock, tzinfo=now.tzinfo)
    return today if today > now else datetime.combine(now.date() + timedelta(days=1), clock, tzinfo=now.tzinfo)


def parse_until(text: str, option: str, now: datetime) -> datetime:
    """"06:00" is the next 06:00 after ``now`` (today or tomorrow, in now's time zone); a full
    ISO 8601 time with an offset ("2026-11-27T06:00:00+01:00", "...Z") must be in the future."""
    clock = _clock(text)
    if clock is not None:
        return _next(clock, now)
    iso = text.strip()
    if iso[-1:] in ("Z", "z"):  # fromisoformat reads Z only from Python 3.11
        iso = iso[:-1] + "+00:00"
    try:
        moment = datetime.fromisoformat(iso)
    except ValueError:
        raise UsageError(f"{option}: cannot read {text!r} as a time ({UNTIL_EXAMPLES})") from None
    if moment.tzinfo is None:  # a cron job's idea of local time is not the author's
        raise UsageError(f"{option}: {text!r} needs a UTC offset (examples: 2026-11-27T06:00:00+01:00, "
                         "2026-11-27T05:00:00Z) or a plain clock time such as 06:00")
    if moment <= now:
        raise UsageError(f"{option}: {text!r} is in the past")
    return moment.astimezone(now.tzinfo)


def parse_window(text: str, option: str, now: datetime) -> tuple[datetime, datetime]:
    """"01:00-05:00": the window ``now`` is in, else the next one. An end at or before the start
    ("22:00-06:00") crosses midnight."""
    start_text, dash, end_text = text.partition("-")
    start, end = _clock(start_text), _clock(end_text)
    if not dash or start is None or end is None:
        raise UsageError(f"{option}: cannot read {text!r} as a time window ({WINDOW_EXAMPLES})")
    if start == end:
        raise UsageError(f"{option}: the window {text!r} starts and ends at the same time")
    crosses = end < start
    for days in (-1, 0, 1):  # yesterday's window may still be open; tomorrow's is always ahead
        opens = datetime.combine(now.date() + timedelta(days=days), start, tzinfo=now.tzinfo)
        closes = datetime.combine(opens.date() + timedelta(days=crosses), end, tzinfo=now.tzinfo)
        if now < closes:
            return opens, closes
    raise AssertionError("tomorrow's window always closes after now")


@dataclass(frozen=True)
class Budget:
    """How much a drill may do: ``seconds`` of verifying or ``bytes`` read, exactly one of them."""

    seconds: float | None = None
    bytes: int | None = None

    def __post_init__(self):
        if (self.seconds is None) == (self.bytes is None):
            raise ValueError("a Budget is either seconds or bytes, exactly one of them")


def parse_budget(text: str, option: str) -> Budget:
    """A time with a lowercase unit s, m, h or d ("30m", "2h", "1h30m"), or bytes with a size unit
    that has a capital letter ("500G", "500GB", "1.5TiB", "200M", "4096B").

    Case decides because "m" is both: "30m" is 30 minutes and "30M" is 30 MiB. A bare number, or
    a lowercase size such as "500g", is refused rather than guessed.
    """
    letters = re.sub(r"[^A-Za-z]", "", text)
    amount, kind = None, "seconds"
    if letters and letters == letters.lower() and set(letters) <= set(DURATION_UNITS):
        amount = _seconds(text)
    elif letters != letters.lower():
        amount, kind = _size(text), "bytes"
    if amount is None:
        raise UsageError(f"{option}: cannot read {text!r} as a budget ({BUDGET_EXAMPLES})")
    if amount <= 0:
        raise UsageError(f"{option}: a budget of {text!r} allows nothing ({BUDGET_EXAMPLES})")
    return Budget(**{kind: amount})


def format_duration(seconds: float) -> str:
    """"45s", "12m 30s", "1h 05m", "3d 4h": the two largest units, rounded down to them."""
    rest = max(0, round(seconds))
    days, rest = divmod(rest, 86400)
    hours, rest = divmod(rest, 3600)
    minutes, secs = divmod(rest, 60)
    if days:
        return f"{days}d {hours}h"
    if hours:
        return f"{hours}h {minutes:02d}m"
    if minutes:
        return f"{minutes}m {secs:02d}s"
    return f"{secs}s"
