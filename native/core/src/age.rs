//! age-encrypted files (age-encryption.org/v1, formats.md): the header read and unwrapped by
//! the `age` crate, and each 64 KiB STREAM chunk authenticated and decrypted by its
//! `StreamReader`. No cryptography here: this module only hands the reader the ciphertext it
//! asks for, a window at a time, and says which chunk failed.
//!
//! The reader is given random access (its `Seek`) over a window of ciphertext: any chunk can be
//! decrypted on its own, so the layers below (a zstd walk, parallel frames) read plaintext
//! where they need it.

use std::io::{self, Read, Seek, SeekFrom};
use std::str::FromStr;
use std::sync::{Arc, Mutex};

use age::stream::StreamReader;
use age::x25519;

/// Plaintext bytes per chunk, and the ciphertext each becomes (its 16-byte tag added).
pub const CHUNK: u64 = 64 * 1024;
pub const TAG: u64 = 16;
pub const SEALED_CHUNK: u64 = CHUNK + TAG;

/// Ciphertext the reader may read: `data` is the file's bytes from `base`; past the file's end
/// a read is the end of the file, elsewhere outside the window it would block.
#[derive(Default)]
struct Window {
    file_len: u64,
    base: u64,
    data: Vec<u8>,
    pos: u64,
}

#[derive(Clone, Default)]
struct Shared(Arc<Mutex<Window>>);

impl Shared {
    fn with<T>(&self, f: impl FnOnce(&mut Window) -> T) -> T {
        f(&mut self.0.lock().unwrap_or_else(|poisoned| poisoned.into_inner()))
    }
}

impl Read for Shared {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        self.with(|w| {
            if w.pos >= w.file_len {
                return Ok(0);
            }
            let end = w.base + w.data.len() as u64;
            if w.pos < w.base || w.pos >= end {
                return Err(io::Error::new(io::ErrorKind::WouldBlock, "outside the window of ciphertext"));
            }
            let from = (w.pos - w.base) as usize;
            let n = buf.len().min(w.data.len() - from).min((w.file_len - w.pos) as usize);
            buf[..n].copy_from_slice(&w.data[from..from + n]);
            w.pos += n as u64;
            Ok(n)
        })
    }
}

impl Seek for Shared {
    fn seek(&mut self, to: SeekFrom) -> io::Result<u64> {
        self.with(|w| {
            let target = match to {
                SeekFrom::Start(n) => Some(n),
                SeekFrom::End(d) => w.file_len.checked_add_signed(d),
                SeekFrom::Current(d) => w.pos.checked_add_signed(d),
            };
            w.pos = target.ok_or_else(|| io::Error::new(io::ErrorKind::InvalidInput, "seek before the start"))?;
            Ok(w.pos)
        })
    }
}

/// Why a file could not be opened for decryption.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum OpenError {
    /// The header is not a well-formed age v1 header (or not whole in the bytes given).
    Header(String),
    /// The identity text holds no usable identity.
    Identity(String),
    /// No identity given unwraps the file key.
    NoMatch,
    /// The file key unwrapped, but the header's MAC does not match: the header was changed.
    Mac,
}

/// The header's length with the payload nonce after it: where the first chunk starts.
pub fn payload_start(head: &[u8], file_len: u64) -> Result<u64, OpenError> {
    let window = Shared::default();
    window.with(|w| {
        w.file_len = file_len;
        w.data = head.to_vec();
    });
    age::Decryptor::new(window.clone()).map_err(header_error)?;
    Ok(window.with(|w| w.pos))
}

fn header_error(e: age::DecryptError) -> OpenError {
    match e {
        age::DecryptError::Io(io) if io.kind() == io::ErrorKind::WouldBlock => {
            OpenError::Header("the header is longer than the bytes read for it".into())
        }
        age::DecryptError::Io(io) if io.kind() == io::ErrorKind::UnexpectedEof => {
            OpenError::Header("the file ends inside the header".into())
        }
        other => OpenError::Header(other.to_string()),
    }
}

