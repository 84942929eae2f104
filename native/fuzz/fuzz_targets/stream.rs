//! archcheck_core::stream's decoders (gzip, xz, lz4, bzip2), driven as layers/decoding.py drives
//! them: fed the file in pieces, into an output chunk handed on when full, then told the file ends.
//! For bzip2, also the block scan and each block between two magics decoded alone, as
//! layers/bzip2.py walks and decodes them. For gzip, also the deflate block walk of the first
//! member that layers/gzip.py runs after an inflate error.
//!
//! Input: 8 control bytes, then the file.
//!   control[0] bits 0-3: the output chunk's capacity, 1 KiB << (n % 9)
//!   control[1..5]: the lengths of the pieces read (archcheck_fuzz::piece_len)
//!   control[5]: the decoder, when the file starts with no codec's magic (n % 4)
//!
//! Output is capped at 8 MiB per input. Checks: the decoder never takes more than it is given,
//! never grows the chunk, never stalls; a failure names a member that started inside what it
//! was fed, ending at or after its start; a file that decodes whole was taken whole.
#![no_main]

use archcheck_core::stream::{self, bzip2::BlockScan, deflate::{BlockWalk, Stop}, StreamDecoder};
use archcheck_fuzz::{split, Pieces};
use libfuzzer_sys::fuzz_target;

const OUTPUT_CAP: u64 = 8 << 20;
const STALL_LIMIT: u32 = 64; // as decoding.py
const CODECS: [(&str, &[u8]); 4] = [("gzip", b"\x1f\x8b"), ("xz", b"\xfd7zXZ\x00"), ("lz4", b"\x04\x22\x4d\x18"), ("bzip2", b"BZh")];

fuzz_target!(|input: &[u8]| {
    let (control, data) = split(input);
    let codec = CODECS.iter().find(|(_, magic)| data.starts_with(magic))
        .map_or(CODECS[control[5] as usize % 4].0, |(codec, _)| codec);
    let mut d = stream::decoder(codec, 64 << 20, &[]).expect("a codec");
    drive(d.as_mut(), codec, data, &control);
    if codec == "bzip2" {
        blocks(data, &control);
    }
    if codec == "gzip" {
        deflate_blocks(data, &control);
    }
});

/// The walk stops inside what it was fed; its block starts at or before where it stopped.
fn deflate_blocks(data: &[u8], control: &[u8]) {
    let mut walk = BlockWalk::new();
    for (_, piece) in Pieces::new(data, 0, &control[1..5], 1 << 17) {
        walk.feed(piece);
    }
    walk.finish();
    assert!(walk.stop().is_some());
    assert!(walk.position() <= data.len() as u64, "{} of {}", walk.position(), data.len());
    if let Some(block) = walk.block() {
        assert!(block.start <= walk.position(), "{block:?} at {}", walk.position());
    } else {
        assert!(!matches!(walk.stop(), Some(Stop::Ended)), "a member ended without a block");
    }
}

/// Each block between two magics the scan finds, decoded alone (at most eight of them).
fn blocks(data: &[u8], control: &[u8]) {
    let mut scan = BlockScan::default();
    for (_, piece) in Pieces::new(data, 0, &control[1..5], 1 << 17) {
        scan.feed(piece);
    }
    for (i, pair) in scan.marks.windows(2).take(8).enumerate() {
        let (start, end) = (pair[0].bit, pair[1].bit);
        assert!(start < end && end.div_ceil(8) <= data.len() as u64, "{pair:?}");
        let bytes = &data[(start / 8) as usize..end.div_ceil(8) as usize];
        let params = [9, start % 8, end - start, u64::from(pair[0].crc), i as u64];
        let mut d = stream::decoder("bzip2-block", 64 << 20, &params).expect("a block decoder");
        drive(d.as_mut(), "bzip2", bytes, control);
    }
}

fn drive(d: &mut dyn StreamDecoder, codec: &str, data: &[u8], control: &[u8]) {
    let chunk = 1024usize << ((control[0] & 0xf) % 9);
    let mut out: Vec<u8> = Vec::with_capacity(chunk);
    let capacity = out.capacity();
    let mut total = 0u64;
    for (_, piece) in Pieces::new(data, 0, &control[1..5], 1 << 17) {
        let mut start = 0;
        let mut stalls = 0;
        loop {
            let produced = d.counts().produced;
            let taken = match d.decode(&piece[start..], &mut out) {
                Ok(taken) => taken,
                Err(e) => {
                    assert!(e.start <= e.end && e.end <= data.len() as u64, "{e:?}");
                    assert!(e.code.starts_with(&codec.to_uppercase()), "{e:?}");
                    return;
                }
            };
            assert!(taken <= piece.len() - start, "took {taken} of {} bytes", piece.len() - start);
            assert_eq!(out.capacity(), capacity, "the decoder writes into the chunk it is given, never grows it");
            start += taken;
            if out.len() == capacity {
                total += out.len() as u64;
                out.clear();
                if total > OUTPUT_CAP {
                    return;
                }
            }
            if start == piece.len() && out.len() < capacity {
                break;
            }
            stalls = if taken == 0 && d.counts().produced == produced { stalls + 1 } else { 0 };
            assert!(stalls <= STALL_LIMIT, "the decoder stopped taking input at {}", d.counts().consumed);
        }
    }
    if d.finish().is_ok() {
        assert_eq!(d.counts().consumed, data.len() as u64, "a whole file is taken whole");
    }
}
