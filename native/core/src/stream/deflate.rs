//! Where the blocks of a gzip member's deflate data lie (RFC 1951 3.2.3), walked again after
//! the inflater failed, to name the block it failed in: zlib-rs decodes but does not say where
//! its blocks begin, and a block's end is found only by decoding its symbols. Nothing is
//! written out: the output's length alone is kept, for distances that reach too far back.
//! Fed in pieces; memory is the piece and a small margin.

use super::gzip::HeaderReader;

/// More than one step reads: a symbol is at most 48 bits, a dynamic block's header 290 bytes.
const MARGIN: usize = 1024;
const MAX_BITS: usize = 15;
const LENGTH_BASE: [u16; 29] = [3, 4, 5, 6, 7, 8, 9, 10, 11, 13, 15, 17, 19, 23, 27, 31, 35, 43, 51, 59, 67, 83,
                                99, 115, 131, 163, 195, 227, 258];
const LENGTH_EXTRA: [u8; 29] = [0, 0, 0, 0, 0, 0, 0, 0, 1, 1, 1, 1, 2, 2, 2, 2, 3, 3, 3, 3, 4, 4, 4, 4, 5, 5, 5, 5, 0];
const DISTANCE_BASE: [u16; 30] = [1, 2, 3, 4, 5, 7, 9, 13, 17, 25, 33, 49, 65, 97, 129, 193, 257, 385, 513, 769,
                                  1025, 1537, 2049, 3073, 4097, 6145, 8193, 12289, 16385, 24577];
const DISTANCE_EXTRA: [u8; 30] = [0, 0, 0, 0, 1, 1, 2, 2, 3, 3, 4, 4, 5, 5, 6, 6, 7, 7, 8, 8, 9, 9, 10, 10, 11, 11,
                                  12, 12, 13, 13];
const CODE_LENGTH_ORDER: [usize; 19] = [16, 17, 18, 0, 8, 7, 9, 6, 10, 5, 11, 4, 12, 3, 13, 2, 14, 1, 15];

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Kind {
    Stored,
    Fixed,
    Dynamic,
    Reserved, // type 3, which no block may have
    Unread,   // the data ends inside its header
}

impl Kind {
    pub fn name(self) -> &'static str {
        match self {
            Kind::Stored => "stored",
            Kind::Fixed => "fixed Huffman",
            Kind::Dynamic => "dynamic Huffman",
            Kind::Reserved => "reserved type 3",
            Kind::Unread => "not read (the data ends in its header)",
        }
    }
}

/// A deflate block: its number in the member, its type, the byte holding its first bit
/// (from the member's first byte) and how much the member decoded to before it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Block {
    pub index: u64,
    pub kind: Kind,
    pub start: u64,
    pub output: u64,
}

/// How the walk stopped.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Stop {
    Ended,          // the final block ended
    Failed(String), // the data is not deflate here (zlib's words)
    Cut,            // the bytes given ran out inside a block
}

/// A canonical Huffman code: how many codes of each length, and the symbols in code order.
struct Code {
    count: [u16; MAX_BITS + 1],
    symbol: Vec<u16>,
}

impl Code {
    /// The code of these lengths and how incomplete it is (0: complete); None if over-subscribed.
    fn new(lengths: &[u8]) -> Option<(Code, i32)> {
        let mut count = [0u16; MAX_BITS + 1];
        for &length in lengths {
            count[length as usize] += 1;
        }
        let mut left: i32 = 1;
        for &n in &count[1..] {
            left = (left << 1) - n as i32;
            if left < 0 {
                return None;
            }
        }
        let mut next = [0usize; MAX_BITS + 2];
        for length in 1..=MAX_BITS {
            next[length + 1] = next[length] + count[length] as usize;
        }
        let mut symbol = vec![0u16; next[MAX_BITS + 1]];
        for (s, &length) in lengths.iter().enumerate() {
            if length != 0 {
                symbol[next[length as usize]] = s as u16;
                next[length as usize] += 1;
            }
        }
        Some((Code { count, symbol }, left))
    }

    /// zlib accepts an incomplete literal or distance code only when it is one code of one bit.
    fn usable(lengths: &[u8], what: &str) -> Result<Code, Halt> {
        match Code::new(lengths) {
            Some((code, 0)) => Ok(code),
            Some((code, _)) if code.count[1..].iter().map(|&n| n as usize).sum::<usize>() == code.count[1] as usize
                && code.count[1] <= 1 => Ok(code),
            _ => Err(Halt::Bad(format!("invalid {what} set"))),
        }
    }
}

