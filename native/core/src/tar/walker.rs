//! An incremental walk over the (decoded) tar stream (formats.md 2).
//!
//! Fed chunks in order, it never needs the whole archive: a header split across chunks is
//! carried over, member content is hashed (and handed to a database scanner) as it passes.
//! After damage it resynchronises at the next header whose checksum holds, so one bad spot
//! does not hide the members after it.

use std::collections::VecDeque;

use serde::{Deserialize, Serialize};

use super::header::{self, is_valid_header, is_zero, pax_records, round_up, Pax, BLOCK, EXTENSION_LIMIT};
use super::member::{header_name, Extra, Member};
use super::sparse::{self, MapCheck, OldEntry, PaxMap, Problem, TextMap, TextOutcome};
use crate::digest::{DigestKind, MemberDigest};
use crate::fields;
use crate::finding::{Fields, Finding, Found, Value};
use crate::text::{bounded, field_text, from_latin1, latin1, parse_int, parse_number, py_repr};

const BATCH: usize = 2048; // members handed out together
const RECENT: usize = 4096; // members kept for naming where a finding lies
const NO_DATA_TYPES: &[u8] = b"123456";
/// The pax keys a member's record or checks read (overrides, pax_sparse, the size).
const MEMBER_KEYS: [&str; 11] = ["size", "path", "linkpath", "uid", "gid", "uname", "gname", "GNU.sparse.name",
                                 "GNU.sparse.realsize", "GNU.sparse.size", "GNU.sparse.major"];
const EXTENSION_TYPES: &[u8] = b"xgXLK";
const REGULAR_TYPES: &[u8] = b"0\x007"; // what GNU tar restores as a sparse file from a pax map
const GNU_MAGIC: &[u8] = b"ustar  \0"; // old GNU headers: their sparse map is GNU tar's

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum State {
    Header,
    Data,
    Pad,
    Extension,
    SparseMap,
    End,
    Index, // after the end marker, an index of the members a compressor appended (pixz)
    Resync,
    NotTar,
}

/// pixz appends its own index of the members after the tar's end marker: `tar x` stops before
/// it and `pixz -l` reads it, so it is no stray data (formats.md 7).
const PIXZ_INDEX_MAGIC: [u8; 8] = 0xDBAE_14D6_2E32_4CA6u64.to_le_bytes();

/// Whoever reads a member's content besides the digest (the database scanners).
pub trait ContentScanner {
    fn feed(&mut self, data: &[u8], offset: u64);
    fn close(&mut self, complete: bool);
    fn take_found(&mut self) -> Vec<Found>;
    /// What the scanner hands to Python at the member's end (an SQLite database to walk).
    fn take_handoff(&mut self) -> Option<Handoff> {
        None
    }
    /// What the scanner learnt of the file, for tests and tools (page size, records read...).
    fn facts(&self) -> Fields {
        Fields::new()
    }
}

/// A member's content handed to Python whole (up to `limit`), with its header bytes.
#[derive(Debug)]
pub struct Handoff {
    pub kind: &'static str,
    pub size: u64,
    pub received: u64,
    pub complete: bool,
    pub head: Vec<u8>,
    pub data: Option<Vec<u8>>,
    pub limit: u64,
}

/// A handoff, with the member it came from.
#[derive(Debug)]
pub struct HandedOff {
    pub name: String,
    pub data_offset: u64,
    pub handoff: Handoff,
}

/// Picks a scanner for a member by its name and size (None: the member is not scanned).
pub trait ScannerRouter {
    fn open(&mut self, name: &str, size: u64) -> Option<Box<dyn ContentScanner + Send + Sync>>;
    /// What the router has learnt, for checkpoints (JSON), and its restoration.
    fn state(&self) -> serde_json::Value;
    fn restore(&mut self, state: &serde_json::Value);
}

#[derive(Default)]
struct Pending {
    name: Option<String>,
    linkname: Option<String>,
    pax: Option<Pax>,
    first_type: u8, // of the first extension header, to name an orphan
    end: u64,       // where the last extension header's body ends
    sparse: Option<PaxMap>, // a 0.0/0.1 map in the extended headers
}

impl Pending {
    fn is_empty(&self) -> bool {
        self.name.is_none() && self.linkname.is_none() && self.pax.is_none()
    }

    fn kind(&self) -> &'static str {
        match self.first_type {
            b'L' => "GNU long-name",
            b'K' => "GNU long-link",
            _ => "pax",
        }
    }
}

/// An old GNU map being read: header first, then extension blocks.
struct OldMap {
    check: MapCheck,
    from: u64,    // the member's header
    failed: bool, // reported: its blocks are only followed now
}

struct Current {
    header_offset: u64,
    data_offset: u64,
    header: Vec<u8>,
    size: u64,
    extra: Option<Extra>,
}

impl Current {
    fn member(&self) -> Member {
        Member::from_header(&self.header, self.header_offset, self.data_offset, self.size, self.extra.as_ref())
    }
}

/// The layout of `Checkpoint`: a change to it, or to what the walker or a scanner keeps in it,
/// takes a new number, and a checkpoint of another is not restored (the walk starts over).
pub const CHECKPOINT_VERSION: u32 = 1;

/// What a later walk needs to take over at a point between members.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct Checkpoint {
    #[serde(default)] // 0: written before checkpoints had versions
    pub version: u32,
    pub at: u64,
    state: String,
    count: u64,
    scanners: Option<serde_json::Value>,
    global_pax: Vec<(String, String)>, // values as latin-1: any bytes survive
    end_offset: Option<u64>,
    trailing: u64,
    trailing_at: Option<u64>,
    #[serde(default)] // absent: written before headers after the end marker were looked for
    end_carry: String, // latin-1: a header cut by the checkpoint's piece
}

pub struct TarWalker {
    digest: Option<DigestKind>,
    router: Option<Box<dyn ScannerRouter + Send + Sync>>,
    scanner: Option<Box<dyn ContentScanner + Send + Sync>>,
    state: State,
    pos: u64,
    carry: Vec<u8>,
    need: usize,
    remaining: u64,
    pad: u64,
    hasher: Option<MemberDigest>,
    current: Option<Current>,
    current_whole: bool,
    pending: Pending,
    pending_at: u64,
    global_pax: Pax,
    extension: Option<(u8, u64, u64)>, // (type, size, header offset)
    old_map: Option<OldMap>,
    text_map: Option<TextMap>,
    zero_blocks: u32,
    saw_header: bool, // a block that is not (part of) the end marker: the archive is not empty
    end_offset: Option<u64>,
    trailing: u64,
    trailing_at: Option<u64>,
    end_carry: Vec<u8>, // the last bytes after the end marker, where a header may begin
    resync_from: u64,
    search_from: u64,
    pub count: u64,
    batch: Vec<Member>,
    recent: VecDeque<Member>,
    flushed: Vec<Member>, // handed out by the last flushes, not yet taken
    pub findings: Vec<Finding>,
    pub handoffs: Vec<HandedOff>,
}

