//! gzip (RFC 1952; formats.md 7): a member is a header, raw deflate and a trailer (CRC-32 and
//! length of the member's output). Every integrity field is checked: header flags and its
//! CRC-16 when present, the deflate stream, CRC-32 and ISIZE. Members cannot be found without
//! decoding (gzip stores no compressed length): a decoder goes through a file in order, and a
//! second one started at a header found ahead is used only where a member ends at its start
//! (`at_member_end`; the relay in Python).

use flate2::{Decompress, FlushDecompress, Status};

use super::{gather, Fault, Member, Step};

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

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Stage {
    Header,
    Deflate,
    Trailer,
}

pub struct Gzip {
    stage: Stage,
    inflate: Decompress,
    crc: crc32fast::Hasher,
    gathered: Vec<u8>, // header or trailer bytes so far
    output: u64,
}

impl Default for Gzip {
    fn default() -> Self {
        Self::new()
    }
}

impl Gzip {
    pub fn new() -> Self {
        Gzip { stage: Stage::Header, inflate: Decompress::new(false), crc: crc32fast::Hasher::new(),
               gathered: Vec::new(), output: 0 }
    }

    /// Gather the header; parse it once it is whole. Takes what is offered (up to the largest
    /// header there can be) and gives back what lies past the header, so a long name costs
    /// one scan per piece, not one per byte.
    fn header(&mut self, input: &[u8]) -> Result<usize, Fault> {
        let before = self.gathered.len();
        let offered = input.len().min(MAX_HEADER - before);
        self.gathered.extend_from_slice(&input[..offered]);
        let length = match header_length(&self.gathered) {
            Ok(Some(length)) if self.gathered.len() >= length => length,
            Ok(_) if self.gathered.len() < MAX_HEADER => return Ok(offered),
            Ok(_) => return Err(Fault::new("GZIP_BAD_HEADER", "a header longer than any gzip writes", offered)),
            // up to the byte that shows the problem: the range does not depend on how the file was read
            Err((problem, seen)) => return Err(Fault::new("GZIP_BAD_HEADER", problem, seen.saturating_sub(before).min(offered))),
        };
        let taken = length - before;
        self.gathered.truncate(length);
        let header = std::mem::take(&mut self.gathered);
        if header[3] & FHCRC != 0 {
            let stored = u16::from_le_bytes([header[length - 2], header[length - 1]]);
            let actual = (crc32fast::hash(&header[..length - 2]) & 0xffff) as u16;
            if stored != actual {
                return Err(Fault::new("GZIP_HEADER_CRC", format!("header CRC-16 is {actual:04x}, header says {stored:04x}"), taken));
            }
        }
        self.stage = Stage::Deflate;
        Ok(taken)
    }

    fn deflate(&mut self, input: &[u8], out: &mut Vec<u8>) -> Result<usize, Fault> {
        let (in_before, out_before) = (self.inflate.total_in(), out.len());
        let status = self.inflate.decompress_vec(input, out, FlushDecompress::None);
        let taken = (self.inflate.total_in() - in_before) as usize;
        let written = &out[out_before..];
        self.crc.update(written);
        self.output += written.len() as u64;
        match status {
            Ok(Status::StreamEnd) => self.stage = Stage::Trailer,
            Ok(_) => {}
            Err(e) => return Err(Fault::new("GZIP_DECODE_ERROR", e.message().unwrap_or("invalid deflate data"), taken)),
        }
        Ok(taken)
    }

    fn trailer(&mut self, input: &[u8]) -> Result<Step, Fault> {
        let step = gather(&mut self.gathered, TRAILER, input);
        if self.gathered.len() < TRAILER {
            return Ok(Step { taken: step, ended: false });
        }
        let stored_crc = u32::from_le_bytes(self.gathered[..4].try_into().expect("4 bytes"));
        let stored_size = u32::from_le_bytes(self.gathered[4..].try_into().expect("4 bytes"));
        let crc = std::mem::replace(&mut self.crc, crc32fast::Hasher::new()).finalize();
        if crc != stored_crc {
            return Err(Fault::new("GZIP_CRC_MISMATCH", format!(
                "CRC-32 of its {} bytes is {crc:08x}, trailer says {stored_crc:08x}", self.output), step));
        }
        if self.output as u32 != stored_size {
            return Err(Fault::new("GZIP_SIZE_MISMATCH", format!(
                "{} bytes decoded, trailer says {stored_size} (mod 2^32)", self.output), step));
        }
        Ok(Step { taken: step, ended: true })
    }
}

