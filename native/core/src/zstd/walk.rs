//! The zstd frame walk: structure, no decoding (formats.md 1.5). It follows block headers from
//! frame to frame, so frame boundaries, truncation and garbage are found before anything is
//! decoded, and a broken frame does not hide the ones after it: the walk resynchronises at the
//! next frame magic. Bytes are asked of a `ByteSource`: the core never opens a file.

use crate::fields;
use crate::finding::{Fields, Value};

pub const ZSTD_MAGIC: u32 = 0xFD2F_B528;
const ZSTD_MAGIC_BYTES: &[u8; 4] = b"\x28\xb5\x2f\xfd";
const SKIPPABLE_MASK: u32 = 0xFFFF_FFF0;
const SKIPPABLE_BASE: u32 = 0x184D_2A50;
const SEEK_TABLE_MAGIC: u32 = 0x184D_2A5E;
const SEEKABLE_FOOTER_MAGIC: u32 = 0x8F92_EAB1;
const BLOCK_SIZE_MAX: u64 = 1 << 17;
pub const FORMAT_WINDOW_MAX: u64 = 1 << 31; // windowLog 31: the most zstd makes or decodes
pub const LARGE_WINDOW: u64 = 128 * 1024 * 1024; // libzstd's default limit
const FIND_WINDOW: u64 = 8 * 1024 * 1024;

/// Where the walk reads: a file, an object, or bytes in memory.
pub trait ByteSource {
    fn size(&self) -> u64;
    /// Up to `length` bytes at `offset` (fewer at the end).
    fn read_at(&mut self, offset: u64, length: usize) -> Vec<u8>;
}

impl ByteSource for &[u8] {
    fn size(&self) -> u64 {
        self.len() as u64
    }

    fn read_at(&mut self, offset: u64, length: usize) -> Vec<u8> {
        let start = (offset as usize).min(self.len());
        self[start..(start + length).min(self.len())].to_vec()
    }
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Kind {
    Zstd,
    Skippable,
    SeekTable,
}

impl Kind {
    pub fn name(self) -> &'static str {
        match self {
            Kind::Zstd => "zstd",
            Kind::Skippable => "skippable",
            Kind::SeekTable => "seek_table",
        }
    }
}

#[derive(Clone, Debug, PartialEq)]
pub struct Frame {
    pub index: u64,
    pub kind: Kind,
    pub offset: u64,
    pub end: u64,
    pub window: u64,
    pub content_size: Option<u64>,
    pub has_checksum: bool,
    pub dictionary_id: u32,
    pub intact: bool,
    pub seek_checksum: Option<u32>,
    pub seek_size: Option<u64>,
    pub walked: bool, // false: its end came from pzstd's size note; the decoder walks its blocks
    pub window_ok: bool, // false: a damaged window, or one over --max-window: not decoded
    pub header_length: usize,
}

impl Frame {
    pub fn decodable(&self) -> bool {
        self.kind == Kind::Zstd && self.dictionary_id == 0 && self.window_ok
    }
}

/// A structural problem, not yet placed: (code, start, end, frame, details).
#[derive(Clone, Debug, PartialEq)]
pub struct WalkFinding {
    pub code: &'static str,
    pub start: u64,
    pub end: u64,
    pub frame: Option<u64>,
    pub details: Fields,
}

#[derive(Clone, Debug, PartialEq)]
pub struct FrameHeader {
    pub length: usize,
    pub window: u64,
    pub content_size: Option<u64>,
    pub has_checksum: bool,
    pub dictionary_id: u32,
    pub reserved_bit: bool,
}

