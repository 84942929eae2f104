//! Compressed streams that are one or more members back to back and are decoded in order:
//! gzip members, xz streams, lz4 frames and bzip2 streams (formats.md 7). One mechanism for
//! all of them: `Concatenated` finds where each member starts, counts bytes after the last one,
//! and names the member and its byte range when decoding stops; each format's `Member` decodes
//! and checks one member.
//!
//! A failure stops the decode, as it stops `gzip -d`, `xz -d`, `lz4 -d` and `bzip2 -d` and
//! with them a `tar x` restore: what came out before it stays in `out` and is walked.

pub mod bzip2;
pub mod deflate;
pub mod gzip;
pub mod lz4;
pub mod xz;

/// Why decoding stopped: a finding code, its message, and the member it is in.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct StreamError {
    pub code: &'static str,
    pub message: String,
    pub member: u64,
    pub start: u64, // the member's first byte in the file
    pub end: u64,   // where the problem was seen (the member's end for a check at its end)
}

/// What one call of a member's decoder did: input taken, and whether the member ended.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Step {
    pub taken: usize,
    pub ended: bool,
}

/// A member's decoder found a problem after taking `taken` bytes of this call's input.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Fault {
    pub code: &'static str,
    pub message: String,
    pub taken: usize,
}

impl Fault {
    pub fn new(code: &'static str, message: impl Into<String>, taken: usize) -> Self {
        Fault { code, message: message.into(), taken }
    }
}

/// One member of a format: its magic bytes, and a decoder fed its bytes in order.
pub trait Member: Send + Sync {
    /// What a member is called in messages: "gzip member", "xz stream".
    const UNIT: &'static str;
    /// The finding code for a file that ends inside a member.
    const TRUNCATED: &'static str;
    /// How many first bytes tell whether another member starts.
    const MAGIC_LEN: usize;
    /// Zero bytes between members are allowed in multiples of four (xz's stream padding); the
    /// code for padding of another length.
    const PADDING: Option<&'static str> = None;

    fn is_start(magic: &[u8]) -> bool;
    /// Get ready for a new member.
    fn begin(&mut self);
    /// Decode into the spare capacity of `out`, never past it.
    fn decode(&mut self, input: &[u8], out: &mut Vec<u8>) -> Result<Step, Fault>;
    /// Which part of the member the input ended in ("its header").
    fn part(&self) -> &'static str;
    /// The member just decoded carries no check of its data (an lz4 frame without checksums).
    fn unchecked(&self) -> bool {
        false
    }
}

/// A decoder of a whole file, as the bindings see it.
pub trait StreamDecoder: Send + Sync {
    /// Decode from `input` into the spare capacity of `out`: how much input was taken. Stops
    /// when `out` is full, the input is used up (output a decoder holds still comes out of a
    /// call with no input) or an error is found.
    fn decode(&mut self, input: &[u8], out: &mut Vec<u8>) -> Result<usize, StreamError>;
    /// The file ends here: fine after a whole member, a truncation inside one.
    fn finish(&mut self) -> Result<(), StreamError>;
    fn counts(&self) -> Counts;
    /// A member ended at the last byte taken, and nothing after it has been taken: the next
    /// byte would start another member, as a new decoder's first byte would.
    fn at_member_end(&self) -> bool {
        false
    }
    /// Bytes after the last member that are no member: (where they start, how many, how many
    /// of them are not zero). The tools ignore them or warn; a restore loses nothing. A decoder
    /// of one block has none.
    fn trailing(&self) -> Option<(u64, u64, u64)> {
        None
    }
    /// Members whose data no check covers: (the first's index, its first byte, how many).
    fn unchecked(&self) -> Option<(u64, u64, u64)> {
        None
    }
    /// Output decoded but not handed on, because the unit it came from failed its check:
    /// about how long the lost unit was, where the format does not say.
    fn withheld(&self) -> u64 {
        0
    }
}

/// How far a decoder has come.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Counts {
    pub consumed: u64,
    pub produced: u64,
    pub members: u64, // decoded whole
    pub finished: bool,
}

impl Counts {
    /// A decoder of one block: its one member is whole once it is finished.
    pub fn block(consumed: u64, produced: u64, finished: bool) -> Self {
        Counts { consumed, produced, members: u64::from(finished), finished }
    }
}

