//! gzip (RFC 1952; formats.md 7): one or more members back to back, each a header, raw
//! deflate and a trailer (CRC-32 and length of the member's output). Decoded member after
//! member, fed compressed pieces in order; every integrity field is checked: header flags and
//! its CRC-16 when present, the deflate stream, CRC-32 and ISIZE. Members cannot be found
//! without decoding (gzip stores no compressed length), so a file decodes serially.
//!
//! A failure stops the decode, as it stops `gzip -d` and with it a `tar xzf` restore: what
//! came out before it stays in `out` and is walked; the member it is in is named.

use flate2::{Decompress, FlushDecompress, Status};

const ID: [u8; 2] = [0x1f, 0x8b];
const DEFLATE: u8 = 8;
const FHCRC: u8 = 0x02;
const FEXTRA: u8 = 0x04;
const FNAME: u8 = 0x08;
const FCOMMENT: u8 = 0x10;
const RESERVED: u8 = 0xe0;
const TRAILER: usize = 8;
// 10 fixed bytes, FEXTRA (2 + 65,535), a name and a comment (64 KiB each, our limit), FHCRC
const MAX_HEADER: usize = 10 + 2 + 65_535 + 2 * ((1 << 16) + 1) + 2;

/// Why decoding stopped: a finding code, its message, and the member it is in.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct GzipError {
    pub code: &'static str,
    pub message: String,
    pub member: u64,
    pub start: u64, // the member's first byte in the file
    pub end: u64,   // where the problem was seen (the member's end for a trailer mismatch)
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Stage {
    Header,
    Deflate,
    Trailer,
    Between, // after a member: another, or the end of the file
    Trailing, // bytes after the last member that are not a member
}

pub struct GzipDecoder {
    stage: Stage,
    inflate: Decompress,
    crc: crc32fast::Hasher,
    gathered: Vec<u8>, // header or trailer bytes so far
    member: u64,
    member_start: u64,
    member_output: u64,
    consumed: u64,
    pub produced: u64,
    pub members: u64, // members decoded whole
    trailing_at: Option<u64>,
    trailing: u64,
    trailing_nonzero: u64,
    finished: bool,
}

impl Default for GzipDecoder {
    fn default() -> Self {
        Self::new()
    }
}

impl GzipDecoder {
    pub fn new() -> Self {
        GzipDecoder {
            stage: Stage::Header,
            inflate: Decompress::new(false),
            crc: crc32fast::Hasher::new(),
            gathered: Vec::new(),
            member: 0,
            member_start: 0,
            member_output: 0,
            consumed: 0,
            produced: 0,
            members: 0,
            trailing_at: None,
            trailing: 0,
            trailing_nonzero: 0,
            finished: false,
        }
    }

    pub fn finished(&self) -> bool {
        self.finished
    }

    pub fn consumed(&self) -> u64 {
        self.consumed
    }

    /// Bytes after the last member that are no member: (where they start, how many, how many
    /// of them are not zero). GNU gzip ignores them with a warning; a restore loses nothing.
    pub fn trailing(&self) -> Option<(u64, u64, u64)> {
        self.trailing_at.map(|at| (at, self.trailing, self.trailing_nonzero))
    }

    /// Decode from `input` into the spare capacity of `out`: how much input was taken. Stops
    /// when `out` is full, the input is used up (output the inflater holds still comes out of
    /// a call with no input) or an error is found.
    pub fn decode(&mut self, input: &[u8], out: &mut Vec<u8>) -> Result<usize, GzipError> {
        let mut taken = 0;
        while !self.finished && out.len() < out.capacity() && (taken < input.len() || self.stage == Stage::Deflate) {
            let rest = &input[taken..];
            let before = out.len();
            let step = match self.stage {
                Stage::Header => self.header(rest)?,
                Stage::Deflate => self.deflate(rest, out)?,
                Stage::Trailer => self.trailer(rest)?,
                Stage::Between => self.between(rest),
                Stage::Trailing => self.trail(rest),
            };
            taken += step;
            self.consumed += step as u64;
            if step == 0 && out.len() == before {
                break; // the inflater needs input that is not here yet
            }
        }
        Ok(taken)
    }

