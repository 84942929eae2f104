//! xz (formats.md 7): streams back to back, each a header, blocks, an index and a footer, with
//! stream padding (zeros) between them. liblzma checks every integrity field the format
//! carries: the header's and footer's CRC-32, each block header's CRC-32, each block's check
//! (CRC-32, CRC-64 or SHA-256), and the index against the blocks it read.
//!
//! A stream of many blocks (`xz -T0`, pixz) can instead be decoded a block at a time, blocks in
//! parallel: `XzBlock` sets each block between a copy of its stream's header and an index and
//! footer made for it, so liblzma checks the block (its header's CRC-32, its check) and that its
//! sizes are those of the real index, whose CRC-32 the walk (layers/xz.py) checked.

use liblzma::stream::{Action, Error, Status, Stream};

use super::{Counts, Fault, Member, Step, StreamDecoder, StreamError};

const MAGIC: [u8; 6] = [0xfd, b'7', b'z', b'X', b'Z', 0x00];
const HEADER: u64 = 12;

pub struct Xz {
    stream: Option<Stream>,
    memory_limit: u64,
}

impl Xz {
    pub fn new(memory_limit: u64) -> Self {
        Xz { stream: None, memory_limit }
    }
}

fn fault(error: Error, taken: usize, at: u64) -> Fault {
    let (code, what) = match error {
        Error::Format => ("XZ_BAD_HEADER", "no xz stream header (magic bytes damaged?)".to_string()),
        Error::Options => ("XZ_BAD_HEADER", "a header asks for options xz does not have (a damaged header?)".to_string()),
        Error::MemLimit => ("XZ_MEMORY_LIMIT", "decoding needs more memory than --max-window allows".to_string()),
        Error::Data if at <= HEADER => ("XZ_BAD_HEADER", "the stream header is damaged (its CRC-32 does not match)".to_string()),
        Error::Data => ("XZ_DECODE_ERROR",
                        "compressed data is corrupt (a block's data, header or check, the index or the footer)".to_string()),
        other => ("XZ_DECODE_ERROR", format!("liblzma failed: {other}")),
    };
    Fault::new(code, what, taken)
}

impl Member for Xz {
    const UNIT: &'static str = "xz stream";
    const TRUNCATED: &'static str = "XZ_TRUNCATED";
    const MAGIC_LEN: usize = 6;
    const PADDING: Option<&'static str> = Some("XZ_DECODE_ERROR");

    fn is_start(magic: &[u8]) -> bool {
        magic == MAGIC
    }

    fn begin(&mut self) {
        self.stream = None; // made on first input: a decoder holds its dictionary
    }

    fn decode(&mut self, input: &[u8], out: &mut Vec<u8>) -> Result<Step, Fault> {
        if self.stream.is_none() {
            match Stream::new_stream_decoder(self.memory_limit, 0) {
                Ok(stream) => self.stream = Some(stream),
                Err(e) => return Err(Fault::new("XZ_DECODE_ERROR", format!("liblzma failed to start: {e}"), 0)),
            }
        }
        let stream = self.stream.as_mut().expect("made above");
        let before = stream.total_in();
        let status = stream.process_vec(input, out, Action::Run);
        let taken = (stream.total_in() - before) as usize;
        match status {
            Ok(Status::StreamEnd) => Ok(Step { taken, ended: true }),
            Ok(_) => Ok(Step { taken, ended: false }),
            Err(e) => Err(fault(e, taken, stream.total_in())),
        }
    }

    fn part(&self) -> &'static str {
        match &self.stream {
            Some(s) if s.total_in() >= HEADER => "its blocks, index or footer",
            _ => "its header",
        }
    }
}

fn variable_length(mut n: u64, out: &mut Vec<u8>) {
    while n >= 0x80 {
        out.push((n & 0x7f) as u8 | 0x80);
        n >>= 7;
    }
    out.push(n as u8);
}

