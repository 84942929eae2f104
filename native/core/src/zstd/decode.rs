//! Decoding one zstd frame at a time with libzstd, fed compressed pieces in order. Block
//! headers are followed in the input as it is fed, so a failure is placed at the block that
//! failed: its index and its compressed byte range (formats.md 1.4-1.5).

use std::collections::VecDeque;

use zstd_safe::{DCtx, DParameter, InBuffer, OutBuffer, ResetDirective};

/// A block of the frame: index, and [start, end) relative to the frame's first byte.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Block {
    pub index: u64,
    pub start: u64,
    pub end: u64,
}

/// Follows block headers through the compressed bytes as they are fed.
#[derive(Debug)]
struct BlockTracker {
    next_header: u64, // frame-relative offset of the next block header
    carry: Vec<u8>, // the start of a header split across pieces
    index: u64,
    done: bool, // the last block's header was read
    recent: VecDeque<Block>,
}

impl BlockTracker {
    fn new(header_length: u64) -> Self {
        BlockTracker { next_header: header_length, carry: Vec::new(), index: 0, done: false, recent: VecDeque::new() }
    }

    /// `piece` starts at frame-relative offset `at`. Reads headers only until the block holding
    /// `at` is known: that block is all the decoder is fed next.
    fn observe(&mut self, piece: &[u8], at: u64) {
        while !self.done && self.next_header < at + piece.len() as u64 && self.next(at).is_none() {
            // the header's first bytes may be in `carry` already, from the piece before
            let from = ((self.next_header + self.carry.len() as u64).max(at) - at) as usize;
            if from >= piece.len() {
                return;
            }
            let need = 3 - self.carry.len();
            let take = need.min(piece.len() - from);
            self.carry.extend_from_slice(&piece[from..from + take]);
            if self.carry.len() < 3 {
                return;
            }
            let h = self.carry[0] as u64 | (self.carry[1] as u64) << 8 | (self.carry[2] as u64) << 16;
            self.carry.clear();
            let (last, btype, size) = (h & 1 == 1, (h >> 1) & 3, h >> 3);
            let start = self.next_header;
            let end = start + 3 + if btype == 1 { 1 } else { size };
            if self.recent.len() == 4 {
                self.recent.pop_front();
            }
            self.recent.push_back(Block { index: self.index, start, end });
            self.index += 1;
            self.next_header = end;
            self.done = last || btype == 3;
        }
    }

    /// The block whose bytes come next, once `consumed` bytes of the frame were taken in.
    fn next(&self, consumed: u64) -> Option<Block> {
        self.recent.iter().find(|b| b.end > consumed).copied()
    }
}

/// Why a frame stopped decoding.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct DecodeError {
    pub message: String, // worded as python-zstandard words libzstd's errors
    pub checksum: bool, // the content checksum failed: the frame decoded, its content is wrong
    pub block: Option<Block>,
}

pub struct FrameDecoder {
    dctx: DCtx<'static>,
    blocks: BlockTracker,
    consumed: u64, // compressed bytes of the frame taken in
    pub produced: u64,
    finished: bool,
    checksum_outside: bool,
    stored: Vec<u8>, // the content checksum's bytes, after the last block, as they pass
}

/// The window log libzstd may use for `max_window` bytes (10 to 31).
pub fn window_log(max_window: u64) -> u32 {
    (64 - max_window.saturating_sub(1).leading_zeros()).clamp(10, 31)
}

impl FrameDecoder {
    pub fn new(max_window: u64, header_length: u64) -> Result<Self, DecodeError> {
        let mut dctx = DCtx::create();
        dctx.set_parameter(DParameter::WindowLogMax(window_log(max_window))).map_err(|code| error(code, None))?;
        Ok(FrameDecoder { dctx, blocks: BlockTracker::new(header_length), consumed: 0, produced: 0, finished: false,
                          checksum_outside: false, stored: Vec::new() })
    }

    /// Whether the caller checks the content checksum of the frames from the next one on (an
    /// XXH64 of the output, made on another core): libzstd then skips it, and the checksum
    /// stored in the frame is kept for the caller (`stored_checksum`). A tenth of a decoding
    /// thread's time goes to it otherwise. Set it before a frame's first byte.
    pub fn check_checksum_outside(&mut self, outside: bool) -> Result<(), DecodeError> {
        self.dctx.set_parameter(DParameter::ForceIgnoreChecksum(outside)).map_err(|code| error(code, None))?;
        self.checksum_outside = outside;
        Ok(())
    }

    pub fn checksum_outside(&self) -> bool {
        self.checksum_outside
    }

