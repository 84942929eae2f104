//! PostgreSQL inside an archive: relation pages, pg_control, backup_label, PG_VERSION
//! (formats.md 3). The facts learnt about each data directory are shared with the router,
//! which hands them to Python: whether a page finding stands is decided there, at the end of
//! the archive (pg_basebackup sends pg_control last).

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex};

use serde::{Deserialize, Serialize};

use super::pages::{self, Header, BLCKSZ};
use super::whole_pages;
use crate::fields;
use crate::finding::Found;
use crate::tar::ContentScanner;

pub const RELSEG_SIZE: u64 = 131_072; // blocks per segment file
const CONTROL_LIMIT: usize = 1 << 20; // small files are kept whole up to this

/// What the archive says about one data directory.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
#[serde(default)]
pub struct DataDir {
    pub confirmed: bool, // PG_VERSION or pg_control seen
    pub checksums: Option<u32>, // data_checksum_version from pg_control
    pub sysid: Option<u64>, // system identifier from pg_control: every WAL segment carries it
    pub start_lsn: Option<u64>, // backup_label START WAL LOCATION: a hot backup
    pub version: Option<String>,
    pub files: u64,
    pub pages: u64,
}

pub type DataDirs = Arc<Mutex<BTreeMap<String, DataDir>>>;

impl DataDir {
    /// The major version PG_VERSION names ("15" is 15, "9.6" is 9).
    pub fn major(&self) -> Option<u32> {
        self.version.as_deref()?.split('.').next()?.parse().ok()
    }
}

/// The facts known so far of the data directory at `root`.
pub fn facts(dirs: &DataDirs, root: &str) -> DataDir {
    let map = dirs.lock().unwrap_or_else(|poisoned| poisoned.into_inner());
    map.get(root).cloned().unwrap_or_default()
}

pub fn format_lsn(lsn: u64) -> String {
    format!("{:X}/{:X}", lsn >> 32, lsn & 0xFFFF_FFFF)
}

fn with<T>(dirs: &DataDirs, root: &str, f: impl FnOnce(&mut DataDir) -> T) -> T {
    let mut map = dirs.lock().unwrap_or_else(|poisoned| poisoned.into_inner());
    f(map.entry(root.to_string()).or_default())
}

/// The pages of one relation segment file, checked as they stream past.
pub struct RelationScanner {
    dirs: DataDirs,
    root: String,
    relation: String,
    fork: String,
    first_block: u64,
    carry: Vec<u8>,
    seen: u64,
    found: Vec<Found>,
}

impl RelationScanner {
    pub fn new(dirs: DataDirs, root: &str, relation: &str, fork: &str, segno: u64) -> Self {
        with(&dirs, root, |_| ());
        RelationScanner {
            dirs,
            root: root.to_string(),
            relation: relation.to_string(),
            fork: fork.to_string(),
            first_block: segno.saturating_mul(RELSEG_SIZE), // past 2^32 blocks: no real relation
            carry: Vec::new(),
            seen: 0,
            found: Vec::new(),
        }
    }

    fn check(&mut self, page: &[u8]) {
        let index = self.seen;
        self.seen += 1;
        let h = Header::read(page);
        if pages::is_new_and_zero(page, &h) {
            return;
        }
        let block = self.first_block.saturating_add(index);
        if let Some(problem) = pages::header_problem(&h) {
            self.page("PG_PAGE_HEADER", index, block, &h, fields![("problem", problem)]);
            return;
        }
        let actual = pages::checksum(page, block as u32);
        if actual == h.checksum {
            return; // written whole by PostgreSQL: nothing else to judge
        }
        // the checksum does not vouch for the page (a mismatch, or checksums off: it is 0)
        if with(&self.dirs, &self.root, |d| d.checksums) != Some(0) {
            self.page("PG_PAGE_CHECKSUM", index, block, &h,
                      fields![("actual", format!("{actual:04x}")), ("expected", format!("{:04x}", h.checksum))]);
        }
        if let Some((item, problem)) = pages::item_problem(page, &h) {
            self.page("PG_LINE_POINTER", index, block, &h, fields![("item", item), ("problem", problem)]);
        }
        if let Some(problem) = pages::btree_problem(page, &h, block) {
            self.page("PG_BTREE_PAGE", index, block, &h, fields![("problem", problem)]);
        }
    }

    fn page(&mut self, code: &'static str, index: u64, block: u64, h: &Header, mut details: crate::finding::Fields) {
        let mut all = fields![("datadir", self.root.as_str()), ("page_lsn", format_lsn(h.lsn)), ("lsn", h.lsn)];
        all.append(&mut details);
        self.found.push(Found {
            code,
            offset: index * BLCKSZ as u64,
            length: BLCKSZ as u64,
            place: fields![("relation", self.relation.as_str()), ("fork", self.fork.as_str()), ("block", block)],
            details: all,
        });
    }
}

impl ContentScanner for RelationScanner {
    fn feed(&mut self, data: &[u8], _offset: u64) {
        let mut carry = std::mem::take(&mut self.carry);
        whole_pages(&mut carry, data, BLCKSZ, |page| self.check(page));
        self.carry = carry;
    }

