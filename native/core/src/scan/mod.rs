//! Database files inside the archive, read as they stream past (formats.md 3-5): which scanner
//! reads which member, and the scanners. Knowledge of what a finding means stays in Python.

pub mod innodb;
pub mod listed;
pub mod pages;
pub mod postgres;
pub mod sqlite;
pub mod wal;

use std::collections::{BTreeMap, HashMap};
use std::sync::{Arc, LazyLock, Mutex};

use regex::Regex;

use crate::finding::Found;
use crate::tar::{ContentScanner, Handoff, ScannerRouter};
use listed::{Listed, ListedFileScanner};
use postgres::{DataDir, DataDirs, RelationScanner, SmallFile, SmallFileScanner};

fn re(pattern: &str) -> Regex {
    Regex::new(pattern).unwrap_or_else(|e| panic!("bad built-in pattern {pattern}: {e}"))
}

static RELATION: LazyLock<Regex> = LazyLock::new(|| re(
    r"^(?P<root>(?:.*/)?)(?P<path>(?:base/\d+|global|pg_tblspc/\d+/PG_[^/]+/\d+)/(?P<node>\d+))(?:_(?P<fork>fsm|vm|init))?(?:\.(?P<segno>[1-9]\d*))?$"));
static WAL_SEGMENT: LazyLock<Regex> = LazyLock::new(|| re(r"^(?P<root>(?:.*/)?)pg_wal/[0-9A-F]{24}$"));
static SPECIAL: LazyLock<Regex> =
    LazyLock::new(|| re(r"^(?P<root>(?:.*/)?)(?P<file>global/pg_control|backup_label|PG_VERSION)$"));
static DATABASE_DIR: LazyLock<Regex> = LazyLock::new(|| re(r"(?:^|/)(?:base/\d+|pg_tblspc/\d+/PG_[^/]+/\d+)/$"));
static INNODB: LazyLock<Regex> = LazyLock::new(|| re(r"^(?:.*/)?(?:[^/]+\.ibd|ibdata\d+)$"));
static SQLITE: LazyLock<Regex> = LazyLock::new(|| re(r"^.*\.(?:db|db3|sqlite|sqlite3)$"));
static SQLITE_WAL: LazyLock<Regex> = LazyLock::new(|| re(r"^.*\.(?:db|db3|sqlite|sqlite3)-wal$"));

/// Hand `each` the whole pages of `data`, the next piece of a file read in order: a page split
/// across pieces is completed from `carry`, and the start of the next one is left in it.
pub fn whole_pages(carry: &mut Vec<u8>, mut data: &[u8], size: usize, mut each: impl FnMut(&[u8])) {
    if !carry.is_empty() {
        let take = data.len().min(size - carry.len());
        carry.extend_from_slice(&data[..take]);
        data = &data[take..];
        if carry.len() < size {
            return;
        }
        each(carry);
        carry.clear();
    }
    let mut pages = data.chunks_exact(size);
    pages.by_ref().for_each(&mut each);
    carry.extend_from_slice(pages.remainder());
}

/// A data directory's root as findings name it: without a leading "./".
fn datadir_of(root: &str) -> &str {
    root.strip_prefix("./").unwrap_or(root)
}

/// Several scanners over the same member (a relation file the manifest also lists).
struct Both(Vec<Box<dyn ContentScanner + Send + Sync>>);

impl ContentScanner for Both {
    fn feed(&mut self, data: &[u8], offset: u64) {
        self.0.iter_mut().for_each(|s| s.feed(data, offset));
    }

    fn close(&mut self, complete: bool) {
        self.0.iter_mut().for_each(|s| s.close(complete));
    }

    fn take_found(&mut self) -> Vec<Found> {
        self.0.iter_mut().flat_map(|s| s.take_found()).collect()
    }

    fn take_handoff(&mut self) -> Option<Handoff> {
        self.0.iter_mut().find_map(|s| s.take_handoff())
    }
}

