//! The zstd frame walk (archcheck_core::zstd::walk over a `&[u8]` ByteSource), the block walk
//! of each frame (`unwalked_problem`), and the decoding of each decodable frame with
//! archcheck_core::zstd::decode::FrameDecoder, driven as layers/decoding.py drives it: one
//! decoder reset for each frame, fed the frame's bytes in pieces, into an output chunk that is
//! handed on when full, until the frame is finished, fails, or its bytes run out.
//!
//! Input: 8 control bytes, then the zstd file.
//!   control[0] bits 0-3: the output chunk's capacity, 1 KiB << (n % 9)
//!   control[1..5]: the lengths of the compressed pieces read (archcheck_fuzz::piece_len)
//!
//! Output is capped at 8 MiB per input and windows at 8 MiB (frames asking for more are not
//! decodable), so a small input cannot make the fuzzer run out of memory.
//!
//! Checks: frames in order, inside the file, not overlapping; a frame the walk followed to its
//! end has no block-walk problem; a frame that decodes to its end was taken whole and holds
//! its content size (or ends on an empty block, which libzstd lets pass); a failure names one
//! of the frame's real blocks; the decoder never stalls.
#![no_main]

use archcheck_core::zstd::decode::{Block, FrameDecoder};
use archcheck_core::zstd::walk::{self, Frame, FrameWalk, Kind};
use archcheck_fuzz::{split, Pieces};
use libfuzzer_sys::fuzz_target;

const MAX_WINDOW: u64 = 8 << 20;
const OUTPUT_CAP: u64 = 8 << 20;
const STALL_LIMIT: u32 = 64; // as decoding.py
const BLOCK_MAX: usize = 1 << 17;

enum Outcome {
    Finished,
    Failed(Option<Block>),
    RanOut,
    Capped,
}

/// decoding.py's _decode_chunks, over the frame's bytes in memory.
fn decode_frame(d: &mut FrameDecoder, frame: &[u8], pattern: &[u8], chunk: usize, total: &mut u64) -> Outcome {
    let mut out: Vec<u8> = Vec::with_capacity(chunk);
    let capacity = out.capacity();
    let reads = Pieces::new(frame, 0, pattern, BLOCK_MAX).map(|(_, p)| p).chain(std::iter::once(&[][..]));
    for data in reads {
        let mut start = 0;
        let mut stalls = 0;
        loop {
            let produced = d.produced;
            let taken = match d.decode(&data[start..], &mut out) {
                Ok(taken) => taken,
                Err(e) => {
                    assert!(e.message.starts_with("zstd decompress error: "), "{e:?}");
                    return Outcome::Failed(e.block);
                }
            };
            assert!(taken <= data.len() - start, "took {taken} of {} bytes", data.len() - start);
            assert_eq!(out.capacity(), capacity, "the decoder writes into the chunk it is given, never grows it");
            assert!(d.produced >= produced, "produced went back");
            start += taken;
            let finished = d.finished();
            if !out.is_empty() && (finished || out.len() == capacity) {
                *total += out.len() as u64;
                out.clear();
                if *total > OUTPUT_CAP {
                    return Outcome::Capped;
                }
            }
            if finished {
                return Outcome::Finished;
            }
            if start == data.len() && out.len() < capacity {
                break; // wants more input, or there is none left
            }
            // neither took input nor gave output (decoding.py compares the chunk's length, which
            // is the same test with its chunks of 256 KiB or more, larger than a block's output)
            stalls = if taken == 0 && d.produced == produced { stalls + 1 } else { 0 };
            assert!(stalls <= STALL_LIMIT, "the decoder stopped taking input at frame offset {}", d.consumed());
        }
        if data.is_empty() {
            return Outcome::RanOut; // the frame's bytes ran out before its end
        }
    }
    Outcome::RanOut
}