impl TarWalker {
    pub fn new(digest: Option<DigestKind>, router: Option<Box<dyn ScannerRouter + Send + Sync>>) -> Self {
        TarWalker {
            digest,
            router,
            scanner: None,
            state: State::Header,
            pos: 0,
            carry: Vec::new(),
            need: BLOCK,
            remaining: 0,
            pad: 0,
            hasher: None,
            current: None,
            current_whole: true,
            pending: Pending::default(),
            pending_at: 0,
            global_pax: Pax::new(),
            extension: None,
            old_map: None,
            text_map: None,
            zero_blocks: 0,
            saw_header: false,
            end_offset: None,
            trailing: 0,
            trailing_at: None,
            end_carry: Vec::new(),
            resync_from: 0,
            search_from: 0,
            count: 0,
            batch: Vec::new(),
            recent: VecDeque::new(),
            flushed: Vec::new(),
            findings: Vec::new(),
            handoffs: Vec::new(),
        }
    }

    pub fn position(&self) -> u64 {
        self.pos
    }

    // --- feeding -------------------------------------------------------------------------------

    pub fn feed(&mut self, view: &[u8], offset: u64) {
        if offset != self.pos {
            // bytes went missing upstream without lost() being called
            self.lost(self.pos);
            self.pos = offset;
        }
        let n = view.len();
        let mut i = 0;
        while i < n {
            match self.state {
                State::Data => {
                    let take = (self.remaining.min((n - i) as u64)) as usize;
                    let piece = &view[i..i + take];
                    if let Some(h) = self.hasher.as_mut() {
                        h.update(piece);
                    }
                    if let Some(s) = self.scanner.as_mut() {
                        let size = self.current.as_ref().map_or(0, |c| c.size);
                        s.feed(piece, size - self.remaining);
                    }
                    if let Some(map) = self.text_map.as_mut() {
                        let outcome = map.feed(piece);
                        self.text_map_outcome(outcome);
                    }
                    self.remaining -= take as u64;
                    i += take;
                    if self.remaining == 0 {
                        self.finish_member(true);
                    }
                }
                State::Pad => {
                    let take = (self.pad.min((n - i) as u64)) as usize;
                    self.pad -= take as u64;
                    i += take;
                    if self.pad == 0 {
                        self.state = State::Header;
                    }
                }
                State::Header | State::Extension | State::SparseMap => {
                    let take = (self.need - self.carry.len()).min(n - i);
                    let block: Vec<u8> = if self.carry.is_empty() && take == self.need {
                        view[i..i + take].to_vec()
                    } else {
                        self.carry.extend_from_slice(&view[i..i + take]);
                        if self.carry.len() < self.need {
                            i += take;
                            continue;
                        }
                        std::mem::take(&mut self.carry)
                    };
                    i += take;
                    let at = offset + i as u64 - block.len() as u64;
                    match self.state {
                        State::Header => self.header(&block, at),
                        State::Extension => self.extension_body(&block),
                        _ => self.sparse_map(&block, at),
                    }
                }
                State::End => {
                    let rest = &view[i..];
                    let nonzero = rest.iter().filter(|&&b| b != 0).count() as u64;
                    if nonzero > 0 && self.trailing_at.is_none() {
                        let lead = rest.iter().take_while(|&&b| b == 0).count();
                        if rest[lead..].starts_with(&PIXZ_INDEX_MAGIC) {
                            self.state = State::Index;
                            i = n;
                            continue;
                        }
                    }
                    if nonzero > 0 || !self.end_carry.is_empty() {
                        if let Some(next) = self.look_past_end(view, offset, i) {
                            i = next;
                            continue;
                        }
                    }
                    if nonzero > 0 && self.trailing_at.is_none() {
                        let lead = rest.iter().take_while(|&&b| b == 0).count();
                        self.trailing_at = Some(offset + (i + lead) as u64);
                    }
                    self.trailing += nonzero;
                    i = n;
                }
                State::Resync => i = self.resync(view, offset, i),
                State::NotTar | State::Index => i = n,
            }
        }
        self.pos = offset + n as u64;
    }

    /// Bytes from `offset` on are missing (upstream damage): the walk goes on silently from
    /// the next valid header (the upstream layer reported the damage). The member hit.
    pub fn lost(&mut self, offset: u64) -> (Option<String>, Option<u64>) {
        let member = self.member_at(offset);
        if self.state == State::Data && self.current.is_some() {
            self.finish_member(false);
        }
        if !matches!(self.state, State::End | State::Index | State::NotTar) {
            self.start_resync(offset, offset);
        }
        self.carry.clear();
        self.end_carry.clear();
        self.pending = Pending::default();
        self.extension = None;
        (self.old_map, self.text_map) = (None, None);
        member
    }

    /// The stream ended at uncompressed offset `end`.
    pub fn finish(&mut self, end: u64, mut upstream_damage: bool) {
        let short = end < BLOCK as u64 && self.count == 0 && self.pending.is_empty() && self.zero_blocks == 0;
        if self.state == State::Header && short && !upstream_damage
            && (end == 0 || !header::could_start_a_header(&self.carry)) {
            // less than a block and no tar prefix: content of a lone .zst, not a cut-off tar
            self.state = State::NotTar;
            self.carry.clear();
            self.emit("TAR_NOT_TAR", 0, 0, vec![]);
        }
        if end != self.pos {
            self.lost(self.pos);
            upstream_damage = true;
        }
        let state = self.state;
        let in_member = matches!(state, State::Data | State::Pad | State::Extension | State::SparseMap);
        if in_member || (state == State::Header && !self.carry.is_empty()) {
            let what = match (&self.current, state) {
                (Some(c), _) => c.member().name,
                (None, State::Pad) => "padding".into(),
                (None, _) => "a header".into(),
            };
            let missing = if matches!(state, State::Data | State::Pad) {
                self.remaining + self.pad
            } else {
                (self.need - self.carry.len()) as u64
            };
            if self.current.is_some() {
                self.finish_member(false);
            }
            if !upstream_damage {
                self.emit("TAR_TRUNCATED", end, end, fields![("what", what), ("missing", missing)]);
            }
        } else if state == State::Header {
            if !self.pending.is_empty() && !upstream_damage {
                self.emit("TAR_ORPHAN_EXTENSION", self.pending_at, self.pending.end, fields![("kind", self.pending.kind())]);
            }
            if !upstream_damage {
                self.emit("TAR_MISSING_END", end, end, vec![]);
            }
        } else if state == State::Resync && !upstream_damage {
            let from = self.resync_from;
            self.emit("TAR_RESYNC", from, end, fields![("length", end - from)]);
        } else if state == State::End && self.trailing > 0 {
            let at = self.trailing_at.unwrap_or(end);
            self.emit("TAR_TRAILING_DATA", at, end, fields![("length", self.trailing)]);
        }
        if state == State::End && self.count == 0 && !self.saw_header {
            self.emit("TAR_EMPTY", 0, end, fields![("size", end)]);
        }
        self.flush();
    }

    /// Members recorded so far leave the batch (the caller takes them with take_members).
    pub fn flush(&mut self) {
        if self.batch.is_empty() {
            return;
        }
        for member in self.batch.drain(..) {
            if self.recent.len() == RECENT {
                self.recent.pop_front();
            }
            self.recent.push_back(member.clone());
            self.flushed.push(member);
        }
    }

    pub fn take_members(&mut self) -> Vec<Member> {
        std::mem::take(&mut self.flushed)
    }

    pub fn recent(&self) -> impl Iterator<Item = &Member> {
        self.recent.iter()
    }

    // --- resuming ------------------------------------------------------------------------------