/// A stream header for a check type.
fn stream_header(check: u8) -> Vec<u8> {
    let mut header = MAGIC.to_vec();
    header.extend([0, check]);
    header.extend(crc32fast::hash(&[0, check]).to_le_bytes());
    header
}

/// An index of one record and the footer after it.
fn index_and_footer(check: u8, unpadded: u64, uncompressed: u64) -> Vec<u8> {
    let mut index = vec![0u8];
    for n in [1, unpadded, uncompressed] {
        variable_length(n, &mut index);
    }
    while index.len() % 4 != 0 {
        index.push(0);
    }
    index.extend(crc32fast::hash(&index).to_le_bytes());
    let mut footer = ((index.len() / 4 - 1) as u32).to_le_bytes().to_vec();
    footer.extend([0, check]);
    index.extend(crc32fast::hash(&footer).to_le_bytes());
    index.extend(footer);
    index.extend(b"YZ");
    index
}

/// One block of an xz stream, fed its bytes (header, data, padding, check) in order.
pub struct XzBlock {
    xz: Xz,
    prefix: Option<Vec<u8>>,
    suffix: Vec<u8>,
    block: u64,
    unpadded: u64,
    uncompressed: u64,
    consumed: u64,
    produced: u64,
    finished: bool,
}

impl XzBlock {
    /// Block `block` of the file, as the index records it: `unpadded` bytes (its header, data
    /// and check) that decode to `uncompressed`; `check` is the stream's check type.
    pub fn new(memory_limit: u64, check: u8, unpadded: u64, uncompressed: u64, block: u64) -> Self {
        let mut xz = Xz::new(memory_limit);
        xz.begin();
        XzBlock {
            xz, prefix: Some(stream_header(check)), suffix: index_and_footer(check, unpadded, uncompressed), block,
            unpadded, uncompressed, consumed: 0, produced: 0, finished: false,
        }
    }

    fn error(&self, code: &'static str, message: String) -> StreamError {
        StreamError { code, message: format!("xz block {}: {message}", self.block), member: self.block, start: 0, end: self.consumed }
    }

    /// Feed bytes of archcheck's making, which give no output: all of them must be taken.
    fn feed(&mut self, bytes: &[u8], out: &mut Vec<u8>) -> Result<bool, StreamError> {
        let mut fed = 0;
        while fed < bytes.len() {
            let before = out.len();
            let step = self.xz.decode(&bytes[fed..], out).map_err(|f| self.mismatch(f))?;
            self.produced += (out.len() - before) as u64;
            if step.ended {
                return Ok(true);
            }
            if step.taken == 0 && out.len() == before {
                return Err(self.error("XZ_DECODE_ERROR", format!(
                    "it decodes to more than the {} bytes its index record says", self.uncompressed)));
            }
            fed += step.taken;
        }
        Ok(false)
    }

    fn mismatch(&self, fault: Fault) -> StreamError {
        if fault.code != "XZ_DECODE_ERROR" {
            return self.error(fault.code, fault.message);
        }
        self.error("XZ_DECODE_ERROR", format!(
            "its sizes are not those of its index record ({} bytes that decode to {}), or its check does not match",
            self.unpadded, self.uncompressed))
    }
}

impl StreamDecoder for XzBlock {
    fn decode(&mut self, input: &[u8], out: &mut Vec<u8>) -> Result<usize, StreamError> {
        if let Some(prefix) = self.prefix.take() {
            self.feed(&prefix, out)?;
        }
        let before = out.len();
        let result = self.xz.decode(input, out);
        self.produced += (out.len() - before) as u64;
        match result {
            Ok(step) if step.ended => {
                self.consumed += step.taken as u64;
                Err(self.error("XZ_DECODE_ERROR", "its bytes hold a whole stream's end, not one block".to_string()))
            }
            Ok(step) => {
                self.consumed += step.taken as u64;
                Ok(step.taken)
            }
            Err(fault) if fault.code == "XZ_DECODE_ERROR" => {
                self.consumed += fault.taken as u64;
                Err(self.error(fault.code, "its compressed data, header or check is damaged".to_string()))
            }
            Err(fault) => {
                self.consumed += fault.taken as u64;
                Err(self.error(fault.code, fault.message))
            }
        }
    }