/// Magic + frame header; None when `head` is too short to hold it.
pub fn parse_frame_header(head: &[u8]) -> Option<FrameHeader> {
    if head.len() < 5 {
        return None;
    }
    let fhd = head[4];
    let (single, did_flag, fcs_flag) = ((fhd >> 5) & 1 == 1, fhd & 3, fhd >> 6);
    let mut pos = 5;
    let mut window = 0u64;
    if !single {
        if head.len() < 6 {
            return None;
        }
        let wd = head[5];
        let base = 1u64 << (10 + (wd >> 3));
        window = base + (base >> 3) * (wd & 7) as u64;
        pos = 6;
    }
    let did_size = [0, 1, 2, 4][did_flag as usize];
    let fcs_size = [if single { 1 } else { 0 }, 2, 4, 8][fcs_flag as usize];
    if head.len() < pos + did_size + fcs_size {
        return None;
    }
    let le = |b: &[u8]| b.iter().rev().fold(0u64, |acc, &x| (acc << 8) | x as u64);
    let dictionary_id = le(&head[pos..pos + did_size]) as u32;
    pos += did_size;
    let content_size = (fcs_size > 0).then(|| le(&head[pos..pos + fcs_size]) + if fcs_size == 2 { 256 } else { 0 });
    if single {
        window = content_size.unwrap_or(0);
    }
    Some(FrameHeader {
        length: pos + fcs_size,
        window,
        content_size,
        has_checksum: fhd & 4 != 0,
        dictionary_id,
        reserved_bit: fhd & 8 != 0,
    })
}

pub fn is_zstd_start(head: &[u8]) -> bool {
    if head.len() < 4 {
        return false;
    }
    let magic = u32::from_le_bytes([head[0], head[1], head[2], head[3]]);
    magic == ZSTD_MAGIC || magic & SKIPPABLE_MASK == SKIPPABLE_BASE
}

