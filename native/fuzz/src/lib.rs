//! What the fuzz targets share: the control prefix of an input, its split into pieces, and small
//! tar builders. Not part of archcheck: only the fuzz targets in `fuzz_targets/` use it.
//!
//! Every target reads its input as `CONTROL` bytes of control, then the data (a tar stream, a
//! zstd file, pages...). The control bytes choose how the data is cut into the pieces it is fed
//! in, and the target's options (see each target's header). An input shorter than the prefix
//! has its control padded with zeros and no data. `seed.py` writes seeds with such a prefix.

use archcheck_core::finding::Found;
use archcheck_core::tar::ContentScanner;

pub const CONTROL: usize = 8;
/// The identity the age target decrypts with; seed.py encrypts its seeds to it (a test key,
/// published here on purpose: it protects nothing).
pub const AGE_IDENTITY: &str = "AGE-SECRET-KEY-1GFPYYSJZGFPYYSJZGFPYYSJZGFPYYSJZGFPYYSJZGFPYYSJZGFPQ4EGAEX";
pub const BLOCK: usize = 512;

/// (control bytes, data) of a fuzz input.
pub fn split(input: &[u8]) -> ([u8; CONTROL], &[u8]) {
    let mut control = [0u8; CONTROL];
    let n = input.len().min(CONTROL);
    control[..n].copy_from_slice(&input[..n]);
    (control, &input[n..])
}

/// The length of a piece, from one control byte: a few bytes, a length near `unit` (a tar block,
/// a page: the pieces then end just before, on and after its boundaries), some KiB, or the rest.
pub fn piece_len(b: u8, unit: usize) -> usize {
    let v = (b & 0x3f) as usize;
    match b >> 6 {
        0 => v + 1,
        1 => (unit + v).saturating_sub(32).max(1),
        2 => (v + 1) << 10,
        _ => usize::MAX,
    }
}

/// `data` cut into pieces whose lengths cycle through `pattern` (see `piece_len`), with the
/// stream offset of each piece (`base` is the offset of `data[0]`).
pub struct Pieces<'a> {
    data: &'a [u8],
    pos: usize,
    base: u64,
    pattern: [u8; 4],
    unit: usize,
    k: usize,
}

impl<'a> Pieces<'a> {
    pub fn new(data: &'a [u8], base: u64, pattern: &[u8], unit: usize) -> Self {
        let mut p = [0u8; 4];
        for (i, b) in p.iter_mut().enumerate() {
            *b = pattern.get(i).copied().unwrap_or(0xff);
        }
        Pieces { data, pos: 0, base, pattern: p, unit, k: 0 }
    }
}

impl<'a> Iterator for Pieces<'a> {
    type Item = (u64, &'a [u8]);

    fn next(&mut self) -> Option<Self::Item> {
        if self.pos >= self.data.len() {
            return None;
        }
        let len = piece_len(self.pattern[self.k % 4], self.unit).min(self.data.len() - self.pos);
        self.k += 1;
        let at = self.pos;
        self.pos += len;
        Some((self.base + at as u64, &self.data[at..at + len]))
    }
}

/// Feed `data` to a scanner in pieces, close it, and take what it found (as the walker and the
/// Python `Scanner` class drive a scanner).
pub fn drive(scanner: &mut dyn ContentScanner, data: &[u8], pattern: &[u8], unit: usize, complete: bool) -> Vec<Found> {
    let mut found = Vec::new();
    for (offset, piece) in Pieces::new(data, 0, pattern, unit) {
        scanner.feed(piece, offset);
        if offset % 3 == 0 {
            found.extend(scanner.take_found()); // taken at any time, never lost
        }
    }
    scanner.close(complete);
    found.extend(scanner.take_found());
    found
}

/// The tar checksum of a 512-byte header block, its checksum field counted as spaces.
pub fn tar_checksum(block: &[u8]) -> u32 {
    block[..BLOCK].iter().enumerate().map(|(i, &b)| if (148..156).contains(&i) { b' ' as u32 } else { b as u32 }).sum()
}

/// Make the checksum hold in every block-aligned block that says "ustar" where a header does:
/// lets the fuzzer change header fields without having to find the checksum too.
pub fn fix_tar_checksums(data: &mut [u8]) {
    for block in data.chunks_exact_mut(BLOCK) {
        if &block[257..262] == b"ustar" {
            let sum = tar_checksum(block);
            block[148..156].copy_from_slice(format!("{:06o}\0 ", sum & 0o777777).as_bytes());
        }
    }
}

/// A ustar header for a member (`name` up to 100 bytes; longer ones are cut).
pub fn ustar_header(name: &str, size: u64, flag: u8) -> [u8; BLOCK] {
    let mut h = [0u8; BLOCK];
    let name = name.as_bytes();
    let n = name.len().min(100);
    h[..n].copy_from_slice(&name[..n]);
    h[100..108].copy_from_slice(b"0000644\0");
    h[108..116].copy_from_slice(b"0000000\0");
    h[116..124].copy_from_slice(b"0000000\0");
    h[124..136].copy_from_slice(format!("{:011o}\0", size & 0o77777777777).as_bytes());
    h[136..148].copy_from_slice(b"15000000000\0");
    h[156] = flag;
    h[257..263].copy_from_slice(b"ustar\0");
    h[263..265].copy_from_slice(b"00");
    let sum = tar_checksum(&h);
    h[148..156].copy_from_slice(format!("{sum:06o}\0 ").as_bytes());
    h
}

/// A whole tar of regular files: headers, contents, padding and the two zero blocks.
pub fn tar_of(members: &[(&str, &[u8])]) -> Vec<u8> {
    let mut out = Vec::new();
    for (name, data) in members {
        out.extend_from_slice(&ustar_header(name, data.len() as u64, b'0'));
        out.extend_from_slice(data);
        out.resize(out.len().div_ceil(BLOCK) * BLOCK, 0);
    }
    out.resize(out.len() + 2 * BLOCK, 0);
    out
}

/// A little-endian u32 from up to 4 control bytes.
pub fn le32(bytes: &[u8]) -> u32 {
    bytes.iter().take(4).rev().fold(0u32, |acc, &b| (acc << 8) | b as u32)
}
