"""`archcheck report --format html`: one self-contained page (inline CSS and SVG, no script, a
Content-Security-Policy that forbids loading anything) with the drill's summary, the gate, and
for each archive a strip of its segments and frames coloured by status and verification age,
damage marked where it sits, what a restore loses, and its findings.

Every untrusted string (paths, member names, messages, details) goes through ``esc``."""
from __future__ import annotations

import html
from bisect import bisect_right
from dataclasses import dataclass, field
from datetime import datetime, timezone
from typing import Any, Iterable

from ..codecs import STREAM_CODECS, UNITS, frame_of
from ..coverage import parse_iso
from ..errors import format_size
from ..manifest import Manifest, StreamStatus, frame_rows
from . import safe_text
from .markdown_report import (
    SHOWN,
    age,
    archive_rows,
    consequences,
    diff_text,
    finding_line,
    gate_head,
    place,
    report_dict,
    split_gates,
    summary_rows,
)

CSP = "default-src 'none'; style-src 'unsafe-inline'; img-src data:; base-uri 'none'; form-action 'none'"
MAX_CELLS = 1000  # a strip never has more cells than this, however many frames (bucketed beyond)
WIDTH, LABEL, ROW, GAP = 1000, 110, 22, 6  # SVG units: strip width, label column, row height
PALE_AFTER = 30 * 86400.0  # verified this long ago or more: palest
STATES = ("verified", "pending", "failed")  # in order of precedence: a cell shows its worst
FAILED, PENDING, VERIFIED = "#c62828", "#cfd3d8", (46, 158, 79)
SEVERITY_COLOURS = {"error": "#c62828", "warning": "#e08a00", "info": "#7a8089"}


def esc(text: Any) -> str:
    """Untrusted text as inert HTML: control characters shown as escapes, markup escaped."""
    return html.escape(safe_text(str(text)), quote=True)


def colour(state: str, age_seconds: float | None) -> str:
    """Verified is green, paler the longer ago it was verified; pending grey; failed red."""
    if state != "verified":
        return FAILED if state == "failed" else PENDING
    pale = 0.0 if age_seconds is None else min(max(age_seconds, 0) / PALE_AFTER, 1.0) * 0.75
    r, g, b = (round(c + (255 - c) * pale) for c in VERIFIED)
    return f"#{r:02x}{g:02x}{b:02x}"


@dataclass
class _Cell:
    count: int = 0
    worst: int = 0  # index in STATES
    failed: int = 0
    oldest: float | None = None  # age in seconds


