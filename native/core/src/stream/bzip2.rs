//! bzip2 (formats.md 7): streams back to back (as `cat a.bz2 b.bz2` and lbzip2 make), each
//! "BZh" and a level digit, blocks each with the CRC-32 of its output, and an end marker with
//! the stream's combined CRC. libbzip2's decoder (libbz2-rs-sys, the Rust port) checks both.
//!
//! Blocks are not byte-aligned and nothing records where they start, but each begins with a
//! 48-bit magic and the stream ends with another: `BlockScan` finds them (as lbzip2 and
//! bzip2recover do), so blocks can decode in parallel. `Bzip2Block` shifts one block's bits
//! into a stream of its own (a header, the block, an end marker whose combined CRC is the
//! block's), which libbzip2 decodes and checks. A magic found by chance inside compressed data
//! breaks the combined CRC the walk recomputes from the blocks' CRCs, and the walk then falls
//! back to decoding the stream whole (layers/bzip2.py).

use bzip2::{Decompress, Error, Status};

use super::{Counts, Fault, Member, Step, StreamDecoder, StreamError};

pub const BLOCK_MAGIC: u64 = 0x3141_5926_5359;
pub const END_MAGIC: u64 = 0x1772_4538_5090;
const MAGIC_MASK: u64 = (1 << 48) - 1;

const HEADER: u64 = 4;

pub struct Bzip2 {
    inner: Decompress,
}

impl Default for Bzip2 {
    fn default() -> Self {
        Self::new()
    }
}

impl Bzip2 {
    pub fn new() -> Self {
        Bzip2 { inner: Decompress::new(false) }
    }
}

impl Member for Bzip2 {
    const UNIT: &'static str = "bzip2 stream";
    const TRUNCATED: &'static str = "BZIP2_TRUNCATED";
    const MAGIC_LEN: usize = 4;

    fn is_start(magic: &[u8]) -> bool {
        magic.len() == 4 && &magic[..3] == b"BZh" && (b'1'..=b'9').contains(&magic[3])
    }

    fn begin(&mut self) {
        self.inner = Decompress::new(false);
    }

    fn decode(&mut self, input: &[u8], out: &mut Vec<u8>) -> Result<Step, Fault> {
        let before = self.inner.total_in();
        let status = self.inner.decompress_vec(input, out);
        let taken = (self.inner.total_in() - before) as usize;
        let at = self.inner.total_in();
        match status {
            Ok(Status::StreamEnd) => Ok(Step { taken, ended: true }),
            Ok(_) => Ok(Step { taken, ended: false }),
            Err(Error::DataMagic) => Err(Fault::new("BZIP2_BAD_HEADER", "no bzip2 stream header (BZh1 to BZh9)", taken)),
            Err(Error::Data) if at <= HEADER => Err(Fault::new("BZIP2_BAD_HEADER", "the stream header is damaged", taken)),
            Err(Error::Data) => Err(Fault::new("BZIP2_DECODE_ERROR", format!(
                "compressed data is corrupt at or before byte {at} of the stream (a block's data or CRC, or the stream's combined CRC)"), taken)),
            Err(e) => Err(Fault::new("BZIP2_DECODE_ERROR", format!("libbzip2 failed: {e}"), taken)),
        }
    }

    fn part(&self) -> &'static str {
        if self.inner.total_in() >= HEADER { "its blocks" } else { "its header" }
    }
}

/// A block magic or an end-of-stream magic, where its first bit is, and the 32 bits after it
/// (the block's CRC, or the stream's combined CRC).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Mark {
    pub end: bool,
    pub bit: u64,
    pub crc: u32,
}

/// Finds the magics in a file fed in order, whatever the pieces. A magic starting at any of
/// the eight bits of a byte covers four whole bytes after it (or from it): their first two
/// bytes are looked up in a table of the sixteen (magic, bit) pairs, a few instructions a
/// byte, and only a hit is checked bit by bit. No magic that ends inside the CRC after one
/// (or in its last byte) is looked for.
#[derive(Default)]
pub struct BlockScan {
    carry: Vec<u8>, // the last bytes fed: magics starting there are checked again with the next piece
    carry_at: u64,  // the file offset of carry[0]
    next_bit: u64,  // no magic starts before this bit
    table: Option<Box<KeyTable>>,
    pub marks: Vec<Mark>,
}

/// A magic at bit `shift` of byte k, with the CRC after it, lies in bytes k..k+SPAN.
const SPAN: usize = 11;

/// For each 16-bit key, the (end?, shift) pairs whose magic has those bits at a byte boundary.
struct KeyTable {
    any: Vec<u64>,  // a bit per key: some pair has it (8 KiB, so the look-up stays in the L1 cache)
    hits: Vec<u16>, // bit 2*shift + end, for each key
}