    /// The file ends here: fine after a whole member, a truncation inside one.
    pub fn finish(&mut self) -> Result<(), GzipError> {
        match self.stage {
            Stage::Between | Stage::Trailing => {
                if !self.gathered.is_empty() {
                    // a lone 0x1f after the last member: no member, a trailing byte
                    let bytes = std::mem::take(&mut self.gathered);
                    self.trailing_at.get_or_insert(self.consumed - bytes.len() as u64);
                    self.count_trailing(&bytes);
                }
                self.finished = true;
                Ok(())
            }
            stage => {
                let part = match stage {
                    Stage::Header => "its header",
                    Stage::Deflate => "its deflate data",
                    _ => "its trailer",
                };
                Err(self.error("GZIP_TRUNCATED", format!("the file ends inside gzip member {} ({part})", self.member)))
            }
        }
    }

    fn error(&self, code: &'static str, message: String) -> GzipError {
        GzipError { code, message, member: self.member, start: self.member_start, end: self.consumed }
    }

    /// Gather the header; parse it once it is whole. Returns the input taken. Takes what is
    /// offered (up to the largest header there can be) and gives back what lies past the
    /// header, so a long name costs one scan per piece, not one per byte.
    fn header(&mut self, input: &[u8]) -> Result<usize, GzipError> {
        let before = self.gathered.len();
        let offered = input.len().min(MAX_HEADER - before);
        self.gathered.extend_from_slice(&input[..offered]);
        let problem = match header_length(&self.gathered) {
            Ok(Some(length)) if self.gathered.len() >= length => None,
            Ok(_) if self.gathered.len() < MAX_HEADER => return Ok(offered),
            Ok(_) => Some("a header longer than any gzip writes".to_string()),
            Err(problem) => Some(problem),
        };
        if let Some(problem) = problem {
            self.consumed += offered as u64;
            return Err(self.error("GZIP_BAD_HEADER", format!("gzip member {}: {problem}", self.member)));
        }
        let length = header_length(&self.gathered).ok().flatten().expect("a whole header");
        let taken = length - before;
        self.gathered.truncate(length);
        let header = std::mem::take(&mut self.gathered);
        if header[3] & FHCRC != 0 {
            let stored = u16::from_le_bytes([header[length - 2], header[length - 1]]);
            let actual = (crc32fast::hash(&header[..length - 2]) & 0xffff) as u16;
            if stored != actual {
                self.consumed += taken as u64;
                return Err(self.error("GZIP_HEADER_CRC",
                                      format!("gzip member {}: header CRC-16 is {actual:04x}, header says {stored:04x}", self.member)));
            }
        }
        self.stage = Stage::Deflate;
        Ok(taken)
    }

    fn deflate(&mut self, input: &[u8], out: &mut Vec<u8>) -> Result<usize, GzipError> {
        let (in_before, out_before) = (self.inflate.total_in(), out.len());
        let status = self.inflate.decompress_vec(input, out, FlushDecompress::None);
        let taken = (self.inflate.total_in() - in_before) as usize;
        let written = &out[out_before..];
        self.crc.update(written);
        self.member_output += written.len() as u64;
        self.produced += written.len() as u64;
        match status {
            Ok(Status::StreamEnd) => self.stage = Stage::Trailer,
            Ok(_) => {}
            Err(e) => {
                self.consumed += taken as u64;
                let why = e.message().unwrap_or("invalid deflate data");
                return Err(self.error("GZIP_DECODE_ERROR", format!("gzip member {}: {why}", self.member)));
            }
        }
        Ok(taken)
    }