    /// The content checksum the frame stores, once decoded to its end (None: it stores none,
    /// or libzstd checked it).
    pub fn stored_checksum(&self) -> Option<u32> {
        let bytes: [u8; 4] = self.stored.as_slice().try_into().ok()?;
        (self.finished && self.checksum_outside).then(|| u32::from_le_bytes(bytes))
    }

    /// Start on another frame with the same context (and parameters).
    pub fn reset(&mut self, header_length: u64) {
        let _ = self.dctx.reset(ResetDirective::SessionOnly);
        self.blocks = BlockTracker::new(header_length);
        self.consumed = 0;
        self.produced = 0;
        self.finished = false;
        self.stored.clear();
    }

    pub fn finished(&self) -> bool {
        self.finished
    }

    pub fn consumed(&self) -> u64 {
        self.consumed
    }

    /// Decode from `input` into the spare capacity of `out`: how much input was taken. Stops
    /// when `out` is full, the input is used up or the frame ends. libzstd is fed one block at
    /// a time, so that a failure is that block's; what came out before it stays in `out`.
    pub fn decode(&mut self, input: &[u8], out: &mut Vec<u8>) -> Result<usize, DecodeError> {
        let mut taken = 0;
        loop {
            let before = out.len();
            let step = self.decode_block(&input[taken..], out)?;
            taken += step;
            let stuck = step == 0 && out.len() == before; // wants more input than is here
            if self.finished || stuck || taken == input.len() || out.len() == out.capacity() {
                return Ok(taken);
            }
        }
    }

    /// One step of `decode`, within the current block.
    fn decode_block(&mut self, input: &[u8], out: &mut Vec<u8>) -> Result<usize, DecodeError> {
        self.blocks.observe(input, self.consumed);
        let block = self.blocks.next(self.consumed);
        let limit = block.map_or(input.len(), |b| ((b.end - self.consumed) as usize).min(input.len()));
        let mut inb = InBuffer::around(&input[..limit]);
        let before = out.len();
        let mut outb = OutBuffer::around_pos(out, before);
        let result = self.dctx.decompress_stream(&mut outb, &mut inb);
        let taken = inb.pos();
        if self.blocks.done && self.blocks.next(self.consumed).is_none() {
            // past the last block: what libzstd takes in now is the content checksum
            let room = 4 - self.stored.len().min(4);
            self.stored.extend_from_slice(&input[..taken.min(room)]);
        }
        self.consumed += taken as u64;
        let written = outb.pos() - before;
        self.produced += written as u64;
        match result {
            Ok(0) => {
                self.finished = true;
                Ok(taken)
            }
            Ok(_) => Ok(taken),
            Err(code) => Err(error(code, block)),
        }
    }

    /// Everything the frame holds has been fed: what is still buffered comes out.
    pub fn drain(&mut self, out: &mut Vec<u8>) -> Result<(), DecodeError> {
        self.decode(&[], out).map(|_| ())
    }
}