/// A block-walk problem: (code, start, end, details).
pub type BlockProblem = (&'static str, u64, u64, Fields);

/// Follow a frame's block headers from `p` (formats.md 1.5): Ok(frame end), or where it
/// stopped and why.
pub fn walk_blocks(src: &mut dyn ByteSource, mut p: u64, window: u64, has_checksum: bool) -> Result<u64, (u64, BlockProblem)> {
    let size = src.size();
    let block_max = window.min(BLOCK_SIZE_MAX);
    let mut block = 0u64;
    loop {
        let raw = src.read_at(p, 3);
        if raw.len() < 3 {
            return Err((size, ("ZSTD_TRUNCATED_FRAME", p, size, vec![])));
        }
        let (last, next) = block_header(&raw, p, block, block_max).map_err(|problem| (p, problem))?;
        if next > size {
            return Err((size, ("ZSTD_TRUNCATED_FRAME", p, size, vec![])));
        }
        p = next;
        block += 1;
        if last {
            break;
        }
    }
    if has_checksum {
        if p + 4 > size {
            return Err((size, ("ZSTD_TRUNCATED_FRAME", p, size, vec![])));
        }
        p += 4;
    }
    Ok(p)
}

/// The block header at `p` (formats.md 1.5): whether it is the last, and where the next
/// header (or the checksum) starts; or what is wrong with it.
fn block_header(raw: &[u8], p: u64, block: u64, block_max: u64) -> Result<(bool, u64), BlockProblem> {
    let h = raw[0] as u64 | (raw[1] as u64) << 8 | (raw[2] as u64) << 16;
    let (last, btype, bsize) = (h & 1 == 1, (h >> 1) & 3, h >> 3);
    if btype == 3 {
        return Err(("ZSTD_RESERVED_BLOCK", p, p + 3, fields![("block", block)]));
    }
    if bsize > block_max {
        return Err(("ZSTD_BLOCK_TOO_LARGE", p, p + 3, fields![("block", block), ("size", bsize), ("limit", block_max)]));
    }
    Ok((last, p + 3 + if btype == 1 { 1 } else { bsize }))
}

/// The block walk of a frame whose end came from a size note, fed the bytes its decoder is
/// fed, so that an object in a store is read once. It settles when its blocks end (exactly at
/// the noted end, or not) or on a bad header. One that has not settled when the bytes stop
/// (decoding failed first, or the blocks run on past the noted end) leaves the question to
/// `unwalked_problem`.
pub struct BlockTrail {
    offset: u64,
    noted_end: u64,
    block_max: u64,
    has_checksum: bool,
    next: u64, // the next block header, or the checksum, in the file
    block: u64,
    at_checksum: bool,
    gathered: Vec<u8>,
    past_note: bool, // a block runs past the noted end: left to unwalked_problem
    settled: Option<Option<BlockProblem>>,
}

impl BlockTrail {
    pub fn new(offset: u64, noted_end: u64, header_length: u64, window: u64, has_checksum: bool) -> Self {
        BlockTrail { offset, noted_end, block_max: window.min(BLOCK_SIZE_MAX), has_checksum,
                     next: offset + header_length, block: 0, at_checksum: false, gathered: Vec::new(), past_note: false,
                     settled: None }
    }

    /// The frame's bytes [pos, pos + data.len()), fed in order.
    pub fn feed(&mut self, pos: u64, data: &[u8]) {
        let end = pos + data.len() as u64;
        while self.settled.is_none() && !self.past_note && self.next + (self.gathered.len() as u64) < end {
            let at = self.next + self.gathered.len() as u64;
            if at < pos {
                return; // bytes were skipped: not this trail's to say
            }
            let want = if self.at_checksum { 4 } else { 3 };
            let from = (at - pos) as usize;
            let take = (want - self.gathered.len()).min(data.len() - from);
            self.gathered.extend_from_slice(&data[from..from + take]);
            if self.gathered.len() < want {
                return;
            }
            let (p, header) = (self.next, std::mem::take(&mut self.gathered));
            if self.at_checksum {
                self.settle(p + 4);
                continue;
            }
            match block_header(&header, p, self.block, self.block_max) {
                Err(problem) => self.settled = Some(Some(problem)),
                Ok((_, next)) if next > self.noted_end => {
                    // past the note: the bytes after it, which the decoder is not fed, say the rest
                    self.past_note = true;
                    return;
                }
                Ok((last, next)) => {
                    self.block += 1;
                    self.next = next;
                    if last && self.has_checksum {
                        self.at_checksum = true;
                    } else if last {
                        self.settle(next);
                    }
                }
            }
        }
    }

    fn settle(&mut self, end: u64) {
        self.settled = Some((end != self.noted_end).then(|| ("ZSTD_SIZE_NOTE_MISMATCH", self.offset, self.noted_end,
            fields![("noted", self.noted_end - self.offset), ("actual", end - self.offset)])));
    }

    /// None until settled; then the problem, if there is one.
    pub fn settled(&self) -> Option<&Option<BlockProblem>> {
        self.settled.as_ref()
    }
}

/// The block walk of a frame whose end came from a size note: it must end exactly there.
pub fn unwalked_problem(src: &mut dyn ByteSource, frame: &Frame) -> Option<BlockProblem> {
    let Some(header) = parse_frame_header(&src.read_at(frame.offset, 18)) else {
        // the file no longer holds the header the walk saw
        return Some(("ZSTD_TRUNCATED_FRAME", frame.offset, src.size(), vec![]));
    };
    match walk_blocks(src, frame.offset + header.length as u64, header.window, header.has_checksum) {
        Err((_, problem)) => Some(problem),
        Ok(end) if end != frame.end => Some(("ZSTD_SIZE_NOTE_MISMATCH", frame.offset, frame.end,
                                             fields![("noted", frame.end - frame.offset), ("actual", end - frame.offset)])),
        Ok(_) => None,
    }
}

fn format_size(n: u64) -> String {
    let mut value = n as f64;
    for unit in ["B", "KiB", "MiB", "GiB", "TiB"] {
        if value.abs() < 1024.0 || unit == "TiB" {
            return if unit == "B" || value.fract() == 0.0 { format!("{value:.0} {unit}") } else { format!("{value:.1} {unit}") };
        }
        value /= 1024.0;
    }
    unreachable!()
}

/// Walks every frame of a zstd file: the frames, and the structural findings. It keeps no
/// frame once handed on, so its memory does not grow with the number of frames, except 16 bytes
/// a frame where a seek table is looked for (it is checked against every frame at the end).
pub struct FrameWalk<'s> {
    src: &'s mut dyn ByteSource,
    max_window: u64,
    walked: Vec<Frame>, // walked, not yet handed on (a frame or two)
    count: u64,         // frames found so far: the next one's index
    start: u64,         // where the walk begins (a frame's start, whose index `count` is)
    last: Option<Frame>,
    spans: Option<Vec<(u64, u64)>>, // each frame's (offset, end), while a seek table is looked for
    pub findings: Vec<WalkFinding>,
    size_hint: Option<(u64, u64)>, // (frame start, compressed size) from pzstd
}