    /// Where a later walk can take over: an offset between members, and what it must know
    /// there. None while no such point is at hand (resynchronising, inside an extension chain
    /// after a zero block). The caller flushes members before using it.
    pub fn checkpoint(&self) -> Option<Checkpoint> {
        let at = match self.state {
            State::Data | State::SparseMap if self.current.is_some() => self.current.as_ref()?.header_offset,
            State::Pad => self.pos + self.pad,
            State::Extension => {
                if self.pending.is_empty() {
                    self.extension?.2
                } else {
                    self.pending_at
                }
            }
            State::Header if self.pending.is_empty() || self.zero_blocks == 0 => {
                if self.pending.is_empty() {
                    self.pos - self.carry.len() as u64 - BLOCK as u64 * self.zero_blocks as u64
                } else {
                    self.pending_at
                }
            }
            State::End | State::Index | State::NotTar => self.pos,
            _ => return None,
        };
        let state = match self.state {
            State::End => "end",
            State::Index => "index",
            State::NotTar => "not_tar",
            _ => "header",
        };
        Some(Checkpoint {
            version: CHECKPOINT_VERSION,
            at,
            state: state.into(),
            count: self.count,
            scanners: self.router.as_ref().map(|r| r.state()),
            global_pax: self.global_pax.iter().map(|(k, v)| (k.clone(), latin1(v))).collect(),
            end_offset: self.end_offset,
            trailing: self.trailing,
            trailing_at: self.trailing_at,
            end_carry: latin1(&self.end_carry),
        })
    }

    /// Go on from a checkpoint; feeding starts at its offset. `recent`: members before it, to
    /// name where findings lie.
    pub fn restore(&mut self, cp: &Checkpoint, recent: Vec<Member>) -> Result<(), String> {
        if cp.version != CHECKPOINT_VERSION {
            return Err(format!("a version {} checkpoint; this core writes version {CHECKPOINT_VERSION}", cp.version));
        }
        self.pos = cp.at;
        self.count = cp.count;
        self.state = match cp.state.as_str() {
            "end" => State::End,
            "index" => State::Index,
            "not_tar" => State::NotTar,
            _ => State::Header,
        };
        self.global_pax = cp.global_pax.iter().map(|(k, v)| (k.clone(), from_latin1(v))).collect();
        self.end_offset = cp.end_offset;
        self.saw_header = cp.count > 0 || cp.end_offset.map_or(cp.at > 0, |end| end > 2 * BLOCK as u64);
        self.trailing = cp.trailing;
        self.trailing_at = cp.trailing_at;
        self.end_carry = from_latin1(&cp.end_carry);
        self.recent.extend(recent);
        if let (Some(router), Some(state)) = (self.router.as_mut(), cp.scanners.as_ref()) {
            router.restore(state);
        }
        Ok(())
    }

    // --- lookups -------------------------------------------------------------------------------

    /// The member whose header or content holds `offset`, and the offset within it (among the
    /// members still known: the current one, the batch, the recent ones).
    /// The member holding `offset` (its name bounded: every finding in it carries a copy), and
    /// where in it.
    pub fn member_at(&self, offset: u64) -> (Option<String>, Option<u64>) {
        if let Some(c) = &self.current {
            if offset >= c.header_offset {
                return (Some(bounded(&c.member().name).into_owned()), Some(offset.saturating_sub(c.data_offset)));
            }
        }
        for m in self.batch.iter().rev() {
            if m.header_offset <= offset && offset < m.padded_end() {
                return (Some(bounded(&m.name).into_owned()), Some(offset.saturating_sub(m.data_offset)));
            }
            if m.padded_end() <= offset {
                return (None, None);
            }
        }
        for m in self.recent.iter().rev() {
            if m.header_offset <= offset && offset < m.padded_end() {
                return (Some(bounded(&m.name).into_owned()), Some(offset.saturating_sub(m.data_offset)));
            }
            if m.padded_end() <= offset {
                break;
            }
        }
        (None, None)
    }

    /// The first member whose header is at or after `offset` (among those still known), and
    /// where its header is: where the walk found members again after a loss.
    pub fn first_member_after(&self, offset: u64) -> Option<(String, u64)> {
        let known = self.recent.iter().chain(self.batch.iter());
        if let Some(m) = known.filter(|m| m.header_offset >= offset).min_by_key(|m| m.header_offset) {
            return Some((m.name.clone(), m.header_offset));
        }
        self.current.as_ref().filter(|c| c.header_offset >= offset).map(|c| (c.member().name, c.header_offset))
    }

    /// Names (at most 10) and the number of members from `start` on, given the member count
    /// when `start` was reached.
    pub fn members_since(&self, start: u64, first_count: u64) -> (Vec<String>, u64) {
        let hit = self.member_at(start).0;
        let mut names: Vec<String> = hit.iter().cloned().collect();
        let mut later: Vec<String> =
            self.recent.iter().filter(|m| m.header_offset >= start).take(11).map(|m| m.name.clone()).collect();
        let room = 11 - later.len();
        later.extend(self.batch.iter().filter(|m| m.header_offset >= start).take(room).map(|m| m.name.clone()));
        let room = 10 - names.len();
        names.extend(later.into_iter().filter(|n| Some(n) != hit.as_ref()).take(room));
        let total = self.count as i128 - first_count as i128
            + hit.is_some() as i128
            + self.current.is_some() as i128;
        if let Some(c) = &self.current {
            if c.header_offset >= start && names.len() < 10 {
                names.push(c.member().name);
            }
        }
        (names, total.max(0) as u64)
    }

    // --- internals -----------------------------------------------------------------------------

    fn record(&mut self, member: Member) {
        self.batch.push(member);
        self.count += 1;
        if self.batch.len() >= BATCH {
            self.flush();
        }
    }