/// Identities from an identity file's text (as `age-keygen` writes it): X25519 keys, one per
/// line, with `#` comments.
pub fn identities(text: &str) -> Result<Vec<x25519::Identity>, OpenError> {
    let mut found = Vec::new();
    for line in text.lines().map(str::trim).filter(|l| !l.is_empty() && !l.starts_with('#')) {
        if !line.starts_with("AGE-SECRET-KEY-1") {
            return Err(OpenError::Identity("only X25519 identities (AGE-SECRET-KEY-1...) are supported".into()));
        }
        // the line itself is secret: never in a message
        found.push(x25519::Identity::from_str(line)
            .map_err(|_| OpenError::Identity("an AGE-SECRET-KEY-1 line is not a valid X25519 identity".into()))?);
    }
    if found.is_empty() {
        return Err(OpenError::Identity("no identity in it".into()));
    }
    Ok(found)
}

/// A chunk that did not decrypt: its index, a finding code and why.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ChunkFault {
    pub chunk: u64,
    pub code: &'static str,
    pub message: String,
}

/// The payload of one age file, decrypted a window of whole chunks at a time.
pub struct Payload {
    head: Vec<u8>, // the header and nonce: read again to start over after a failed chunk
    identities: Vec<x25519::Identity>,
    window: Shared,
    reader: StreamReader<Shared>,
    start: u64,
    file_len: u64,
}

impl Payload {
    /// `head`: the file's first bytes, the whole header and nonce in them; `file_len`: its size.
    pub fn open(head: &[u8], file_len: u64, identity_text: &str) -> Result<Self, OpenError> {
        let identities = identities(identity_text)?;
        let start = payload_start(head, file_len)?;
        let head = head[..start as usize].to_vec();
        let window = Shared::default();
        let reader = Self::reader(&window, &head, file_len, &identities)?;
        Ok(Payload { head, identities, window, reader, start, file_len })
    }

    fn reader(window: &Shared, head: &[u8], file_len: u64, identities: &[x25519::Identity])
        -> Result<StreamReader<Shared>, OpenError> {
        // the header is read from a window of its own; the ciphertext window is put back after
        let kept = window.with(|w| std::mem::replace(w, Window { file_len, base: 0, data: head.to_vec(), pos: 0 }));
        let decryptor = age::Decryptor::new(window.clone()).map_err(header_error);
        let pos = window.with(|w| w.pos);
        window.with(|w| *w = Window { pos, file_len, ..kept });
        decryptor?.decrypt(identities.iter().map(|i| i as &dyn age::Identity)).map_err(|e| match e {
            age::DecryptError::NoMatchingKeys | age::DecryptError::DecryptionFailed => OpenError::NoMatch,
            age::DecryptError::InvalidMac => OpenError::Mac,
            other => OpenError::Header(other.to_string()),
        })
    }

    /// Where the first chunk starts in the file.
    pub fn start(&self) -> u64 {
        self.start
    }

    /// Chunks in the file (the last may be cut short). One at least: even an empty plaintext
    /// has its final chunk, so a file that ends at the nonce has lost it.
    pub fn chunks(&self) -> u64 {
        (self.file_len - self.start).div_ceil(SEALED_CHUNK).max(1)
    }

    /// The ciphertext of chunk `k`: [start, end) in the file.
    pub fn sealed_range(&self, k: u64) -> (u64, u64) {
        let start = self.start + k * SEALED_CHUNK;
        (start, (start + SEALED_CHUNK).min(self.file_len))
    }

    /// Plaintext bytes of chunk `k`, if it is whole.
    fn plain_len(&self, k: u64) -> u64 {
        let (start, end) = self.sealed_range(k);
        (end - start).saturating_sub(TAG)
    }

    /// The plaintext's length, if every chunk authenticates.
    pub fn plaintext_len(&self) -> u64 {
        let chunks = self.chunks();
        (chunks - 1) * CHUNK + self.plain_len(chunks - 1)
    }

    /// Decrypt the chunks from `first` whose ciphertext `sealed` holds (whole chunks, from the
    /// first's start) into `out`. A chunk that fails adds its plaintext's length of zeros and a
    /// fault, and decryption goes on with the next: what follows it is checked too.
    pub fn decrypt(&mut self, first: u64, sealed: &[u8], out: &mut Vec<u8>) -> Vec<ChunkFault> {
        let base = self.sealed_range(first).0;
        self.window.with(|w| {
            w.base = base;
            w.data.clear();
            w.data.extend_from_slice(sealed);
        });
        let mut faults = Vec::new();
        let last = self.chunks().saturating_sub(1);
        let mut k = first;
        while k <= last && self.sealed_range(k).1 <= base + sealed.len() as u64 {
            let at = out.len();
            let want = self.plain_len(k) as usize;
            if let Err(fault) = self.chunk(k, k == last, want, out) {
                out.truncate(at);
                out.resize(at + want, 0);
                faults.push(fault);
                self.restart();
            }
            k += 1;
        }
        faults
    }