@dataclass
class Strip:
    """Spans of an archive's bytes as one row. Up to MAX_CELLS spans are drawn as they are;
    beyond, the bytes are cut into MAX_CELLS equal cells, each showing the worst state and the
    oldest age of the spans in it, and equal neighbours are drawn as one rectangle."""

    size: int
    noun: str  # "segment", "frame": for tooltips
    spans: list[tuple[int, int, str, float | None, str]] = field(default_factory=list)
    cells: list[_Cell] | None = None

    def add(self, start: int, end: int, state: str, age_seconds: float | None, label: str) -> None:
        if self.cells is None:
            self.spans.append((start, end, state, age_seconds, label))
            if len(self.spans) > MAX_CELLS:  # too many to draw one by one: bucket from now on
                self.cells = [_Cell() for _ in range(MAX_CELLS)]
                for span in self.spans:
                    self._bucket(*span[:4])
                self.spans = []
            return
        self._bucket(start, end, state, age_seconds)

    def _bucket(self, start: int, end: int, state: str, age_seconds: float | None) -> None:
        size, rank = max(self.size, 1), STATES.index(state)
        first = min(start * MAX_CELLS // size, MAX_CELLS - 1)
        last = min(max(end - 1, start) * MAX_CELLS // size, MAX_CELLS - 1)
        for cell in self.cells[first:last + 1]:
            cell.count += 1
            cell.worst = max(cell.worst, rank)
            cell.failed += state == "failed"
            if age_seconds is not None and (cell.oldest is None or age_seconds > cell.oldest):
                cell.oldest = age_seconds

    def runs(self) -> list[tuple[int, int, str, str]]:
        """(start, end, fill, tooltip) of each rectangle to draw."""
        if self.cells is None:
            return [(s, e, colour(state, a), label) for s, e, state, a, label in self.spans]
        out: list[tuple[int, int, str, str]] = []
        size = max(self.size, 1)
        counts = [0, 0]  # spans, failed spans of the run being drawn (a span in two cells counts twice)
        for i, cell in enumerate(self.cells):
            if not cell.count:
                continue
            start, end = i * size // MAX_CELLS, (i + 1) * size // MAX_CELLS
            fill = colour(STATES[cell.worst], cell.oldest)
            if out and out[-1][2] == fill and out[-1][1] == start:
                counts = [counts[0] + cell.count, counts[1] + cell.failed]
                start = out.pop()[0]
            else:
                counts = [cell.count, cell.failed]
            failed = f", {counts[1]} failed" if counts[1] else ""
            out.append((start, end, fill, f"bytes {start}-{end}: about {counts[0]} {self.noun}s{failed}"))
        return out


def _ages(manifest: Manifest, now: datetime) -> tuple[list[int], list[float | None]]:
    """Each segment's offset and how long ago its bytes were last read (None: never)."""
    offsets = [s.offset for s in manifest.segments]
    ages = [(now - parse_iso(s.read_at)).total_seconds() if s.read_at else None for s in manifest.segments]
    return offsets, ages


def segment_strip(manifest: Manifest, now: datetime) -> Strip:
    strip = Strip(manifest.archive.size, "segment")
    for seg in manifest.segments:
        damaged = any(f.category.value == "corruption" for f in seg.findings)
        state = "failed" if seg.status == "failed" or damaged else "verified" if seg.status == "done" else "pending"
        seconds = (now - parse_iso(seg.read_at)).total_seconds() if seg.read_at else None
        read = f", read {age(seconds)} ago" if seconds is not None else ""
        strip.add(seg.offset, seg.offset + seg.length, state, seconds,
                  f"segment {seg.index}: bytes {seg.offset}-{seg.offset + seg.length}, {state}{read}")
    return strip


def frame_strip(manifest: Manifest, manifest_path: Any, now: datetime) -> Strip | None:
    """The frame table (zstd frames or gzip members), each frame coloured by what its findings
    say and how far the stream check got; its age is that of the segment holding its start."""
    table = manifest.stream.frame_table
    if not table:
        return None
    names = table["fields"]
    col = {name: names.index(name) for name in ("index", "kind", "offset", "end")}
    broken: set[int] = set()
    unchecked: set[int] = set()
    rows = list(frame_rows(manifest, manifest_path))
    starts = [row[col["offset"]] for row in rows]  # in file order
    for f in manifest.findings:
        frame = frame_of(f.location.frame, dict(f.details))
        if frame is None and f.layer in STREAM_CODECS and f.location.byte_range and starts:
            frame = rows[max(0, bisect_right(starts, f.location.byte_range[0]) - 1)][col["index"]]
        if frame is not None:
            if f.category.value == "corruption":
                broken.add(frame)
            elif f.category.value in ("unverified", "transient"):
                unchecked.add(frame)
    done = manifest.stream.status is StreamStatus.DONE
    covered = manifest.stream.covered(manifest.archive.size)
    offsets, ages = _ages(manifest, now)
    strip: Strip | None = None
    for row in rows:
        index, kind, start, end = (row[col[k]] for k in ("index", "kind", "offset", "end"))
        noun = "gzip member run" if kind == "gzip-members" else UNITS[kind].unit if kind in UNITS else "frame"
        strip = strip or Strip(manifest.archive.size, noun)
        state = ("failed" if index in broken else
                 "pending" if index in unchecked or (not done and end > covered) else "verified")
        frame_age = ages[bisect_right(offsets, start) - 1] if offsets else None
        strip.add(start, end, state, frame_age, f"{noun} {index} ({kind}): bytes {start}-{end}, {state}")
    return strip


def _x(offset: int, size: int) -> float:
    return LABEL + offset * WIDTH / max(size, 1)


def _rects(strip: Strip, y: int) -> list[str]:
    out = []
    for start, end, fill, tip in strip.runs():
        x, w = _x(start, strip.size), max((end - start) * WIDTH / max(strip.size, 1), 0.6)
        out.append(f'<rect x="{x:.2f}" y="{y}" width="{w:.2f}" height="{ROW}" fill="{fill}" stroke="#fff" '
                   f'stroke-width="0.4"><title>{esc(tip)}</title></rect>')
    return out


def _damage(findings: list[dict[str, Any]], size: int, top: int, bottom: int) -> list[str]:
    """Each finding's byte range drawn over the rows; findings whose ranges start in the same
    cell share one mark (at most MAX_CELLS marks), its tooltip naming up to five of them."""
    groups: dict[int, list[dict[str, Any]]] = {}
    for f in findings:
        span = f["location"].get("byte_range")
        if span:
            groups.setdefault(min(span[0] * MAX_CELLS // max(size, 1), MAX_CELLS - 1), []).append(f)
    out = []
    order = list(SEVERITY_COLOURS)[::-1]  # info, warning, error: the worst wins
    for group in groups.values():
        start = min(f["location"]["byte_range"][0] for f in group)
        end = max(f["location"]["byte_range"][1] for f in group)
        worst = max(group, key=lambda f: order.index(f["severity"]) if f["severity"] in order else 0)["severity"]
        tip = "\n".join(f"{f['code']}: {safe_text(f['message'])} ({place(f)})" for f in group[:5])
        tip += f"\n... and {len(group) - 5} more" if len(group) > 5 else ""
        x, w = _x(start, size), max((end - start) * WIDTH / max(size, 1), 3.0)
        c = SEVERITY_COLOURS.get(worst, FAILED)
        y = top if worst != "info" else bottom - 4  # info (a resync, say) is a thin band: it hides nothing
        out.append(f'<g class="damage"><title>{esc(tip)}</title>'
                   f'<rect x="{x:.2f}" y="{y}" width="{w:.2f}" height="{bottom - y}" fill="{c}" '
                   f'fill-opacity="0.3" stroke="{c}" stroke-width="1.2"/>'
                   f'<path d="M{x + w / 2 - 5:.2f} {top - 9} h10 l-5 8 z" fill="{c}"/></g>')
    return out


def strip_svg(item: dict[str, Any], manifest: Manifest, manifest_path: Any, now: datetime) -> str:
    """The archive's picture: a row per strip, damage over them, an axis of archive offsets."""
    size = manifest.archive.size
    rows = [("segments", segment_strip(manifest, now))]
    frames = frame_strip(manifest, manifest_path, now)
    if frames is not None:
        rows.append((f"{frames.noun}s" if frames.noun != "frame" else "zstd frames", frames))
    top = 14
    parts = []
    for n, (label, strip) in enumerate(rows):
        y = top + n * (ROW + GAP)
        parts.append(f'<text x="0" y="{y + ROW - 7}" class="label">{label}</text>')
        parts += _rects(strip, y)
    bottom = top + len(rows) * (ROW + GAP) - GAP
    parts += _damage(item.get("findings", []), size, top - 2, bottom + 2)
    for q in range(5):  # the axis: 0, a quarter, ... the archive's size
        x = LABEL + q * WIDTH / 4
        anchor = ("start", "middle", "middle", "middle", "end")[q]
        parts.append(f'<line x1="{x}" y1="{bottom + 3}" x2="{x}" y2="{bottom + 7}" stroke="#666"/>'
                     f'<text x="{x}" y="{bottom + 19}" text-anchor="{anchor}" class="axis">'
                     f'{esc(format_size(size * q // 4))}</text>')
    height = bottom + 24
    return (f'<svg class="strip" viewBox="0 0 {LABEL + WIDTH + 2} {height}" role="img" '
            f'aria-label="segments and frames of the archive">'
            + "".join(parts) + "</svg>")


LEGEND = ("<p class=\"legend\">" + "".join(
    f'<span><i style="background:{c}"></i>{label}</span>' for c, label in (
        (colour("verified", 0), "verified now"), (colour("verified", PALE_AFTER), "verified 30 days ago or more"),
        (PENDING, "pending"), (FAILED, "failed"))) +
    f'<span><i class="mark" style="border-color:{FAILED}"></i>damage (hover for the findings)</span></p>')

STYLE = """
body{font:14px/1.45 system-ui,-apple-system,"Segoe UI",sans-serif;margin:24px auto;max-width:1200px;padding:0 16px;color:#1d232a}
h1{font-size:22px;margin:0 0 12px}h2{font-size:17px;margin:28px 0 8px;word-break:break-all}
h3{font-size:15px;margin:14px 0 6px;word-break:break-all}
table{border-collapse:collapse;margin:6px 0 12px}td,th{border:1px solid #d8dde3;padding:3px 8px;text-align:left;vertical-align:top}
th{background:#f2f4f7}table.facts th{width:110px}table.findings td{word-break:break-word}
table.findings td:nth-child(-n+3){white-space:nowrap;word-break:normal}
.v-intact{color:#1b7f3a;font-weight:700}.v-corrupt{color:#c62828;font-weight:700}.v-incomplete{color:#b36b00;font-weight:700}
.sev-error{color:#c62828;font-weight:600}.sev-warning{color:#b36b00}.sev-info{color:#6b7280}
.strip{width:100%;height:auto;display:block;margin:8px 0}.strip .label{font-size:12px;fill:#444}.strip .axis{font-size:10px;fill:#555}
.legend span{margin-right:14px;white-space:nowrap;font-size:12px}.legend i{display:inline-block;width:14px;height:10px;margin-right:4px;vertical-align:middle}
.legend i.mark{border:2px solid;background:#c6282855;width:10px;height:6px}
.loses{background:#fff4f4;border-left:3px solid #c62828;padding:6px 12px;margin:8px 0}
.consequence{color:#7a1d1d}.pass{color:#1b7f3a;font-weight:600}.fail{color:#c62828;font-weight:600}
"""


def _facts(rows: Iterable[tuple[str, str]]) -> str:
    cells = []
    for label, value in rows:
        cls = f' class="v-{esc(value.lower())}"' if label == "verdict" else ""
        cells.append(f"<tr><th>{esc(label)}</th><td{cls}>{esc(value)}</td></tr>")
    return '<table class="facts">' + "".join(cells) + "</table>"


def _findings_table(findings: list[dict[str, Any]]) -> str:
    if not findings:
        return "<p>No findings.</p>"
    rows = []
    for f in findings[:SHOWN]:
        extra = "".join(f'<br><span class="consequence">{esc(c)}</span>' for c in consequences(f))
        waiver = f"<br>waived: {esc(f['waiver'])}" if f.get("waiver") else ""
        rows.append(f'<tr><td class="sev-{esc(f["severity"])}">{esc(f["severity"])}</td><td><code>{esc(f["code"])}'
                    f'</code></td><td>{esc(f["category"])}</td><td>{esc(f["message"])}{extra}{waiver}</td>'
                    f"<td>{esc(place(f))}</td></tr>")
    more = f"<p>... and {len(findings) - SHOWN} more findings (see the JSON report).</p>" if len(findings) > SHOWN else ""
    return ('<table class="findings"><tr><th>severity</th><th>code</th><th>category</th><th>message</th>'
            "<th>location</th></tr>" + "".join(rows) + "</table>" + more)


def _gate(outcomes: list[dict[str, Any]], level: str) -> list[str]:
    out = []
    for o in outcomes:
        out.append(f"<{level}>Gate: {esc(gate_head(o))}</{level}>")
        if o.get("diff"):
            out.append(f"<p>Diff {esc(diff_text(o['diff']))}</p>")
        rows = "".join(
            f'<tr><td>{esc(r["rule"])}</td><td class="{"pass" if r["passed"] else "fail"}">'
            f'{"passed" if r["passed"] else "FAILED"}</td><td>{esc(r["detail"])}</td>'
            f'<td>{"<br>".join(esc(finding_line(f)) for f in r["findings"])}</td></tr>' for r in o["rules"])
        out.append("<table><tr><th>rule</th><th>result</th><th>detail</th><th>findings</th></tr>" + rows + "</table>")
    return out


def render(result: Any, now: datetime | None = None) -> str:
    """The page. ``now``: the report's time, against which verification ages are measured."""
    now = now or datetime.now(timezone.utc)
    body = report_dict(result)
    out = [(f'<!DOCTYPE html><html lang="en"><head><meta charset="utf-8">'
            f'<meta http-equiv="Content-Security-Policy" content="{CSP}">'
            '<meta name="viewport" content="width=device-width, initial-scale=1">'
            '<link rel="icon" href="data:,">'  # no favicon request
            f"<title>archcheck report {esc(body['drill'])}</title><style>{STYLE}</style></head><body>"),
           f"<h1>archcheck report: {esc(body['drill'])}</h1>", _facts(summary_rows(body, now))]
    gates, other = split_gates(body)
    out += _gate(other, "h2")
    if body["findings"]:
        out += ["<h2>The archives together</h2>", _findings_table(body["findings"])]
    for item, (_, verification) in zip(body["archives"], result.verifications):
        out += [f"<h2>Archive {esc(item['path'])}</h2>", _facts(archive_rows(item))]
        out += _gate(gates.get(item["path"], []), "h3")
        if verification is not None:
            out += [strip_svg(item, verification.manifest, verification.manifest_path, now), LEGEND]
        losses = [c for f in item.get("findings", []) for c in consequences(f) if c.startswith("a restore loses")]
        if losses:
            out.append('<div class="loses"><strong>A restore of this archive:</strong><ul>'
                       + "".join(f"<li>{esc(c)}</li>" for c in losses) + "</ul></div>")
        if "findings" in item:
            out.append(_findings_table(item["findings"]))
    out.append("</body></html>\n")
    return "\n".join(out)