    fn emit(&mut self, code: &'static str, start: u64, end: u64, details: Vec<(&'static str, Value)>) {
        let (member, member_offset) = self.member_at(start);
        self.findings.push(Finding { code, start, end, member, member_offset, place: vec![], details });
    }

    fn header(&mut self, block: &[u8], at: u64) {
        if is_zero(block) {
            self.zero_blocks += 1;
            if self.zero_blocks == 2 {
                self.reach_end(at);
            }
            return;
        }
        if self.zero_blocks == 1 {
            let nonzero = block.iter().filter(|&&b| b != 0).count();
            if nonzero == 1 {
                // no header has a single non-zero byte: the end marker, with a stray byte in it
                self.emit("TAR_END_MARKER_DAMAGED", at, at + BLOCK as u64, fields![("nonzero", nonzero as u64)]);
                self.reach_end(at);
                return;
            }
            self.emit("TAR_LONE_ZERO_BLOCK", at - BLOCK as u64, at, vec![]);
        }
        self.zero_blocks = 0;
        self.saw_header = true;
        let stored = header::stored_checksum(block);
        let (unsigned, signed) = header::header_checksums(block);
        if !matches!(stored, Some(s) if s == unsigned || s == signed) {
            if at == 0 && self.count == 0 && !header::is_damaged_header(block) {
                self.state = State::NotTar;
                self.emit("TAR_NOT_TAR", 0, 0, vec![]);
                return;
            }
            let expected = match stored {
                Some(s) => py_octal(s),
                None => format!("unreadable ({})", hex(&block[148..156])),
            };
            let actual = py_octal(unsigned);
            self.emit("TAR_HEADER_CHECKSUM", at, at + BLOCK as u64, fields![("expected", expected), ("actual", actual)]);
            self.start_resync(at, at + 1);
            return;
        }
        self.member_header(block, at);
    }

    /// The second block of the end marker is at `at`.
    fn reach_end(&mut self, at: u64) {
        self.zero_blocks = 2;
        self.state = State::End;
        self.end_offset = Some(at + BLOCK as u64);
        if !self.pending.is_empty() {
            self.emit("TAR_ORPHAN_EXTENSION", self.pending_at, self.pending.end, fields![("kind", self.pending.kind())]);
        }
    }

    fn start_resync(&mut self, report_from: u64, search_from: u64) {
        self.state = State::Resync;
        self.resync_from = report_from;
        self.search_from = search_from;
        self.pending = Pending::default();
        self.extension = None;
    }

    /// A size: negative, or 2^63 or more (no file is that large; GNU tar refuses it), is a bad
    /// number at that header, and the walk resynchronises.
    fn number(&mut self, block: &[u8], field: &'static str, range: std::ops::Range<usize>, at: u64) -> Option<i128> {
        let value = parse_number(&block[range.clone()]);
        if value.is_none_or(|v| !(0..1i128 << 63).contains(&v)) {
            self.emit("TAR_BAD_NUMBER", at, at + BLOCK as u64, fields![("field", field), ("value", hex(&block[range]))]);
            self.start_resync(at, at + 1);
        }
        value
    }

    fn member_header(&mut self, block: &[u8], at: u64) {
        let flag = block[156];
        let Some(mut size) = self.number(block, "size", 124..136, at) else { return };
        if !(0..1i128 << 63).contains(&size) {
            return;
        }
        let mut pax = self.global_pax.clone();
        if let Some(local) = &self.pending.pax {
            pax.extend(local.iter().map(|(k, v)| (k.clone(), v.clone())));
        }
        // a pax size is the next member's: an extended header's own size is its header's (tar, tarfile)
        if let Some(value) = pax.get("size").filter(|_| !EXTENSION_TYPES.contains(&flag)) {
            let value = trim_ascii_whitespace(value);
            if value.is_empty() || !value.iter().all(u8::is_ascii_digit) {
                let shown = latin1(&value[..value.len().min(40)]);
                self.emit("TAR_PAX_MALFORMED", at, at + BLOCK as u64,
                          fields![("detail", format!("size {} is not a size", py_repr(&shown)))]);
                self.start_resync(at, at + 1);
                return;
            }
            match parse_int(value, 10) {
                Some(v) if (0..1i128 << 63).contains(&v) => size = v,
                Some(_) => {
                    // as large as the header's size field may not be (GNU tar: "out of range")
                    self.emit("TAR_BAD_NUMBER", at, at + BLOCK as u64,
                              fields![("field", "size (pax)"), ("value", latin1(value))]);
                    self.start_resync(at, at + 1);
                    return;
                }
                None => {
                    // more digits than any archive holds
                    self.emit("TAR_PAX_MALFORMED", at, at + BLOCK as u64,
                              fields![("detail", format!("{}-digit size", value.len()))]);
                    self.start_resync(at, at + 1);
                    return;
                }
            }
        }
        let size = size as u64;
        if EXTENSION_TYPES.contains(&flag) {
            if size > EXTENSION_LIMIT {
                self.emit("TAR_PAX_MALFORMED", at, at + BLOCK as u64,
                          fields![("detail", format!("{size}-byte extended header"))]);
                self.start_resync(at, at + 1);
                return;
            }
            if self.pending.is_empty() {
                self.pending_at = at;
                self.pending.first_type = flag;
            }
            self.extension = Some((flag, size, at));
            self.pending.end = at + BLOCK as u64 + round_up(size);
            if size == 0 {
                // empty, but an extension all the same: a member must follow it
                self.extension_body(&[]);
            } else {
                self.state = State::Extension;
                self.need = round_up(size) as usize;
            }
            return;
        }
        let extra = self.overrides(&pax, at);
        let header_offset = if self.pending.is_empty() { at } else { self.pending_at };
        let pax_map = self.pending.sparse.take();
        self.pending = Pending::default();
        let data_len = if NO_DATA_TYPES.contains(&flag) { 0 } else { size };
        let current = Current { header_offset, data_offset: at + BLOCK as u64, header: block.to_vec(), size: data_len, extra };
        self.hasher = self.digest.map(DigestKind::start);
        if data_len > 0 {
            if let Some(router) = self.router.as_mut() {
                self.scanner = router.open(&current.member().name, data_len);
            }
        }
        self.current = Some(current);
        self.current_whole = true;
        self.remaining = data_len;
        self.pad = round_up(data_len) - data_len;
        if REGULAR_TYPES.contains(&flag) {
            self.pax_sparse(&pax, pax_map, data_len);
        }
        let extended = if flag == b'S' && &block[257..265] == GNU_MAGIC {
            self.old_map_header(block, at, data_len)
        } else {
            flag == b'S' && block[482] != 0
        };
        if extended {
            self.state = State::SparseMap;
            self.need = BLOCK;
        } else if data_len > 0 {
            self.state = State::Data;
        } else {
            self.finish_member(true);
        }
    }

    /// What extension headers say about the member, beyond its own header.
    fn overrides(&mut self, pax: &Pax, at: u64) -> Option<Extra> {
        let mut extra = Extra::default();
        if let Some(v) = pax.get("GNU.sparse.name").or_else(|| pax.get("path")) {
            extra.name = Some(crate::text::decode_lossless(v));
        } else if let Some(name) = &self.pending.name {
            extra.name = Some(name.clone());
        }
        // pax records override GNU's long names, for the link as for the path
        if let Some(v) = pax.get("linkpath") {
            extra.linkname = Some(crate::text::decode_lossless(v));
        } else if let Some(link) = &self.pending.linkname {
            extra.linkname = Some(link.clone());
        }
        if let Some(v) = pax.get("GNU.sparse.realsize").or_else(|| pax.get("GNU.sparse.size")) {
            match parse_int(v, 10) {
                Some(n) => extra.sparse_size = Some(n),
                None => {
                    let from = self.pending_at;
                    self.emit("TAR_PAX_MALFORMED", from, at, fields![("detail", "sparse size is not a number")]);
                }
            }
        }
        for (key, slot) in [("uid", &mut extra.uid), ("gid", &mut extra.gid)] {
            // a malformed id is a restore detail, not damage: the header's own stands
            *slot = pax.get(key).and_then(|v| parse_int(trim_ascii_whitespace(v), 10));
        }
        extra.uname = pax.get("uname").map(|v| crate::text::decode_lossless(v));
        extra.gname = pax.get("gname").map(|v| crate::text::decode_lossless(v));
        (!extra.is_empty()).then_some(extra)
    }

    fn extension_body(&mut self, data: &[u8]) {
        let Some((flag, size, at)) = self.extension.take() else { return };
        self.state = State::Header;
        self.need = BLOCK;
        let body = &data[..(size as usize).min(data.len())];
        if flag == b'L' || flag == b'K' {
            let text = field_text(body);
            if flag == b'L' {
                self.pending.name = Some(text);
            } else {
                self.pending.linkname = Some(text);
            }
            return;
        }
        let end = at + BLOCK as u64 + round_up(size);
        let (records, problem) = self.read_pax(body, flag, (at, end));
        if let Some(problem) = problem {
            self.emit("TAR_PAX_MALFORMED", at, end, fields![("detail", problem)]);
        }
        // checked where they are written: a global header's times would otherwise be
        // reported again at every member after it
        for key in ["atime", "ctime", "mtime"] {
            if let Some(value) = records.get(key).filter(|v| !is_pax_time(v)) {
                let shown = py_repr(&latin1(&value[..value.len().min(40)]));
                self.emit("TAR_PAX_MALFORMED", at, end, fields![("detail", format!("{key} is not a number: {shown}"))]);
            }
        }
        // only what a member reads is kept: global headers last to the archive's end, and
        // records of other keys would pile up with them (a hostile archive's without bound)
        let kept = records.into_iter().filter(|(key, _)| MEMBER_KEYS.contains(&key.as_str()));
        if flag == b'g' {
            self.global_pax.extend(kept);
        } else {
            self.pending.pax.get_or_insert_with(Pax::new).extend(kept);
        }
    }

    /// The records of an extended header; a 0.0/0.1 sparse map among them is read on the way.
    fn read_pax(&mut self, body: &[u8], flag: u8, range: (u64, u64)) -> (Pax, Option<String>) {
        let mut records = Pax::new();
        let mut map = self.pending.sparse.take();
        let problem = pax_records(body, |key, value| {
            if flag != b'g' && PaxMap::is_map_key(key) {
                map.get_or_insert_with(|| PaxMap::new(range)).record(key, value);
            }
            records.insert(String::from_utf8_lossy(key).into_owned(), value.to_vec());
        });
        self.pending.sparse = map;
        (records, problem)
    }

    /// A pax sparse map: 0.0/0.1 in the extended headers, checked now the data stored is known;
    /// 1.0 (GNU.sparse.major) at the start of the data, checked as the data passes.
    fn pax_sparse(&mut self, pax: &Pax, map: Option<PaxMap>, stored: u64) {
        let real_size = ["GNU.sparse.realsize", "GNU.sparse.size"].iter().find_map(|k| pax.get(*k))
            .map_or(Some(stored), |v| parse_int(v, 10).and_then(|n| u64::try_from(n).ok()));
        let Some(real_size) = real_size else { return }; // reported as TAR_PAX_MALFORMED already
        let major = pax.get("GNU.sparse.major").and_then(|v| parse_int(v, 10)).unwrap_or(0);
        if major > 0 {
            let map = TextMap::new(real_size, stored);
            if stored == 0 {
                self.text_map_outcome(map.cut());
            } else {
                self.text_map = Some(map);
            }
        } else if let Some(map) = map {
            match map.finish(real_size, stored) {
                Ok(()) => {}
                Err(Problem::Malformed(detail)) => self.emit("TAR_PAX_MALFORMED", map.range.0, map.range.1, fields![("detail", detail)]),
                Err(Problem::Map(detail)) => self.emit("TAR_BAD_SPARSE_MAP", map.range.0, map.range.1, fields![("detail", detail)]),
            }
        }
    }

    /// A 1.0 map's state after some bytes: a problem is reported on the map's bytes so far.
    fn text_map_outcome(&mut self, outcome: TextOutcome) {
        match outcome {
            TextOutcome::More => return,
            TextOutcome::Done => {}
            TextOutcome::Bad(detail, read) => {
                let from = self.current.as_ref().map_or(self.pos, |c| c.data_offset);
                self.emit("TAR_BAD_SPARSE_MAP", from, from + read.max(1), fields![("detail", detail)]);
            }
        }
        self.text_map = None;
    }

    /// An old GNU sparse header's map (realsize and the first four entries); whether extension
    /// blocks follow.
    fn old_map_header(&mut self, block: &[u8], at: u64, stored: u64) -> bool {
        let Some(real_size) = sparse::old_number(&block[483..495]) else {
            self.emit("TAR_BAD_NUMBER", at, at + BLOCK as u64, fields![("field", "realsize"), ("value", hex(&block[483..495]))]);
            return block[482] != 0;
        };
        self.old_map = Some(OldMap { check: MapCheck::new(real_size, stored), from: at, failed: false });
        self.old_map_entries(&block[386..482], block[482] != 0, at)
    }

    /// The entries of one block of an old GNU map; whether an extension block follows. GNU tar
    /// reads one only when every entry before is there and the block's isextended is set; once
    /// the map is reported, the flags alone are followed.
    fn old_map_entries(&mut self, entries: &[u8], extended: bool, at: u64) -> bool {
        let Some(mut map) = self.old_map.take() else { return extended };
        if map.failed {
            self.old_map = Some(map);
            return extended;
        }
        for entry in entries.chunks_exact(24) {
            let index = map.check.entries();
            let (code, details) = match sparse::old_entry(entry) {
                OldEntry::Entry(offset, numbytes) => match map.check.entry(offset, numbytes) {
                    Ok(()) => continue,
                    Err(detail) => ("TAR_BAD_SPARSE_MAP", fields![("detail", detail)]),
                },
                OldEntry::End => {
                    self.old_map_end(&map, at);
                    return false;
                }
                OldEntry::Bad(field, range) => {
                    ("TAR_BAD_NUMBER", fields![("field", format!("sparse {field} {index}")), ("value", hex(&entry[range]))])
                }
            };
            self.emit(code, at, at + BLOCK as u64, details);
            map.failed = true;
            self.old_map = Some(map);
            return extended;
        }
        if !extended {
            self.old_map_end(&map, at);
            return false;
        }
        self.old_map = Some(map);
        true
    }

    /// The old GNU map ended in the block at `at`: its entries must add up to the data stored.
    fn old_map_end(&mut self, map: &OldMap, at: u64) {
        let stored = self.current.as_ref().map_or(0, |c| c.size);
        if let Err(detail) = map.check.finish(u64::MAX, stored) {
            self.emit("TAR_BAD_SPARSE_MAP", map.from, at + BLOCK as u64, fields![("detail", detail)]);
        }
    }

    fn sparse_map(&mut self, block: &[u8], at: u64) {
        if !self.old_map_entries(&block[..504], block[504] != 0, at) {
            self.need = BLOCK;
            if self.remaining > 0 {
                self.state = State::Data;
            } else {
                self.state = State::Header;
                self.finish_member(true);
            }
        }
    }

    fn finish_member(&mut self, complete: bool) {
        self.old_map = None;
        if let Some(map) = self.text_map.take() {
            if complete {
                self.text_map_outcome(map.cut());
            }
        }
        let Some(current) = self.current.take() else {
            self.state = State::Header;
            return;
        };
        let whole = complete && self.current_whole;
        if let Some(mut scanner) = self.scanner.take() {
            scanner.close(complete);
            self.place_found(&current, scanner.take_found());
            if let Some(handoff) = scanner.take_handoff() {
                let (name, data_offset) = (current.member().name, current.data_offset);
                self.handoffs.push(HandedOff { name, data_offset, handoff });
            }
        }
        let mut member = current.member();
        let hasher = self.hasher.take();
        member.digest = if whole { hasher.map(|h| h.hex()) } else { None };
        self.record(member);
        self.state = if self.pad > 0 { State::Pad } else { State::Header };
        if !complete {
            self.remaining = 0;
            self.pad = 0;
        }
    }

    /// A scanner's findings, placed at their member's offsets.
    fn place_found(&mut self, current: &Current, found: Vec<Found>) {
        if found.is_empty() {
            return;
        }
        let name = current.member().name;
        for f in found {
            let start = current.data_offset + f.offset;
            self.findings.push(Finding {
                code: f.code,
                start,
                end: start + f.length,
                member: Some(name.clone()),
                member_offset: Some(f.offset),
                place: f.place,
                details: f.details,
            });
        }
    }

    /// Bytes after the end marker, `view[i..]` at archive offset `offset + i`: a valid tar
    /// header among them (`cat a.tar b.tar`, or zeros written over an archive) means members
    /// that tar, stopping at the marker, does not restore. That is reported, and the walk goes
    /// on from the header (as `tar -i` does). Returns where in `view` to go on; None if no
    /// header was found (the bytes are trailing data, and where a header may begin is kept).
    fn look_past_end(&mut self, view: &[u8], offset: u64, i: usize) -> Option<usize> {
        let base = (offset + i as u64).saturating_sub(self.end_carry.len() as u64);
        let mut data = std::mem::take(&mut self.end_carry);
        data.extend_from_slice(&view[i..]);
        let h = match next_header(&data, 0) {
            Ok(h) => h,
            Err(keep) => {
                self.end_carry = data.split_off(keep);
                return None;
            }
        };
        let found = base + h as u64;
        let marker = self.end_offset.map_or(found, |after| after.saturating_sub(2 * BLOCK as u64));
        let name = header_name(&data[h..h + BLOCK]);
        self.emit("TAR_MEMBERS_AFTER_END", marker, found,
                  fields![("marker", marker), ("name", name), ("offset", found)]);
        (self.end_offset, self.trailing, self.trailing_at) = (None, 0, None);
        self.go_on_at(&data[h..h + BLOCK], found);
        Some(((found + BLOCK as u64).saturating_sub(offset) as usize).max(i))
    }

    /// Search for the next header with a valid checksum, at any byte offset.
    fn resync(&mut self, view: &[u8], offset: u64, i: usize) -> usize {
        let base = offset + i as u64 - self.carry.len() as u64;
        let mut data = std::mem::take(&mut self.carry);
        data.extend_from_slice(&view[i..]);
        let h = match next_header(&data, self.search_from.saturating_sub(base) as usize) {
            Ok(h) => h,
            Err(keep) => {
                self.carry = data.split_off(keep);
                return view.len();
            }
        };
        let found = base + h as u64;
        if found > self.resync_from {
            let from = self.resync_from;
            self.emit("TAR_RESYNC", from, found, fields![("length", found - from)]);
        }
        self.go_on_at(&data[h..h + BLOCK], found);
        (found + BLOCK as u64 - offset) as usize
    }

    /// Walk on from a header found by searching, at archive offset `at`.
    fn go_on_at(&mut self, block: &[u8], at: u64) {
        self.state = State::Header;
        self.need = BLOCK;
        self.zero_blocks = 0;
        self.header(block, at);
    }
}