impl KeyTable {
    fn new() -> Self {
        let mut hits = vec![0u16; 1 << 16];
        for (end, magic) in [(false, BLOCK_MAGIC), (true, END_MAGIC)] {
            for shift in 0..8u32 {
                // the magic starting `shift` bits into byte k: its bits from the next byte
                // boundary on (byte k+1, or k itself when shift is 0)
                let skip = if shift == 0 { 0 } else { 8 - shift };
                let key = ((magic >> (48 - skip - 16)) & 0xffff) as usize;
                hits[key] |= 1 << (2 * shift + u32::from(end));
            }
        }
        let mut any = vec![0u64; (1 << 16) / 64];
        for (key, _) in hits.iter().enumerate().filter(|(_, &h)| h != 0) {
            any[key / 64] |= 1 << (key % 64);
        }
        KeyTable { any, hits }
    }
}

impl BlockScan {
    pub fn feed(&mut self, piece: &[u8]) {
        if self.carry.is_empty() || piece.len() < 4 * SPAN {
            let mut joined = std::mem::take(&mut self.carry);
            joined.extend_from_slice(piece);
            let at = self.carry_at;
            self.scan_all(&joined, at);
            return;
        }
        // the seam: magics starting in the bytes carried over, read on into this piece
        let carried = self.carry.len();
        let mut seam = std::mem::take(&mut self.carry);
        seam.extend_from_slice(&piece[..2 * SPAN]);
        self.scan(&seam, self.carry_at, carried, seam.len());
        self.scan_all(piece, self.carry_at + carried as u64);
    }

    /// The magics starting in `data` (at file offset `at`): those with their CRC in it now, and
    /// those near its end once the next piece comes.
    fn scan_all(&mut self, data: &[u8], at: u64) {
        let whole = data.len().saturating_sub(SPAN - 1);
        self.scan(data, at, whole, data.len());
        // the last bytes, read with zeros after them: a magic whose CRC ends the file is found
        let mut tail = data[whole..].to_vec();
        tail.resize(tail.len() + SPAN, 0);
        self.scan(&tail, at + whole as u64, data.len() - whole, data.len() - whole);
        self.carry = data[whole..].to_vec();
        self.carry_at = at + whole as u64;
    }

    /// Look for magics starting in the first `starts` bytes of `data`, of which `real` are the
    /// file's (the rest is padding that needs SPAN bytes after each start).
    fn scan(&mut self, data: &[u8], at: u64, starts: usize, real: usize) {
        if data.len() < 2 {
            return;
        }
        let table = self.table.get_or_insert_with(|| Box::new(KeyTable::new()));
        let keys = (data.len() - 1).min(starts + 1);
        for (key_at, pair) in data[..keys + 1].windows(2).enumerate() {
            let key = usize::from(pair[0]) << 8 | usize::from(pair[1]);
            if table.any[key / 64] & (1 << (key % 64)) != 0 {
                Self::check(&mut self.marks, &mut self.next_bit, data, (at, starts, real), key_at, table.hits[key]);
            }
        }
    }

    /// The magics `hits` names at the key at `key_at`, in the order of their first bits.
    fn check(marks: &mut Vec<Mark>, next_bit: &mut u64, data: &[u8], (at, starts, real): (u64, usize, usize),
             key_at: usize, hits: u16) {
        // shifts 1..7 start in the byte before the key, 0 at it: 1, 2, ..., 7 then 0 is bit order
        for shift in (1..8u32).chain([0]) {
            for end in [false, true] {
                if hits & (1 << (2 * shift + u32::from(end))) == 0 {
                    continue;
                }
                let Some(k) = (if shift == 0 { Some(key_at) } else { key_at.checked_sub(1) }) else { continue };
                // the magic and its CRC end in byte k + (shift + 79) / 8, which must be the file's
                if k >= starts || k + (shift as usize + 79) / 8 >= real || k + SPAN > data.len() {
                    continue;
                }
                let bit = (at + k as u64) * 8 + u64::from(shift);
                let window = u64::from_be_bytes(data[k..k + 8].try_into().expect("8 bytes"));
                let found = (window >> (16 - shift)) & MAGIC_MASK;
                if bit < *next_bit || found != if end { END_MAGIC } else { BLOCK_MAGIC } {
                    continue;
                }
                let after = u64::from_be_bytes(data[k + 3..k + SPAN].try_into().expect("8 bytes"));
                let crc = ((after >> (8 - shift)) & 0xffff_ffff) as u32;
                marks.push(Mark { end, bit, crc });
                // the next is one that ends after the byte its CRC ends in (where reading the CRC
                // stopped the look for magics), as a scan of whole bytes finds it
                *next_bit = (bit + 48 + 32).div_ceil(8) * 8 - 47;
            }
        }
    }
}

