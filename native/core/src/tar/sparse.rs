//! GNU sparse maps, checked as they pass: the old GNU map in the header and its extension
//! blocks, pax 0.0/0.1 maps in extended header records, the 1.0 map at the start of the data.
//!
//! Every check keeps O(1) state (the last entry's end, the running sum), so a hostile map of
//! millions of entries costs no memory. The rules are what GNU tar needs to restore the member
//! as it was archived; GNU tar itself enforces only some of them (docs/findings.md).

use super::header::{round_up, BLOCK};
use crate::text::{parse_int, parse_number};

/// The largest offset or size GNU tar takes (off_t).
const OFF_MAX: u64 = i64::MAX as u64;
/// The fewest bytes a 1.0 map entry takes ("0\n0\n"): a count needing more cannot fit.
const MIN_TEXT_ENTRY: u64 = 4;

/// Entries in increasing order without overlap, each within the real size, their numbytes
/// adding up to the data the member stores.
#[derive(Clone, Debug)]
pub struct MapCheck {
    real_size: u64,
    stored: u64, // an upper bound until the map's end is known (1.0); u64::MAX if not known yet
    end: u64,
    sum: u64,
    entries: u64,
    last: (u64, u64),
}

impl MapCheck {
    pub fn new(real_size: u64, stored: u64) -> Self {
        MapCheck { real_size, stored, end: 0, sum: 0, entries: 0, last: (0, 0) }
    }

    pub fn entries(&self) -> u64 {
        self.entries
    }

    pub fn entry(&mut self, offset: u64, numbytes: u64) -> Result<(), String> {
        let i = self.entries;
        self.entries += 1;
        if offset < self.end {
            return Err(format!(
                "entry {i} starts at {offset}, before the end of the entry before it ({}): out of order or overlapping",
                self.end
            ));
        }
        let end = offset.checked_add(numbytes).filter(|&end| end <= self.real_size);
        let Some(end) = end else { return Err(past_real(i, offset, numbytes, self.real_size)) };
        self.sum = self.sum.saturating_add(numbytes);
        if self.sum > self.stored {
            return Err(format!("the entries need {} bytes of data, more than the {} the member can store", self.sum, self.stored));
        }
        (self.end, self.last) = (end, (offset, numbytes));
        Ok(())
    }

    /// The whole map read: the last entry within `real_size` (when it was not known while
    /// reading) and the sum equal to the data stored.
    pub fn finish(&self, real_size: u64, stored: u64) -> Result<(), String> {
        if self.end > real_size {
            return Err(past_real(self.entries - 1, self.last.0, self.last.1, real_size));
        }
        if self.sum != stored {
            return Err(format!("the entries hold {} bytes of data, the member stores {stored}", self.sum));
        }
        Ok(())
    }
}

fn past_real(i: u64, offset: u64, numbytes: u64, real_size: u64) -> String {
    format!("entry {i} ({numbytes} bytes at {offset}) reaches past the real size {real_size}")
}

/// An old GNU number (octal or base-256, as GNU tar's OFF_FROM_HEADER): None if it is not
/// one, is negative or over off_t. A field of only NULs and spaces is no number to GNU tar.
pub fn old_number(field: &[u8]) -> Option<u64> {
    if field.iter().all(|&b| b == 0 || b == b' ') {
        return None;
    }
    parse_number(field).and_then(|v| u64::try_from(v).ok()).filter(|&v| v <= OFF_MAX)
}

/// One 24-byte entry of an old GNU map.
#[derive(Debug, PartialEq, Eq)]
pub enum OldEntry {
    /// numbytes starts with a NUL: GNU tar's end of the map
    End,
    Entry(u64, u64),
    /// which field is not a number, and where it lies in the entry
    Bad(&'static str, std::ops::Range<usize>),
}

pub fn old_entry(entry: &[u8]) -> OldEntry {
    if entry[12] == 0 {
        return OldEntry::End;
    }
    match (old_number(&entry[..12]), old_number(&entry[12..24])) {
        (Some(offset), Some(numbytes)) => OldEntry::Entry(offset, numbytes),
        (None, _) => OldEntry::Bad("offset", 0..12),
        (_, None) => OldEntry::Bad("numbytes", 12..24),
    }
}

/// A decimal pax value as GNU tar takes it: digits only, at most off_t.
fn pax_number(value: &[u8]) -> Option<u64> {
    if value.is_empty() || !value.iter().all(u8::is_ascii_digit) {
        return None;
    }
    parse_int(value, 10).and_then(|v| u64::try_from(v).ok()).filter(|&v| v <= OFF_MAX)
}

/// What is wrong with a map: a record that is no number (TAR_PAX_MALFORMED) or a map that
/// does not hold (TAR_BAD_SPARSE_MAP).
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Problem {
    Malformed(String),
    Map(String),
}

/// A 0.0 or 0.1 map, fed an extended header's records in their order (0.0 repeats its offset
/// and numbytes keys). The real size and the data stored are known only at the member's header.
#[derive(Clone, Debug)]
pub struct PaxMap {
    numblocks: Option<u64>,
    offset: Option<u64>,
    check: MapCheck,
    pub problem: Option<Problem>,
    pub range: (u64, u64), // the extended header the map is in
}

impl PaxMap {
    pub fn new(range: (u64, u64)) -> Self {
        PaxMap { numblocks: None, offset: None, check: MapCheck::new(u64::MAX, u64::MAX), problem: None, range }
    }