    fn trailer(&mut self, input: &[u8]) -> Result<usize, GzipError> {
        let step = (TRAILER - self.gathered.len()).min(input.len());
        self.gathered.extend_from_slice(&input[..step]);
        if self.gathered.len() < TRAILER {
            return Ok(step);
        }
        let stored_crc = u32::from_le_bytes(self.gathered[..4].try_into().expect("4 bytes"));
        let stored_size = u32::from_le_bytes(self.gathered[4..].try_into().expect("4 bytes"));
        let crc = std::mem::replace(&mut self.crc, crc32fast::Hasher::new()).finalize();
        if crc != stored_crc {
            self.consumed += step as u64;
            return Err(self.error("GZIP_CRC_MISMATCH", format!(
                "gzip member {}: CRC-32 of its {} bytes is {crc:08x}, trailer says {stored_crc:08x}",
                self.member, self.member_output)));
        }
        if self.member_output as u32 != stored_size {
            self.consumed += step as u64;
            return Err(self.error("GZIP_SIZE_MISMATCH", format!(
                "gzip member {}: {} bytes decoded, trailer says {stored_size} (mod 2^32)", self.member, self.member_output)));
        }
        self.gathered.clear();
        self.members += 1;
        self.stage = Stage::Between;
        Ok(step)
    }

    /// After a member: the next one starts here, or what follows is no member.
    fn between(&mut self, input: &[u8]) -> usize {
        let seen = self.gathered.len(); // a first 0x1f, left by the piece before
        let step = (ID.len() - seen).min(input.len());
        self.gathered.extend_from_slice(&input[..step]);
        if self.gathered.len() < ID.len() && self.gathered[..] == ID[..self.gathered.len()] {
            return step; // 0x1f ends the piece: the next byte tells
        }
        let bytes = std::mem::take(&mut self.gathered);
        let start = self.consumed - seen as u64;
        if bytes[..] == ID {
            self.member += 1;
            self.member_start = start;
            self.member_output = 0;
            self.inflate.reset(false);
            self.gathered = bytes; // the next header's first two bytes
            self.stage = Stage::Header;
        } else {
            self.stage = Stage::Trailing;
            self.trailing_at = Some(start);
            self.count_trailing(&bytes);
        }
        step
    }

    fn trail(&mut self, input: &[u8]) -> usize {
        self.count_trailing(input);
        input.len()
    }

    fn count_trailing(&mut self, bytes: &[u8]) {
        self.trailing += bytes.len() as u64;
        self.trailing_nonzero += bytes.iter().filter(|&&b| b != 0).count() as u64;
    }
}

/// The header's whole length once enough of it is known (None: more bytes needed to tell), or
/// what is wrong with it.
fn header_length(h: &[u8]) -> Result<Option<usize>, String> {
    if h.len() >= 2 && h[..2] != ID {
        return Err(format!("no gzip magic (found {:02x} {:02x})", h[0], h[1]));
    }
    if h.len() >= 3 && h[2] != DEFLATE {
        return Err(format!("compression method {} is not deflate (8)", h[2]));
    }
    if h.len() >= 4 && h[3] & RESERVED != 0 {
        return Err(format!("reserved flag bits are set ({:02x})", h[3]));
    }
    if h.len() < 10 {
        return Ok(None);
    }
    let flags = h[3];
    let mut at = 10;
    if flags & FEXTRA != 0 {
        if h.len() < at + 2 {
            return Ok(None);
        }
        at += 2 + u16::from_le_bytes([h[at], h[at + 1]]) as usize;
    }
    for field in [FNAME, FCOMMENT] {
        if flags & field != 0 {
            if at > h.len() {
                return Ok(None); // the extra field is not all here yet
            }
            match h.get(at..).and_then(|rest| rest.iter().position(|&b| b == 0)) {
                Some(nul) => at += nul + 1,
                None if h.len() - at > 1 << 16 => return Err("a name or comment longer than 64 KiB".into()),
                None => return Ok(None),
            }
        }
    }
    if flags & FHCRC != 0 {
        at += 2;
    }
    Ok(Some(at))
}

#[cfg(test)]
mod tests {
    use super::*;
    use flate2::write::GzEncoder;
    use flate2::Compression;
    use std::io::Write;

    fn gz(data: &[u8]) -> Vec<u8> {
        let mut e = GzEncoder::new(Vec::new(), Compression::default());
        e.write_all(data).unwrap();
        e.finish().unwrap()
    }

