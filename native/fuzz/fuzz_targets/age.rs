//! archcheck_core::age: the header read (payload_start) and the payload decrypted in windows of
//! whole chunks, as layers/age.py reads it, with the fuzz identity (seed.py encrypts its seeds
//! to it, so the chunks authenticate until the fuzzer changes them).
//!
//! Input: 8 control bytes, then the file.
//!   control[0]: chunks per window, 1 + n % 8
//!   control[1]: a chunk decrypted again alone afterwards, n % chunks
//!
//! Checks: every window gives exactly its chunks' plaintext length (a failed chunk as zeros),
//! each fault names a chunk of its window, and a chunk read again alone says the same.
#![no_main]

use archcheck_core::age::{payload_start, Payload, CHUNK};
use archcheck_fuzz::{split, AGE_IDENTITY};
use libfuzzer_sys::fuzz_target;

const MAX_CHUNKS: u64 = 64; // 4 MiB of plaintext per input

fuzz_target!(|input: &[u8]| {
    let (control, data) = split(input);
    let len = data.len() as u64;
    let head = &data[..data.len().min(64 << 10)];
    let start = payload_start(head, len);
    let Ok(mut payload) = Payload::open(head, len, AGE_IDENTITY) else { return };
    assert_eq!(start, Ok(payload.start()));
    let chunks = payload.chunks().min(MAX_CHUNKS);
    let window = 1 + u64::from(control[0]) % 8;
    let mut first = 0;
    let mut failed = Vec::new();
    while first < chunks {
        let last = (first + window).min(chunks) - 1;
        let (from, to) = (payload.sealed_range(first).0, payload.sealed_range(last).1);
        let mut out = Vec::new();
        let faults = payload.decrypt(first, &data[from as usize..to as usize], &mut out);
        let want: u64 = (first..=last).map(|k| payload.sealed_range(k)).map(|(s, e)| (e - s).saturating_sub(16)).sum();
        assert_eq!(out.len() as u64, want, "chunks {first}..={last}");
        assert!(faults.iter().all(|f| (first..=last).contains(&f.chunk)), "{faults:?}");
        failed.extend(faults.into_iter().map(|f| (f.chunk, f.code)));
        first = last + 1;
    }
    if chunks > 0 {
        let k = u64::from(control[1]) % chunks;
        let (from, to) = payload.sealed_range(k);
        let mut out = Vec::new();
        let again: Vec<_> = payload.decrypt(k, &data[from as usize..to as usize], &mut out)
            .into_iter().map(|f| (f.chunk, f.code)).collect();
        assert_eq!(again, failed.iter().filter(|(c, _)| *c == k).cloned().collect::<Vec<_>>());
        assert!(out.len() as u64 <= CHUNK);
    }
});