/// The blocks of a frame the walk followed to its end: (index, start, end) relative to its
/// first byte.
fn real_blocks(frame: &[u8], header_length: usize) -> Vec<Block> {
    let mut blocks = Vec::new();
    let mut p = header_length;
    while p + 3 <= frame.len() {
        let h = frame[p] as u64 | (frame[p + 1] as u64) << 8 | (frame[p + 2] as u64) << 16;
        let (last, btype, size) = (h & 1 == 1, (h >> 1) & 3, h >> 3);
        let end = p as u64 + 3 + if btype == 1 { 1 } else { size };
        blocks.push(Block { index: blocks.len() as u64, start: p as u64, end });
        if last || btype == 3 {
            break;
        }
        p = end as usize;
    }
    blocks
}

fn check_frames(frames: &[Frame], size: u64) {
    let mut prev_end = 0;
    for (i, f) in frames.iter().enumerate() {
        assert_eq!(f.index, i as u64, "{f:?}");
        assert!(prev_end <= f.offset && f.offset <= f.end && f.end <= size, "{f:?} (previous frame ends at {prev_end})");
        prev_end = f.end;
    }
}

fuzz_target!(|input: &[u8]| {
    let (control, data) = split(input);
    let chunk = 1024usize << ((control[0] & 0xf) % 9);
    let size = data.len() as u64;

    let mut source: &[u8] = data;
    let (frames, findings) = FrameWalk::new(&mut source, MAX_WINDOW).run();
    check_frames(&frames, size);
    for f in &findings {
        assert!(f.start <= f.end, "{f:?}");
        assert!(f.frame.is_none_or(|i| i <= frames.len() as u64), "{f:?}");
        let _ = f.detail("detail");
    }

    let mut decoder: Option<FrameDecoder> = None;
    let mut total = 0u64;
    for f in &frames {
        if f.kind == Kind::Zstd {
            let mut source: &[u8] = data;
            let problem = walk::unwalked_problem(&mut source, f);
            if f.walked && f.intact {
                assert!(problem.is_none(), "{f:?}: the block walk it passed now says {problem:?}");
            }
            if let Some((_, start, end, _)) = problem {
                assert!(start <= end, "{f:?}: {problem:?}");
            }
        }
        if !f.decodable() || total > OUTPUT_CAP {
            continue;
        }
        let d = match decoder.as_mut() {
            Some(d) => {
                d.reset(f.header_length as u64);
                d
            }
            None => decoder.insert(FrameDecoder::new(MAX_WINDOW, f.header_length as u64).expect("a decoder for 8 MiB windows")),
        };
        let bytes = &data[f.offset as usize..f.end as usize];
        let outcome = decode_frame(d, bytes, &control[1..5], chunk, &mut total);
        assert!(d.consumed() <= bytes.len() as u64, "{f:?}: consumed {} bytes", d.consumed());
        let whole = f.walked && f.intact;
        match outcome {
            Outcome::Finished if whole => {
                assert_eq!(d.consumed(), bytes.len() as u64, "{f:?}: decoding ended before the frame's end");
                // libzstd checks the content size at the end of the last block, unless that block
                // is empty (zstd_decompress.c skips to the checksum): stream.py's
                // ZSTD_CONTENT_SIZE_MISMATCH is what catches that frame
                if f.content_size.is_some_and(|content| content != d.produced) {
                    let last = real_blocks(bytes, f.header_length).pop();
                    assert!(last.is_some_and(|b| b.end - b.start == 3), "{f:?}: decoded {} bytes", d.produced);
                }
            }
            Outcome::Failed(Some(block)) if whole => {
                let blocks = real_blocks(bytes, f.header_length);
                let near: Vec<&Block> = blocks.iter().filter(|b| b.end > block.start).take(2).collect();
                assert!(blocks.contains(&block), "{f:?}: the failure names {block:?}, not one of its {} blocks (from its \
                        start on: {near:?})", blocks.len());
            }
            _ => {}
        }
    }
});