/// The first header with a valid checksum in `data` at or after `start`, found by its magic.
/// `Err(keep)` when there is none yet: `data[keep..]` may hold the start of one, cut off by the
/// end of `data`, and is kept to search on with the next bytes.
fn next_header(data: &[u8], mut start: usize) -> Result<usize, usize> {
    while let Some(k) = find(data, b"ustar", start + 257) {
        let h = k - 257;
        if h + BLOCK > data.len() {
            return Err(h);
        }
        if is_valid_header(&data[h..h + BLOCK]) {
            return Ok(h);
        }
        start = h + 1;
    }
    Err(start.max(data.len().saturating_sub(BLOCK - 1)).min(data.len()))
}

fn find(haystack: &[u8], needle: &[u8], from: usize) -> Option<usize> {
    let rest = haystack.get(from..)?;
    memchr::memmem::find(rest, needle).map(|p| p + from)
}

/// A pax time: seconds, with a sign and a fraction if any (POSIX pax "mtime"); empty unsets it.
fn is_pax_time(value: &[u8]) -> bool {
    if value.is_empty() {
        return true;
    }
    let digits = value.strip_prefix(b"-").unwrap_or(value);
    let (whole, fraction) = match digits.iter().position(|&b| b == b'.') {
        Some(dot) => (&digits[..dot], &digits[dot + 1..]),
        None => (digits, &b""[..]),
    };
    !whole.is_empty() && whole.iter().all(u8::is_ascii_digit) && fraction.iter().all(u8::is_ascii_digit)
}

