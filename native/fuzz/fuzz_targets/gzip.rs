//! archcheck_core::gzip::GzipDecoder, driven as layers/decoding.py drives it: fed the file in
//! pieces, into an output chunk handed on when full, then told the file ends.
//!
//! Input: 8 control bytes, then the gzip file.
//!   control[0] bits 0-3: the output chunk's capacity, 1 KiB << (n % 9)
//!   control[1..5]: the lengths of the pieces read (archcheck_fuzz::piece_len)
//!
//! Output is capped at 8 MiB per input. Checks: the decoder never takes more than it is given,
//! never grows the chunk, never stalls; a failure names a member that started inside the file,
//! ending at or after its start; a file that decodes whole was taken whole.
#![no_main]

use archcheck_core::gzip::GzipDecoder;
use archcheck_fuzz::{split, Pieces};
use libfuzzer_sys::fuzz_target;

const OUTPUT_CAP: u64 = 8 << 20;
const STALL_LIMIT: u32 = 64; // as decoding.py

fuzz_target!(|input: &[u8]| {
    let (control, data) = split(input);
    let chunk = 1024usize << ((control[0] & 0xf) % 9);
    let mut d = GzipDecoder::new();
    let mut out: Vec<u8> = Vec::with_capacity(chunk);
    let capacity = out.capacity();
    let mut total = 0u64;
    for (_, piece) in Pieces::new(data, 0, &control[1..5], 1 << 17) {
        let mut start = 0;
        let mut stalls = 0;
        loop {
            let produced = d.produced;
            let taken = match d.decode(&piece[start..], &mut out) {
                Ok(taken) => taken,
                Err(e) => {
                    assert!(e.start <= e.end && e.end <= data.len() as u64, "{e:?}");
                    assert!(e.code.starts_with("GZIP_"), "{e:?}");
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
            stalls = if taken == 0 && d.produced == produced { stalls + 1 } else { 0 };
            assert!(stalls <= STALL_LIMIT, "the decoder stopped taking input at {}", d.consumed());
        }
    }
    if d.finish().is_ok() {
        assert_eq!(d.consumed(), data.len() as u64, "a whole file is taken whole");
    }
});