    fn chunk(&mut self, k: u64, last: bool, want: usize, out: &mut Vec<u8>) -> Result<(), ChunkFault> {
        let fault = |e: io::Error| ChunkFault::of(k, last, e);
        let at = k * CHUNK;
        if want > 0 {
            // one byte in, then back: a seek to a chunk's first byte would read the last chunk
            self.reader.seek(SeekFrom::Start(at + 1)).map_err(fault)?;
            self.reader.seek(SeekFrom::Current(-1)).map_err(fault)?;
            let from = out.len();
            out.resize(from + want, 0);
            self.reader.read_exact(&mut out[from..]).map_err(fault)?;
        } else {
            self.reader.seek(SeekFrom::Start(at)).map_err(fault)?;
        }
        if last {
            // the last chunk must be marked last: a file cut at a chunk boundary is not
            let mut probe = [0u8; 1];
            match self.reader.read(&mut probe).map_err(fault)? {
                0 => {}
                _ => return Err(ChunkFault { chunk: k, code: "AGE_CHUNK_AUTH", message: "plaintext continues past the file's end".into() }),
            }
        }
        Ok(())
    }

    /// A failed chunk leaves the reader's state behind: start a new one.
    fn restart(&mut self) {
        if let Ok(reader) = Self::reader(&self.window, &self.head, self.file_len, &self.identities) {
            self.reader = reader;
        }
    }
}

