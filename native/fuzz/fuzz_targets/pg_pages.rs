//! PostgreSQL relation pages, two ways:
//!  - the pure page checks of archcheck_core::scan::pages on each whole 8 KiB page (as
//!    RelationScanner calls them: the line-pointer and btree rules only once the header holds);
//!  - the data as one member of a tar walked with the Router (RelationScanner, or the small
//!    files pg_control, backup_label and PG_VERSION), as the bindings walk a base backup.
//!
//! Input: 8 control bytes, then the file's bytes.
//!   control[0] bits 0-3: the member's name (NAMES); bits 4-5: what the data directory is
//!              known to say of checksums (none known, off, on); bit 6: the member is cut off
//!              by the end of the stream (no end of archive, a `finish` mid-member)
//!   control[1..5]: piece lengths of the tar (archcheck_fuzz::piece_len, around 8 KiB pages)
//!   control[5..8]: the first page's block number (with the segment's, for the checks)
//!
//! Checks: a checksum is never 0 and does not depend on pd_checksum; a walk of a well-formed
//! tar finds one member and nothing wrong with the tar itself; the scanners' findings lie in
//! the member; the data directory counts the relation file and its whole pages.
#![no_main]

use archcheck_core::digest::DigestKind;
use archcheck_core::scan::pages::{self, Header, BLCKSZ};
use archcheck_core::scan::postgres::DataDir;
use archcheck_core::scan::Router;
use archcheck_core::tar::TarWalker;
use archcheck_fuzz::{le32, split, tar_of, Pieces, BLOCK};
use libfuzzer_sys::fuzz_target;

/// Member names: relation segments of each kind, and the small files the router reads whole.
const NAMES: [&str; 16] = [
    "base/1/16384",
    "base/1/16384.1",
    "base/5/2619_fsm",
    "base/5/2619_vm",
    "global/1262",
    "./base/16385/16386.7",
    "pg_tblspc/16390/PG_16_202307071/5/16391",
    "data/base/1/16384_init",
    "base/1/16384.99999999999999999999", // a segment number past u64: the router clamps it
    "base/1/16384.18446744073709551615", // the largest u64 segment number
    "global/pg_control",
    "backup_label",
    "PG_VERSION",
    "data/global/pg_control",
    "base/1/PG_VERSION", // a database's PG_VERSION: not the cluster's, not scanned
    "base/1/16384.notasegment",
];

fn page_checks(data: &[u8], first_block: u32) {
    for (i, page) in data.chunks_exact(BLCKSZ).enumerate() {
        let block = first_block.wrapping_add(i as u32);
        let h = Header::read(page);
        let sum = pages::checksum(page, block);
        assert_ne!(sum, 0, "pg_checksum_page never gives 0");
        let mut other = page.to_vec();
        other[8] ^= 0xA5;
        other[9] ^= 0x3C;
        assert_eq!(pages::checksum(&other, block), sum, "pd_checksum does not count in the checksum");
        if pages::is_new_and_zero(page, &h) {
            continue;
        }
        if pages::header_problem(&h).is_none() {
            let _ = pages::item_problem(page, &h);
            let _ = pages::btree_problem(page, &h, block as u64);
        }
    }
}

fuzz_target!(|input: &[u8]| {
    let (control, data) = split(input);
    let first_block = le32(&[control[5], control[6], control[7], 0]);
    page_checks(data, first_block);

    let name = NAMES[(control[0] & 0xf) as usize];
    let known = match (control[0] >> 4) & 3 {
        1 => Some(DataDir { checksums: Some(0), ..DataDir::default() }),
        2 => Some(DataDir { checksums: Some(1), confirmed: true, ..DataDir::default() }),
        _ => None,
    };
    let cut = control[0] & 0x40 != 0;
    let router = Router::new(None, "", known);
    let dirs = router.data_dirs();
    let mut tar = tar_of(&[(name, data)]);
    if cut {
        tar.truncate(BLOCK + data.len() / 2);
    }
    let mut walker = TarWalker::new(Some(DigestKind::Xxh3_128), Some(Box::new(router)));
    for (offset, piece) in Pieces::new(&tar, 0, &control[1..5], BLCKSZ) {
        walker.feed(piece, offset);
    }
    walker.finish(tar.len() as u64, false);
    walker.flush();
    let members = walker.take_members();
    assert_eq!(members.len(), 1, "one member in {members:?}");
    let m = &members[0];
    assert_eq!((m.header_offset, m.data_offset, m.size), (0, BLOCK as u64, data.len() as u64));
    let end = m.data_offset + m.size;
    for f in &walker.findings {
        if f.code.starts_with("TAR_") {
            assert!(cut && matches!(f.code, "TAR_TRUNCATED" | "TAR_MISSING_END"), "{f:?} in a tar made whole");
            continue;
        }
        assert_eq!(f.member.as_deref(), Some(m.name.as_str()), "{f:?}");
        assert!(m.data_offset <= f.start && f.start <= f.end && f.end <= end, "{f:?} outside the member {m:?}");
    }
    let relation = name.rsplit('/').next().is_some_and(|n| n.bytes().next().is_some_and(|b| b.is_ascii_digit()))
        && !name.ends_with(".notasegment");
    if relation && !cut && !data.is_empty() {  // an empty member has no content to scan
        let dirs = dirs.lock().unwrap_or_else(|p| p.into_inner());
        let (files, pages): (u64, u64) = dirs.values().map(|d| (d.files, d.pages)).fold((0, 0), |a, b| (a.0 + b.0, a.1 + b.1));
        assert_eq!((files, pages), (1, (data.len() / BLCKSZ) as u64), "{name}: files and pages counted");
    }
});
