//! InnoDB tablespaces (archcheck_core::scan::innodb::InnodbScanner) through the ContentScanner
//! trait, as the walker drives it for an `*.ibd` or `ibdata*` member and the Python `Scanner`
//! class for one file: fed in pieces, closed, its findings taken, its facts read.
//!
//! Input: 8 control bytes, then the tablespace's first bytes.
//!   control[0] bit 0: the member ended before its size (close(complete=false))
//!   control[1..5]: piece lengths (archcheck_fuzz::piece_len, around 16 KiB pages)
//!
//! Checks: the findings lie in the file, pages are counted, the facts name a page size InnoDB
//! has.
#![no_main]

use archcheck_core::finding::Value;
use archcheck_core::scan::innodb::InnodbScanner;
use archcheck_core::tar::ContentScanner;
use archcheck_fuzz::{drive, split};
use libfuzzer_sys::fuzz_target;

fn int(facts: &[(&'static str, Value)], key: &str) -> Option<i128> {
    facts.iter().find(|(k, _)| *k == key).and_then(|(_, v)| match v {
        Value::Int(i) => Some(*i),
        _ => None,
    })
}

fuzz_target!(|input: &[u8]| {
    let (control, data) = split(input);
    let complete = control[0] & 1 == 0;
    let mut scanner = InnodbScanner::new();
    let found = drive(&mut scanner, data, &control[1..5], 16384, complete);
    let facts = scanner.facts();
    let page_size = int(&facts, "page_size");
    if let Some(ps) = page_size {
        assert!([1024, 2048, 4096, 8192, 16384, 32768, 65536].contains(&ps), "page size {ps}");
        let pages = int(&facts, "pages").unwrap_or(0);
        assert!(pages * ps <= data.len() as i128, "{pages} pages of {ps} in {} bytes", data.len());
    }
    for f in &found {
        assert!(f.code.starts_with("INNODB_"), "{f:?}");
        assert!(f.offset <= data.len() as u64, "{f:?} past the end of {} bytes", data.len());
    }
});