    /// Whether `key` is one of a 0.x map's.
    pub fn is_map_key(key: &[u8]) -> bool {
        matches!(key, b"GNU.sparse.numblocks" | b"GNU.sparse.offset" | b"GNU.sparse.numbytes" | b"GNU.sparse.map")
    }

    pub fn record(&mut self, key: &[u8], value: &[u8]) {
        if self.problem.is_some() || !Self::is_map_key(key) {
            return;
        }
        if let Err(problem) = self.take(key, value) {
            self.problem = Some(problem);
        }
    }

    fn take(&mut self, key: &[u8], value: &[u8]) -> Result<(), Problem> {
        let key_text = String::from_utf8_lossy(key);
        if key == b"GNU.sparse.map" {
            return self.take_map(value);
        }
        let n = pax_number(value).ok_or_else(|| Problem::Malformed(not_a_number(&key_text, value)))?;
        match key {
            b"GNU.sparse.numblocks" => self.numblocks = Some(n),
            b"GNU.sparse.offset" => self.offset = Some(n),
            _ => self.check.entry(self.offset.take().unwrap_or(0), n).map_err(Problem::Map)?,
        }
        Ok(())
    }

    /// 0.1: "offset,numbytes[,offset,numbytes]...".
    fn take_map(&mut self, value: &[u8]) -> Result<(), Problem> {
        let mut pieces = value.split(|&b| b == b',');
        while let Some(offset) = pieces.next() {
            let numbytes = pieces.next().ok_or_else(|| Problem::Malformed("GNU.sparse.map has an odd number of values".into()))?;
            let number = |v: &[u8]| pax_number(v).ok_or_else(|| Problem::Malformed(not_a_number("GNU.sparse.map value", v)));
            self.check.entry(number(offset)?, number(numbytes)?).map_err(Problem::Map)?;
        }
        Ok(())
    }

    /// At the member's header: the count, the real size and the data stored.
    pub fn finish(&self, real_size: u64, stored: u64) -> Result<(), Problem> {
        if let Some(problem) = &self.problem {
            return Err(problem.clone());
        }
        let entries = self.check.entries();
        if self.numblocks != Some(entries) {
            let said = self.numblocks.map_or("no GNU.sparse.numblocks".into(), |n| format!("GNU.sparse.numblocks says {n}"));
            return Err(Problem::Map(format!("{said}, the map holds {entries} entries")));
        }
        self.check.finish(real_size, stored).map_err(Problem::Map)
    }
}

fn not_a_number(key: &str, value: &[u8]) -> String {
    let shown = crate::text::latin1(&value[..value.len().min(40)]);
    format!("{key} is not a number: {}", crate::text::py_repr(&shown))
}

/// How a 1.0 map stands after some bytes.
#[derive(Debug, PartialEq, Eq)]
pub enum TextOutcome {
    More,
    Done,
    /// what is wrong, and how many bytes of the data show it
    Bad(String, u64),
}

/// A 1.0 map: decimal lines at the start of the member's data (the count, then each entry's
/// offset and numbytes), padded with NULs to a block; the data regions follow.
#[derive(Clone, Debug)]
pub struct TextMap {
    size: u64, // the member's data, map included
    count: Option<u64>,
    offset: Option<u64>,
    value: u64,
    digits: u64,
    read: u64, // bytes of the map read
    check: MapCheck,
}

impl TextMap {
    pub fn new(real_size: u64, size: u64) -> Self {
        let stored = size.saturating_sub(BLOCK as u64); // the map takes a block at least
        TextMap { size, count: None, offset: None, value: 0, digits: 0, read: 0, check: MapCheck::new(real_size, stored) }
    }