/// A seekable file's table, once the walk has found that it describes the frames before it.
pub struct SeekTable {
    entry_size: usize,
    entries: Vec<u8>,
}

impl SeekTable {
    pub fn len(&self) -> usize {
        self.entries.len() / self.entry_size
    }

    pub fn is_empty(&self) -> bool {
        self.entries.is_empty()
    }

    /// Frame `i`'s (checksum, decompressed size).
    pub fn entry(&self, i: usize) -> (Option<u32>, u64) {
        let at = i * self.entry_size;
        let u32_at = |at: usize| u32::from_le_bytes([self.entries[at], self.entries[at + 1], self.entries[at + 2],
                                                     self.entries[at + 3]]);
        ((self.entry_size == 12).then(|| u32_at(at + 8)), u32_at(at + 4) as u64)
    }
}

/// How a walk ended: its findings, and the seek table when the file's holds.
pub struct WalkEnd {
    pub findings: Vec<WalkFinding>,
    pub seek_table: Option<SeekTable>,
}

/// A zstd frame's header read: the walk goes on at `Ended`'s position, or walks `Open`'s blocks.
enum Step {
    Ended(u64),
    Open(Frame, FrameHeader),
}

impl<'s> FrameWalk<'s> {
    pub fn new(src: &'s mut dyn ByteSource, max_window: u64) -> Self {
        FrameWalk { src, max_window, walked: Vec::new(), count: 0, start: 0, last: None, spans: Some(Vec::new()),
                    findings: Vec::new(), size_hint: None }
    }

    /// Begin at frame `index`, which starts at `offset` (a walk that goes on from where another
    /// stopped handing frames on): it finds what lies from there on. Begin at a pzstd size note
    /// rather than at the frame after it (the note is not carried over). Such a walk checks no
    /// seek table: the frames before `index` are not its own.
    pub fn starting_at(mut self, offset: u64, index: u64) -> Self {
        (self.start, self.count) = (offset, index);
        if index > 0 {
            self.spans = None;
        }
        self
    }

    /// Whether to check a seek table at the end (the default): false for a file known not to
    /// end in a seekable footer, so that nothing is kept of its frames.
    pub fn seekable(mut self, seekable: bool) -> Self {
        self.spans = seekable.then(Vec::new);
        self
    }

    /// Every frame (with what a seek table that holds says of it) and the findings.
    pub fn run(self) -> (Vec<Frame>, Vec<WalkFinding>) {
        let mut frames = Vec::new();
        let end = self.run_with(|frame, _, whole| {
            if whole {
                frames.push(frame.clone());
            }
            true
        });
        if let Some(table) = &end.seek_table {
            for (i, frame) in frames.iter_mut().take(table.len()).enumerate() {
                let (checksum, size) = table.entry(i);
                (frame.seek_checksum, frame.seek_size) = (checksum, Some(size));
            }
        }
        (frames, end.findings)
    }

    /// Hands each frame to `on_frame` as soon as it is walked, with the number of findings made
    /// so far and `true` (what a seek table found at the end says of the frames comes with the
    /// end). A zstd frame without a size note is handed on before its blocks are walked too,
    /// with `false` and its end unknown (its offset), so that it can be decoded while the walk
    /// follows it. `on_frame` returning false ends the walk there.
    pub fn run_with(mut self, mut on_frame: impl FnMut(&Frame, usize, bool) -> bool) -> WalkEnd {
        let size = self.src.size();
        let mut pos = self.start;
        while pos < size {
            let head = self.src.read_at(pos, 18);
            let magic = (head.len() >= 4).then(|| u32::from_le_bytes([head[0], head[1], head[2], head[3]]));
            pos = match magic {
                Some(ZSTD_MAGIC) => match self.zstd_frame(pos, &head) {
                    Step::Ended(next) => next,
                    Step::Open(frame, header) => {
                        if !on_frame(&frame, self.findings.len(), false) {
                            return WalkEnd { findings: self.findings, seek_table: None };
                        }
                        self.walk_open(frame, &header)
                    }
                },
                Some(m) if m & SKIPPABLE_MASK == SKIPPABLE_BASE => self.skippable(pos, &head, m),
                _ => self.garbage(pos, magic),
            };
            for frame in std::mem::take(&mut self.walked) {
                if !on_frame(&frame, self.findings.len(), true) {
                    return WalkEnd { findings: self.findings, seek_table: None };
                }
                self.last = Some(frame);
            }
        }
        let seek_table = self.check_seek_table();
        WalkEnd { findings: self.findings, seek_table }
    }

