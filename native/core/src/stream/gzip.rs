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
const FIXED: usize = 10;

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Stage {
    Header,
    Deflate,
    Trailer,
}

pub struct Gzip {
    stage: Stage,
    head: HeaderReader,
    inflate: Decompress,
    crc: crc32fast::Hasher,
    gathered: Vec<u8>, // trailer bytes so far
    output: u64,
}

impl Default for Gzip {
    fn default() -> Self {
        Self::new()
    }
}

impl Gzip {
    pub fn new() -> Self {
        Gzip { stage: Stage::Header, head: HeaderReader::default(), inflate: Decompress::new(false),
               crc: crc32fast::Hasher::new(), gathered: Vec::new(), output: 0 }
    }

    /// Read the header as it comes: a name or comment of any length costs no memory (gzip
    /// and pigz take any), and its problems are placed at the byte that shows them however the
    /// file is read.
    fn header(&mut self, input: &[u8]) -> Result<usize, Fault> {
        match self.head.feed(input) {
            Ok(None) => Ok(input.len()),
            Ok(Some(taken)) => {
                let head = std::mem::take(&mut self.head);
                if let Some(problem) = head.crc_problem() {
                    return Err(Fault::new("GZIP_HEADER_CRC", problem, taken));
                }
                self.stage = Stage::Deflate;
                Ok(taken)
            }
            Err((problem, seen)) => Err(Fault::new("GZIP_BAD_HEADER", problem, seen)),
        }
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
        self.head = HeaderReader::default();
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

/// The header's whole length once enough of it is known (None: more bytes needed to tell),
/// or what is wrong with it and how many bytes show it.
#[cfg(test)]
pub(crate) fn header_length(h: &[u8]) -> Result<Option<usize>, (String, usize)> {
    HeaderReader::default().feed(h)
}

#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
enum Field {
    #[default]
    Fixed,
    Extra,
    Name,
    Comment,
    Crc,
}

/// A member's header read in pieces of any size. The fixed part and the extra field are kept
/// (65,547 bytes at most); a name or comment is scanned for its end, not kept; the CRC-16 is
/// taken over everything before it as it passes.
#[derive(Default)]
pub(crate) struct HeaderReader {
    field: Field,
    kept: Vec<u8>,
    crc: crc32fast::Hasher,
    stored_crc: Vec<u8>,
}

impl HeaderReader {
    /// Take header bytes from `input`: Some(n) once the header ends, n bytes into `input`;
    /// None when all of it was taken and more is needed; or the problem and how many bytes of
    /// `input` show it.
    pub(crate) fn feed(&mut self, input: &[u8]) -> Result<Option<usize>, (String, usize)> {
        let mut at = 0;
        loop {
            let rest = &input[at..];
            let used = match self.field {
                Field::Fixed => self.fixed(rest).map_err(|(why, n)| (why, at + n))?,
                Field::Extra => {
                    let want = FIXED + 2 + self.extra_length();
                    gather(&mut self.kept, want, rest)
                }
                Field::Name | Field::Comment => rest.iter().position(|&b| b == 0).map_or(rest.len(), |nul| nul + 1),
                Field::Crc => gather(&mut self.stored_crc, 2, rest),
            };
            if self.field != Field::Crc {
                self.crc.update(&rest[..used]);
            }
            at += used;
            let done = match self.field {
                Field::Fixed => self.kept.len() == FIXED,
                Field::Extra => self.kept.len() >= FIXED + 2 && self.kept.len() == FIXED + 2 + self.extra_length(),
                Field::Name | Field::Comment => used > 0 && rest[used - 1] == 0,
                Field::Crc => self.stored_crc.len() == 2,
            };
            if !done {
                if at == input.len() {
                    return Ok(None);
                }
                continue; // the extra field's length is known now: its bytes come next
            }
            match self.next_field() {
                Some(field) => self.field = field,
                None => return Ok(Some(at)),
            }
        }
    }

    /// The fixed ten bytes, each checked as it comes.
    fn fixed(&mut self, rest: &[u8]) -> Result<usize, (String, usize)> {
        let used = gather(&mut self.kept, FIXED, rest);
        let h = &self.kept;
        let seen = |k: usize| (k + 1).saturating_sub(h.len() - used); // bytes of `rest` up to header byte k
        if h.len() >= 2 && h[..2] != ID {
            return Err((format!("no gzip magic (found {:02x} {:02x})", h[0], h[1]), seen(1).max(1)));
        }
        if h.len() >= 3 && h[2] != DEFLATE {
            return Err((format!("compression method {} is not deflate (8)", h[2]), seen(2).max(1)));
        }
        if h.len() >= 4 && h[3] & RESERVED != 0 {
            return Err((format!("reserved flag bits are set ({:02x})", h[3]), seen(3).max(1)));
        }
        Ok(used)
    }

    fn extra_length(&self) -> usize {
        if self.kept.len() < FIXED + 2 {
            return 0;
        }
        u16::from_le_bytes([self.kept[FIXED], self.kept[FIXED + 1]]) as usize
    }

    /// The field after this one that the flags say is there; None: the header ends.
    fn next_field(&self) -> Option<Field> {
        let flags = self.kept[3];
        let order = [(Field::Extra, FEXTRA), (Field::Name, FNAME), (Field::Comment, FCOMMENT), (Field::Crc, FHCRC)];
        let from = order.iter().position(|&(f, _)| f == self.field).map_or(0, |i| i + 1);
        order[from..].iter().find(|&&(_, flag)| flags & flag != 0).map(|&(f, _)| f)
    }

    /// A header CRC-16 that does not match the header.
    pub(crate) fn crc_problem(&self) -> Option<String> {
        if self.stored_crc.len() < 2 {
            return None;
        }
        let stored = u16::from_le_bytes([self.stored_crc[0], self.stored_crc[1]]);
        let actual = (self.crc.clone().finalize() & 0xffff) as u16;
        (stored != actual).then(|| format!("header CRC-16 is {actual:04x}, header says {stored:04x}"))
    }
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
    fn a_name_of_any_length_is_read_in_pieces() {
        let plain = gz(b"named content");
        let named = |length: usize| {
            let mut file = plain[..10].to_vec();
            file[3] |= FNAME;
            file.extend(std::iter::repeat_n(b'n', length));
            file.push(0);
            file.extend(&plain[10..]);
            file
        };
        for (length, piece) in [(60_000, 4096), (60_000, 1 << 20), (200_000, 4096), (3 << 20, 1 << 20), (5, 1)] {
            assert_eq!(run(&named(length), piece), (b"named content".to_vec(), None), "{length} in pieces of {piece}");
        }
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
