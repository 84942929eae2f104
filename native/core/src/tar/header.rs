//! Tar headers: checksums, numeric fields, pax records (formats.md 2).

use std::collections::HashMap;

use crate::text::{parse_int, parse_number};

pub const BLOCK: usize = 512;
pub const EXTENSION_LIMIT: u64 = 16 * 1024 * 1024; // a pax or long-name header larger than this is hostile

pub fn is_zero(block: &[u8]) -> bool {
    block.iter().all(|&b| b == 0)
}

/// (unsigned, signed) sums with the checksum field counted as spaces (formats.md 2.4).
pub fn header_checksums(block: &[u8]) -> (i128, i128) {
    let mut unsigned: i128 = 0;
    let mut high: i128 = 0;
    for (i, &b) in block[..BLOCK].iter().enumerate() {
        let b = if (148..156).contains(&i) { b' ' } else { b };
        unsigned += b as i128;
        if b >= 128 {
            high += 1;
        }
    }
    (unsigned, unsigned - 256 * high)
}

pub fn stored_checksum(block: &[u8]) -> Option<i128> {
    parse_number(&block[148..156])
}

pub fn checksum_holds(block: &[u8]) -> bool {
    match stored_checksum(block) {
        Some(stored) => {
            let (unsigned, signed) = header_checksums(block);
            stored == unsigned || stored == signed
        }
        None => false,
    }
}

pub fn is_valid_header(block: &[u8]) -> bool {
    block.len() >= BLOCK && !is_zero(&block[..BLOCK]) && checksum_holds(block)
}

/// Whether a block whose checksum fails is still a tar header, with one byte damaged: it has
/// the ustar magic, or its checksum field holds six or more octal digits (as every tar writes
/// it) reading within 255 of what its bytes sum to (one byte changes the sum by at most that)
/// and its mode field is octal too. An empty field reads as 0, near the sum of many binary
/// blocks: ELF files and PNGs were taken for damaged tars before the digits were required.
pub fn is_damaged_header(block: &[u8]) -> bool {
    if block.len() < BLOCK || is_zero(&block[..BLOCK]) {
        return false;
    }
    if &block[257..262] == b"ustar" {
        return true;
    }
    let digits = |field: &[u8]| field.iter().filter(|b| (b'0'..=b'7').contains(b)).count();
    let octal = |field: &[u8]| field.iter().all(|&b| matches!(b, b'0'..=b'7' | b' ' | 0));
    let (unsigned, signed) = header_checksums(block);
    let near = |stored: i128| (stored - unsigned).abs() <= 255 || (stored - signed).abs() <= 255;
    digits(&block[148..156]) >= 6 && octal(&block[148..156]) && octal(&block[100..108]) && digits(&block[100..108]) > 0
        && stored_checksum(block).is_some_and(near)
}

pub type Pax = HashMap<String, Vec<u8>>;

/// pax records `"<len> <key>=<value>\n"`: the records read, and what is wrong if something is.
pub fn parse_pax(data: &[u8]) -> (Pax, Option<String>) {
    let mut records = Pax::new();
    let problem = pax_records(data, |key, value| {
        records.insert(String::from_utf8_lossy(key).into_owned(), value.to_vec());
    });
    (records, problem)
}

/// Each record in its order, repeats included (GNU's 0.0 sparse map repeats its keys); what is
/// wrong if something is (the records before it were handed out).
pub fn pax_records(data: &[u8], mut record: impl FnMut(&[u8], &[u8])) -> Option<String> {
    let mut i = 0;
    while i < data.len() {
        if data[i] == 0 {
            break;
        }
        let window = &data[i..data.len().min(i + 21)];
        let space = window.iter().position(|&b| b == b' ').map(|p| i + p);
        let length = match space {
            Some(s) if s > i => parse_int(&data[i..s], 10).unwrap_or(0),
            _ => 0,
        };
        if length <= 0 || i as i128 + length > data.len() as i128 || data[i + length as usize - 1] != b'\n' {
            return Some(format!("record at byte {i} has a bad length"));
        }
        let end = i + length as usize - 1;
        let body = &data[space.unwrap_or(i) + 1..end.max(space.unwrap_or(i) + 1)];
        match body.iter().position(|&b| b == b'=') {
            Some(eq) if body[..eq].contains(&0) => return Some(format!("record at byte {i} has a NUL in its key")),
            Some(eq) => record(&body[..eq], &body[eq + 1..]),
            None => return Some(format!("record at byte {i} has no '='")),
        }
        i = end + 1;
    }
    None
}

