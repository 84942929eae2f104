//! SQLite databases collected for Python (archcheck_core::scan::sqlite::SqliteCollector), as the
//! router opens one for a `.db` member whose first bytes are the SQLite magic, and as the Python
//! `Scanner("sqlite", ..., limit=...)` class does: fed in pieces, closed, handed off.
//!
//! Input: 8 control bytes, then the database's bytes.
//!   control[0] bits 0-1: the limit (the size, one less, 0, the default 256 MiB)
//!              bit 2: the member ended before its size (close(complete=false))
//!   control[1..5]: piece lengths (archcheck_fuzz::piece_len, around 4 KiB pages)
//!
//! Checks: the handoff keeps the header (100 bytes), everything received when the size fits the
//! limit, and the counts as given.
#![no_main]

use archcheck_core::scan::sqlite::{SqliteCollector, MAX_BUFFER};
use archcheck_core::tar::ContentScanner;
use archcheck_fuzz::{drive, split};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|input: &[u8]| {
    let (control, data) = split(input);
    let size = data.len() as u64;
    let limit = match control[0] & 3 {
        0 => size,
        1 => size.saturating_sub(1),
        2 => 0,
        _ => MAX_BUFFER,
    };
    let complete = control[0] & 4 == 0;
    let mut scanner = SqliteCollector::with_limit(size, limit);
    let found = drive(&mut scanner, data, &control[1..5], 4096, complete);
    assert!(found.is_empty());
    let h = scanner.take_handoff().expect("closed: a handoff");
    assert_eq!((h.kind, h.size, h.received, h.complete, h.limit), ("sqlite", size, size, complete, limit));
    assert_eq!(h.head, data[..data.len().min(100)], "the header kept");
    match &h.data {
        Some(kept) => {
            assert!(size <= limit);
            assert_eq!(kept.as_slice(), data, "the database kept whole");
        }
        None => assert!(size > limit, "a database of {size} bytes not kept under a limit of {limit}"),
    }
    assert!(scanner.take_handoff().is_none(), "handed off once");
});
