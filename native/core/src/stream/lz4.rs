//! lz4 frames (formats.md 7): frames back to back, skippable frames among them. A frame is a
//! descriptor with its own checksum byte, blocks (each optionally with the xxHash32 of its
//! stored bytes), an end mark, and optionally the content size and the xxHash32 of the
//! content. Every one of them is checked; blocks decode with lz4_flex, safe code only.

use std::hash::Hasher;

use twox_hash::XxHash32;

use super::{gather, Fault, Member, Step};

const MAGIC: u32 = 0x184D_2204;
const SKIPPABLE: std::ops::RangeInclusive<u32> = 0x184D_2A50..=0x184D_2A5F;
const HISTORY: usize = 64 * 1024; // what a linked block may refer back to

fn xxh32(data: &[u8], seed: u32) -> u32 {
    XxHash32::oneshot(seed, data)
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Stage {
    Magic,
    Descriptor,
    BlockSize,
    Block,
    Emit,
    ContentChecksum,
    SkipSize,
    Skip,
}

pub struct Lz4 {
    stage: Stage,
    gathered: Vec<u8>,
    independent: bool,
    block_checksum: bool,
    content_checksum: bool,
    content_size: Option<u64>,
    max_block: usize,
    block_length: usize, // stored bytes of the block being gathered, its checksum included
    block_raw: bool,
    blocks: u64,
    decoded: Vec<u8>, // the block's output, handed out as room allows
    emitted: usize,
    history: Vec<u8>,
    hasher: XxHash32,
    output: u64,
    skip: u64,
}

impl Default for Lz4 {
    fn default() -> Self {
        Self::new()
    }
}

fn u32_at(bytes: &[u8], at: usize) -> u32 {
    u32::from_le_bytes(bytes[at..at + 4].try_into().expect("4 bytes"))
}

impl Lz4 {
    pub fn new() -> Self {
        Lz4 {
            stage: Stage::Magic, gathered: Vec::new(), independent: true, block_checksum: false,
            content_checksum: false, content_size: None, max_block: 0, block_length: 0, block_raw: false,
            blocks: 0, decoded: Vec::new(), emitted: 0, history: Vec::new(), hasher: XxHash32::with_seed(0), output: 0,
            skip: 0,
        }
    }

    fn magic(&mut self, input: &[u8], taken: usize) -> Result<usize, Fault> {
        let step = gather(&mut self.gathered, 4, input);
        if self.gathered.len() == 4 {
            let magic = u32_at(&self.gathered, 0);
            self.gathered.clear();
            self.stage = match magic {
                MAGIC => Stage::Descriptor,
                m if SKIPPABLE.contains(&m) => Stage::SkipSize,
                m => return Err(Fault::new("LZ4_BAD_HEADER", format!("no lz4 frame magic (found {m:08x})"), taken + step)),
            };
        }
        Ok(step)
    }

    fn descriptor(&mut self, input: &[u8], taken: usize) -> Result<usize, Fault> {
        let mut step = gather(&mut self.gathered, 1, input);
        if self.gathered.is_empty() {
            return Ok(step);
        }
        let flags = self.gathered[0];
        let length = 3 + if flags & 0x08 != 0 { 8 } else { 0 } + if flags & 0x01 != 0 { 4 } else { 0 };
        step += gather(&mut self.gathered, length, &input[step..]);
        if self.gathered.len() < length {
            return Ok(step);
        }
        let bad = |what: String| Err(Fault::new("LZ4_BAD_HEADER", what, taken + step));
        let d = std::mem::take(&mut self.gathered);
        let expected = (xxh32(&d[..length - 1], 0) >> 8) as u8;
        if d[length - 1] != expected {
            return bad(format!("the frame descriptor's checksum byte is {:02x}, its bytes give {expected:02x}", d[length - 1]));
        }
        if flags >> 6 != 1 || flags & 0x02 != 0 || d[1] & 0x8f != 0 {
            return bad(format!("version or reserved bits in the descriptor are wrong (FLG {flags:02x}, BD {:02x})", d[1]));
        }
        let size_id = (d[1] >> 4) & 0x07;
        if size_id < 4 {
            return bad(format!("block maximum size id {size_id} does not exist"));
        }
        if flags & 0x01 != 0 {
            return bad(format!("the frame needs dictionary {:08x}, which archcheck is not given", u32_at(&d, length - 5)));
        }
        self.max_block = 1 << (8 + 2 * size_id as usize);
        self.independent = flags & 0x20 != 0;
        self.block_checksum = flags & 0x10 != 0;
        self.content_checksum = flags & 0x04 != 0;
        self.content_size = (flags & 0x08 != 0).then(|| u64::from_le_bytes(d[2..10].try_into().expect("8 bytes")));
        self.stage = Stage::BlockSize;
        Ok(step)
    }

    fn block_size(&mut self, input: &[u8], taken: usize) -> Result<Step, Fault> {
        let step = gather(&mut self.gathered, 4, input);
        if self.gathered.len() < 4 {
            return Ok(Step { taken: step, ended: false });
        }
        let word = u32_at(&self.gathered, 0);
        self.gathered.clear();
        if word == 0 {
            if self.content_checksum {
                self.stage = Stage::ContentChecksum;
                return Ok(Step { taken: step, ended: false });
            }
            return self.end(step, taken + step);
        }
        let length = (word & 0x7fff_ffff) as usize;
        if length > self.max_block {
            return Err(Fault::new("LZ4_DECODE_ERROR", format!(
                "block {} says it holds {length} bytes, over the frame's block size {}", self.blocks, self.max_block), taken + step));
        }
        self.block_raw = word & 0x8000_0000 != 0;
        self.block_length = length + if self.block_checksum { 4 } else { 0 };
        self.stage = Stage::Block;
        Ok(Step { taken: step, ended: false })
    }

    fn block(&mut self, input: &[u8], taken: usize) -> Result<usize, Fault> {
        let step = gather(&mut self.gathered, self.block_length, input);
        if self.gathered.len() < self.block_length {
            return Ok(step);
        }
        let stored = std::mem::take(&mut self.gathered);
        let data = &stored[..stored.len() - if self.block_checksum { 4 } else { 0 }];
        if self.block_checksum {
            let (actual, expected) = (xxh32(data, 0), u32_at(&stored, data.len()));
            if actual != expected {
                return Err(Fault::new("LZ4_BLOCK_CHECKSUM", format!(
                    "block {}: xxHash32 of its bytes is {actual:08x}, the block says {expected:08x}", self.blocks), taken + step));
            }
        }
        self.decoded.clear();
        if self.block_raw {
            self.decoded.extend_from_slice(data);
        } else {
            self.decoded.resize(self.max_block, 0);
            let dict: &[u8] = if self.independent { &[] } else { &self.history };
            match lz4_flex::block::decompress_into_with_dict(data, &mut self.decoded, dict) {
                Ok(n) => self.decoded.truncate(n),
                Err(e) => return Err(Fault::new("LZ4_DECODE_ERROR", format!("block {} does not decode: {e}", self.blocks), taken + step)),
            }
        }
        self.hasher.write(&self.decoded);
        if !self.independent {
            self.history.extend_from_slice(&self.decoded);
            let excess = self.history.len().saturating_sub(HISTORY);
            self.history.drain(..excess);
        }
        self.gathered = stored; // its allocation serves the next block
        self.gathered.clear();
        self.blocks += 1;
        self.emitted = 0;
        self.stage = Stage::Emit;
        Ok(step)
    }

    fn emit(&mut self, out: &mut Vec<u8>) {
        let n = (out.capacity() - out.len()).min(self.decoded.len() - self.emitted);
        out.extend_from_slice(&self.decoded[self.emitted..self.emitted + n]);
        self.emitted += n;
        self.output += n as u64;
        if self.emitted == self.decoded.len() {
            self.stage = Stage::BlockSize;
        }
    }

    fn content_checksum(&mut self, input: &[u8], taken: usize) -> Result<Step, Fault> {
        let step = gather(&mut self.gathered, 4, input);
        if self.gathered.len() < 4 {
            return Ok(Step { taken: step, ended: false });
        }
        let (actual, expected) = (self.hasher.finish_32(), u32_at(&self.gathered, 0));
        if actual != expected {
            return Err(Fault::new("LZ4_CONTENT_CHECKSUM", format!(
                "xxHash32 of its {} bytes is {actual:08x}, the frame says {expected:08x}", self.output), taken + step));
        }
        self.end(step, taken + step)
    }

    /// The frame's end: its content size, when it gives one, must match.
    fn end(&mut self, step: usize, taken: usize) -> Result<Step, Fault> {
        if let Some(size) = self.content_size.filter(|&size| size != self.output) {
            return Err(Fault::new("LZ4_SIZE_MISMATCH", format!(
                "{} bytes decoded, the frame says {size}", self.output), taken));
        }
        Ok(Step { taken: step, ended: true })
    }
}

impl Member for Lz4 {
    const UNIT: &'static str = "lz4 frame";
    const TRUNCATED: &'static str = "LZ4_TRUNCATED";
    const MAGIC_LEN: usize = 4;

    fn is_start(magic: &[u8]) -> bool {
        magic.len() == 4 && {
            let m = u32_at(magic, 0);
            m == MAGIC || SKIPPABLE.contains(&m)
        }
    }

    fn begin(&mut self) {
        let mut fresh = Lz4::new();
        std::mem::swap(&mut fresh.gathered, &mut self.gathered); // keep the allocations
        std::mem::swap(&mut fresh.decoded, &mut self.decoded);
        fresh.gathered.clear();
        *self = fresh;
    }

    /// Works through stages until the input is used up, `out` is full, or the frame ends.
    fn decode(&mut self, input: &[u8], out: &mut Vec<u8>) -> Result<Step, Fault> {
        let mut taken = 0;
        loop {
            let rest = &input[taken..];
            if self.stage == Stage::Emit {
                if out.len() == out.capacity() {
                    return Ok(Step { taken, ended: false });
                }
                self.emit(out);
                continue;
            }
            if rest.is_empty() {
                return Ok(Step { taken, ended: false });
            }
            let step = match self.stage {
                Stage::Magic => self.magic(rest, taken)?,
                Stage::Descriptor => self.descriptor(rest, taken)?,
                Stage::BlockSize | Stage::ContentChecksum => {
                    let step = if self.stage == Stage::BlockSize { self.block_size(rest, taken)? } else { self.content_checksum(rest, taken)? };
                    if step.ended {
                        return Ok(Step { taken: taken + step.taken, ended: true });
                    }
                    step.taken
                }
                Stage::Block => self.block(rest, taken)?,
                Stage::SkipSize => {
                    let step = gather(&mut self.gathered, 4, rest);
                    if self.gathered.len() == 4 {
                        self.skip = u32_at(&self.gathered, 0) as u64;
                        self.gathered.clear();
                        self.stage = Stage::Skip;
                    }
                    step
                }
                Stage::Skip => {
                    let step = (self.skip.min(rest.len() as u64)) as usize;
                    self.skip -= step as u64;
                    if self.skip == 0 {
                        return Ok(Step { taken: taken + step, ended: true });
                    }
                    step
                }
                Stage::Emit => unreachable!("handled above"),
            };
            taken += step;
            if self.stage == Stage::Skip && self.skip == 0 {
                return Ok(Step { taken, ended: true }); // an empty skippable frame
            }
        }
    }

    /// A frame (not a skippable one: it has a descriptor) with neither block nor content checksums.
    fn unchecked(&self) -> bool {
        self.max_block > 0 && !self.block_checksum && !self.content_checksum
    }

    fn part(&self) -> &'static str {
        match self.stage {
            Stage::Magic | Stage::Descriptor => "its header",
            Stage::BlockSize | Stage::Block | Stage::Emit => "its blocks",
            Stage::ContentChecksum => "its content checksum",
            Stage::SkipSize | Stage::Skip => "a skippable frame",
        }
    }
}