/// Whether `prefix`, shorter than a block, could be the start of a tar header (or of the zero
/// blocks of an empty archive): a name without control characters, then numeric fields of
/// octal digits, spaces and NULs (or base-256), a type flag, a link name and the magic. A name
/// with no NUL after it proves nothing, so a few bytes of text are not taken for a header.
pub fn could_start_a_header(prefix: &[u8]) -> bool {
    let prefix = &prefix[..prefix.len().min(BLOCK)];
    let field = |range: std::ops::Range<usize>| &prefix[range.start.min(prefix.len())..range.end.min(prefix.len())];
    let text = |bytes: &[u8]| {
        let end = bytes.iter().position(|&b| b == 0).unwrap_or(bytes.len());
        !bytes[..end].iter().any(|&b| b < 0x20 || b == 0x7f) && bytes[end..].iter().all(|&b| b == 0)
    };
    let number = |bytes: &[u8], base256: bool| {
        (base256 && matches!(bytes.first(), Some(0x80 | 0xff)))
            || bytes.iter().all(|&b| matches!(b, b'0'..=b'7' | b' ' | 0))
    };
    if is_zero(prefix) {
        return true;
    }
    if prefix.len() < 100 {
        return prefix.contains(&0) && text(prefix);
    }
    let numbers = [(100..108, true), (108..116, true), (116..124, true), (124..136, true), (136..148, true), (148..156, false)];
    let magic = field(257..263);
    text(field(0..100))
        && numbers.into_iter().all(|(range, base256)| number(field(range), base256))
        && field(156..157).iter().all(|&b| b == 0 || b.is_ascii_alphanumeric())
        && text(field(157..257))
        && (b"ustar".starts_with(&magic[..magic.len().min(5)]) || is_zero(magic))
}

pub fn round_up(n: u64) -> u64 {
    n.div_ceil(BLOCK as u64) * BLOCK as u64
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn pax_records() {
        let (r, problem) = parse_pax(b"16 path=a/b.txt\n11 size=99\n");
        assert_eq!(problem, None);
        assert_eq!(r["path"], b"a/b.txt");
        assert_eq!(r["size"], b"99");
        let (_, problem) = parse_pax(b"99 path=x\n");
        assert_eq!(problem.as_deref(), Some("record at byte 0 has a bad length"));
        let (_, problem) = parse_pax(b"8 pathx\n");
        assert_eq!(problem.as_deref(), Some("record at byte 0 has no '='"));
        assert!(parse_pax(b"0 path=x\n").1.is_some());
        let (_, problem) = parse_pax(b"11 pa\0th=x\n");
        assert_eq!(problem.as_deref(), Some("record at byte 0 has a NUL in its key"));
        let (r, problem) = parse_pax(b"14 path=ev\0il\n");
        assert_eq!((problem, r["path"].as_slice()), (None, b"ev\0il".as_slice()));
        let (r, problem) = parse_pax(b"28 path=some/long/name/here\n20 size=12345678901\n");
        assert_eq!((problem, r["size"].as_slice()), (None, b"12345678901".as_slice()));
    }

    #[test]
    fn a_header_prefix_is_told_from_text() {
        let mut header = vec![0u8; 300];
        header[..5].copy_from_slice(b"a.txt");
        header[100..108].copy_from_slice(b"0000644\0");
        header[124..136].copy_from_slice(b"00000000006\0");
        header[156] = b'0';
        header[257..263].copy_from_slice(b"ustar\0");
        for len in [1, 6, 99, 100, 130, 156, 260, 300] {
            assert!(could_start_a_header(&header[..len]) || len < 6, "{len}");
        }
        assert!(could_start_a_header(&[0; 40]));
        assert!(!could_start_a_header(b"x"));
        assert!(!could_start_a_header(b"hello zstd\n"));
        header[104] = b'9';
        assert!(!could_start_a_header(&header));
        let mut binary: Vec<u8> = (0..=255).collect();
        binary.extend(0..=255u8);
        assert!(!could_start_a_header(&binary[..266]));
    }

    #[test]
    fn header_checksum_accepts_the_signed_sum() {
        let mut block = vec![0u8; 512];
        block[0..5].copy_from_slice(b"na\xe9me");
        block[257..263].copy_from_slice(b"ustar\0");
        let (unsigned, signed) = header_checksums(&block);
        assert_eq!(unsigned - signed, 256); // one byte above 127
        block[148..156].copy_from_slice(format!("{signed:06o}\0 ").as_bytes());
        assert!(is_valid_header(&block));
        block[148..156].copy_from_slice(format!("{:06o}\0 ", signed + 1).as_bytes());
        assert!(!is_valid_header(&block));
    }
}