    fn push(&mut self, frame: Frame) {
        if let Some(spans) = &mut self.spans {
            spans.push((frame.offset, frame.end));
        }
        self.count += 1;
        self.walked.push(frame);
    }

    fn find(&mut self, code: &'static str, start: u64, end: u64, frame: Option<u64>, details: Fields) {
        self.findings.push(WalkFinding { code, start, end, frame, details });
    }

    /// The next frame magic at or after `start`, or the end of the file.
    fn next_magic(&mut self, start: u64) -> u64 {
        let size = self.src.size();
        let mut pos = start;
        while pos < size {
            let window = self.src.read_at(pos, (FIND_WINDOW + 3).min(size - pos) as usize);
            if let Some(hit) = memchr::memmem::find(&window, ZSTD_MAGIC_BYTES) {
                return pos + hit as u64;
            }
            pos += FIND_WINDOW;
        }
        size
    }

    fn garbage(&mut self, pos: u64, magic: Option<u32>) -> u64 {
        let next = self.next_magic(pos + 1);
        let legacy = magic.is_some_and(|m| (0xFD2F_B522..0xFD2F_B528).contains(&m) || m == 0x1EB5_2FFD);
        if legacy {
            // not one of the walk's frames: an index would name the frame after it, as lost
            self.find("ZSTD_LEGACY_FRAME", pos, next, None, vec![]);
        } else if next >= self.src.size() {
            self.find("ZSTD_TRAILING_GARBAGE", pos, next, None, fields![("length", next - pos)]);
        } else {
            let detail = format!("{} bytes of unknown data before the next frame", next - pos);
            self.find("ZSTD_BAD_MAGIC", pos, next, None, fields![("detail", detail)]);
        }
        next
    }

    fn skippable(&mut self, pos: u64, head: &[u8], magic: u32) -> u64 {
        let index = self.count;
        let size = self.src.size();
        if head.len() < 8 {
            self.find("ZSTD_TRUNCATED_FRAME", pos, size, Some(index), vec![]);
            return size;
        }
        let mut end = pos + 8 + u32::from_le_bytes([head[4], head[5], head[6], head[7]]) as u64;
        if end > size {
            self.find("ZSTD_TRUNCATED_FRAME", pos, size, Some(index), vec![]);
            end = size;
        }
        let kind = if magic == SEEK_TABLE_MAGIC && end == size && end >= 4
            && self.src.read_at(end - 4, 4) == SEEKABLE_FOOTER_MAGIC.to_le_bytes() {
            Kind::SeekTable
        } else {
            Kind::Skippable
        };
        self.push(Frame { index, kind, offset: pos, end, window: 0, content_size: None, has_checksum: false,
                                 dictionary_id: 0, intact: true, seek_checksum: None, seek_size: None, walked: true,
                                 window_ok: true, header_length: 8 });
        if magic == SKIPPABLE_BASE && end - pos == 12 && head.len() >= 12 {
            // pzstd's note of the next frame's size
            self.size_hint = Some((end, u32::from_le_bytes([head[8], head[9], head[10], head[11]]) as u64));
        }
        end
    }