type Make = Box<dyn FnOnce() -> Box<dyn ContentScanner + Send + Sync> + Send + Sync>;

/// A scanner chosen by the member's first bytes: a file named like a database that is not one
/// is not judged. Once chosen, it sees the member from its first byte.
struct Sniffed {
    need: usize,
    accept: fn(&[u8]) -> bool,
    make: Option<Make>,
    head: Vec<u8>,
    scanner: Option<Box<dyn ContentScanner + Send + Sync>>,
    decided: bool,
}

impl ContentScanner for Sniffed {
    fn feed(&mut self, data: &[u8], offset: u64) {
        if self.decided {
            if let Some(s) = self.scanner.as_mut() {
                s.feed(data, offset);
            }
            return;
        }
        let before = self.head.len();
        let take = data.len().min(self.need - before);
        self.head.extend_from_slice(&data[..take]);
        if self.head.len() < self.need {
            return;
        }
        self.decided = true;
        if (self.accept)(&self.head) {
            let mut scanner = (self.make.take().expect("made once"))();
            if before > 0 {
                scanner.feed(&self.head[..before], 0);
            }
            scanner.feed(data, before as u64);
            self.scanner = Some(scanner);
        }
    }

    fn close(&mut self, complete: bool) {
        if let Some(s) = self.scanner.as_mut() {
            s.close(complete);
        }
    }

    fn take_found(&mut self) -> Vec<Found> {
        self.scanner.as_mut().map(|s| s.take_found()).unwrap_or_default()
    }

    fn take_handoff(&mut self) -> Option<Handoff> {
        self.scanner.as_mut().and_then(|s| s.take_handoff())
    }
}

fn sniffed(need: usize, accept: fn(&[u8]) -> bool, make: Make) -> Box<dyn ContentScanner + Send + Sync> {
    Box::new(Sniffed { need, accept, make: Some(make), head: Vec::new(), scanner: None, decided: false })
}

/// The database scanners of one archive. `listed`: the files a backup_manifest lists;
/// `prefix`: where this archive's members sit in the data directory (pg_tblspc/<oid>/ for a
/// tablespace tar); `known`: the data directory's facts from another archive of the backup.
pub struct Router {
    dirs: DataDirs,
    listed: Option<HashMap<String, Listed>>,
    prefix: String,
}

impl Router {
    pub fn new(listed: Option<HashMap<String, Listed>>, prefix: &str, known: Option<DataDir>) -> Self {
        let mut dirs = BTreeMap::new();
        if let Some(known) = known {
            dirs.insert(String::new(), DataDir { files: 0, pages: 0, ..known });
        }
        Router { dirs: Arc::new(Mutex::new(dirs)), listed, prefix: prefix.to_string() }
    }

    /// What was learnt of each data directory so far (shared with the scanners it opened).
    pub fn data_dirs(&self) -> DataDirs {
        Arc::clone(&self.dirs)
    }