    fn close(&mut self, complete: bool) {
        let seen = self.seen;
        with(&self.dirs, &self.root, |d| {
            d.files += 1;
            d.pages += seen;
        });
        if complete && !self.carry.is_empty() {
            let length = self.carry.len();
            self.found.push(Found {
                code: "PG_PARTIAL_PAGE",
                offset: seen * BLCKSZ as u64,
                length: length as u64,
                place: fields![("relation", self.relation.as_str()), ("fork", self.fork.as_str())],
                details: fields![("datadir", self.root.as_str()), ("length", length)],
            });
        }
    }

    fn take_found(&mut self) -> Vec<Found> {
        std::mem::take(&mut self.found)
    }
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum SmallFile {
    Control,
    Label,
    Version,
}

/// A small file kept whole (pg_control, backup_label, PG_VERSION), read when it is complete.
pub struct SmallFileScanner {
    dirs: DataDirs,
    root: String,
    kind: SmallFile,
    data: Vec<u8>,
    found: Vec<Found>,
}

impl SmallFileScanner {
    pub fn new(dirs: DataDirs, root: &str, kind: SmallFile) -> Self {
        with(&dirs, root, |_| ());
        SmallFileScanner { dirs, root: root.to_string(), kind, data: Vec::new(), found: Vec::new() }
    }

    fn version(&mut self) {
        let text = String::from_utf8_lossy(&self.data);
        let text = text.trim();
        let (major, minor) = text.split_once('.').unwrap_or((text, "0"));
        let digits = |s: &str| !s.is_empty() && s.bytes().all(|b| b.is_ascii_digit());
        if digits(major) && digits(minor) {
            let version = text.to_string();
            with(&self.dirs, &self.root, |d| {
                d.confirmed = true;
                d.version = Some(version);
            });
        }
    }

    fn label(&mut self) {
        let text = String::from_utf8_lossy(&self.data);
        let Some(at) = text.find("START WAL LOCATION: ") else { return };
        let rest = &text[at + "START WAL LOCATION: ".len()..];
        let hex = |s: &str| -> String { s.chars().take_while(char::is_ascii_hexdigit).collect() };
        let high = hex(rest);
        let Some(after) = rest[high.len()..].strip_prefix('/') else { return };
        let low = hex(after);
        if let (Ok(h), Ok(l)) = (u64::from_str_radix(&high, 16), u64::from_str_radix(&low, 16)) {
            if !high.is_empty() && !low.is_empty() && h <= u32::MAX as u64 && l <= u32::MAX as u64 {
                with(&self.dirs, &self.root, |d| d.start_lsn = Some((h << 32) | l));
            }
        }
    }

    /// pg_control: its CRC-32C, then whether page checksums are on (formats.md 3.8).
    fn control(&mut self) {
        let data = &self.data;
        let place = || fields![("relation", "global/pg_control")];
        if data.len() < 296 {
            self.found.push(Found { code: "PG_CONTROL_DAMAGED", offset: 0, length: data.len() as u64, place: place(),
                details: fields![("datadir", self.root.as_str()), ("problem", format!("only {} bytes", data.len()))] });
            return;
        }
        let u32_at = |at: usize| u32::from_le_bytes(data[at..at + 4].try_into().unwrap_or_default());
        let version = u32_at(8);
        let crc_at = match version {
            1300 | 1700 => 288,
            1800 => 292,
            _ => 0,
        };
        let float_format = f64::from_le_bytes(data[208..216].try_into().unwrap_or_default());
        if crc_at == 0 || float_format != 1_234_567.0 {
            self.found.push(Found { code: "PG_CONTROL_UNKNOWN", offset: 0, length: data.len() as u64, place: place(),
                details: fields![("datadir", self.root.as_str()), ("version", version)] });
            return;
        }
        with(&self.dirs, &self.root, |d| d.confirmed = true);
        let (stored, actual) = (u32_at(crc_at), crc32c::crc32c(&data[..crc_at]));
        if stored != actual {
            self.found.push(Found { code: "PG_CONTROL_DAMAGED", offset: crc_at as u64, length: 4, place: place(),
                details: fields![("datadir", self.root.as_str()),
                                 ("problem", format!("CRC-32C is {actual:08x}, the file says {stored:08x}"))] });
            return;
        }
        let checksums = u32_at(252);
        let sysid = u64::from_le_bytes(data[0..8].try_into().unwrap_or_default());
        with(&self.dirs, &self.root, |d| {
            d.checksums = Some(checksums);
            d.sysid = Some(sysid);
        });
    }
}

impl ContentScanner for SmallFileScanner {
    fn feed(&mut self, data: &[u8], _offset: u64) {
        let room = CONTROL_LIMIT.saturating_sub(self.data.len());
        self.data.extend_from_slice(&data[..data.len().min(room)]);
    }

    fn close(&mut self, complete: bool) {
        if !complete {
            return;
        }
        match self.kind {
            SmallFile::Control => self.control(),
            SmallFile::Label => self.label(),
            SmallFile::Version => self.version(),
        }
    }

    fn take_found(&mut self) -> Vec<Found> {
        std::mem::take(&mut self.found)
    }
}