/// Bits packed into bytes, most significant first.
#[derive(Default)]
struct BitWriter {
    bytes: Vec<u8>,
    acc: u64,
    held: u32,
}

impl BitWriter {
    fn push(&mut self, value: u64, bits: u32) {
        for shift in (0..bits).rev() {
            self.acc = (self.acc << 1) | ((value >> shift) & 1);
            self.held += 1;
            if self.held == 8 {
                self.bytes.push(self.acc as u8);
                self.acc = 0;
                self.held = 0;
            }
        }
    }

    /// Whole bytes of `piece` when the writer holds `held` bits: the fast way for a block's body.
    fn push_bytes(&mut self, piece: &[u8]) {
        if self.held == 0 {
            self.bytes.extend_from_slice(piece);
            return;
        }
        let held = self.held;
        for &byte in piece {
            let joined = (self.acc << 8) | u64::from(byte);
            self.bytes.push((joined >> held) as u8);
            self.acc = joined & ((1 << held) - 1);
        }
    }

    fn pad(&mut self) {
        if self.held > 0 {
            self.push(0, 8 - self.held);
        }
    }
}

/// One block, set in a stream of its own: fed the bytes from the one holding its first bit,
/// `skip` bits into it, for `length` bits (its magic included). Its output is held until the
/// block's CRC has matched: libbzip2 checks it only after writing the whole block, and a
/// block that fails must give no member a digest of garbage. A block's output is at most
/// 900 kB of runs of 4 to 259 bytes, about 47 MB, and is 900 kB or less unless it repeats.
pub struct Bzip2Block {
    inner: Decompress,
    staged: BitWriter,
    fed: usize, // of staged.bytes
    skip: u32,
    left: u64,
    crc: u32,
    block: u64,
    closed: bool, // the end marker is staged
    consumed: u64,
    held: Vec<u8>,
    produced: u64, // of held, handed on
    checked: bool, // the CRC matched: held may go out
}

const HELD_STEP: usize = 1 << 20;

impl Bzip2Block {
    pub fn new(level: u8, skip: u32, length: u64, crc: u32, block: u64) -> Self {
        let mut staged = BitWriter::default();
        staged.push_bytes(&[b'B', b'Z', b'h', b'0' + level]);
        Bzip2Block { inner: Decompress::new(false), staged, fed: 0, skip, left: length, crc, block, closed: false,
                     consumed: 0, held: Vec::new(), produced: 0, checked: false }
    }

    fn error(&self, code: &'static str, message: &str) -> StreamError {
        StreamError { code, message: format!("bzip2 block {}: {message}", self.block), member: self.block, start: 0,
                      end: self.consumed }
    }

    /// Stage the block's bits from `input`: how many bytes of it were used.
    fn stage(&mut self, input: &[u8]) -> usize {
        let mut used = 0;
        while self.skip > 0 && used < input.len() {
            let bits = u64::from(8 - self.skip).min(self.left);
            self.staged.push(u64::from(input[used]) & ((1 << (8 - self.skip)) - 1), 8 - self.skip);
            self.left -= bits.min(self.left); // a block of under 8 bits cannot be: its magic is 48
            self.skip = 0;
            used += 1;
        }
        let whole = ((self.left / 8) as usize).min(input.len() - used);
        self.staged.push_bytes(&input[used..used + whole]);
        self.left -= whole as u64 * 8;
        used += whole;
        if self.left > 0 && self.left < 8 && used < input.len() {
            self.staged.push(u64::from(input[used] >> (8 - self.left)), self.left as u32);
            self.left = 0;
            used += 1;
        }
        used
    }

    /// Decode what is staged into `held`, until the staged bits are used up or the block ends.
    fn run(&mut self) -> Result<(), StreamError> {
        loop {
            if self.held.capacity() - self.held.len() < HELD_STEP {
                self.held.reserve(HELD_STEP);
            }
            let before = (self.inner.total_in(), self.held.len());
            let status = self.inner.decompress_vec(&self.staged.bytes[self.fed..], &mut self.held);
            let progressed = self.inner.total_in() != before.0 || self.held.len() != before.1;
            self.fed += (self.inner.total_in() - before.0) as usize;
            if self.fed == self.staged.bytes.len() {
                self.staged.bytes.clear();
                self.fed = 0;
            }
            match status {
                Ok(Status::StreamEnd) => {
                    self.checked = true;
                    return Ok(());
                }
                Ok(_) if !progressed => return Ok(()), // wants more bits
                Ok(_) => {}
                Err(_) => return Err(self.error("BZIP2_DECODE_ERROR", "its data does not decode, or its CRC-32 does not match")),
            }
        }
    }