enum Halt {
    Short,
    Bad(String),
}

enum Phase {
    Header, // the gzip header, before the deflate data
    BlockStart,
    Stored { left: u32 },
    Codes { literal: Code, distance: Code },
    Done,
}

/// The walk over one gzip member, fed its bytes from its first in order.
pub struct BlockWalk {
    head: HeaderReader, // read as it passes: a name of any length is not kept
    pending: Vec<u8>,
    base: u64, // the member offset of pending[0]
    bit: usize, // the next bit, in pending
    output: u64,
    phase: Phase,
    final_block: bool,
    blocks: u64,
    current: Option<Block>,
    stop: Option<Stop>,
}

impl Default for BlockWalk {
    fn default() -> Self {
        Self::new()
    }
}

impl BlockWalk {
    pub fn new() -> Self {
        BlockWalk { head: HeaderReader::default(), pending: Vec::new(), base: 0, bit: 0, output: 0, phase: Phase::Header, final_block: false,
                    blocks: 0, current: None, stop: None }
    }

    /// The block the walk is in, or was in when it stopped.
    pub fn block(&self) -> Option<Block> {
        self.current
    }

    pub fn stop(&self) -> Option<&Stop> {
        self.stop.as_ref()
    }

    /// Where the walk is: the first byte it has not read a bit of, from the member's first byte.
    pub fn position(&self) -> u64 {
        self.base + self.bit.div_ceil(8) as u64
    }

    pub fn feed(&mut self, data: &[u8]) {
        if self.stop.is_some() {
            return;
        }
        self.pending.extend_from_slice(data);
        self.run(false);
        let consumed = (self.bit / 8).min(self.pending.len());
        self.pending.drain(..consumed);
        self.base += consumed as u64;
        self.bit -= consumed * 8;
    }

    /// No more bytes: a walk still inside a block was cut there.
    pub fn finish(&mut self) {
        if self.stop.is_none() {
            self.run(true);
        }
        if self.stop.is_none() {
            self.stop = Some(Stop::Cut);
        }
    }

    fn run(&mut self, last: bool) {
        while self.stop.is_none() {
            if !last && self.available() < MARGIN * 8 && !matches!(self.phase, Phase::Header | Phase::Stored { .. }) {
                return;
            }
            match self.step(last) {
                Ok(true) => {}
                Ok(false) => return,
                Err(Halt::Short) if last => self.stop = Some(Stop::Cut),
                Err(Halt::Short) => return,
                Err(Halt::Bad(why)) => self.stop = Some(Stop::Failed(why)),
            }
        }
    }

    fn available(&self) -> usize {
        (self.pending.len() * 8).saturating_sub(self.bit)
    }

    /// One step; Ok(false): more bytes are needed to go on.
    fn step(&mut self, last: bool) -> Result<bool, Halt> {
        match std::mem::replace(&mut self.phase, Phase::Done) {
            Phase::Header => {
                let from = self.bit / 8;
                match self.head.feed(&self.pending[from..]) {
                    Ok(Some(length)) => {
                        self.bit = (from + length) * 8;
                        self.phase = Phase::BlockStart;
                    }
                    Ok(None) => {
                        self.bit = self.pending.len() * 8; // taken: feed lets them go
                        self.phase = Phase::Header;
                        return Err(Halt::Short);
                    }
                    Err((why, _)) => return Err(Halt::Bad(why)),
                }
            }
            Phase::BlockStart if self.final_block => self.stop = Some(Stop::Ended),
            Phase::BlockStart => self.block_header()?,
            Phase::Stored { left } => {
                let take = left.min(u32::try_from(self.available() / 8).unwrap_or(u32::MAX));
                self.bit += take as usize * 8;
                self.output += take as u64;
                self.phase = if take == left { Phase::BlockStart } else { Phase::Stored { left: left - take } };
                if take == 0 && left > 0 {
                    return if last { Err(Halt::Short) } else { Ok(false) };
                }
            }
            Phase::Codes { literal, distance } => {
                let ended = self.symbols(&literal, &distance, last)?;
                self.phase = if ended { Phase::BlockStart } else { Phase::Codes { literal, distance } };
                return Ok(ended);
            }
            Phase::Done => return Ok(false), // nothing more to do: never a loop
        }
        Ok(true)
    }