#[cfg(test)]
mod tests {
    use super::xxh32;
    use crate::stream::testing::{run, trailing};

    /// A frame of `blocks` (raw when `raw`), block and content checksums, 64 KiB blocks.
    fn frame(blocks: &[&[u8]], raw: bool) -> Vec<u8> {
        let mut f = 0x184D_2204u32.to_le_bytes().to_vec();
        let descriptor = [0x40 | 0x20 | 0x10 | 0x04, 0x40];
        f.extend(descriptor);
        f.push((xxh32(&descriptor, 0) >> 8) as u8);
        let mut all = Vec::new();
        for b in blocks {
            all.extend_from_slice(b);
            let stored = if raw { b.to_vec() } else { lz4_flex::block::compress(b) };
            f.extend(((stored.len() as u32) | if raw { 0x8000_0000 } else { 0 }).to_le_bytes());
            f.extend(&stored);
            f.extend(xxh32(&stored, 0).to_le_bytes());
        }
        f.extend(0u32.to_le_bytes());
        f.extend(xxh32(&all, 0).to_le_bytes());
        f
    }

    #[test]
    fn frames_and_skippable_frames_decode_in_any_pieces() {
        let a: Vec<u8> = (0..60_000u32).map(|i| (i % 97) as u8).collect();
        let b = b"second block ".repeat(3000);
        let mut file = frame(&[&a, &b], false);
        file.extend(0x184D_2A5Au32.to_le_bytes());
        file.extend(5u32.to_le_bytes());
        file.extend(b"skip!");
        file.extend(frame(&[b"raw block"], true));
        let mut expected = a.clone();
        expected.extend(&b);
        expected.extend(b"raw block");
        for piece in [1, 5, 4096, 1 << 20] {
            let (out, err) = run("lz4", &file, piece);
            assert_eq!((out.len(), err), (expected.len(), None), "piece {piece}");
            assert!(out == expected);
        }
        let mut tail = file.clone();
        tail.extend(b"zz");
        assert_eq!(trailing("lz4", &tail), Some((file.len() as u64, 2, 2)));
    }

    #[test]
    fn every_checksum_is_checked() {
        let a = b"lz4 content ".repeat(5000);
        let file = frame(&[&a], false);
        let codes = |at: usize| {
            let mut d = file.clone();
            d[at] ^= 1;
            run("lz4", &d, 4096).1.map(|e| e.code)
        };
        assert_eq!(codes(6), Some("LZ4_BAD_HEADER")); // the descriptor's checksum byte
        assert_eq!(codes(20), Some("LZ4_BLOCK_CHECKSUM")); // inside the block
        assert_eq!(codes(file.len() - 2), Some("LZ4_CONTENT_CHECKSUM"));
        assert_eq!(run("lz4", &file[..file.len() - 6], 100).1.unwrap().code, "LZ4_TRUNCATED");
    }
}