    /// The next bytes of the member's data (those past the map's end are not looked at).
    pub fn feed(&mut self, data: &[u8]) -> TextOutcome {
        for &b in data {
            self.read += 1;
            let step = match b {
                b'\n' => self.line(),
                b'0'..=b'9' => self.digit(b - b'0'),
                _ => Err(format!("byte {} of the map is {b:#04x}, not a digit or a newline", self.read - 1)),
            };
            match step {
                Ok(true) => return self.done(),
                Ok(false) => {}
                Err(problem) => return TextOutcome::Bad(problem, self.read),
            }
        }
        TextOutcome::More
    }

    /// The member's data ended before the map did.
    pub fn cut(&self) -> TextOutcome {
        let needs = match self.count {
            Some(count) => format!("{count} entries"),
            None => "its count".into(),
        };
        TextOutcome::Bad(format!("the map needs {needs}, more than the member's {} bytes hold", self.size), self.read)
    }

    fn digit(&mut self, d: u8) -> Result<bool, String> {
        self.digits += 1;
        let value = self.value.checked_mul(10).and_then(|v| v.checked_add(d as u64)).filter(|&v| v <= OFF_MAX);
        let start = self.read - self.digits;
        self.value = value.ok_or_else(|| format!("the number at byte {start} of the map is over 2^63-1"))?;
        Ok(false)
    }

    /// A newline: the number before it taken; whether the map is complete.
    fn line(&mut self) -> Result<bool, String> {
        if self.digits == 0 {
            return Err(format!("byte {} of the map ends an empty line", self.read - 1));
        }
        let n = std::mem::take(&mut self.value);
        self.digits = 0;
        let Some(count) = self.count else {
            let room = self.size.saturating_sub(self.read) / MIN_TEXT_ENTRY;
            if n > room {
                return Err(format!("the map says {n} entries, more than the member's {} bytes can hold", self.size));
            }
            self.count = Some(n);
            return Ok(n == 0);
        };
        match self.offset.take() {
            None => self.offset = Some(n),
            Some(offset) => self.check.entry(offset, n)?,
        }
        Ok(self.offset.is_none() && self.check.entries() == count)
    }

