//! SQLite inside an archive (formats.md 4, 6.4). A database is collected whole (up to a limit)
//! and handed to Python, whose walk follows `PRAGMA integrity_check`; a `-wal` member's frames
//! are checked here as they stream past, one frame kept at a time.

use crate::fields;
use crate::finding::Found;
use crate::tar::{ContentScanner, Handoff};

pub const MAGIC: &[u8; 16] = b"SQLite format 3\0";
pub const MAX_BUFFER: u64 = 64 * 1024 * 1024; // a database this size or smaller is walked whole (README)
const HEADER: usize = 100;
const WAL_MAGIC: [u32; 2] = [0x377F_0682, 0x377F_0683];
const WAL_HEADER: usize = 32;
const FRAME_HEADER: usize = 24;

fn be32(b: &[u8], at: usize) -> u32 {
    u32::from_be_bytes([b[at], b[at + 1], b[at + 2], b[at + 3]])
}

/// Keeps a database for Python: its header always, all of it when it fits the limit.
pub struct SqliteCollector {
    size: u64,
    head: Vec<u8>,
    data: Option<Vec<u8>>,
    received: u64,
    handoff: Option<Handoff>,
    limit: u64,
}

impl SqliteCollector {
    pub fn new(size: u64) -> Self {
        Self::with_limit(size, MAX_BUFFER)
    }

    /// Keep the database whole only up to `limit` bytes (else its header alone).
    pub fn with_limit(size: u64, limit: u64) -> Self {
        let data = (size <= limit).then(|| Vec::with_capacity(size as usize));
        SqliteCollector { size, head: Vec::new(), data, received: 0, handoff: None, limit }
    }
}

impl ContentScanner for SqliteCollector {
    fn feed(&mut self, data: &[u8], _offset: u64) {
        if self.head.len() < HEADER {
            let take = data.len().min(HEADER - self.head.len());
            self.head.extend_from_slice(&data[..take]);
        }
        if let Some(kept) = self.data.as_mut() {
            kept.extend_from_slice(data);
        }
        self.received += data.len() as u64;
    }

    fn close(&mut self, complete: bool) {
        self.handoff = Some(Handoff {
            kind: "sqlite",
            size: self.size,
            received: self.received,
            complete,
            head: std::mem::take(&mut self.head),
            data: self.data.take(),
            limit: self.limit,
        });
    }

    fn take_found(&mut self) -> Vec<Found> {
        Vec::new()
    }

    fn take_handoff(&mut self) -> Option<Handoff> {
        self.handoff.take()
    }
}

/// SQLite's WAL checksum over `data` (a multiple of 8 bytes), continuing from (s0, s1).
pub fn wal_checksum(data: &[u8], big_endian: bool, mut s0: u32, mut s1: u32) -> (u32, u32) {
    let word = |c: &[u8]| -> u32 {
        let w = [c[0], c[1], c[2], c[3]];
        if big_endian { u32::from_be_bytes(w) } else { u32::from_le_bytes(w) }
    };
    for pair in data.chunks_exact(8) {
        s0 = s0.wrapping_add(word(&pair[..4])).wrapping_add(s1);
        s1 = s1.wrapping_add(word(&pair[4..])).wrapping_add(s0);
    }
    (s0, s1)
}

#[derive(Clone, Copy, PartialEq, Eq)]
enum WalState {
    Header,
    Valid,
    Broken, // seeded from a bad frame: a commit after it means a lost transaction
    Done,
}

/// A `<db>-wal` member: header checksum, then cumulative frame checksums. The end of the valid
/// WAL is not damage; a break is reported only when later frames chain on from the broken
/// frame's stored checksum up to a commit (a committed transaction lost to it).
pub struct SqliteWalScanner {
    size: u64,
    head: Vec<u8>,
    frame: Vec<u8>,
    frame_size: usize,
    big: bool,
    salts: [u8; 8],
    sums: (u32, u32),
    number: u64,
    state: WalState,
    broken: Option<(u64, u32)>,
    found: Vec<Found>,
}

impl SqliteWalScanner {
    pub fn new(size: u64) -> Self {
        SqliteWalScanner {
            size, head: Vec::new(), frame: Vec::new(), frame_size: 0, big: false, salts: [0; 8], sums: (0, 0),
            number: 0, state: WalState::Header, broken: None, found: Vec::new(),
        }
    }