    /// Hand on what the matched CRC covers, as much as `out` has room for.
    fn hand_on(&mut self, out: &mut Vec<u8>) {
        let from = self.produced as usize;
        let n = (out.capacity() - out.len()).min(self.held.len() - from);
        out.extend_from_slice(&self.held[from..from + n]);
        self.produced += n as u64;
        if self.produced as usize == self.held.len() {
            self.held = Vec::new();
        }
    }

    fn finished(&self) -> bool {
        self.checked && self.held.is_empty()
    }
}

impl StreamDecoder for Bzip2Block {
    fn decode(&mut self, input: &[u8], out: &mut Vec<u8>) -> Result<usize, StreamError> {
        if self.checked {
            self.hand_on(out);
            return Ok(0);
        }
        let used = if self.staged.bytes.len() - self.fed < 1 << 16 { self.stage(input) } else { 0 };
        self.consumed += used as u64;
        if self.left == 0 && self.skip == 0 && !self.closed {
            // libbzip2 decodes a block once it sees what follows it: the end of a stream of one block
            self.staged.push(END_MAGIC, 48);
            self.staged.push(u64::from(self.crc), 32);
            self.staged.pad();
            self.closed = true;
        }
        self.run()?;
        if self.checked {
            self.hand_on(out);
        }
        Ok(used)
    }

    fn finish(&mut self) -> Result<(), StreamError> {
        if self.checked {
            Ok(())
        } else if !self.closed {
            Err(self.error("BZIP2_TRUNCATED", "the file ends inside it"))
        } else {
            Err(self.error("BZIP2_DECODE_ERROR", "it does not end where the next block starts (a false block boundary?)"))
        }
    }

    fn counts(&self) -> Counts {
        Counts::block(self.consumed, self.produced, self.finished())
    }

    fn withheld(&self) -> u64 {
        if self.checked { 0 } else { self.held.len() as u64 }
    }
}

#[cfg(test)]
mod tests {
    use super::{BlockScan, Bzip2Block};
    use crate::stream::testing::{run, trailing};
    use crate::stream::StreamDecoder;
    use bzip2::{Compress, Compression};

    fn bz(data: &[u8]) -> Vec<u8> {
        let mut c = Compress::new(Compression::new(1), 30);
        let mut out = Vec::with_capacity(data.len() + 1024);
        c.compress_vec(data, &mut out, bzip2::Action::Finish).unwrap();
        out
    }

    #[test]
    fn streams_back_to_back_decode_in_any_pieces_and_damage_is_named() {
        let data: Vec<u8> = (0..300_000u32).map(|i| (i.wrapping_mul(2_654_435_761) >> 13) as u8).collect();
        let first = bz(&data[..100_000]);
        let mut file = first.clone();
        file.extend(bz(&data[100_000..]));
        for piece in [1, 13, 4096, 1 << 20] {
            let (out, err) = run("bzip2", &file, piece);
            assert_eq!((out.len(), err), (data.len(), None), "piece {piece}");
            assert!(out == data);
        }
        let mut damaged = file.clone();
        damaged[first.len() + 2000] ^= 0x20;
        let (_, err) = run("bzip2", &damaged, 4096);
        let err = err.unwrap();
        assert_eq!((err.code, err.member, err.start), ("BZIP2_DECODE_ERROR", 1, first.len() as u64));
        let (_, cut) = run("bzip2", &first[..first.len() / 2], 100);
        assert_eq!(cut.unwrap().code, "BZIP2_TRUNCATED");
        let mut tail = first.clone();
        tail.extend(b"junk");
        assert_eq!(trailing("bzip2", &tail), Some((first.len() as u64, 4, 4)));
    }

    /// The magics as a byte-at-a-time scan finds them: each of the eight bit offsets a magic
    /// can end at, in every byte (the scan before the table of keys; the oracle here).
    fn reference_marks(data: &[u8]) -> Vec<super::Mark> {
        use super::{BLOCK_MAGIC, END_MAGIC, MAGIC_MASK};
        let (mut window, mut bits, mut pending, mut marks) = (0u64, 0u64, None::<(bool, u64, u64)>, Vec::new());
        for &byte in data {
            window = (window << 8) | u64::from(byte);
            bits += 8;
            if let Some((end, bit, after)) = pending {
                if bits >= after + 32 {
                    marks.push(super::Mark { end, bit, crc: (window >> (bits - after - 32)) as u32 });
                    pending = None;
                }
                continue;
            }
            for shift in (0..8u64).rev() {
                let tail = (window >> shift) & MAGIC_MASK;
                if (tail == BLOCK_MAGIC || tail == END_MAGIC) && bits >= 48 + shift {
                    pending = Some((tail == END_MAGIC, bits - shift - 48, bits - shift));
                    break;
                }
            }
        }
        marks
    }