/// A decoder for `codec` ("gzip", "xz", "lz4", "bzip2"), or for a part of a file with `params`:
/// "xz-block" (check type, unpadded size, uncompressed size, block index), "bzip2-block"
/// (level, bits to skip in the first byte, length in bits, CRC-32, block index) or
/// "gzip-members" (the index of the first of the whole gzip members it is given).
/// `memory_limit` bounds what one member's decoder may allocate (xz's dictionary).
pub fn decoder(codec: &str, memory_limit: u64, params: &[u64]) -> Option<Box<dyn StreamDecoder>> {
    Some(match (codec, params) {
        ("xz-block", &[check, unpadded, uncompressed, block]) => {
            Box::new(xz::XzBlock::new(memory_limit, u8::try_from(check).ok()?, unpadded, uncompressed, block))
        }
        ("bzip2-block", &[level, skip, length, crc, block]) if level <= 9 && skip < 8 => Box::new(
            bzip2::Bzip2Block::new(level as u8, skip as u32, length, u32::try_from(crc).ok()?, block)),
        ("gzip-members", &[first]) => Box::new(Concatenated::new(gzip::Gzip::new()).numbered_from(first)),
        (_, [_, ..]) => return None,
        _ => match codec {
        "gzip" => Box::new(Concatenated::new(gzip::Gzip::new())),
        "xz" => Box::new(Concatenated::new(xz::Xz::new(memory_limit))),
        "lz4" => Box::new(Concatenated::new(lz4::Lz4::new())),
        "bzip2" => Box::new(Concatenated::new(bzip2::Bzip2::new())),
        _ => return None,
        },
    })
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum State {
    Inside,
    Between,  // after a member: another, padding, or the end of the file
    Trailing, // bytes after the last member that are not a member
}

pub struct Concatenated<M: Member> {
    member: M,
    state: State,
    magic: Vec<u8>, // the first bytes after a member, until they tell
    index: u64,
    start: u64,
    after: u64, // where the last whole member ended
    consumed: u64,
    produced: u64,
    whole: u64,
    trailing_at: Option<u64>,
    trailing: u64,
    trailing_nonzero: u64,
    finished: bool,
    unchecked: Option<(u64, u64, u64)>,
}

impl<M: Member> Concatenated<M> {
    pub fn new(mut member: M) -> Self {
        member.begin();
        Concatenated {
            member, state: State::Inside, magic: Vec::new(), index: 0, start: 0, after: 0, consumed: 0,
            produced: 0, whole: 0, trailing_at: None, trailing: 0, trailing_nonzero: 0, finished: false,
            unchecked: None,
        }
    }

    /// Members counted from `first`: a run of a file's members decoded on its own.
    pub fn numbered_from(mut self, first: u64) -> Self {
        self.index = first;
        self
    }

    fn error(&self, code: &'static str, message: String) -> StreamError {
        StreamError { code, message, member: self.index, start: self.start, end: self.consumed }
    }

    fn inside(&mut self, input: &[u8], out: &mut Vec<u8>) -> Result<usize, StreamError> {
        let before = out.len();
        let result = self.member.decode(input, out);
        self.produced += (out.len() - before) as u64;
        match result {
            Ok(step) => {
                if step.ended {
                    if self.member.unchecked() {
                        let (first, start, count) = self.unchecked.unwrap_or((self.index, self.start, 0));
                        self.unchecked = Some((first, start, count + 1));
                    }
                    self.whole += 1;
                    self.state = State::Between;
                    self.after = self.consumed + step.taken as u64;
                }
                Ok(step.taken)
            }
            Err(fault) => {
                self.consumed += fault.taken as u64;
                Err(self.error(fault.code, format!("{} {}: {}", M::UNIT, self.index, fault.message)))
            }
        }
    }

    /// After a member: its padding, the next member's magic, or bytes that are no member.
    fn between(&mut self, input: &[u8], out: &mut Vec<u8>) -> Result<usize, StreamError> {
        if M::PADDING.is_some() && self.magic.is_empty() {
            let zeros = input.iter().take_while(|&&b| b == 0).count();
            if zeros > 0 {
                return Ok(zeros);
            }
        }
        let step = (M::MAGIC_LEN - self.magic.len()).min(input.len());
        self.magic.extend_from_slice(&input[..step]);
        if self.magic.len() < M::MAGIC_LEN {
            return Ok(step);
        }
        let magic = std::mem::take(&mut self.magic);
        let start = self.consumed + step as u64 - magic.len() as u64;
        if !M::is_start(&magic) {
            self.state = State::Trailing;
            self.trailing_at = Some(self.after);
            self.count_trailing(&magic, start - self.after);
            return Ok(step);
        }
        self.padding(start)?;
        self.index += 1;
        self.start = start;
        self.member.begin();
        self.state = State::Inside;
        // the magic is the member's own first bytes: its decoder takes them as a header's
        let before = self.consumed;
        self.consumed = start;
        let mut fed = 0;
        while fed < magic.len() {
            let taken = self.inside(&magic[fed..], out)?;
            if taken == 0 {
                return Err(self.error("NATIVE_BUG", format!("{} {}: its decoder did not take its magic", M::UNIT, self.index)));
            }
            fed += taken;
            self.consumed += taken as u64;
        }
        self.consumed = before;
        Ok(step)
    }

    /// The padding before `next`, when a member or the file's end follows it, must be whole.
    fn padding(&self, next: u64) -> Result<(), StreamError> {
        let zeros = next - self.after;
        match M::PADDING {
            Some(code) if zeros % 4 != 0 => Err(StreamError {
                code, member: self.index, start: self.after, end: next,
                message: format!("{zeros} zero bytes after {} {}: stream padding comes in fours", M::UNIT, self.index),
            }),
            _ => Ok(()),
        }
    }

    /// `zeros` padding bytes before `bytes` are trailing too.
    fn count_trailing(&mut self, bytes: &[u8], zeros: u64) {
        self.trailing += zeros + bytes.len() as u64;
        self.trailing_nonzero += bytes.iter().filter(|&&b| b != 0).count() as u64;
    }
}

impl<M: Member> StreamDecoder for Concatenated<M> {
    fn decode(&mut self, input: &[u8], out: &mut Vec<u8>) -> Result<usize, StreamError> {
        let mut taken = 0;
        while !self.finished && out.len() < out.capacity() && (taken < input.len() || self.state == State::Inside) {
            let rest = &input[taken..];
            let before = out.len();
            let step = match self.state {
                State::Inside => self.inside(rest, out)?,
                State::Between => self.between(rest, out)?,
                State::Trailing => {
                    self.count_trailing(rest, 0);
                    rest.len()
                }
            };
            taken += step;
            self.consumed += step as u64;
            if step == 0 && out.len() == before {
                break; // the decoder needs input that is not here yet
            }
        }
        Ok(taken)
    }

    fn finish(&mut self) -> Result<(), StreamError> {
        match self.state {
            State::Between | State::Trailing => {
                if self.state == State::Between && self.magic.is_empty() {
                    self.padding(self.consumed)?;
                }
                let magic = std::mem::take(&mut self.magic);
                if self.state == State::Between && !magic.is_empty() {
                    self.trailing_at = Some(self.after); // too few bytes for a member's magic
                    let zeros = self.consumed - magic.len() as u64 - self.after;
                    self.count_trailing(&magic, zeros);
                }
                self.finished = true;
                Ok(())
            }
            State::Inside => Err(self.error(M::TRUNCATED, format!(
                "the file ends inside {} {} ({})", M::UNIT, self.index, self.member.part()))),
        }
    }

    fn counts(&self) -> Counts {
        Counts { consumed: self.consumed, produced: self.produced, members: self.whole, finished: self.finished }
    }

    fn at_member_end(&self) -> bool {
        self.state == State::Between && self.magic.is_empty() && self.after == self.consumed && self.whole > 0
    }

    fn trailing(&self) -> Option<(u64, u64, u64)> {
        self.trailing_at.map(|at| (at, self.trailing, self.trailing_nonzero))
    }

    fn unchecked(&self) -> Option<(u64, u64, u64)> {
        self.unchecked
    }
}

/// Bytes gathered until a fixed-size field is whole: how much of `input` it took.
pub(crate) fn gather(into: &mut Vec<u8>, want: usize, input: &[u8]) -> usize {
    let step = want.saturating_sub(into.len()).min(input.len());
    into.extend_from_slice(&input[..step]);
    step
}

#[cfg(test)]
pub(crate) mod testing {
    use super::*;

    /// Decode in pieces of `piece` bytes into 1000-byte chunks: (output, error).
    pub fn run(codec: &str, file: &[u8], piece: usize) -> (Vec<u8>, Option<StreamError>) {
        let mut d = decoder(codec, 1 << 30, &[]).unwrap();
        let mut all = Vec::new();
        for part in file.chunks(piece.max(1)) {
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
                if !full && (at == part.len() || d.counts().finished) {
                    break;
                }
            }
        }
        match d.finish() {
            Ok(()) => (all, None),
            Err(e) => (all, Some(e)),
        }
    }

    /// Trailing bytes after decoding `file` whole.
    pub fn trailing(codec: &str, file: &[u8]) -> Option<(u64, u64, u64)> {
        let mut d = decoder(codec, 1 << 30, &[]).unwrap();
        let mut out = Vec::with_capacity(1 << 20);
        let mut at = 0;
        while at < file.len() {
            out.clear();
            at += d.decode(&file[at..], &mut out).unwrap();
        }
        d.finish().unwrap();
        d.trailing()
    }
}