    /// A zstd frame's header: the frame pushed and the position after it, or the frame whose
    /// blocks are still to walk.
    fn zstd_frame(&mut self, pos: u64, head: &[u8]) -> Step {
        let index = self.count;
        let size = self.src.size();
        let Some(header) = parse_frame_header(head) else {
            self.find("ZSTD_TRUNCATED_FRAME", pos, size, Some(index), vec![]);
            return Step::Ended(size);
        };
        let window_ok = self.window_ok(pos, &header, index);
        let mut frame = Frame {
            index, kind: Kind::Zstd, offset: pos, end: pos, window: header.window, content_size: header.content_size,
            has_checksum: header.has_checksum, dictionary_id: header.dictionary_id, intact: true, seek_checksum: None,
            seek_size: None, walked: true, window_ok, header_length: header.length,
        };
        if header.reserved_bit {
            self.find("ZSTD_RESERVED_BIT", pos, pos + header.length as u64, Some(index), vec![]);
            let end = self.next_magic(pos + 1);
            frame.end = end;
            frame.intact = false;
            self.push(frame);
            return Step::Ended(end);
        }
        match self.hinted_end(pos) {
            Some(end) => {
                frame.walked = false; // the decoding thread walks its blocks, in parallel
                frame.end = end;
                Step::Ended(self.push_zstd(frame))
            }
            None => Step::Open(frame, header),
        }
    }

    /// Walk an open frame's blocks to its end (or its damage), and push it.
    fn walk_open(&mut self, mut frame: Frame, header: &FrameHeader) -> u64 {
        let (end, intact) = self.walk(frame.offset + header.length as u64, header, frame.index);
        frame.end = end;
        frame.intact = intact;
        self.push_zstd(frame)
    }

    fn push_zstd(&mut self, frame: Frame) -> u64 {
        let end = frame.end;
        if frame.dictionary_id != 0 {
            self.find("ZSTD_DICTIONARY_REQUIRED", frame.offset, end, Some(frame.index),
                      fields![("dictionary_id", frame.dictionary_id)]);
        }
        self.push(frame);
        end
    }

    /// A window no encoder would write is header damage (corruption); a plausible one over
    /// --max-window is a question of memory, and leaves the frame unverified.
    fn window_ok(&mut self, pos: u64, header: &FrameHeader, index: u64) -> bool {
        let (window, content) = (header.window, header.content_size);
        let end = pos + header.length as u64;
        let why = if window > FORMAT_WINDOW_MAX {
            Some(format!("beyond what zstd makes or decodes ({}, windowLog 31)", format_size(FORMAT_WINDOW_MAX)))
        } else {
            // zstd sizes the window to the content when it knows the size (formats.md 1.3)
            content.filter(|&c| window > c.max(LARGE_WINDOW)).map(|c| {
                format!("while the frame holds {}: no encoder asks for more than its content", format_size(c))
            })
        };
        if let Some(why) = why {
            self.find("ZSTD_BAD_WINDOW", pos, end, Some(index), fields![("window", format_size(window)), ("why", why)]);
            return window <= self.max_window && window <= FORMAT_WINDOW_MAX;
        }
        if window > self.max_window {
            self.find("ZSTD_WINDOW_OVER_LIMIT", pos, end, Some(index),
                      fields![("window", format_size(window)), ("limit", format_size(self.max_window))]);
            return false;
        }
        true
    }

    /// The end pzstd noted for the frame at `pos`, if it leads to the next frame or to the end
    /// of the file.
    fn hinted_end(&mut self, pos: u64) -> Option<u64> {
        let (start, length) = self.size_hint.take()?;
        if start != pos {
            return None;
        }
        let end = pos + length;
        let size = self.src.size();
        if end == size || (end < size && is_zstd_start(&self.src.read_at(end, 4))) {
            return Some(end);
        }
        None
    }

    fn walk(&mut self, p: u64, header: &FrameHeader, index: u64) -> (u64, bool) {
        match walk_blocks(self.src, p, header.window, header.has_checksum) {
            Ok(end) => (end, true),
            Err((_, (code, start, end, details))) => {
                self.find(code, start, end, Some(index), details);
                let next = if code == "ZSTD_TRUNCATED_FRAME" { self.src.size() } else { self.next_magic(end) };
                (next, false)
            }
        }
    }