    fn page_file(&self, name: &str, size: u64) -> Option<Box<dyn ContentScanner + Send + Sync>> {
        if let Some(m) = WAL_SEGMENT.captures(name) {
            // initdb --wal-segsize: a power of two, 1 MiB to 1 GiB
            let seg_size = if size.is_power_of_two() && (1 << 20..=1 << 30).contains(&size) { size } else { wal::SEG_SIZE };
            let base = name.rsplit('/').next().unwrap_or(name);
            // what the data directory said before this segment (pg_control comes last in base.tar,
            // first from base.tar to a pg_wal.tar verified after it)
            let known = postgres::facts(&self.dirs, datadir_of(m.name("root").map_or("", |r| r.as_str())));
            let scanner = wal::WalSegmentScanner::new(base, size, seg_size, false)
                .expect_major(known.major())
                .expect_sysid(known.sysid);
            return Some(Box::new(scanner));
        }
        if let Some(m) = RELATION.captures(name) {
            let root = datadir_of(m.name("root").map_or("", |r| r.as_str()));
            let segno = m.name("segno").map_or(0, |s| s.as_str().parse::<u64>().unwrap_or(u64::MAX / postgres::RELSEG_SIZE));
            let fork = m.name("fork").map_or("main", |f| f.as_str());
            let relation = m.name("path").map_or("", |p| p.as_str());
            return Some(Box::new(RelationScanner::new(Arc::clone(&self.dirs), root, relation, fork, segno)));
        }
        let m = SPECIAL.captures(name)?;
        let raw_root = m.name("root").map_or("", |r| r.as_str());
        if DATABASE_DIR.is_match(raw_root) {
            return None; // base/<db>/PG_VERSION: not the cluster's
        }
        let kind = match m.name("file").map(|f| f.as_str()) {
            Some("global/pg_control") => SmallFile::Control,
            Some("backup_label") => SmallFile::Label,
            _ => SmallFile::Version,
        };
        Some(Box::new(SmallFileScanner::new(Arc::clone(&self.dirs), datadir_of(raw_root), kind)))
    }

    fn postgres(&self, name: &str, size: u64) -> Option<Box<dyn ContentScanner + Send + Sync>> {
        let path = format!("{}{}", self.prefix, datadir_of(name));
        let scanner = self.page_file(&path, size);
        let Some(listed) = self.listed.as_ref().and_then(|l| l.get(&path)) else { return scanner };
        let listed: Box<dyn ContentScanner + Send + Sync> = Box::new(ListedFileScanner::new(&path, listed.clone(), size));
        Some(match scanner {
            Some(scanner) => Box::new(Both(vec![scanner, listed])),
            None => listed,
        })
    }
}

fn is_sqlite(head: &[u8]) -> bool {
    head.len() >= 16 && &head[..16] == sqlite::MAGIC
}

fn is_sqlite_wal(head: &[u8]) -> bool {
    head.len() >= 4 && matches!(&head[..4], b"\x37\x7f\x06\x82" | b"\x37\x7f\x06\x83")
}

impl ScannerRouter for Router {
    fn open(&mut self, name: &str, size: u64) -> Option<Box<dyn ContentScanner + Send + Sync>> {
        if let Some(scanner) = self.postgres(name, size) {
            return Some(scanner);
        }
        if INNODB.is_match(name) {
            return Some(Box::new(innodb::InnodbScanner::new()));
        }
        if SQLITE_WAL.is_match(name) {
            return Some(sniffed(32, is_sqlite_wal, Box::new(move || Box::new(sqlite::SqliteWalScanner::new(size)))));
        }
        if SQLITE.is_match(name) {
            return Some(sniffed(16, is_sqlite, Box::new(move || Box::new(sqlite::SqliteCollector::new(size)))));
        }
        None
    }

    fn state(&self) -> serde_json::Value {
        let dirs = self.dirs.lock().unwrap_or_else(|p| p.into_inner());
        serde_json::to_value(&*dirs).unwrap_or_default()
    }

    fn restore(&mut self, state: &serde_json::Value) {
        if let Ok(dirs) = serde_json::from_value::<BTreeMap<String, DataDir>>(state.clone()) {
            *self.dirs.lock().unwrap_or_else(|p| p.into_inner()) = dirs;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_relation_segment_number_past_any_real_relation_is_no_overflow() {
        // base/1/16384.<u64::MAX>: segno x 131072 blocks does not fit (fuzzing found it)
        let mut router = Router::new(None, "", None);
        let name = format!("base/1/16384.{}", u64::MAX);
        let mut scanner = router.open(&name, 8192).expect("a relation file");
        scanner.feed(&[0x55; 8192], 0);
        scanner.close(true);
        assert_eq!(scanner.take_found().iter().map(|f| f.code).collect::<Vec<_>>(), ["PG_PAGE_HEADER"]);
    }
}