    fn block_header(&mut self) -> Result<(), Halt> {
        self.current = Some(Block { index: self.blocks, kind: Kind::Unread, start: self.base + (self.bit / 8) as u64,
                                     output: self.output });
        self.blocks += 1;
        self.final_block = self.bits(1)? == 1;
        let kind = match self.bits(2)? {
            0 => Kind::Stored,
            1 => Kind::Fixed,
            2 => Kind::Dynamic,
            _ => Kind::Reserved,
        };
        if let Some(block) = self.current.as_mut() {
            block.kind = kind;
        }
        self.phase = match kind {
            Kind::Reserved | Kind::Unread => return Err(Halt::Bad("invalid block type".into())),
            Kind::Stored => {
                self.bit = self.bit.div_ceil(8) * 8;
                let (length, complement) = (self.bits(16)?, self.bits(16)?);
                if length != !complement & 0xffff {
                    return Err(Halt::Bad("invalid stored block lengths".into()));
                }
                Phase::Stored { left: length }
            }
            Kind::Fixed => {
                let mut lengths = [8u8; 288];
                lengths[144..256].fill(9);
                lengths[256..280].fill(7);
                let literal = Code::new(&lengths).expect("the fixed code").0;
                // 32 codes, two of them (30, 31) invalid: read whole, as zlib reads them
                let distance = Code::new(&[5u8; 32]).expect("the fixed code").0;
                Phase::Codes { literal, distance }
            }
            Kind::Dynamic => self.dynamic_codes()?,
        };
        Ok(())
    }

    fn dynamic_codes(&mut self) -> Result<Phase, Halt> {
        let literals = self.bits(5)? as usize + 257;
        let distances = self.bits(5)? as usize + 1;
        let code_lengths = self.bits(4)? as usize + 4;
        if literals > 286 || distances > 30 {
            return Err(Halt::Bad("too many length or distance symbols".into()));
        }
        let mut lengths = [0u8; 19];
        for &at in &CODE_LENGTH_ORDER[..code_lengths] {
            lengths[at] = self.bits(3)? as u8;
        }
        if lengths.iter().all(|&n| n == 0) {
            // zlib takes an empty code-length code, reads one bit for each length as a zero,
            // and so finds no end-of-block code
            for _ in 0..literals + distances {
                self.next_bit()?;
            }
            return Err(Halt::Bad("invalid code -- missing end-of-block".into()));
        }
        let length_code = match Code::new(&lengths) {
            Some((code, 0)) => code,
            _ => return Err(Halt::Bad("invalid code lengths set".into())),
        };
        let mut lengths = vec![0u8; literals + distances];
        let mut at = 0;
        while at < lengths.len() {
            let symbol = self.decode(&length_code, "invalid code lengths set")?;
            if symbol < 16 {
                lengths[at] = symbol as u8;
                at += 1;
                continue;
            }
            let (value, repeat) = match symbol {
                16 if at == 0 => return Err(Halt::Bad("invalid bit length repeat".into())),
                16 => (lengths[at - 1], 3 + self.bits(2)? as usize),
                17 => (0, 3 + self.bits(3)? as usize),
                _ => (0, 11 + self.bits(7)? as usize),
            };
            if at + repeat > lengths.len() {
                return Err(Halt::Bad("invalid bit length repeat".into()));
            }
            lengths[at..at + repeat].fill(value);
            at += repeat;
        }
        if lengths[256] == 0 {
            return Err(Halt::Bad("invalid code -- missing end-of-block".into()));
        }
        let literal = Code::usable(&lengths[..literals], "literal/lengths")?;
        let distance = Code::usable(&lengths[literals..], "distances")?;
        Ok(Phase::Codes { literal, distance })
    }