    /// Seekable format (formats.md 1.7): the table must describe the frames before it. Its
    /// entries, when it holds (a frame whose size it has wrong is said, and the table still holds).
    fn check_seek_table(&mut self) -> Option<SeekTable> {
        let table = self.last.take().filter(|f| f.kind == Kind::SeekTable)?;
        let spans = self.spans.take()?;
        let data = self.src.read_at(table.offset, (table.end - table.offset) as usize);
        if data.len() < 17 {
            let problem = format!("a seek table of {} bytes", data.len());
            self.find("ZSTD_SEEK_TABLE_MISMATCH", table.offset, table.end, Some(table.index), fields![("detail", problem)]);
            return None;
        }
        let u32_at = |at: usize| u32::from_le_bytes([data[at], data[at + 1], data[at + 2], data[at + 3]]);
        let count = u32_at(data.len() - 9) as u64;
        let descriptor = data[data.len() - 5];
        let entry_size: u64 = if descriptor & 0x80 != 0 { 12 } else { 8 };
        let data_frames = self.count - 1;
        let problem = if descriptor & 0x7C != 0 {
            Some("reserved bits set in the seek table descriptor".to_string())
        } else if 8 + count * entry_size + 9 != data.len() as u64 {
            Some(format!("table of {count} entries does not fit its frame"))
        } else if count != data_frames {
            Some(format!("table lists {count} frames, the file has {data_frames}"))
        } else {
            None
        };
        if let Some(problem) = problem {
            self.find("ZSTD_SEEK_TABLE_MISMATCH", table.offset, table.end, Some(table.index), fields![("detail", problem)]);
            return None;
        }
        for (i, &(offset, end)) in spans.iter().take(data_frames as usize).enumerate() {
            let csize = u32_at(8 + i * entry_size as usize) as u64;
            if csize != end - offset {
                let detail = format!("frame is {} bytes, table says {csize}", end - offset);
                self.find("ZSTD_SEEK_TABLE_MISMATCH", offset, end, Some(i as u64), fields![("detail", detail)]);
            }
        }
        let entries = data[8..8 + (count * entry_size) as usize].to_vec();
        Some(SeekTable { entry_size: entry_size as usize, entries })
    }
}

