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

pub type Pax = HashMap<String, Vec<u8>>;

/// pax records `"<len> <key>=<value>\n"`: the records read, and what is wrong if something is.
pub fn parse_pax(data: &[u8]) -> (Pax, Option<String>) {
    let mut records = Pax::new();
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
            return (records, Some(format!("record at byte {i} has a bad length")));
        }
        let end = i + length as usize - 1;
        let body = &data[space.unwrap_or(i) + 1..end.max(space.unwrap_or(i) + 1)];
        match body.iter().position(|&b| b == b'=') {
            Some(eq) => {
                records.insert(String::from_utf8_lossy(&body[..eq]).into_owned(), body[eq + 1..].to_vec());
            }
            None => return (records, Some(format!("record at byte {i} has no '='"))),
        }
        i = end + 1;
    }
    (records, None)
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
        let (r, problem) = parse_pax(b"28 path=some/long/name/here\n20 size=12345678901\n");
        assert_eq!((problem, r["size"].as_slice()), (None, b"12345678901".as_slice()));
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