    /// Symbols until the block's end (true) or until too few bytes are left to be sure of one.
    fn symbols(&mut self, literal: &Code, distance: &Code, last: bool) -> Result<bool, Halt> {
        while last || self.available() >= MARGIN * 8 {
            let symbol = self.decode(literal, "invalid literal/length code")? as usize;
            if symbol < 256 {
                self.output += 1;
                continue;
            }
            if symbol == 256 {
                return Ok(true);
            }
            let length_symbol = symbol - 257;
            if length_symbol >= LENGTH_BASE.len() {
                return Err(Halt::Bad("invalid literal/length code".into()));
            }
            let length = LENGTH_BASE[length_symbol] as u64 + self.bits(LENGTH_EXTRA[length_symbol] as u32)? as u64;
            let distance_symbol = self.decode(distance, "invalid distance code")? as usize;
            if distance_symbol >= DISTANCE_BASE.len() {
                return Err(Halt::Bad("invalid distance code".into()));
            }
            let reach = DISTANCE_BASE[distance_symbol] as u64
                + self.bits(DISTANCE_EXTRA[distance_symbol] as u32)? as u64;
            if reach > self.output {
                return Err(Halt::Bad("invalid distance too far back".into()));
            }
            self.output += length;
        }
        Ok(false)
    }

    fn bits(&mut self, count: u32) -> Result<u32, Halt> {
        let mut value = 0u32;
        for i in 0..count {
            value |= self.next_bit()? << i;
        }
        Ok(value)
    }

    fn next_bit(&mut self) -> Result<u32, Halt> {
        let byte = *self.pending.get(self.bit / 8).ok_or(Halt::Short)?;
        let bit = (byte >> (self.bit % 8)) & 1;
        self.bit += 1;
        Ok(bit as u32)
    }