    #[test]
    fn the_scan_finds_what_a_byte_at_a_time_scan_finds_whatever_the_pieces() {
        use super::{BLOCK_MAGIC, END_MAGIC};
        let mut seed = 0x9e37_79b9_7f4a_7c15u64;
        let mut next = || {
            seed ^= seed << 13;
            seed ^= seed >> 7;
            seed ^= seed << 17;
            seed
        };
        for case in 0..60 {
            let len = 64 + (next() % 3000) as usize;
            let mut data: Vec<u8> = (0..len).map(|_| next() as u8).collect();
            // magics (and CRCs) planted at random bits, some back to back, one ending the file
            let plant = |data: &mut Vec<u8>, bit: u64, magic: u64, crc: u64| {
                let value = u128::from(magic) << 32 | u128::from(crc);
                for b in 0..80u64 {
                    let (byte, mask) = (((bit + b) / 8) as usize, 0x80u8 >> ((bit + b) % 8));
                    if (value >> (79 - b)) & 1 == 1 { data[byte] |= mask } else { data[byte] &= !mask }
                }
            };
            for _ in 0..(case % 7) {
                let bit = next() % ((len as u64 - 10) * 8);
                let magic = if next() % 2 == 0 { BLOCK_MAGIC } else { END_MAGIC };
                plant(&mut data, bit, magic, next() & 0xffff_ffff);
            }
            if case % 3 == 0 {
                let bit = (len as u64) * 8 - 80 - case as u64 % 8; // its CRC ends in the last byte
                plant(&mut data, bit, END_MAGIC, next() & 0xffff_ffff);
            }
            let expected = reference_marks(&data);
            for piece in [1, 3, 7, 13, 22, 44, 45, 777, 4096] {
                let mut scan = BlockScan::default();
                scan.feed(&[]);
                for part in data.chunks(piece) {
                    scan.feed(part);
                    scan.feed(&[]);
                }
                assert_eq!(scan.marks, expected, "case {case} piece {piece}");
            }
        }
    }

    #[test]
    fn blocks_found_by_their_magic_decode_alone() {
        let data: Vec<u8> = (0..400_000u32).map(|i| (i.wrapping_mul(2_654_435_761) >> 13) as u8).collect();
        let file = bz(&data); // level 1: 100 kB blocks
        let mut scan = BlockScan::default();
        for piece in file.chunks(777) {
            scan.feed(piece);
        }
        let marks = scan.marks.clone();
        let (last, blocks) = marks.split_last().unwrap();
        assert!(blocks.len() == 5 && blocks.iter().all(|m| !m.end) && last.end, "{marks:?}");
        assert_eq!(marks[0].bit, 32);
        let combined = blocks.iter().fold(0u32, |c, m| c.rotate_left(1) ^ m.crc);
        assert_eq!(combined, last.crc);
        let mut all = Vec::new();
        for (i, pair) in marks.windows(2).enumerate() {
            let (start, end) = (pair[0].bit, pair[1].bit);
            let bytes = &file[(start / 8) as usize..end.div_ceil(8) as usize];
            let mut d = Bzip2Block::new(1, (start % 8) as u32, end - start, pair[0].crc, i as u64);
            let mut at = 0;
            loop {
                let mut out = Vec::with_capacity(5000);
                at += d.decode(&bytes[at..], &mut out).unwrap();
                let full = out.len() == out.capacity();
                all.extend(out);
                if at == bytes.len() && !full {
                    break;
                }
            }
            d.finish().unwrap();
        }
        assert!(all == data);
        let (start, end) = (marks[2].bit, marks[3].bit);
        let mut damaged = file[(start / 8) as usize..end.div_ceil(8) as usize].to_vec();
        damaged[500] ^= 0x10;
        let mut d = Bzip2Block::new(1, (start % 8) as u32, end - start, marks[2].crc, 2);
        let mut out = Vec::with_capacity(1 << 20);
        let err = d.decode(&damaged, &mut out).and_then(|_| d.decode(&[], &mut out)).and_then(|_| d.finish().map(|_| 0));
        assert_eq!(err.unwrap_err().code, "BZIP2_DECODE_ERROR");
    }
}
