//! PostgreSQL WAL segments inside an archive: page headers and record CRCs (formats.md 3.9,
//! 6.3 rows 6-7).
//!
//! A segment streams past once, in pieces of any size. Only the page or record header being
//! assembled and a running CRC-32C are kept. The end of valid WAL is not corruption: after the
//! last record come zero bytes or stale pages of an older (recycled) segment. A record header
//! that does not fit is taken as the end of WAL unless the next page is a page of this segment:
//! then the break is `WAL_RECORD_INVALID` and reading resumes at that page.

use super::postgres::format_lsn;
use crate::fields;
use crate::finding::{Fields, Found};
use crate::tar::ContentScanner;

pub const SEG_SIZE: u64 = 16 * 1024 * 1024;
const XLOG_BLCKSZ: u64 = 8192;
const SHORT_HEADER: usize = 24;
const LONG_HEADER: usize = 40;
const RECORD_HEADER: usize = 24;
const MAX_RECORD: u32 = 1020 * 1024 * 1024; // XLogRecordMaxSize (PG 16+)
const XLP_FIRST_IS_CONTRECORD: u16 = 0x0001;
const XLP_LONG_HEADER: u16 = 0x0002;
const XLP_FIRST_IS_OVERWRITE_CONTRECORD: u16 = 0x0008;
const XLP_ALL_FLAGS: u16 = 0x000F;
const RM_XLOG_ID: u8 = 0;
const XLOG_SWITCH: u8 = 0x40;
/// XLOG_PAGE_MAGIC of PostgreSQL 9.6 to 18 (formats.md 3.9), oldest first
pub const KNOWN_MAGICS: [u16; 10] = [0xD093, 0xD097, 0xD098, 0xD101, 0xD106, 0xD10D, 0xD110, 0xD113, 0xD116, 0xD118];