    fn done(&self) -> TextOutcome {
        let map = round_up(self.read);
        let result = match self.size.checked_sub(map) {
            Some(stored) => self.check.finish(self.check.real_size, stored),
            None => Err(format!("the map's {map} bytes run past the member's {}", self.size)),
        };
        match result {
            Ok(()) => TextOutcome::Done,
            Err(problem) => TextOutcome::Bad(problem, self.read),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn octal(n: u64) -> Vec<u8> {
        format!("{n:011o}\0").into_bytes()
    }

    #[test]
    fn entries_in_order_within_the_real_size_adding_up_to_the_data() {
        let mut check = MapCheck::new(100, 30);
        assert_eq!(check.entry(10, 10), Ok(()));
        assert_eq!(check.entry(20, 20), Ok(())); // touching is no overlap
        assert_eq!(check.entry(100, 0), Ok(())); // GNU tar's last entry: the end, no data
        assert_eq!(check.finish(100, 30), Ok(()));
        assert!(check.finish(100, 31).unwrap_err().contains("hold 30 bytes"));
        let mut check = MapCheck::new(100, 30);
        check.entry(50, 5).unwrap();
        assert!(check.entry(10, 5).unwrap_err().contains("out of order"));
        let mut check = MapCheck::new(100, 30);
        check.entry(50, 5).unwrap();
        assert!(check.entry(52, 5).unwrap_err().contains("overlapping"));
        assert!(MapCheck::new(100, 30).entry(90, 11).unwrap_err().contains("past the real size 100"));
        assert!(MapCheck::new(100, 30).entry(u64::MAX, 2).unwrap_err().contains("past the real size"));
        assert!(MapCheck::new(100, 30).entry(0, 31).unwrap_err().contains("need 31 bytes"));
    }

    #[test]
    fn old_entries_end_at_an_empty_numbytes_and_need_octal() {
        let entry = |o: &[u8], n: &[u8]| old_entry(&[o, n].concat());
        assert_eq!(entry(&octal(4997120), &octal(4096)), OldEntry::Entry(4997120, 4096));
        assert_eq!(entry(&[0; 12], &[0; 12]), OldEntry::End);
        assert_eq!(entry(b"zzzzzzzzzzz\0", &octal(1)), OldEntry::Bad("offset", 0..12));
        assert_eq!(entry(&octal(1), &[0xff; 12]), OldEntry::Bad("numbytes", 12..24)); // -1
        assert_eq!(entry(&[0; 12], &octal(1)), OldEntry::Bad("offset", 0..12));
        let mut big = vec![0x80u8; 12];
        big[1..].copy_from_slice(&(1u128 << 80).to_be_bytes()[5..]);
        assert_eq!(entry(&big, &octal(1)), OldEntry::Bad("offset", 0..12)); // over off_t
    }

    #[test]
    fn pax_maps_in_record_order() {
        let mut map = PaxMap::new((0, 512));
        for (k, v) in [("numblocks", "2"), ("offset", "10"), ("numbytes", "5"), ("offset", "20"), ("numbytes", "0")] {
            map.record(format!("GNU.sparse.{k}").as_bytes(), v.as_bytes());
        }
        assert_eq!(map.finish(20, 5), Ok(()));
        assert!(matches!(map.finish(19, 5), Err(Problem::Map(p)) if p.contains("past the real size 19")));
        assert!(matches!(map.finish(20, 6), Err(Problem::Map(p)) if p.contains("hold 5 bytes")));
        let mut map = PaxMap::new((0, 512));
        map.record(b"GNU.sparse.numblocks", b"3");
        map.record(b"GNU.sparse.map", b"10,5,20,0");
        assert!(matches!(map.finish(20, 5), Err(Problem::Map(p)) if p.contains("says 3, the map holds 2")));
        let mut map = PaxMap::new((0, 512));
        map.record(b"GNU.sparse.map", b"20,5,10,0");
        assert!(matches!(map.problem, Some(Problem::Map(ref p)) if p.contains("out of order")));
        for bad in [&b"1,2,3"[..], b"1,x", b"1,,2,3", b"1 ,2"] {
            let mut map = PaxMap::new((0, 512));
            map.record(b"GNU.sparse.map", bad);
            assert!(matches!(map.problem, Some(Problem::Malformed(_))), "{bad:?}");
        }
        let mut map = PaxMap::new((0, 512));
        map.record(b"GNU.sparse.offset", b"49971zz");
        assert_eq!(map.problem, Some(Problem::Malformed("GNU.sparse.offset is not a number: '49971zz'".into())));
    }

    fn text(map: &[u8], size: u64, real: u64) -> TextOutcome {
        let mut data = map.to_vec();
        data.resize(size as usize, 0);
        TextMap::new(real, size).feed(&data)
    }

    #[test]
    fn text_maps_parse_line_by_line() {
        let good = b"3\n4997120\n4096\n7999488\n4096\n10485760\n0\n";
        assert_eq!(text(good, 512 + 8192, 10485760), TextOutcome::Done);
        // fed a byte at a time, the same
        let mut map = TextMap::new(10485760, 512 + 8192);
        let outcomes: Vec<_> = good.iter().map(|b| map.feed(&[*b])).collect();
        assert_eq!(outcomes.last(), Some(&TextOutcome::Done));
        assert!(outcomes[..outcomes.len() - 1].iter().all(|o| *o == TextOutcome::More));
        let bad = |map: &[u8]| match text(map, 512 + 8192, 10485760) {
            TextOutcome::Bad(problem, _) => problem,
            other => panic!("{other:?}"),
        };
        assert!(bad(b"3\n49971zz\n").contains("byte 7 of the map is 0x7a"));
        assert!(bad(b"3\n\n").contains("empty line"));
        assert!(bad(b"3\n99999999999999999999999\n").contains("number at byte 2 of the map is over 2^63-1"));
        assert!(bad(b"9999999999\n").contains("more than the member's 8704 bytes can hold"));
        assert!(bad(b"9\n4997120\n4096\n7999488\n4096\n10485760\n0\n").contains("0x00"));
        assert!(bad(b"3\n7999488\n4096\n4997120\n4096\n10485760\n0\n").contains("out of order"));
        assert!(bad(b"3\n4997120\n4096\n10485000\n4096\n10485760\n0\n").contains("past the real size"));
        assert!(bad(b"3\n4997120\n2048\n7999488\n4096\n10485760\n0\n").contains("hold 6144 bytes"));
        assert!(bad(b"3\n4997120\n9000\n").contains("need 9000 bytes"));
        assert_eq!(text(b"0\n", 512, 0), TextOutcome::Done);
        assert!(matches!(text(b"0\n", 100, 0), TextOutcome::Bad(p, 2) if p.contains("run past")));
        let mut map = TextMap::new(100, 512);
        assert_eq!(map.feed(b"1\n0\n"), TextOutcome::More);
        assert!(matches!(map.cut(), TextOutcome::Bad(p, 4) if p.contains("1 entries")));
    }
}
