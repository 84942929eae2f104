//! PostgreSQL WAL segments (archcheck_core::scan::wal::WalSegmentScanner), as the router opens
//! one for a `pg_wal/` member and the Python `Scanner` class for one file: named, sized, told
//! the server's major version and system identifier when they are known, fed in pieces.
//!
//! Input: 8 control bytes, then the segment's first bytes.
//!   control[0] bits 0-2: the file name (NAMES); bits 3-4: the segment size (1, 16 or 64 MiB,
//!              or the router's choice for the member's size); bit 5: keep record LSNs;
//!              bit 6: the member's size is the segment size (else the bytes given)
//!              bit 7: the member ended before its size
//!   control[1..5]: piece lengths (archcheck_fuzz::piece_len, around 8 KiB pages)
//!   control[5]: the major version expected (0: none; else 8 + n % 12: 9.6 to 19, some unknown)
//!   control[6..8]: the system identifier expected (0: none)
//!
//! Checks: findings lie in the bytes fed; facts are consistent (record LSNs kept: one per record
//! read, in order; the last good record ends after the first one starts).
#![no_main]

use archcheck_core::finding::Value;
use archcheck_core::scan::wal::{WalSegmentScanner, SEG_SIZE};
use archcheck_core::tar::ContentScanner;
use archcheck_fuzz::{drive, split};
use libfuzzer_sys::fuzz_target;

const NAMES: [&str; 8] = [
    "000000010000000000000001",
    "000000010000000000000000",
    "00000002000000010000000A",
    "000000010000000000000001.partial",
    "FFFFFFFFFFFFFFFF000000FF", // the last segment name of a timeline with 16 MiB segments
    "0000000100000000000000FF",
    "00000000000000000000000X", // not a segment name: no timeline, no LSNs
    "000000010000000000000003.history",
];

fuzz_target!(|input: &[u8]| {
    let (control, data) = split(input);
    let flags = control[0];
    let name = NAMES[(flags & 7) as usize];
    let size = if flags & 0x40 != 0 { SEG_SIZE } else { data.len() as u64 };
    let seg_size = match (flags >> 3) & 3 {
        0 => SEG_SIZE,
        1 => 1 << 20,
        2 => 64 << 20,
        // scan::Router: the member's size when it is a power of two from 1 MiB to 1 GiB
        _ if size.is_power_of_two() && (1 << 20..=1 << 30).contains(&size) => size,
        _ => SEG_SIZE,
    };
    let keep_lsns = flags & 0x20 != 0;
    let complete = flags & 0x80 == 0;
    let major = (control[5] != 0).then(|| 8 + control[5] as u32 % 12);
    let sysid = u16::from_le_bytes([control[6], control[7]]);
    let sysid = (sysid != 0).then(|| 7_000_000_000_000_000_000 + sysid as u64);
    let mut scanner = WalSegmentScanner::new(name, size, seg_size, keep_lsns).expect_major(major).expect_sysid(sysid);
    let found = drive(&mut scanner, data, &control[1..5], 8192, complete);
    for f in &found {
        assert!(f.code.starts_with("WAL_"), "{f:?}");
        if f.code != "WAL_SEGMENT_SIZE" {
            assert!(f.offset <= data.len() as u64, "{f:?} past the {} bytes fed", data.len());
        }
    }
    if let Some(lsns) = &scanner.record_lsns {
        assert_eq!(lsns.len() as u64, scanner.records, "one LSN kept per record");
        assert!(lsns.windows(2).all(|w| w[0] < w[1]), "record LSNs in order: {lsns:?}");
    }
    if let (Some(first), Some(last)) = (scanner.first_lsn, scanner.last_lsn) {
        assert!(first < last, "first record at {first:X}, last good one ends at {last:X}");
    }
    let facts = scanner.facts();
    assert!(facts.iter().any(|(k, v)| *k == "records" && *v == Value::Int(scanner.records as i128)));
});