impl ChunkFault {
    fn of(chunk: u64, last: bool, e: io::Error) -> Self {
        if last && e.kind() == io::ErrorKind::UnexpectedEof {
            return ChunkFault { chunk, code: "AGE_TRUNCATED", message: format!(
                "chunk {chunk}, the file's last, is not marked as the final chunk: the file was cut short at a chunk boundary") };
        }
        let why = if last { " (the file's last chunk: damaged, or the file was cut short inside it)" } else { "" };
        ChunkFault { chunk, code: "AGE_CHUNK_AUTH", message: format!("chunk {chunk} fails authentication{why}: {e}") }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::Write;

    const KEY: &str = "AGE-SECRET-KEY-1GFPYYSJZGFPYYSJZGFPYYSJZGFPYYSJZGFPYYSJZGFPYYSJZGFPQ4EGAEX";

    fn encrypt(plain: &[u8]) -> Vec<u8> {
        let identity = x25519::Identity::from_str(KEY).unwrap();
        let recipient = identity.to_public();
        let encryptor = age::Encryptor::with_recipients(std::iter::once(&recipient as &dyn age::Recipient)).unwrap();
        let mut out = Vec::new();
        let mut writer = encryptor.wrap_output(&mut out).unwrap();
        writer.write_all(plain).unwrap();
        writer.finish().unwrap();
        out
    }

    fn plain(len: usize) -> Vec<u8> {
        (0..len).map(|i| (i * 7 % 251) as u8).collect()
    }

    fn all(file: &[u8], window_chunks: u64) -> (Vec<u8>, Vec<ChunkFault>) {
        let mut p = Payload::open(&file[..file.len().min(4096)], file.len() as u64, KEY).unwrap();
        let (mut out, mut faults) = (Vec::new(), Vec::new());
        let mut k = 0;
        while k < p.chunks() {
            let (start, _) = p.sealed_range(k);
            let end = p.sealed_range((k + window_chunks - 1).min(p.chunks() - 1)).1;
            faults.extend(p.decrypt(k, &file[start as usize..end as usize], &mut out));
            k += window_chunks;
        }
        (out, faults)
    }

    #[test]
    fn decrypts_in_any_window() {
        for len in [0, 1, 65535, 65536, 65537, 3 * 65536, 200_000] {
            let file = encrypt(&plain(len));
            for window in [1, 2, 5] {
                let (out, faults) = all(&file, window);
                assert_eq!(faults, vec![], "len {len}");
                assert_eq!(out, plain(len), "len {len} window {window}");
            }
        }
    }

    #[test]
    fn any_chunk_alone() {
        let file = encrypt(&plain(300_000));
        let mut p = Payload::open(&file[..4096], file.len() as u64, KEY).unwrap();
        for k in [3, 0, 4, 1, 1] {
            let (s, e) = p.sealed_range(k);
            let mut out = Vec::new();
            assert_eq!(p.decrypt(k, &file[s as usize..e as usize], &mut out), vec![]);
            let from = (k * CHUNK) as usize;
            assert_eq!(out, plain(300_000)[from..(from + 65536).min(300_000)]);
        }
    }

    #[test]
    fn a_flipped_bit_fails_its_chunk_only() {
        let mut file = encrypt(&plain(300_000));
        let p = Payload::open(&file[..4096], file.len() as u64, KEY).unwrap();
        let (s, _) = p.sealed_range(2);
        file[s as usize + 100] ^= 1;
        let (out, faults) = all(&file, 3);
        assert_eq!(faults.len(), 1);
        assert_eq!((faults[0].chunk, faults[0].code), (2, "AGE_CHUNK_AUTH"));
        assert_eq!(out.len(), 300_000);
        assert_eq!(out[..2 * 65536], plain(300_000)[..2 * 65536]);
        assert!(out[2 * 65536..3 * 65536].iter().all(|&b| b == 0));
        assert_eq!(out[3 * 65536..], plain(300_000)[3 * 65536..]);
    }

    #[test]
    fn chunks_after_a_failed_one_in_the_same_window_decrypt() {
        let mut file = encrypt(&plain(400_000));
        let p = Payload::open(&file[..4096], file.len() as u64, KEY).unwrap();
        for k in [1, 3] {
            file[p.sealed_range(k).0 as usize + 7] ^= 0x80;
        }
        let (out, faults) = all(&file, 10);
        assert_eq!(faults.iter().map(|f| f.chunk).collect::<Vec<_>>(), vec![1, 3]);
        for k in [0usize, 2, 4, 5] {
            let (s, e) = (k * 65536, ((k + 1) * 65536).min(400_000));
            assert_eq!(out[s..e], plain(400_000)[s..e], "chunk {k}");
        }
    }

    #[test]
    fn cut_at_a_chunk_boundary_is_truncation() {
        let file = encrypt(&plain(300_000));
        let p = Payload::open(&file[..4096], file.len() as u64, KEY).unwrap();
        let cut = &file[..p.sealed_range(1).1 as usize];
        let (_, faults) = all(cut, 2);
        assert_eq!(faults.iter().map(|f| (f.chunk, f.code)).collect::<Vec<_>>(), vec![(1, "AGE_TRUNCATED")]);
        let cut_inside = &file[..p.sealed_range(2).0 as usize + 1000];
        let (_, faults) = all(cut_inside, 2);
        assert_eq!(faults.iter().map(|f| (f.chunk, f.code)).collect::<Vec<_>>(), vec![(2, "AGE_CHUNK_AUTH")]);
    }

    #[test]
    fn the_wrong_key_or_a_bad_header_says_so() {
        let file = encrypt(&plain(10));
        let other = x25519::Identity::generate();
        let wrong = other.to_string();
        use age::secrecy::ExposeSecret;
        assert_eq!(Payload::open(&file, file.len() as u64, wrong.expose_secret()).err(), Some(OpenError::NoMatch));
        assert!(matches!(Payload::open(&file, file.len() as u64, "not a key").err(), Some(OpenError::Identity(_))));
        assert!(matches!(payload_start(&file[..20], 20), Err(OpenError::Header(_))));
        let mut bad_mac = file.clone();
        let mac = bad_mac.windows(4).position(|w| w == b"--- ").unwrap() + 5;
        // another base64 letter (a flipped bit can make a character that is not base64 at all)
        bad_mac[mac] = if bad_mac[mac] == b'A' { b'B' } else { b'A' };
        assert_eq!(Payload::open(&bad_mac, bad_mac.len() as u64, KEY).err(), Some(OpenError::Mac));
    }
}