    /// One symbol, its code read a bit at a time (codes are stored bit-reversed, first bit first).
    fn decode(&mut self, code: &Code, invalid: &str) -> Result<u16, Halt> {
        let (mut value, mut first, mut index) = (0i32, 0i32, 0i32);
        for &count in &code.count[1..] {
            value |= self.next_bit()? as i32;
            let count = count as i32;
            if value - first < count {
                return Ok(code.symbol[(index + value - first) as usize]);
            }
            index += count;
            first = (first + count) << 1;
            value <<= 1;
        }
        Err(Halt::Bad(invalid.into()))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use flate2::write::GzEncoder;
    use flate2::Compression;
    use std::io::Write;

    fn walk(file: &[u8], piece: usize) -> BlockWalk {
        let mut walk = BlockWalk::new();
        for part in file.chunks(piece) {
            walk.feed(part);
        }
        walk.finish();
        walk
    }

    /// Lines of words drawn from a small vocabulary: compressible, but not one repeated line.
    fn text(lines: usize) -> Vec<u8> {
        const WORDS: [&str; 12] = ["page", "tuple", "heap", "index", "vacuum", "wal", "segment", "checksum",
                                   "toast", "relation", "block", "lsn"];
        noise(lines * 6).chunks(6).enumerate()
            .flat_map(|(i, r)| format!("{i} {}\n", r.iter().map(|&b| WORDS[b as usize % 12]).collect::<Vec<_>>().join(" ")).into_bytes())
            .collect()
    }

    fn noise(n: usize) -> Vec<u8> {
        let mut x = 0x9e3779b97f4a7c15u64;
        (0..n).map(|_| { x ^= x << 13; x ^= x >> 7; x ^= x << 17; x as u8 }).collect()
    }

    /// A member in two parts with a full flush between them: the second part's blocks start
    /// at a known byte, after the empty stored block the flush writes.
    fn flushed(first: &[u8], second: &[u8]) -> (Vec<u8>, usize) {
        let mut encoder = GzEncoder::new(Vec::new(), Compression::new(6));
        encoder.write_all(first).unwrap();
        encoder.flush().unwrap();
        let boundary = encoder.get_ref().len();
        encoder.write_all(second).unwrap();
        (encoder.finish().unwrap(), boundary)
    }

    #[test]
    fn a_whole_member_walks_to_its_end_in_any_pieces() {
        let (file, _) = flushed(&text(20_000), &noise(300_000));
        for piece in [7, 4096, 1 << 20] {
            let walk = walk(&file, piece);
            assert_eq!(walk.stop(), Some(&Stop::Ended), "piece {piece}");
            assert_eq!(walk.position(), file.len() as u64 - 8, "the trailer follows the last block");
        }
    }

    #[test]
    fn a_damaged_block_type_is_named_at_its_first_byte() {
        let (first, second) = (text(20_000), noise(300_000));
        let (mut file, boundary) = flushed(&first, &second);
        assert_eq!(&file[boundary - 4..boundary], &[0, 0, 0xff, 0xff], "the flush's empty stored block");
        file[boundary] |= 0b110; // block type 3
        let walk = walk(&file, 4096);
        assert_eq!(walk.stop(), Some(&Stop::Failed("invalid block type".into())));
        let block = walk.block().unwrap();
        assert_eq!((block.start, block.output, block.kind), (boundary as u64, first.len() as u64, Kind::Reserved));
    }

    #[test]
    fn stored_lengths_and_a_cut_are_named_in_their_block() {
        let (first, second) = (text(20_000), noise(300_000));
        let (file, boundary) = flushed(&first, &second);
        let clean = walk(&file, 1 << 20);
        assert_eq!(clean.stop(), Some(&Stop::Ended));
        let mut damaged = file.clone();
        damaged[boundary + 1] ^= 0xff; // LEN of the stored block the noise is put in
        let walked = walk(&damaged, 4096);
        assert_eq!(walked.stop(), Some(&Stop::Failed("invalid stored block lengths".into())));
        assert_eq!(walked.block().unwrap().kind, Kind::Stored);
        assert_eq!(walked.block().unwrap().start, boundary as u64);
        let cut = walk(&file[..boundary + 100], 4096);
        assert_eq!(cut.stop(), Some(&Stop::Cut));
        assert_eq!(cut.block().unwrap().start, boundary as u64);
    }

    #[test]
    fn an_empty_code_length_code_fails_as_zlib_fails_it() {
        let mut deflate = vec![0x05u8]; // final, dynamic; then HLIT, HDIST, HCLEN and every length 0
        deflate.resize(64, 0);
        let mut out = Vec::with_capacity(1 << 16);
        let zlib = flate2::Decompress::new(false).decompress_vec(&deflate, &mut out, flate2::FlushDecompress::Finish);
        let message = zlib.unwrap_err().message().unwrap().to_string();
        let mut file = vec![0x1f, 0x8b, 8, 0, 0, 0, 0, 0, 0, 3];
        file.extend_from_slice(&deflate);
        assert_eq!(walk(&file, 7).stop(), Some(&Stop::Failed(message)));
    }

    #[test]
    fn a_name_of_any_length_is_read_as_it_passes() {
        let (file, _) = flushed(&text(5_000), b"");
        let walked = |member: &[u8], piece: usize| {
            let mut walk = BlockWalk::new();
            for bytes in member.chunks(piece) {
                walk.feed(bytes);
                assert!(walk.pending.len() <= piece + MARGIN, "{} bytes held", walk.pending.len());
            }
            walk.finish();
            (walk.stop().cloned(), walk.block().map(|b| b.index), walk.output)
        };
        let mut named = file[..10].to_vec(); // the same member with a 1 MiB name (FNAME)
        named[3] |= 0x08;
        named.extend(std::iter::repeat_n(b'n', 1 << 20));
        named.push(0);
        named.extend(&file[10..]);
        assert_eq!(walked(&named, 4096), walked(&file, 4096));
        assert_eq!(walked(&named, 4096).0, Some(Stop::Ended));
    }

    #[test]
    fn a_flipped_bit_fails_where_zlib_fails() {
        let (file, _) = flushed(&text(5_000), b"");
        let (mut decoder_failures, mut in_an_earlier_block) = (0, 0);
        for at in (20..file.len() - 8).step_by(97) {
            let mut damaged = file.clone();
            damaged[at] ^= 0x10;
            let mut inflate = flate2::Decompress::new(false);
            let mut out = Vec::with_capacity(16 << 20);
            let header = super::super::gzip::header_length(&damaged).unwrap().unwrap();
            let zlib = inflate.decompress_vec(&damaged[header..], &mut out, flate2::FlushDecompress::Finish);
            let walk = walk(&damaged, 4096);
            match zlib {
                Ok(flate2::Status::StreamEnd) => assert_eq!(walk.stop(), Some(&Stop::Ended), "flip at {at}"),
                Ok(_) => assert_eq!(walk.stop(), Some(&Stop::Cut), "flip at {at}"),
                Err(e) => {
                    decoder_failures += 1;
                    let stop = walk.stop().unwrap();
                    assert_eq!(stop, &Stop::Failed(e.message().unwrap().into()), "flip at {at}");
                    // a flip can end a block early and have later bits read as a new one
                    in_an_earlier_block += (walk.block().unwrap().start > at as u64) as usize;
                }
            }
        }
        assert!(decoder_failures > 10 && in_an_earlier_block * 5 < decoder_failures,
                "{in_an_earlier_block} of {decoder_failures}");
    }
}