    fn finish(&mut self) -> Result<(), StreamError> {
        let suffix = std::mem::take(&mut self.suffix);
        let mut none = Vec::new(); // every byte of the block's output came out before
        if self.prefix.is_some() || !self.feed(&suffix, &mut none)? {
            return Err(self.error("XZ_TRUNCATED", "the block ends early".to_string()));
        }
        self.finished = true;
        Ok(())
    }

    fn counts(&self) -> Counts {
        Counts::block(self.consumed, self.produced, self.finished)
    }
}

#[cfg(test)]
mod tests {
    use super::XzBlock;
    use crate::stream::testing::{run, trailing};
    use crate::stream::StreamDecoder;
    use liblzma::stream::{Check, Stream};

    fn xz(data: &[u8]) -> Vec<u8> {
        let mut s = Stream::new_easy_encoder(6, Check::Crc64).unwrap();
        let mut out = Vec::with_capacity(data.len() + 1024);
        s.process_vec(data, &mut out, liblzma::stream::Action::Finish).unwrap();
        out
    }

    #[test]
    fn streams_with_padding_between_decode_in_any_pieces() {
        let data: Vec<u8> = (0..60_000u32).map(|i| (i % 251) as u8).collect();
        let mut file = xz(&data[..20_000]);
        file.extend([0u8; 8]);
        file.extend(xz(&data[20_000..]));
        for piece in [1, 7, 4096, 1 << 20] {
            let (out, err) = run("xz", &file, piece);
            assert_eq!((out.len(), err), (data.len(), None), "piece {piece}");
            assert!(out == data);
        }
    }

    #[test]
    fn a_flipped_check_is_named_at_its_stream_and_trailing_bytes_are_counted() {
        let data = b"hello xz\n".repeat(2000);
        let first = xz(&data);
        let mut file = first.clone();
        file.extend(xz(&data));
        let end = file.len();
        file[end - 40] ^= 1; // inside the second stream's block check, index or footer
        let (_, err) = run("xz", &file, 4096);
        let err = err.unwrap();
        assert_eq!((err.code, err.member, err.start), ("XZ_DECODE_ERROR", 1, first.len() as u64));
        let (_, cut) = run("xz", &first[..first.len() - 5], 100);
        assert_eq!(cut.unwrap().code, "XZ_TRUNCATED");
        let mut tail = first.clone();
        tail.extend([0, 0, 0, 0, 9, 9]);
        assert_eq!(trailing("xz", &tail), Some((first.len() as u64, 6, 2)));
        for zeros in [1, 2, 3, 5] {  // stream padding comes in fours, before another stream or the end
            let mut padded = first.clone();
            padded.extend(vec![0; zeros]);
            assert_eq!(run("xz", &padded, 4096).1.map(|e| e.code), Some("XZ_DECODE_ERROR"), "{zeros}");
            padded.extend(&first);
            assert_eq!(run("xz", &padded, 4096).1.map(|e| e.code), Some("XZ_DECODE_ERROR"), "{zeros}");
        }
    }