/// Octal as Python's `f"{n:o}"` writes it: a sign, not two's complement.
fn py_octal(n: i128) -> String {
    if n < 0 {
        format!("-{:o}", n.unsigned_abs())
    } else {
        format!("{n:o}")
    }
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

fn trim_ascii_whitespace(mut s: &[u8]) -> &[u8] {
    while let [first, rest @ ..] = s {
        if !matches!(first, b' ' | b'\t' | b'\n' | b'\r' | 0x0b | 0x0c) {
            break;
        }
        s = rest;
    }
    while let [rest @ .., last] = s {
        if !matches!(last, b' ' | b'\t' | b'\n' | b'\r' | 0x0b | 0x0c) {
            break;
        }
        s = rest;
    }
    s
}

#[cfg(test)]
mod tests {
    use super::*;

    fn octal(n: u64, width: usize) -> Vec<u8> {
        format!("{n:0w$o}\0", w = width - 1).into_bytes()
    }

    /// A header block of `name`, type `flag`, `size` bytes, with `magic`; `edit` fills the rest.
    fn header(name: &str, flag: u8, size: u64, magic: &[u8], edit: impl FnOnce(&mut [u8])) -> Vec<u8> {
        let mut h = vec![0u8; BLOCK];
        h[..name.len()].copy_from_slice(name.as_bytes());
        h[100..108].copy_from_slice(&octal(0o644, 8));
        h[124..136].copy_from_slice(&octal(size, 12));
        h[136..148].copy_from_slice(&octal(0, 12));
        h[156] = flag;
        h[257..257 + magic.len()].copy_from_slice(magic);
        edit(&mut h);
        h[148..156].fill(b' ');
        let sum: u64 = h.iter().map(|&b| b as u64).sum();
        h[148..156].copy_from_slice(format!("{sum:06o}\0 ").as_bytes());
        h
    }

    fn entry(offset: &[u8], numbytes: &[u8]) -> Vec<u8> {
        [offset, numbytes].concat()
    }

    /// An old GNU sparse member "sp" of `real` bytes storing `data` bytes: its map's entries
    /// (24 bytes each) four in the header, 21 in each extension block; the end marker after it.
    fn gnu_sparse(entries: &[Vec<u8>], real: u64, data: u64) -> Vec<u8> {
        let head = &entries[..entries.len().min(4)];
        let rest: Vec<&[Vec<u8>]> = entries[head.len()..].chunks(21).collect();
        let mut out = header("sp", b'S', data, GNU_MAGIC, |h| {
            h[386..386 + 24 * head.len()].copy_from_slice(&head.concat());
            h[482] = !rest.is_empty() as u8;
            h[483..495].copy_from_slice(&octal(real, 12));
        });
        for (i, block) in rest.iter().enumerate() {
            let mut b = vec![0u8; BLOCK];
            b[..24 * block.len()].copy_from_slice(&block.concat());
            b[504] = (i + 1 < rest.len()) as u8;
            out.extend(b);
        }
        out.extend(vec![b'x'; round_up(data) as usize]);
        out.extend([0u8; 2 * BLOCK]);
        out
    }

    fn good_entry(offset: u64, numbytes: u64) -> Vec<u8> {
        entry(&octal(offset, 12), &octal(numbytes, 12))
    }

    /// An extended header of type `flag` holding `records`, its body padded to a block.
    fn pax_header<K: std::fmt::Display, V: std::fmt::Display>(name: &str, flag: u8, records: &[(K, V)]) -> Vec<u8> {
        let mut body = Vec::new();
        for (k, v) in records {
            let text = format!(" {k}={v}\n");
            let mut len = text.len() + 1;
            len += format!("{len}").len() - 1;
            body.extend(format!("{len}{text}").into_bytes());
        }
        let mut out = header(name, flag, body.len() as u64, b"ustar\x0000", |_| {});
        body.resize(round_up(body.len() as u64) as usize, 0);
        out.extend(body);
        out
    }

    fn pax_sparse(records: &[(&str, &str)], data: &[u8]) -> Vec<u8> {
        let mut out = pax_header("PaxHeaders/sp", b'x', records);
        out.extend(header("GNUSparseFile.1/sp", b'0', data.len() as u64, b"ustar\x0000", |_| {}));
        out.extend(data);
        out.resize(round_up(out.len() as u64) as usize + 2 * BLOCK, 0);
        out
    }

    #[test]
    fn a_pax_linkpath_wins_over_a_gnu_long_link_as_in_gnu_tar() {
        let mut archive = pax_header("PaxHeaders/h", b'x', &[("linkpath", "../../../etc/passwd")]);
        let mut long_link = header("././@LongLink", b'K', 2, b"ustar  \0", |_| {});
        long_link.extend(b"f\0");
        long_link.resize(2 * BLOCK, 0);
        archive.extend(long_link);
        archive.extend(header("h", b'1', 0, b"ustar\x0000", |_| {}));
        archive.resize(archive.len() + 2 * BLOCK, 0);
        let walker = walked(&archive);
        let member = walker.recent.back().expect("the hard link");
        assert_eq!(member.linkname, "../../../etc/passwd");
        assert!(member.restore_hazard().is_some_and(|(what, _, _)| what == "hard link target"));
    }

    #[test]
    fn a_huge_name_is_bounded_where_it_is_reported() {
        let name = format!("../{}", "\u{1b}".repeat(100_000));
        let mut archive = pax_header("PaxHeaders/a", b'x', &[("path", name.as_str())]);
        archive.extend(header("a", b'0', 1, b"ustar\x0000", |_| {}));
        archive.extend(b"x");
        archive.resize(round_up(archive.len() as u64) as usize + 2 * BLOCK, 0);
        let walker = walked(&archive);
        let member = walker.recent.back().expect("the member");
        assert_eq!(member.name, name); // the walk itself keeps it whole
        let mut line = String::new();
        member.write_json(&mut line);
        assert!(line.len() < 6 * 4096 + 200 && line.contains("... (100003 characters in all, blake3 "), "{}", line.len());
        let mut other = member.clone();
        other.name.push('x');
        let mut second = String::new();
        other.write_json(&mut second);
        assert_ne!(line, second, "names alike in their first 4096 characters stay distinct");
        let (shown, _) = walker.member_at(member.data_offset);
        assert_eq!(shown.map(|s| s.chars().count()), Some(4096 + "... (100003 characters in all, blake3 )".len() + 16));
    }

    #[test]
    fn a_pax_size_is_the_members_not_the_next_extended_headers() {
        let body = vec![b'm'; 600];
        for first in [b'x', b'g'] {
            let mut archive = pax_header("PaxHeaders/a", first, &[("size", "600")]);
            archive.extend(pax_header("PaxHeaders/b", b'x', &[("path", "b")]));
            archive.extend(header("b", b'0', 0, b"ustar\x0000", |_| {}));
            archive.extend(&body);
            archive.resize(round_up(archive.len() as u64) as usize + 2 * BLOCK, 0);
            let walker = walked(&archive);
            assert!(walker.findings.is_empty(), "{:?}", walker.findings);
            let member = walker.recent.back().expect("the member");
            assert_eq!((member.name.as_str(), member.size), ("b", 600));
        }
    }

    #[test]
    fn a_damaged_first_header_is_damage_not_another_format() {
        let mut archive = header("first", b'0', 3, b"ustar\x0000", |_| {});
        archive.extend(b"abc");
        archive.resize(BLOCK * 2, 0);
        archive.extend(header("second", b'0', 0, b"ustar\x0000", |_| {}));
        archive.resize(archive.len() + 2 * BLOCK, 0);
        for (at, xor) in [(257, 0x20), (0, 0x01), (100, 0xff)] {
            let mut damaged = archive.clone();
            damaged[at] ^= xor; // the magic's u, the name's f, the mode
            let walker = walked(&damaged);
            let codes: Vec<_> = walker.findings.iter().map(|f| (f.code, f.start)).collect();
            assert_eq!(codes, vec![("TAR_HEADER_CHECKSUM", 0), ("TAR_RESYNC", 0)], "byte {at}");
            assert_eq!(walker.count, 1, "byte {at}: the walk goes on at the next header");
        }
        // text that is no tar stays not tar, and so does binary data whose checksum field is
        // empty (it reads as 0, near the sum of a block of small bytes)
        let mut binary = b"\x7fELF\x02\x01\x01".to_vec();
        binary.resize(2048, 0);
        binary[300..304].fill(0x80); // the signed sum: 602 - 4 * 128, within 255 of 0
        for data in [b"-- PostgreSQL database dump\n".repeat(40), binary] {
            let walker = walked(&data);
            assert_eq!(walker.findings.iter().map(|f| f.code).collect::<Vec<_>>(), vec!["TAR_NOT_TAR"]);
        }
    }

    #[test]
    fn pax_records_no_member_reads_are_not_kept() {
        // global headers last to the archive's end, local ones to their member: keys of their
        // own (a hostile archive's thousands) must not pile up with them
        let mut archive = Vec::new();
        for g in 0..50 {
            let mut records: Vec<(String, String)> = (0..100).map(|k| (format!("X.h{g}.k{k}"), "v".repeat(40))).collect();
            records.push(("uname".into(), format!("user{g}")));
            archive.extend(pax_header("PaxHeaders/g", if g % 2 == 0 { b'g' } else { b'x' }, &records));
        }
        archive.extend(header("last", b'0', 1, b"ustar\x0000", |_| {}));
        archive.extend(b"z");
        archive.resize(round_up(archive.len() as u64) as usize + 2 * BLOCK, 0);
        let walker = walked(&archive);
        assert!(walker.findings.is_empty(), "{:?}", walker.findings);
        assert_eq!(walker.global_pax.keys().collect::<Vec<_>>(), vec!["uname"]);
        assert_eq!(walker.global_pax["uname"], b"user48");
        assert_eq!(walker.recent.back().map(|m| m.uname.as_str()), Some("user49")); // the local header's
    }

    /// A walk of the whole archive, fed at once.
    fn walked(archive: &[u8]) -> TarWalker {
        let mut walker = TarWalker::new(None, None);
        walker.feed(archive, 0);
        walker.finish(archive.len() as u64, false);
        walker
    }

    /// The findings of a walk fed `chunk` bytes at a time: (code, start, end, member, detail).
    fn walk(archive: &[u8], chunk: usize) -> Vec<(&'static str, u64, u64, Option<String>, String)> {
        let mut walker = TarWalker::new(None, None);
        for (i, piece) in archive.chunks(chunk).enumerate() {
            walker.feed(piece, (i * chunk) as u64);
        }
        walker.finish(archive.len() as u64, false);
        assert_eq!(walker.count, 1, "{:?}", walker.findings);
        let detail = |f: &Finding| f.details.iter().map(|(k, v)| format!("{k}={v:?}")).collect::<Vec<_>>().join(" ");
        walker.findings.iter().map(|f| (f.code, f.start, f.end, f.member.clone(), detail(f))).collect()
    }

    fn one(archive: &[u8]) -> (&'static str, u64, u64, Option<String>, String) {
        let found = walk(archive, archive.len());
        for chunk in [1, 7, 512] {
            assert_eq!(walk(archive, chunk), found, "fed {chunk} bytes at a time");
        }
        assert_eq!(found.len(), 1, "{found:?}");
        found.into_iter().next().unwrap()
    }

    #[test]
    fn an_intact_old_gnu_map_passes_with_and_without_extension_blocks() {
        let archive = gnu_sparse(&[good_entry(4997120, 4096), good_entry(10485760, 0)], 10485760, 4096);
        assert_eq!(walk(&archive, 512), vec![]);
        let mut entries: Vec<_> = (0..30).map(|i| good_entry(i * 1024, 512)).collect();
        entries.push(good_entry(40000, 0));
        assert_eq!(walk(&gnu_sparse(&entries, 40000, 30 * 512), 100), vec![]);
    }

    #[test]
    fn a_lying_old_gnu_map_is_reported_at_its_block_and_the_walk_goes_on() {
        let lie = gnu_sparse(&[entry(b"77777777777\0", &octal(4096, 12)), good_entry(10485760, 0)], 10485760, 4096);
        let (code, start, end, member, detail) = one(&lie);
        assert_eq!((code, start, end, member.as_deref()), ("TAR_BAD_SPARSE_MAP", 0, 512, Some("sp")));
        assert!(detail.contains("past the real size 10485760"), "{detail}");
        let zz = gnu_sparse(&[entry(b"zzzzzzzzzzz\0", &octal(4096, 12)), good_entry(10485760, 0)], 10485760, 4096);
        let (code, start, end, _, detail) = one(&zz);
        assert_eq!((code, start, end), ("TAR_BAD_NUMBER", 0, 512));
        assert!(detail.contains("sparse offset 0") && detail.contains("7a7a"), "{detail}");
    }

    #[test]
    fn old_gnu_extension_blocks_are_checked_as_they_pass() {
        let mut entries: Vec<_> = (0..10).map(|i| good_entry(i * 1024, 512)).collect();
        entries.swap(6, 7); // in the first extension block: no checksum guards it
        entries.push(good_entry(40000, 0));
        let (code, start, end, _, detail) = one(&gnu_sparse(&entries, 40000, 10 * 512));
        assert_eq!((code, start, end), ("TAR_BAD_SPARSE_MAP", 512, 1024));
        assert!(detail.contains("entry 7 starts at 6144") && detail.contains("out of order"), "{detail}");
        let mut entries: Vec<_> = (0..10).map(|i| good_entry(i * 1024, 512)).collect();
        entries.push(good_entry(40000, 0));
        let (code, start, end, _, detail) = one(&gnu_sparse(&entries, 40000, 11 * 512));
        assert_eq!((code, start, end), ("TAR_BAD_SPARSE_MAP", 0, 1024)); // the whole map
        assert!(detail.contains("hold 5120 bytes of data, the member stores 5632"), "{detail}");
    }

    #[test]
    fn gnu_tar_stops_reading_a_map_at_its_first_empty_entry() {
        // isextended set, but the header's entries end before the fourth: the next block is data
        let archive = gnu_sparse(&[good_entry(0, 512), good_entry(1024, 0)], 1024, 512);
        let mut archive = archive.clone();
        archive[482] = 1;
        let sum: u64 = archive[..512].iter().enumerate().map(|(i, &b)| if (148..156).contains(&i) { 32 } else { b as u64 }).sum();
        archive[148..156].copy_from_slice(format!("{sum:06o}\0 ").as_bytes());
        assert_eq!(walk(&archive, 512), vec![]);
    }

    #[test]
    fn pax_maps_are_checked_at_the_member() {
        let data = vec![b'x'; 1024];
        let ok = [("GNU.sparse.size", "5000"), ("GNU.sparse.numblocks", "2"), ("GNU.sparse.offset", "1000"),
                  ("GNU.sparse.numbytes", "1024"), ("GNU.sparse.offset", "5000"), ("GNU.sparse.numbytes", "0")];
        assert_eq!(walk(&pax_sparse(&ok, &data), 512), vec![]);
        let mut bad = ok;
        bad[2].1 = "10zz";
        let (code, start, end, member, detail) = one(&pax_sparse(&bad, &data));
        assert_eq!((code, start, end, member.as_deref()), ("TAR_PAX_MALFORMED", 0, 1024, Some("GNUSparseFile.1/sp")));
        assert!(detail.contains("GNU.sparse.offset is not a number: '10zz'"), "{detail}");
        let map = [("GNU.sparse.size", "5000"), ("GNU.sparse.numblocks", "2"), ("GNU.sparse.name", "sp"),
                   ("GNU.sparse.map", "1000,1024,500,0")];
        let (code, start, end, member, detail) = one(&pax_sparse(&map, &data));
        assert_eq!((code, start, end, member.as_deref()), ("TAR_BAD_SPARSE_MAP", 0, 1024, Some("sp")));
        assert!(detail.contains("entry 1 starts at 500"), "{detail}");
    }

    #[test]
    fn a_1_0_map_is_read_from_the_data_as_it_passes() {
        let records = [("GNU.sparse.major", "1"), ("GNU.sparse.minor", "0"), ("GNU.sparse.name", "sp"),
                       ("GNU.sparse.realsize", "10485760")];
        let member = |map: &[u8]| {
            let mut data = map.to_vec();
            data.resize(512, 0);
            data.extend(vec![b'x'; 8192]);
            pax_sparse(&records, &data)
        };
        assert_eq!(walk(&member(b"3\n4997120\n4096\n7999488\n4096\n10485760\n0\n"), 512), vec![]);
        let (code, start, end, member_name, detail) = one(&member(b"99999999999999999999999\n"));
        assert_eq!((code, start, member_name.as_deref()), ("TAR_BAD_SPARSE_MAP", 1536, Some("sp")));
        assert_eq!(end, 1536 + 19); // the 19th digit passes off_t
        assert!(detail.contains("number at byte 0 of the map is over"), "{detail}");
        let (_, start, end, _, detail) = one(&member(b"3\n4997120\n4096\n4997130\n4096\n10485760\n0\n"));
        assert_eq!((start, end), (1536, 1536 + 28));
        assert!(detail.contains("overlapping"), "{detail}");
        let (_, _, _, _, detail) = one(&member(b"3\n4997120\n2048\n7999488\n4096\n10485760\n0\n"));
        assert!(detail.contains("hold 6144 bytes of data, the member stores 8192"), "{detail}");
    }
}