    /// Decode in pieces of `piece` bytes into 1000-byte chunks: (output, error).
    fn run(file: &[u8], piece: usize) -> (Vec<u8>, Option<GzipError>) {
        let mut d = GzipDecoder::new();
        let mut all = Vec::new();
        for part in file.chunks(piece) {
            let mut at = 0;
            loop {
                let mut out = Vec::with_capacity(1000);
                match d.decode(&part[at..], &mut out) {
                    Ok(n) => at += n,
                    Err(e) => {
                        all.extend(out);
                        return (all, Some(e));
                    }
                }
                let full = out.len() == out.capacity();
                all.extend(out);
                if !full && (at == part.len() || d.finished()) {
                    break;
                }
            }
        }
        match d.finish() {
            Ok(()) => (all, None),
            Err(e) => (all, Some(e)),
        }
    }

    #[test]
    fn members_back_to_back_decode_in_any_pieces() {
        let data: Vec<u8> = (0..50_000u32).map(|i| (i % 251) as u8).collect();
        let mut file = gz(&data[..30_000]);
        file.extend(gz(&data[30_000..]));
        for piece in [1, 7, 512, 1 << 20] {
            let (out, err) = run(&file, piece);
            assert_eq!((out.len(), err), (data.len(), None), "piece {piece}");
            assert!(out == data, "piece {piece}");
        }
    }

    #[test]
    fn a_flipped_byte_is_named_at_its_member() {
        let data = b"hello gzip\n".repeat(1000);
        let first = gz(&data);
        let mut file = first.clone();
        file.extend(gz(&data));
        let at = first.len() + first.len() - 6; // the second member's stored CRC
        file[at] ^= 1;
        let (out, err) = run(&file, 4096);
        let err = err.unwrap();
        assert_eq!((err.code, err.member, err.start), ("GZIP_CRC_MISMATCH", 1, first.len() as u64));
        assert_eq!(out.len(), 2 * data.len()); // all of it came out: its content is what is wrong
    }

    #[test]
    fn an_extra_field_and_a_name_split_across_pieces() {
        let plain = gz(b"extra content");
        let mut file = plain[..10].to_vec();
        file[3] |= FEXTRA | FNAME;
        file.extend(102u16.to_le_bytes());
        file.extend([b'R', b'A', 98, 0]);
        file.extend([7u8; 98]);
        file.extend(b"name.tar\0");
        file.extend(&plain[10..]);
        for piece in [1, 20, 4096] {
            assert_eq!(run(&file, piece), (b"extra content".to_vec(), None), "piece {piece}");
        }
    }

    #[test]
    fn a_long_name_is_read_in_pieces_and_a_too_long_one_is_refused() {
        let plain = gz(b"named content");
        let named = |length: usize| {
            let mut file = plain[..10].to_vec();
            file[3] |= FNAME;
            file.extend(std::iter::repeat_n(b'n', length));
            file.push(0);
            file.extend(&plain[10..]);
            file
        };
        for piece in [4096, 1 << 20] {
            assert_eq!(run(&named(60_000), piece), (b"named content".to_vec(), None), "piece {piece}");
        }
        let (_, err) = run(&named(70_000), 4096);
        assert_eq!(err.unwrap().message, "gzip member 0: a name or comment longer than 64 KiB");
    }

    #[test]
    fn truncation_header_problems_and_trailing_bytes() {
        let file = gz(b"some content");
        let (_, err) = run(&file[..file.len() - 3], 5);
        assert_eq!(err.unwrap().code, "GZIP_TRUNCATED");
        let mut bad = file.clone();
        bad[3] |= 0x80;
        assert_eq!(run(&bad, 5).1.unwrap().code, "GZIP_BAD_HEADER");
        let mut tail = file.clone();
        tail.extend([0, 0, 0, 7]);
        let mut d = GzipDecoder::new();
        let mut out = Vec::with_capacity(100);
        assert_eq!(d.decode(&tail, &mut out), Ok(tail.len()));
        assert_eq!(d.finish(), Ok(()));
        assert_eq!(d.trailing(), Some((file.len() as u64, 4, 1)));
        let mut lone = file.clone();
        lone.push(0x1f);
        let mut d = GzipDecoder::new();
        assert_eq!(d.decode(&lone, &mut out), Ok(lone.len()));
        assert_eq!(d.finish(), Ok(()));
        assert_eq!(d.trailing(), Some((file.len() as u64, 1, 1)));
    }
}