fn error(code: usize, block: Option<Block>) -> DecodeError {
    let name = zstd_safe::get_error_name(code);
    DecodeError { message: format!("zstd decompress error: {name}"), checksum: name.to_lowercase().contains("checksum"), block }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn compress(data: &[u8], level: i32) -> Vec<u8> {
        let mut cctx = zstd_safe::CCtx::create();
        // small blocks: a piece of the frame then holds many of them
        cctx.set_parameter(zstd_safe::CParameter::MaxBlockSize(4096)).unwrap();
        cctx.set_parameter(zstd_safe::CParameter::ChecksumFlag(true)).unwrap();
        cctx.set_parameter(zstd_safe::CParameter::CompressionLevel(level)).unwrap();
        let mut out = Vec::with_capacity(zstd_safe::compress_bound(data.len()));
        cctx.compress2(&mut out, data).unwrap();
        out
    }

    /// Decode a frame fed `piece` bytes at a time into output buffers of `room` bytes.
    fn decode_all(frame: &[u8], piece: usize, room: usize) -> Result<Vec<u8>, DecodeError> {
        let header = crate::zstd::walk::parse_frame_header(frame).unwrap();
        let mut d = FrameDecoder::new(1 << 27, header.length as u64)?;
        decode_with(&mut d, frame, piece, room)
    }

    fn decode_with(d: &mut FrameDecoder, frame: &[u8], piece: usize, room: usize) -> Result<Vec<u8>, DecodeError> {
        let mut all = Vec::new();
        for chunk in frame.chunks(piece) {
            let mut chunk = chunk;
            loop {
                let mut out = Vec::with_capacity(room);
                let taken = d.decode(chunk, &mut out)?;
                chunk = &chunk[taken..];
                let stuck = taken == 0 && out.is_empty();
                all.append(&mut out);
                if chunk.is_empty() || stuck {
                    break;
                }
            }
        }
        while !d.finished() {
            let mut out = Vec::with_capacity(room);
            d.drain(&mut out)?;
            if out.is_empty() {
                break;
            }
            all.append(&mut out);
        }
        Ok(all)
    }

    #[test]
    fn decodes_in_any_pieces() {
        let data: Vec<u8> = (0..600_000u32).map(|i| (i % 251) as u8 ^ (i / 7919) as u8).collect();
        let frame = compress(&data, 3);
        for (piece, room) in [(1, 64 << 10), (7, 100), (4096, 1), (4096, 64 << 10), (frame.len(), 5000)] {
            assert_eq!(decode_all(&frame, piece, room).unwrap(), data);
        }
    }

    #[test]
    fn a_checksum_checked_outside_is_the_frame_s_in_any_pieces_and_frames_without_one_give_none() {
        use std::hash::Hasher;
        let data: Vec<u8> = (0..300_000u32).map(|i| (i % 251) as u8 ^ (i / 7919) as u8).collect();
        let mut hasher = twox_hash::XxHash64::with_seed(0);
        hasher.write(&data);
        let frame = compress(&data, 3);
        let header = crate::zstd::walk::parse_frame_header(&frame).unwrap();
        let mut d = FrameDecoder::new(1 << 27, header.length as u64).unwrap();
        d.check_checksum_outside(true).unwrap();
        for (piece, room) in [(1, 64 << 10), (3, 100), (4096, 7), (frame.len(), 1 << 20)] {
            d.reset(header.length as u64);
            assert_eq!(decode_with(&mut d, &frame, piece, room).unwrap(), data);
            assert_eq!(d.stored_checksum(), Some(hasher.finish() as u32));
        }
        // libzstd no longer fails a frame whose checksum does not match: the caller does
        let mut wrong = frame.clone();
        *wrong.last_mut().unwrap() ^= 1;
        d.reset(header.length as u64);
        assert_eq!(decode_with(&mut d, &wrong, 5, 1000).unwrap(), data);
        assert_eq!(d.stored_checksum(), Some(hasher.finish() as u32 ^ 1 << 24));
        let mut cctx = zstd_safe::CCtx::create();
        cctx.set_parameter(zstd_safe::CParameter::ChecksumFlag(false)).unwrap();
        let mut bare = Vec::with_capacity(zstd_safe::compress_bound(data.len()));
        cctx.compress2(&mut bare, &data).unwrap();
        let header = crate::zstd::walk::parse_frame_header(&bare).unwrap();
        d.reset(header.length as u64);
        assert_eq!(decode_with(&mut d, &bare, 4096, 1 << 16).unwrap(), data);
        assert_eq!(d.stored_checksum(), None);
        // and back: libzstd checks the next frame's checksum itself
        d.reset(crate::zstd::walk::parse_frame_header(&wrong).unwrap().length as u64);
        d.check_checksum_outside(false).unwrap();
        assert!(decode_with(&mut d, &wrong, 5, 1000).unwrap_err().checksum);
        assert_eq!(d.stored_checksum(), None);
    }

    #[test]
    fn damage_names_the_block_that_failed() {
        let data: Vec<u8> = (0..600_000u32).map(|i| (i.wrapping_mul(2_654_435_761) >> 13) as u8 & 0x1F).collect();
        let frame = compress(&data, 3);
        let (mut exact, mut checksums) = (0, 0);
        for k in 1..40 {
            let spot = frame.len() * k / 40;
            let mut damaged = frame.clone();
            damaged[spot] ^= 0x55;
            let whole = decode_all(&damaged, damaged.len(), 64 << 10).err().map(|e| e.block);
            // output buffers smaller than a block end calls between a block header's bytes
            let small = decode_all(&damaged, 7, 1000).err().map(|e| e.block);
            assert_eq!(small, whole);
            match decode_all(&damaged, 4096, 64 << 10) {
                Err(DecodeError { block: Some(block), message, .. }) => {
                    // fed all at once, the frame's blocks are still fed one at a time
                    assert_eq!(whole, Some(Some(block)));
                    assert!(message.starts_with("zstd decompress error: "));
                    // never before the damage: a block decodes only from bytes up to its end
                    assert!(spot < block.end as usize, "{block:?} ends before {spot}");
                    exact += (block.start as usize <= spot) as u32;
                }
                Err(DecodeError { checksum: true, .. }) => checksums += 1,
                other => panic!("unexpected outcome at {spot}: {:?}", other.map(|d| d.len())),
            }
        }
        assert!(exact >= 3 && checksums > 0, "exact {exact}, checksum {checksums}");
    }
}