impl Member for Gzip {
    const UNIT: &'static str = "gzip member";
    const TRUNCATED: &'static str = "GZIP_TRUNCATED";
    const MAGIC_LEN: usize = 2;

    fn is_start(magic: &[u8]) -> bool {
        magic == ID
    }

    fn begin(&mut self) {
        self.stage = Stage::Header;
        self.inflate.reset(false);
        self.crc = crc32fast::Hasher::new();
        self.gathered.clear();
        self.output = 0;
    }

    fn decode(&mut self, input: &[u8], out: &mut Vec<u8>) -> Result<Step, Fault> {
        let taken = match self.stage {
            Stage::Header => self.header(input)?,
            Stage::Deflate => self.deflate(input, out)?,
            Stage::Trailer => return self.trailer(input),
        };
        Ok(Step { taken, ended: false })
    }

    fn part(&self) -> &'static str {
        match self.stage {
            Stage::Header => "its header",
            Stage::Deflate => "its deflate data",
            Stage::Trailer => "its trailer",
        }
    }
}

/// The header's whole length once enough of it is known (None: more bytes needed to tell), or
/// what is wrong with it and how many of its bytes show it.
pub(crate) fn header_length(h: &[u8]) -> Result<Option<usize>, (String, usize)> {
    if h.len() >= 2 && h[..2] != ID {
        return Err((format!("no gzip magic (found {:02x} {:02x})", h[0], h[1]), 2));
    }
    if h.len() >= 3 && h[2] != DEFLATE {
        return Err((format!("compression method {} is not deflate (8)", h[2]), 3));
    }
    if h.len() >= 4 && h[3] & RESERVED != 0 {
        return Err((format!("reserved flag bits are set ({:02x})", h[3]), 4));
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
                None if h.len() - at > 1 << 16 => return Err(("a name or comment longer than 64 KiB".into(), h.len())),
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
    use crate::stream::testing;
    use flate2::write::GzEncoder;
    use flate2::Compression;
    use std::io::Write;

    fn gz(data: &[u8]) -> Vec<u8> {
        let mut e = GzEncoder::new(Vec::new(), Compression::default());
        e.write_all(data).unwrap();
        e.finish().unwrap()
    }

    fn run(file: &[u8], piece: usize) -> (Vec<u8>, Option<super::super::StreamError>) {
        testing::run("gzip", file, piece)
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
    fn at_member_end_only_right_after_a_trailer() {
        let first = gz(&b"first member\n".repeat(500));
        let mut file = first.clone();
        file.extend(gz(b"second"));
        let mut d = super::super::decoder("gzip", 1 << 30, &[]).unwrap();
        let mut out = Vec::with_capacity(1 << 20);
        assert!(!d.at_member_end());
        assert_eq!(d.decode(&file[..first.len() - 1], &mut out), Ok(first.len() - 1));
        assert!(!d.at_member_end()); // the trailer's last byte is still to come
        assert_eq!(d.decode(&file[first.len() - 1..first.len()], &mut out), Ok(1));
        assert!(d.at_member_end());
        assert_eq!(d.decode(&file[first.len()..first.len() + 1], &mut out), Ok(1));
        assert!(!d.at_member_end()); // the next member's magic has begun
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
        for piece in [2, 5, 4096] { // the range ends at the flags byte however the file is read
            let err = run(&bad, piece).1.unwrap();
            assert_eq!((err.code, err.start, err.end), ("GZIP_BAD_HEADER", 0, 4), "piece {piece}");
        }
        let mut tail = file.clone();
        tail.extend([0, 0, 0, 7]);
        assert_eq!(testing::trailing("gzip", &tail), Some((file.len() as u64, 4, 1)));
        let mut lone = file.clone();
        lone.push(0x1f);
        assert_eq!(testing::trailing("gzip", &lone), Some((file.len() as u64, 1, 1)));
    }
}