    /// (offset, padded length, unpadded, uncompressed) of each block of a one-stream file,
    /// read from its index.
    fn blocks(file: &[u8]) -> Vec<(usize, usize, u64, u64)> {
        let backward = (u32::from_le_bytes(file[file.len() - 8..file.len() - 4].try_into().unwrap()) as usize + 1) * 4;
        let index = &file[file.len() - 12 - backward..];
        let mut at = 1;
        let mut vli = || {
            let (mut n, mut shift) = (0u64, 0);
            loop {
                let b = index[at];
                at += 1;
                n |= u64::from(b & 0x7f) << shift;
                shift += 7;
                if b < 0x80 {
                    return n;
                }
            }
        };
        let count = vli();
        let mut offset = 12;
        (0..count).map(|_| {
            let (unpadded, uncompressed) = (vli(), vli());
            let padded = (unpadded as usize).div_ceil(4) * 4;
            offset += padded;
            (offset - padded, padded, unpadded, uncompressed)
        }).collect()
    }

    /// One stream of several blocks, spliced from single-block streams as `xz -T` would write it.
    fn multi_block(data: &[u8]) -> Vec<u8> {
        let mut file = super::stream_header(1);
        let mut index = vec![0u8, 0];
        let mut records = 0;
        for piece in data.chunks(20_000) {
            let mut s = Stream::new_easy_encoder(1, Check::Crc32).unwrap();
            let mut one = Vec::with_capacity(piece.len() + 1024);
            s.process_vec(piece, &mut one, liblzma::stream::Action::Finish).unwrap();
            let [(offset, padded, unpadded, uncompressed)] = blocks(&one)[..] else { panic!("one block") };
            file.extend(&one[offset..offset + padded]);
            super::variable_length(unpadded, &mut index);
            super::variable_length(uncompressed, &mut index);
            records += 1;
        }
        index[1] = records;
        while index.len() % 4 != 0 {
            index.push(0);
        }
        index.extend(crc32fast::hash(&index).to_le_bytes());
        let mut footer = ((index.len() / 4 - 1) as u32).to_le_bytes().to_vec();
        footer.extend([0, 1]);
        file.extend(&index);
        file.extend(crc32fast::hash(&footer).to_le_bytes());
        file.extend(footer);
        file.extend(b"YZ");
        file
    }

    fn decode_block(file: &[u8], block: (usize, usize, u64, u64), index: u64) -> Result<Vec<u8>, super::super::StreamError> {
        let (offset, padded, unpadded, uncompressed) = block;
        let mut d = XzBlock::new(1 << 30, 1, unpadded, uncompressed, index);
        let mut all = Vec::new();
        let bytes = &file[offset..offset + padded];
        let mut at = 0;
        loop {
            let mut out = Vec::with_capacity(7000);
            at += d.decode(&bytes[at..], &mut out)?;
            let full = out.len() == out.capacity();
            all.extend(out);
            if at == bytes.len() && !full {
                break;
            }
        }
        d.finish()?;
        Ok(all)
    }

    #[test]
    fn blocks_decode_alone_and_their_damage_is_named() {
        let data: Vec<u8> = (0..100_000u32).map(|i| (i.wrapping_mul(2_654_435_761) >> 20) as u8).collect();
        let file = multi_block(&data);
        assert!(run("xz", &file, 4096) == (data.clone(), None)); // a stream as xz reads it
        let blocks = blocks(&file);
        assert_eq!(blocks.len(), 5);
        let mut all = Vec::new();
        for (i, &block) in blocks.iter().enumerate() {
            all.extend(decode_block(&file, block, i as u64).unwrap());
        }
        assert!(all == data);
        let mut damaged = file.clone();
        let (offset, padded, ..) = blocks[2];
        damaged[offset + padded - 2] ^= 1; // its CRC-32
        let err = decode_block(&damaged, blocks[2], 2).unwrap_err();
        assert_eq!((err.code, err.member, err.message.as_str()),
                   ("XZ_DECODE_ERROR", 2, "xz block 2: its compressed data, header or check is damaged"));
        let (offset, padded, unpadded, uncompressed) = blocks[1];
        let wrong = decode_block(&file, (offset, padded, unpadded, uncompressed + 1), 1).unwrap_err();
        assert!(wrong.message.starts_with("xz block 1: its sizes are not those of its index record"), "{}", wrong.message);
    }
}
