//! SQLite `-wal` files (archcheck_core::scan::sqlite::SqliteWalScanner), as the router opens one
//! for a `<db>-wal` member whose first bytes are a WAL header, and as the Python `Scanner` class
//! reads one file: fed in pieces, closed, its findings taken.
//!
//! Input: 8 control bytes, then the WAL's first bytes.
//!   control[0] bits 0-1: the member's size (the bytes given, fewer, more, or 32 or less)
//!              bit 2: the member ended before its size
//!   control[1..5]: piece lengths (archcheck_fuzz::piece_len, around 4 KiB pages)
//!   control[5]: how much the size differs (bits 0-1 of control[0])
//!
//! Checks: at most one finding (the scanner stops at the first problem), and it lies in the
//! file's frames.
#![no_main]

use archcheck_core::scan::sqlite::SqliteWalScanner;
use archcheck_fuzz::{drive, split};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|input: &[u8]| {
    let (control, data) = split(input);
    let len = data.len() as u64;
    let delta = control[5] as u64 * 24;
    let size = match control[0] & 3 {
        0 => len,
        1 => len.saturating_sub(delta),
        2 => len + delta,
        _ => (control[5] % 33) as u64,
    };
    let complete = control[0] & 4 == 0;
    let mut scanner = SqliteWalScanner::new(size);
    let found = drive(&mut scanner, data, &control[1..5], 4096, complete);
    assert!(found.len() <= 1, "one problem at most: {found:?}");
    for f in &found {
        assert_eq!(f.code, "SQLITE_WAL_CHECKSUM", "{f:?}");
        assert!(f.offset + f.length <= len.max(32), "{f:?} past the {len} bytes fed");
    }
});