    fn start(&mut self) {
        let h = self.head.clone();
        let (magic, page_size) = (be32(&h, 0), be32(&h, 8));
        self.state = WalState::Done;
        if !WAL_MAGIC.contains(&magic) {
            return self.problem(0, None, format!("WAL magic {magic:08x}"));
        }
        self.big = magic & 1 == 1;
        if !(512..=65536).contains(&page_size) || !page_size.is_power_of_two() {
            return self.problem(0, None, format!("WAL page size {page_size}"));
        }
        if self.size <= WAL_HEADER as u64 {
            return;
        }
        let stored = (be32(&h, 24), be32(&h, 28));
        if wal_checksum(&h[..24], self.big, 0, 0) != stored {
            return self.problem(0, None, "WAL header checksum does not match: SQLite ignores the whole WAL".into());
        }
        self.sums = stored;
        self.salts.copy_from_slice(&h[16..24]);
        self.frame_size = FRAME_HEADER + page_size as usize;
        self.state = WalState::Valid;
    }

    fn check_frame(&mut self, f: &[u8]) {
        self.number += 1;
        let (page, commit) = (be32(f, 0), be32(f, 4));
        let stored = (be32(f, 16), be32(f, 20));
        let s = wal_checksum(&f[..8], self.big, self.sums.0, self.sums.1);
        let s = wal_checksum(&f[FRAME_HEADER..], self.big, s.0, s.1);
        let ok = f[8..16] == self.salts && s == stored;
        match self.state {
            WalState::Valid => {
                if !ok {
                    self.broken = Some((self.number, page));
                    self.state = WalState::Broken;
                }
                self.sums = stored;
            }
            _ if !ok => self.state = WalState::Done, // the WAL ended at the bad frame: leftovers
            _ => {
                self.sums = stored;
                if commit != 0 {
                    let (frame, bad_page) = self.broken.unwrap_or((0, 0));
                    self.problem(frame, Some(bad_page),
                                 "a committed transaction follows this frame, which fails its checksum or salts".into());
                    self.state = WalState::Done;
                }
            }
        }
    }

    fn problem(&mut self, frame: u64, page: Option<u32>, problem: String) {
        let (offset, length) = if frame > 0 {
            (WAL_HEADER as u64 + (frame - 1) * self.frame_size as u64, self.frame_size as u64)
        } else {
            (0, WAL_HEADER as u64)
        };
        let place = match page.filter(|&p| p != 0) {
            Some(p) => fields![("page", p)],
            None => vec![],
        };
        self.found.push(Found { code: "SQLITE_WAL_CHECKSUM", offset, length, place,
                                details: fields![("frame", frame), ("problem", problem)] });
    }
}

impl ContentScanner for SqliteWalScanner {
    fn feed(&mut self, mut data: &[u8], _offset: u64) {
        if self.state == WalState::Done {
            return;
        }
        if self.state == WalState::Header {
            let take = data.len().min(WAL_HEADER - self.head.len());
            self.head.extend_from_slice(&data[..take]);
            data = &data[take..];
            if self.head.len() < WAL_HEADER {
                return;
            }
            self.start();
            if self.state == WalState::Done {
                return;
            }
        }
        while !data.is_empty() {
            let take = data.len().min(self.frame_size - self.frame.len());
            self.frame.extend_from_slice(&data[..take]);
            data = &data[take..];
            if self.frame.len() == self.frame_size {
                let frame = std::mem::take(&mut self.frame);
                self.check_frame(&frame);
                if self.state == WalState::Done {
                    return;
                }
            }
        }
    }

    fn close(&mut self, _complete: bool) {
        self.frame.clear();
    }

    fn take_found(&mut self) -> Vec<Found> {
        std::mem::take(&mut self.found)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn wal_checksum_is_two_running_sums() {
        assert_eq!(wal_checksum(&[0, 0, 0, 1, 0, 0, 0, 2], true, 0, 0), (1, 3));
        assert_eq!(wal_checksum(&[1, 0, 0, 0, 2, 0, 0, 0], false, 1, 3), (5, 10));
        // a running sum: the sums of a prefix carry on over the rest
        let data: Vec<u8> = (0..1024u32).map(|i| (i.wrapping_mul(2_654_435_761) >> 24) as u8).collect();
        for big in [false, true] {
            let (s0, s1) = wal_checksum(&data[..512], big, 0, 0);
            assert_eq!(wal_checksum(&data[512..], big, s0, s1), wal_checksum(&data, big, 0, 0));
        }
    }
}