/// XLOG_PAGE_MAGIC of a major version (9 is 9.6), None for one not known.
pub fn magic_for(major: u32) -> Option<u16> {
    major.checked_sub(9).and_then(|i| KNOWN_MAGICS.get(i as usize)).copied()
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum State {
    Align,
    Header,
    Data,
    Skip,
    Lost,
    End,
    Switched,
}

/// (timeline, segment number) of a WAL segment file name (`TTTTTTTTXXXXXXXXYYYYYYYY`, maybe
/// `.partial`), for a segment size.
pub fn segment_name_info(name: &str, seg_size: u64) -> Option<(u32, u64)> {
    let base = name.rsplit('/').next()?;
    let base = base.strip_suffix(".partial").unwrap_or(base);
    if base.len() != 24 || !base.bytes().all(|b| b.is_ascii_digit() || (b'A'..=b'F').contains(&b)) {
        return None;
    }
    let part = |i: usize| u64::from_str_radix(&base[i * 8..i * 8 + 8], 16).ok();
    let (timeline, log, seg) = (part(0)?, part(1)?, part(2)?);
    let per_log = 0x1_0000_0000 / seg_size;
    if timeline == 0 || seg >= per_log {
        return None;
    }
    Some((timeline as u32, log * per_log + seg))
}

/// One WAL segment file, checked as it streams past. After `close`: `sysid` (from the long
/// header), `first_lsn`/`first_prev` (the first record that starts here and its xl_prev, to
/// chain with the segment before), `last_lsn` (end of the last record whose CRC matched),
/// `end_lsn`/`end_reason` (where and why reading stopped before the end of the file; None when
/// records ran to its end), `open_record_lsn` (a record running on into the next segment),
/// `records` (records whose CRC was compared) and, kept on request, `record_lsns`.
pub struct WalSegmentScanner {
    name: String,
    size: u64,
    seg_size: u64,
    pub timeline: Option<u32>,
    seg_start: u64,
    expected_magic: Option<u16>,
    expected_sysid: Option<u64>,
    found: Vec<Found>,
    pub sysid: Option<u64>,
    pub first_lsn: Option<u64>,
    pub first_prev: Option<u64>,
    pub open_record_lsn: Option<u64>,
    pub records: u64,
    pub record_lsns: Option<Vec<u64>>,
    pub end_lsn: Option<u64>,
    pub end_reason: Option<String>,
    pub last_lsn: Option<u64>,
    pos: u64,
    page_header: Vec<u8>,
    state: State,
    magic: Option<u16>,
    last_tli: u32,
    after_end_reported: bool,
    rec_start: u64,
    rec_header: Vec<u8>,
    rec_tot: u32,
    rec_got: u32,
    crc: u32,
    skip_left: u64,
    prev_start: Option<u64>,
    pending: Option<(u64, String)>,
}

fn u16_at(b: &[u8], at: usize) -> u16 {
    u16::from_le_bytes([b[at], b[at + 1]])
}

fn u32_at(b: &[u8], at: usize) -> u32 {
    u32::from_le_bytes([b[at], b[at + 1], b[at + 2], b[at + 3]])
}

fn u64_at(b: &[u8], at: usize) -> u64 {
    u64::from_le_bytes(b[at..at + 8].try_into().unwrap_or_default())
}

fn zero(b: &[u8]) -> bool {
    b.iter().all(|&x| x == 0)
}

impl WalSegmentScanner {
    /// `name`: the file's base name; `seg_size`: the cluster's WAL segment size.
    pub fn new(name: &str, size: u64, seg_size: u64, keep_lsns: bool) -> Self {
        let info = segment_name_info(name, seg_size);
        WalSegmentScanner {
            name: name.to_string(),
            size,
            seg_size,
            timeline: info.map(|(t, _)| t),
            seg_start: info.map_or(0, |(_, segno)| segno * seg_size),
            expected_magic: None,
            expected_sysid: None,
            found: Vec::new(),
            sysid: None,
            first_lsn: None,
            first_prev: None,
            open_record_lsn: None,
            records: 0,
            record_lsns: keep_lsns.then(Vec::new),
            end_lsn: None,
            end_reason: None,
            last_lsn: None,
            pos: 0,
            page_header: Vec::new(),
            state: State::Align,
            magic: None,
            last_tli: 0,
            after_end_reported: false,
            rec_start: 0,
            rec_header: Vec::new(),
            rec_tot: 0,
            rec_got: 0,
            crc: 0,
            skip_left: 0,
            prev_start: None,
            pending: None,
        }
    }

    /// The server's major version is known: its page magic is required, not any known one.
    pub fn expect_major(mut self, major: Option<u32>) -> Self {
        self.expected_magic = major.and_then(magic_for);
        self
    }

    /// The cluster's system identifier is known (pg_control): the first page must carry it.
    pub fn expect_sysid(mut self, sysid: Option<u64>) -> Self {
        self.expected_sysid = sysid;
        self
    }

    fn lsn(&self, at: u64) -> u64 {
        self.seg_start + at
    }

    fn place(&self, lsn: Option<u64>) -> Fields {
        let mut place = fields![("wal_segment", self.name.as_str())];
        if let Some(lsn) = lsn {
            place.extend(fields![("lsn", format_lsn(lsn))]);
        }
        place
    }

    // --- pages ---------------------------------------------------------------------------------

    fn page(&mut self, at: u64, raw: &[u8]) {
        let (magic, info, tli, pageaddr, rem_len) = (u16_at(raw, 0), u16_at(raw, 2), u32_at(raw, 4), u64_at(raw, 8), u32_at(raw, 16));
        let known = KNOWN_MAGICS.contains(&magic);
        let expected = self.seg_start + at;
        if self.state == State::Lost {
            let (lsn, problem) = self.pending.take().unwrap_or_default();
            if known && pageaddr == expected {
                self.invalid(lsn, format!("{problem}; WAL goes on after it"));
                self.resync(info, rem_len);
            } else {
                self.end(lsn, problem);
            }
        }
        if at == 0 && zero(raw) {
            return self.end(self.seg_start, "the first page is zero: an unused segment".into());
        }
        if at == 0 && known && pageaddr < self.seg_start && pageaddr % self.seg_size == 0 {
            // a recycled segment not written yet: all of it is an older segment
            return self.end(self.seg_start, format!("recycled: the first page is from {}", format_lsn(pageaddr)));
        }
        if self.state == State::Align && at > 0 && (zero(raw) || pageaddr < expected) {
            // the last record ended on the page boundary: a zero or stale page is the end of WAL
            let reason = if zero(raw) { "zero page".to_string() } else { format!("stale page from {}", format_lsn(pageaddr)) };
            self.end(expected, reason);
        }
        if matches!(self.state, State::End | State::Switched) {
            return self.page_after_end(at, raw, magic, info, pageaddr);
        }
        let mut problems: Vec<String> = Vec::new();
        if let Some(want) = self.expected_magic {
            if magic != want {
                problems.push(format!("xlp_magic {magic:04X}, expected {want:04X}"));
            }
        } else if !known {
            problems.push(format!("unknown xlp_magic {magic:04X}"));
        } else if let Some(first) = self.magic.filter(|&m| m != magic) {
            problems.push(format!("xlp_magic {magic:04X} differs from the first page's {first:04X}"));
        }
        if self.magic.is_none() && known {
            self.magic = Some(magic);
        }
        if info & !XLP_ALL_FLAGS != 0 {
            problems.push(format!("undefined xlp_info bits {:04X}", info & !XLP_ALL_FLAGS));
        }
        if at == 0 {
            if info & XLP_LONG_HEADER == 0 {
                problems.push("first page without XLP_LONG_HEADER".into());
            }
            let (sysid, seg_size, blcksz) = (u64_at(raw, 24), u32_at(raw, 32), u32_at(raw, 36));
            self.sysid = Some(sysid);
            if let Some(want) = self.expected_sysid.filter(|&want| want != sysid) {
                problems.push(format!("xlp_sysid {sysid}, expected {want}"));
            }
            if seg_size as u64 != self.seg_size {
                problems.push(format!("xlp_seg_size {seg_size}, expected {}", self.seg_size));
            }
            if blcksz as u64 != XLOG_BLCKSZ {
                problems.push(format!("xlp_xlog_blcksz {blcksz}, expected {XLOG_BLCKSZ}"));
            }
        } else if info & XLP_LONG_HEADER != 0 {
            problems.push("XLP_LONG_HEADER on a page other than the first".into());
        }
        if pageaddr != expected {
            problems.push(format!("xlp_pageaddr {}, expected {}", format_lsn(pageaddr), format_lsn(expected)));
        }
        // the file name's timeline is not required (a switch's first pages carry the old one),
        // but it is the newest, and a page's never goes back
        if tli == 0 || self.timeline.is_some_and(|t| tli > t) {
            let named = self.timeline.map_or("None".to_string(), |t| t.to_string());
            problems.push(format!("xlp_tli {tli}, file name timeline {named}"));
        } else if tli < self.last_tli {
            problems.push(format!("xlp_tli {tli} after {}", self.last_tli));
        } else {
            self.last_tli = tli;
        }
        let contrecord = info & XLP_FIRST_IS_CONTRECORD != 0;
        if contrecord && rem_len == 0 {
            problems.push("XLP_FIRST_IS_CONTRECORD with xlp_rem_len 0".into());
        }
        if at == 0 {
            self.resync(info, rem_len); // what continues from the segment before is skipped
        } else if matches!(self.state, State::Header | State::Data | State::Skip) {
            let left = match self.state {
                State::Skip => Some(self.skip_left as i64),
                _ if self.rec_header.len() >= 4 => Some(self.rec_tot as i64 - self.rec_got as i64),
                _ => None,
            };
            if !contrecord {
                if info & XLP_FIRST_IS_OVERWRITE_CONTRECORD != 0 {
                    // the record was abandoned at a crash and WAL goes on from this page
                } else if self.state == State::Skip {
                    let left = left.map_or("None".into(), |l| l.to_string());
                    problems.push(format!("no XLP_FIRST_IS_CONTRECORD, but {left} bytes of a record remain"));
                } else {
                    let lsn = self.lsn(self.rec_start);
                    self.invalid(lsn, "the record goes on to a page without XLP_FIRST_IS_CONTRECORD".into());
                }
                self.resync(info, rem_len);
            } else if let Some(left) = left.filter(|&l| l != rem_len as i64) {
                problems.push(format!("xlp_rem_len {rem_len}, but {left} bytes of the record remain"));
            }
        } else if contrecord {
            problems.push(format!("XLP_FIRST_IS_CONTRECORD (xlp_rem_len {rem_len}) but no record goes on"));
        }
        if !problems.is_empty() {
            self.page_problem(at, raw.len() as u64, problems.join("; "), false);
        }
    }

    /// Start reading records at a page start: skip the tail of a record begun before.
    fn resync(&mut self, info: u16, rem_len: u32) {
        self.prev_start = None;
        if info & XLP_FIRST_IS_CONTRECORD != 0 && rem_len > 0 {
            self.state = State::Skip;
            self.skip_left = rem_len as u64;
        } else {
            self.state = State::Align;
        }
    }

    /// Past the end of WAL: zero pages, stale pages of an older segment and padding pages of
    /// this one are normal; anything else is reported once.
    fn page_after_end(&mut self, at: u64, raw: &[u8], magic: u16, info: u16, pageaddr: u64) {
        if self.after_end_reported || zero(raw) {
            return;
        }
        if KNOWN_MAGICS.contains(&magic) && info & !XLP_ALL_FLAGS == 0 && pageaddr % self.seg_size == at
            && pageaddr <= self.seg_start + at
        {
            return;
        }
        self.after_end_reported = true;
        let problem = format!(
            "after the end of WAL at {}: neither zero nor a page of this or an older segment (xlp_magic {magic:04X}, \
             xlp_pageaddr {})", format_lsn(self.end_lsn.unwrap_or(0)), format_lsn(pageaddr));
        self.page_problem(at, raw.len() as u64, problem, true);
    }

    // --- records -------------------------------------------------------------------------------

    /// Bytes of one page after its header.
    fn content(&mut self, mut view: &[u8]) {
        while !view.is_empty() {
            match self.state {
                State::Align => {
                    let pad = (8 - self.pos % 8) % 8;
                    if pad > 0 {
                        let take = (pad as usize).min(view.len());
                        view = &view[take..];
                        self.pos += take as u64;
                        continue;
                    }
                    self.state = State::Header;
                    self.rec_start = self.pos;
                    self.rec_header.clear();
                }
                State::Header => {
                    let take = view.len().min(RECORD_HEADER - self.rec_header.len());
                    self.rec_header.extend_from_slice(&view[..take]);
                    view = &view[take..];
                    self.pos += take as u64;
                    if self.rec_header.len() >= 4 {
                        self.rec_tot = u32_at(&self.rec_header, 0);
                        self.rec_got = self.rec_header.len() as u32;
                        if self.rec_tot == 0 {
                            self.brk("zero record header".into());
                            continue;
                        }
                    }
                    if self.rec_header.len() == RECORD_HEADER {
                        self.record_header();
                    }
                }
                State::Data => {
                    let take = view.len().min((self.rec_tot - self.rec_got) as usize);
                    self.crc = crc32c::crc32c_append(self.crc, &view[..take]);
                    self.rec_got += take as u32;
                    view = &view[take..];
                    self.pos += take as u64;
                    if self.rec_got == self.rec_tot {
                        self.record_end();
                    }
                }
                State::Skip => {
                    let take = (self.skip_left.min(view.len() as u64)) as usize;
                    self.skip_left -= take as u64;
                    view = &view[take..];
                    self.pos += take as u64;
                    if self.skip_left == 0 {
                        self.state = State::Align;
                    }
                }
                State::Lost | State::End | State::Switched => {
                    self.pos += view.len() as u64;
                    return;
                }
            }
        }
    }

    fn record_header(&mut self) {
        let (tot, prev) = (u32_at(&self.rec_header, 0), u64_at(&self.rec_header, 8));
        if (tot as usize) < RECORD_HEADER {
            return self.brk(format!("xl_tot_len {tot} is less than {RECORD_HEADER}"));
        }
        if tot > MAX_RECORD {
            return self.brk(format!("xl_tot_len {tot} is too large"));
        }
        if let Some(prev_start) = self.prev_start {
            let expected = self.lsn(prev_start);
            if prev != expected {
                return self.brk(format!("xl_prev {}, expected {}", format_lsn(prev), format_lsn(expected)));
            }
        }
        if self.first_lsn.is_none() {
            self.first_lsn = Some(self.lsn(self.rec_start));
            self.first_prev = Some(prev);
        }
        self.state = State::Data;
        self.crc = 0;
        self.rec_got = RECORD_HEADER as u32;
        if tot as usize == RECORD_HEADER {
            self.record_end();
        }
    }

    fn record_end(&mut self) {
        let h = &self.rec_header;
        let (info, rmid, stored) = (h[16], h[17], u32_at(h, 20));
        let actual = crc32c::crc32c_append(self.crc, &h[..20]);
        let lsn = self.lsn(self.rec_start);
        self.records += 1;
        if let Some(lsns) = self.record_lsns.as_mut() {
            lsns.push(lsn);
        }
        if actual != stored {
            self.found.push(Found {
                code: "WAL_RECORD_CRC",
                offset: self.rec_start,
                length: self.pos - self.rec_start,
                place: self.place(Some(lsn)),
                details: fields![("lsn", format_lsn(lsn)), ("expected", format!("{stored:08x}")),
                                 ("actual", format!("{actual:08x}"))],
            });
        } else {
            self.last_lsn = Some(self.lsn(self.pos)); // not lsn + tot: a page header may sit inside
        }
        self.prev_start = Some(self.rec_start);
        if rmid == RM_XLOG_ID && info & 0xF0 == XLOG_SWITCH {
            self.state = State::Switched; // the rest of the segment is padding
            self.end_lsn = Some(self.lsn(self.pos));
            self.end_reason = Some("XLOG_SWITCH".into());
        } else {
            self.state = State::Align;
        }
    }

    /// A record header that does not fit: the end of WAL unless the next page says otherwise.
    fn brk(&mut self, problem: String) {
        self.state = State::Lost;
        self.pending = Some((self.lsn(self.rec_start), problem));
    }

    fn end(&mut self, lsn: u64, reason: String) {
        self.state = State::End;
        self.end_lsn = Some(lsn);
        self.end_reason = Some(reason);
        self.pending = None;
    }

    fn page_problem(&mut self, at: u64, length: u64, problem: String, after_end: bool) {
        let mut details = fields![("problem", problem)];
        if after_end {
            details.extend(fields![("after_end", true)]);
        }
        let place = self.place(Some(self.lsn(at)));
        self.found.push(Found { code: "WAL_PAGE_HEADER", offset: at, length, place, details });
    }

    fn invalid(&mut self, lsn: u64, problem: String) {
        let place = self.place(Some(lsn));
        self.found.push(Found {
            code: "WAL_RECORD_INVALID",
            offset: lsn - self.seg_start,
            length: RECORD_HEADER as u64,
            place,
            details: fields![("lsn", format_lsn(lsn)), ("problem", problem)],
        });
    }
}

impl ContentScanner for WalSegmentScanner {
    fn feed(&mut self, mut view: &[u8], _offset: u64) {
        while !view.is_empty() {
            let in_page = (self.pos % XLOG_BLCKSZ) as usize;
            let header_size = if self.pos < XLOG_BLCKSZ { LONG_HEADER } else { SHORT_HEADER };
            if in_page < header_size {
                let take = view.len().min(header_size - in_page);
                self.page_header.extend_from_slice(&view[..take]);
                view = &view[take..];
                self.pos += take as u64;
                if self.page_header.len() == header_size {
                    let raw = std::mem::take(&mut self.page_header);
                    self.page(self.pos - header_size as u64, &raw);
                }
                continue;
            }
            let take = view.len().min(XLOG_BLCKSZ as usize - in_page);
            self.content(&view[..take]);
            view = &view[take..];
        }
    }

    fn close(&mut self, _complete: bool) {
        if self.size != self.seg_size {
            self.found.push(Found {
                code: "WAL_SEGMENT_SIZE",
                offset: 0,
                length: self.size,
                place: self.place(None),
                details: fields![("size", self.size), ("expected", self.seg_size)],
            });
        }
        if self.state == State::Lost {
            // nothing after the break says WAL went on: the end of WAL
            if let Some((lsn, problem)) = self.pending.take() {
                self.end(lsn, problem);
            }
        } else if matches!(self.state, State::Header | State::Data) {
            // its CRC needs the rest, which is in the next file: not checked here
            self.open_record_lsn = Some(self.lsn(self.rec_start));
        }
    }

    fn take_found(&mut self) -> Vec<Found> {
        std::mem::take(&mut self.found)
    }

    fn facts(&self) -> Fields {
        fields![("records", self.records), ("record_lsns", self.record_lsns.clone()), ("last_lsn", self.last_lsn),
                ("end_lsn", self.end_lsn), ("end_reason", self.end_reason.clone()), ("first_lsn", self.first_lsn),
                ("first_prev", self.first_prev), ("sysid", self.sysid), ("open_record_lsn", self.open_record_lsn),
                ("timeline", self.timeline)]
    }
}