impl WalkFinding {
    pub fn detail(&self, key: &str) -> Option<&Value> {
        self.details.iter().find(|(k, _)| *k == key).map(|(_, v)| v)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn hex(text: &str) -> Vec<u8> {
        (0..text.len()).step_by(2).map(|i| u8::from_str_radix(&text[i..i + 2], 16).unwrap()).collect()
    }

    #[test]
    fn frame_header_vectors_from_the_format_sheet() {
        let hello = parse_frame_header(&hex("28B52FFD045829000068656C6C6FA36D9F88")).unwrap();
        assert_eq!((hello.window, hello.has_checksum, hello.content_size), (2 << 20, true, None));
        let empty = parse_frame_header(&hex("28B52FFD240001000099E9D851")).unwrap();
        assert_eq!((empty.content_size, empty.length, empty.has_checksum), (Some(0), 6, true));
    }

    fn small_blocks(data: &[u8]) -> Vec<u8> {
        let mut cctx = zstd_safe::CCtx::create();
        cctx.set_parameter(zstd_safe::CParameter::MaxBlockSize(4096)).unwrap();
        cctx.set_parameter(zstd_safe::CParameter::ChecksumFlag(true)).unwrap();
        let mut out = Vec::with_capacity(zstd_safe::compress_bound(data.len()));
        cctx.compress2(&mut out, data).unwrap();
        out
    }

    /// The trail over pieces of `file`'s first frame, noted to end at `noted`.
    fn trail(file: &[u8], noted: u64, piece: usize) -> Option<Option<BlockProblem>> {
        let header = parse_frame_header(file).unwrap();
        let mut trail = BlockTrail::new(0, noted, header.length as u64, header.window, header.has_checksum);
        let upto = (noted as usize).min(file.len());
        for (i, part) in file[..upto].chunks(piece).enumerate() {
            trail.feed((i * piece) as u64, part);
        }
        trail.settled().cloned()
    }

    fn unwalked(file: &[u8], noted: u64) -> Option<BlockProblem> {
        let frame = Frame { index: 0, kind: Kind::Zstd, offset: 0, end: noted, window: 0, content_size: None,
                            has_checksum: false, dictionary_id: 0, intact: true, seek_checksum: None, seek_size: None,
                            walked: false, window_ok: true, header_length: 0 };
        unwalked_problem(&mut &file[..], &frame)
    }

    /// Three frames of small blocks and garbage after them; and one frame's bytes.
    fn three_frames() -> (Vec<u8>, Vec<u8>) {
        let data: Vec<u8> = (0..50_000u32).flat_map(|i| (i % 251).to_le_bytes()).collect();
        let frame = small_blocks(&data);
        let mut file = Vec::new();
        for _ in 0..3 {
            file.extend_from_slice(&frame);
        }
        file.extend_from_slice(b"trailing garbage");
        (file, frame)
    }

    #[test]
    fn frames_are_handed_on_as_walked_and_the_walk_ends_when_told() {
        let (file, frame) = three_frames();
        let (all, found) = FrameWalk::new(&mut &file[..], 1 << 27).run();
        let mut handed = Vec::new();
        let end = FrameWalk::new(&mut &file[..], 1 << 27).run_with(|f, n, whole| {
            handed.push((f.index, f.offset, f.end, n, whole));
            true
        });
        let findings = end.findings;
        assert_eq!((all.len(), findings.len()), (3, found.len()));
        let len = frame.len() as u64;
        // each frame twice: open at its header (its end unknown), then walked
        assert_eq!(handed, vec![(0, 0, 0, 0, false), (0, 0, len, 0, true), (1, len, len, 0, false),
                                (1, len, 2 * len, 0, true), (2, 2 * len, 2 * len, 0, false), (2, 2 * len, 3 * len, 0, true)]);
        assert_eq!(findings[0].code, "ZSTD_TRAILING_GARBAGE"); // made after the last frame was handed on
        let (mut count, mut source) = (0, &file[..]);
        FrameWalk::new(&mut source, 1 << 27).run_with(|_, _, whole| {
            count += usize::from(whole);
            count < 2
        });
        assert_eq!(count, 2);
    }

    #[test]
    fn a_walk_begun_at_a_frame_finds_what_the_whole_walk_finds_from_there() {
        let (file, _) = three_frames();
        let (all, found) = FrameWalk::new(&mut &file[..], 1 << 27).run();
        let mut from_one = Vec::new();
        let end = FrameWalk::new(&mut &file[..], 1 << 27).starting_at(all[1].offset, 1).run_with(|f, _, whole| {
            if whole {
                from_one.push(f.clone());
            }
            true
        });
        assert_eq!(from_one, all[1..].to_vec());
        assert_eq!(end.findings, found);
    }

    #[test]
    fn the_trail_over_the_decoders_bytes_says_what_the_block_walk_says() {
        let data: Vec<u8> = (0..200_000u32).flat_map(|i| (i % 251).to_le_bytes()).collect();
        let frame = small_blocks(&data);
        let mut next = frame.clone();
        next.extend_from_slice(&frame); // a second frame after it, as pzstd writes them
        let len = frame.len() as u64;
        for piece in [1, 2, 5, 4096, 1 << 20] {
            assert_eq!(trail(&next, len, piece), Some(None), "piece {piece}");
            assert_eq!(unwalked(&next, len), None);
            // a note that says the frame is shorter: the blocks run past it, so the trail leaves it open
            assert_eq!(trail(&next, len - 10, piece), None);
            // longer: the blocks end before the noted end
            let longer = trail(&next, len + 10, piece).unwrap();
            assert_eq!(longer, unwalked(&next, len + 10));
            assert_eq!(longer.unwrap().0, "ZSTD_SIZE_NOTE_MISMATCH");
        }
        // the last block runs past a note that ends the file: the walk through the reader says truncated
        let cut = &frame[..frame.len() - 4 - 5]; // the checksum and five bytes of the last block gone
        assert_eq!(trail(cut, cut.len() as u64, 4096), None);
        assert_eq!(unwalked(cut, cut.len() as u64).unwrap().0, "ZSTD_TRUNCATED_FRAME");
        let header = parse_frame_header(&frame).unwrap().length;
        let mut damaged = next.clone();
        let (_, second) = block_header(&frame[header..header + 3], header as u64, 0, BLOCK_SIZE_MAX).unwrap();
        damaged[second as usize] |= 0b110; // the second block's type: reserved
        let problem = trail(&damaged, len, 4096).unwrap();
        assert_eq!(problem, unwalked(&damaged, len));
        assert_eq!(problem.unwrap().0, "ZSTD_RESERVED_BLOCK");
    }
}
