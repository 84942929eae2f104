//! InnoDB tablespaces inside an archive: `*.ibd` and `ibdata*` (formats.md 5, 6.5).
//!
//! Page 0's FSP flags give the page size and format (MariaDB full_crc32, or the older
//! innodb/crc32 format, maybe ROW_FORMAT=COMPRESSED); then each page is checked on its own: its
//! number is its position, its space ID is page 0's, the low 32 bits of its LSN are repeated in
//! the trailer, and its checksum matches one of the algorithms InnoDB accepts in its non-strict
//! modes (as MariaDB's buf_page_is_corrupted and innochecksum do). All-zero pages are fine.

use super::whole_pages;
use crate::fields;
use crate::finding::{Fields, Found, Value};
use crate::tar::ContentScanner;

const FSP_FLAGS_AT: usize = 38 + 16;
const FSP_SPACE_ID_AT: usize = 38;
const FCRC32_MARKER: u32 = 0x10;
const COMPRESS_FCRC32_MARKER: u32 = 1 << 15;
const PAGE_COMPRESSED_TYPES: [u32; 2] = [34354, 37401];
const TRX_SYS_PAGE: u64 = 5;
const DOUBLEWRITE_MAGIC: u32 = 536_853_855;
const NO_CHECKSUM: u32 = 0xDEAD_BEEF;
const SIZES: [usize; 5] = [16384, 4096, 8192, 32768, 65536];

fn be32(b: &[u8], at: usize) -> u32 {
    u32::from_be_bytes([b[at], b[at + 1], b[at + 2], b[at + 3]])
}

/// ut_fold_binary, low 32 bits.
fn fold(data: &[u8]) -> u32 {
    let mut f: u32 = 0;
    for &b in data {
        let b = b as u32;
        f = ((((f ^ b ^ 1_653_893_711) << 8).wrapping_add(f)) ^ 1_463_735_687).wrapping_add(b);
    }
    f
}

/// (logical page size, physical page size, full_crc32) from FSP flags, or a problem.
fn page_size(flags: u32) -> Result<(usize, usize, bool), String> {
    if flags & FCRC32_MARKER != 0 {
        let ssize = flags & 0xF;
        if !(3..=7).contains(&ssize) {
            return Err(format!("full_crc32 page size code {ssize} in FSP flags {flags:#x}"));
        }
        return Ok((512 << ssize, 512 << ssize, true));
    }
    let (ssize, zip_ssize) = ((flags >> 6) & 0xF, (flags >> 1) & 0xF);
    if ssize != 0 && !(3..=7).contains(&ssize) {
        return Err(format!("page size code {ssize} in FSP flags {flags:#x}"));
    }
    let logical = if ssize != 0 { 512 << ssize } else { 16384 };
    if zip_ssize != 0 {
        if zip_ssize > 5 || 512 << zip_ssize > logical {
            return Err(format!("compressed page size code {zip_ssize} in FSP flags {flags:#x}"));
        }
        return Ok((logical, 512 << zip_ssize, false));
    }
    Ok((logical, logical, false))
}

/// MariaDB full_crc32: CRC-32C over the page (or its compressed part) minus its last 4 bytes.
fn full_crc32_problem(page: &[u8], ps: usize) -> Option<Fields> {
    let kind = be32(page, 24) >> 16;
    let mut size = ps;
    if kind & COMPRESS_FCRC32_MARKER != 0 {
        size = ((kind & !COMPRESS_FCRC32_MARKER) << 8) as usize;
        if !(8..ps).contains(&size) {
            return Some(fields![("algorithm", "full_crc32"), ("problem", format!("compressed size {size}"))]);
        }
    }
    let (stored, actual) = (be32(page, size - 4), crc32c::crc32c(&page[..size - 4]));
    (stored != actual).then(|| fields![("algorithm", "full_crc32"), ("stored", format!("{stored:08x}")),
                                       ("actual", format!("{actual:08x}"))])
}

fn algorithms() -> Value {
    Value::List(vec!["crc32".into(), "innodb".into(), "none".into()])
}

/// crc32, innodb (legacy) or none, whichever holds (buf_page_is_corrupted, non-strict).
fn old_checksum_problem(page: &[u8], ps: usize) -> Option<Fields> {
    let (first, second) = (be32(page, 0), be32(page, ps - 8));
    let crc = crc32c::crc32c(&page[4..26]) ^ crc32c::crc32c(&page[38..ps - 8]);
    if first == second && (second == crc || second == NO_CHECKSUM) {
        return None;
    }
    let new = fold(&page[4..26]).wrapping_add(fold(&page[38..ps - 8]));
    if (second == be32(page, 16) || second == fold(&page[0..26])) && (first == 0 || first == new) {
        return None;
    }
    Some(vec![("algorithm", algorithms()), ("stored", format!("{first:08x}/{second:08x}").into()),
              ("crc32", format!("{crc:08x}").into()), ("innodb", format!("{new:08x}").into())])
}

/// ROW_FORMAT=COMPRESSED pages (page_zip_calc_checksum): one field at offset 0.
fn zip_checksum_problem(page: &[u8], ps: usize) -> Option<Fields> {
    let stored = be32(page, 0);
    let parts = [&page[4..16], &page[24..26], &page[34..ps]];
    let crc = parts.iter().fold(0, |acc, p| acc ^ crc32c::crc32c(p));
    if stored == crc || stored == NO_CHECKSUM {
        return None;
    }
    let adler = parts.iter().fold(0u32, |acc, p| adler32(acc, p)); // seeded with 0, as InnoDB does
    if stored == adler {
        return None;
    }
    Some(vec![("algorithm", algorithms()), ("stored", format!("{stored:08x}").into()),
              ("crc32", format!("{crc:08x}").into()), ("innodb", format!("{adler:08x}").into())])
}

/// zlib's Adler-32, continuing from `adler`.
fn adler32(adler: u32, data: &[u8]) -> u32 {
    const MOD: u32 = 65521;
    let (mut a, mut b) = (adler & 0xFFFF, adler >> 16);
    for chunk in data.chunks(5552) {
        for &x in chunk {
            a += x as u32;
            b += a;
        }
        a %= MOD;
        b %= MOD;
    }
    (b << 16) | a
}

pub struct InnodbScanner {
    ps: Option<usize>, // physical page size, once known
    logical: usize,
    full_crc32: bool,
    zipped: bool,
    space: Option<u32>,
    base: u64, // page number of the file's first page (not 0 in ibdata2...)
    dead: bool, // page 0 unreadable: the pages are not judged
    doublewrite: Vec<std::ops::Range<u64>>,
    carry: Vec<u8>,
    seen: u64,
    found: Vec<Found>,
}

impl Default for InnodbScanner {
    fn default() -> Self {
        Self::new()
    }
}

impl InnodbScanner {
    pub fn new() -> Self {
        InnodbScanner {
            ps: None, logical: 0, full_crc32: false, zipped: false, space: None, base: 0, dead: false,
            doublewrite: Vec::new(), carry: Vec::new(), seen: 0, found: Vec::new(),
        }
    }

    fn place(&self, page: u64) -> Fields {
        match self.space {
            Some(s) => fields![("space", s), ("page", page)],
            None => fields![("page", page)],
        }
    }

    /// Page size and format from page 0's FSP header; false: more bytes are needed.
    fn start(&mut self, head: &[u8], last: bool) -> bool {
        if head.len() < FSP_FLAGS_AT + 4 {
            if last {
                self.found.push(Found { code: "INNODB_PARTIAL_PAGE", offset: 0, length: head.len() as u64,
                                        place: fields![("page", 0)], details: fields![("length", head.len())] });
                self.dead = true;
            }
            return last;
        }
        let number = be32(head, 4);
        if number != 0 {
            return self.start_without_page0(head, number, last);
        }
        self.space = Some(be32(head, 34));
        match page_size(be32(head, FSP_FLAGS_AT)) {
            Err(problem) => {
                self.header(problem, head.len());
                return true;
            }
            Ok((logical, ps, full)) => {
                self.logical = logical;
                self.ps = Some(ps);
                self.full_crc32 = full;
                self.zipped = ps != logical;
            }
        }
        let fsp_space = be32(head, FSP_SPACE_ID_AT);
        if Some(fsp_space) != self.space && head[..FSP_FLAGS_AT + 4].iter().any(|&b| b != 0) {
            let problem = format!("FSP header space ID {fsp_space}, FIL header {}", self.space.unwrap_or(0));
            self.found.push(Found { code: "INNODB_HEADER", offset: 0, length: self.ps.unwrap_or(0) as u64,
                                    place: self.place(0), details: fields![("problem", problem)] });
        }
        true
    }

    /// A further data file of the system tablespace: find the page size by checksum.
    fn start_without_page0(&mut self, head: &[u8], number: u32, last: bool) -> bool {
        if head.len() < SIZES[SIZES.len() - 1] && !last {
            return false;
        }
        for ps in SIZES {
            if head.len() < ps {
                continue;
            }
            let page = &head[..ps];
            if full_crc32_problem(page, ps).is_none() {
                self.full_crc32 = true;
            } else if old_checksum_problem(page, ps).is_some() {
                continue;
            }
            self.ps = Some(ps);
            self.logical = ps;
            self.base = number as u64;
            self.space = Some(be32(page, 34));
            return true;
        }
        self.header(format!("the file starts at page {number}, not 0, and its first page matches no checksum at any page size"),
                    head.len());
        true
    }

    fn header(&mut self, problem: String, have: usize) {
        let length = self.ps.unwrap_or(have) as u64;
        self.found.push(Found { code: "INNODB_HEADER", offset: 0, length, place: self.place(0),
                                details: fields![("problem", problem)] });
        self.dead = true;
    }

    fn check(&mut self, page: &[u8]) {
        let ps = self.ps.unwrap_or(page.len());
        let index = self.base + self.seen;
        self.seen += 1;
        let zero = |r: std::ops::Range<usize>| page[r].iter().all(|&b| b == 0);
        if zero(0..26) && zero(34..ps) && (!self.full_crc32 || zero(26..34)) {
            return; // allocated, never written
        }
        if self.doublewrite.iter().any(|r| r.contains(&index)) {
            return; // like innochecksum: copies of other pages, checked by recovery if ever used
        }
        if index == TRX_SYS_PAGE && self.space == Some(0) {
            self.find_doublewrite(page);
        }
        let stored = be32(page, 4);
        if stored as u64 != index {
            self.page("INNODB_PAGE_NUMBER", index, fields![("stored", stored)]);
        }
        let compressed = self.full_crc32 && (be32(page, 24) >> 16) & COMPRESS_FCRC32_MARKER != 0;
        let space = be32(page, 34);
        if Some(space) != self.space && !compressed {
            self.page("INNODB_PAGE_NUMBER", index, fields![("stored", stored), ("stored_space", space)]);
        }
        if self.full_crc32 {
            if let Some(problem) = full_crc32_problem(page, ps) {
                self.page("INNODB_PAGE_CHECKSUM", index, problem);
            }
            let key_version = be32(page, 0);
            if !compressed && key_version == 0 && page[20..24] != page[ps - 8..ps - 4] {
                self.page("INNODB_LSN_MISMATCH", index,
                          fields![("header", hex(&page[20..24])), ("trailer", hex(&page[ps - 8..ps - 4]))]);
            }
        } else if self.zipped {
            if let Some(problem) = zip_checksum_problem(page, ps) {
                self.page("INNODB_PAGE_CHECKSUM", index, problem);
            }
        } else {
            if page[20..24] != page[ps - 4..ps] {
                self.page("INNODB_LSN_MISMATCH", index,
                          fields![("header", hex(&page[20..24])), ("trailer", hex(&page[ps - 4..ps]))]);
            }
            if PAGE_COMPRESSED_TYPES.contains(&(be32(page, 24) >> 16)) {
                return; // MariaDB page_compressed: checked after decompression by the server
            }
            if let Some(problem) = old_checksum_problem(page, ps) {
                self.page("INNODB_PAGE_CHECKSUM", index, problem);
            }
        }
    }

    /// TRX_SYS_DOUBLEWRITE (ps - 200): an FSEG header, then magic, block 1, block 2.
    fn find_doublewrite(&mut self, page: &[u8]) {
        // a compressed page is smaller than the logical size the header sits at: not there
        let Some(at) = self.logical.checked_sub(200 - 10).filter(|at| at + 12 <= page.len()) else { return };
        let (magic, first, second) = (be32(page, at), be32(page, at + 4) as u64, be32(page, at + 8) as u64);
        if be32(page, 24) >> 16 == 7 && magic == DOUBLEWRITE_MAGIC {
            let extent = if self.logical <= 16384 { (1 << 20) / self.logical as u64 } else { 64 };
            self.doublewrite = vec![first..first + extent, second..second + extent];
        }
    }

    fn page(&mut self, code: &'static str, index: u64, extra: Fields) {
        let ps = self.ps.unwrap_or(0) as u64;
        let mut details = fields![("page", index)];
        details.extend(extra);
        let place = self.place(index);
        self.found.push(Found { code, offset: (index - self.base) * ps, length: ps, place, details });
    }

    fn feed_pages(&mut self, data: &[u8]) {
        let mut carry = std::mem::take(&mut self.carry);
        whole_pages(&mut carry, data, self.ps.unwrap_or(16384), |page| self.check(page));
        self.carry = carry;
    }
}

fn hex(b: &[u8]) -> String {
    b.iter().map(|x| format!("{x:02x}")).collect()
}

impl ContentScanner for InnodbScanner {
    fn feed(&mut self, data: &[u8], _offset: u64) {
        if self.dead {
            return;
        }
        if self.ps.is_none() {
            self.carry.extend_from_slice(data);
            let head = std::mem::take(&mut self.carry);
            if !self.start(&head, false) {
                self.carry = head;
                return;
            }
            if !self.dead {
                self.feed_pages(&head);
            }
            return;
        }
        self.feed_pages(data);
    }

    fn close(&mut self, complete: bool) {
        if self.ps.is_none() && !self.dead {
            if !complete {
                return;
            }
            if self.carry.is_empty() {
                self.header("empty file".into(), 0);
                return;
            }
            let head = std::mem::take(&mut self.carry);
            if self.start(&head, true) && !self.dead {
                self.feed_pages(&head);
            }
        }
        if complete && !self.carry.is_empty() && !self.dead {
            let length = self.carry.len() as u64;
            let at = self.seen * self.ps.unwrap_or(0) as u64;
            let place = self.place(self.base + self.seen);
            self.found.push(Found { code: "INNODB_PARTIAL_PAGE", offset: at, length, place,
                                    details: fields![("length", length)] });
        }
    }

    fn take_found(&mut self) -> Vec<Found> {
        std::mem::take(&mut self.found)
    }

    fn facts(&self) -> Fields {
        let doublewrite: Vec<Value> = self.doublewrite.iter().map(|r| vec![r.start, r.end].into()).collect();
        fields![("page_size", self.ps), ("logical", self.logical), ("full_crc32", self.full_crc32),
                ("compressed", self.zipped), ("space", self.space), ("base", self.base), ("pages", self.seen),
                ("doublewrite", Value::List(doublewrite))]
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_compressed_system_tablespace_has_no_doublewrite_header_to_read() {
        // space 0 with 8 KiB compressed pages (zip_ssize 4) of 16 KiB logical ones: the
        // doublewrite header's place (logical - 190) lies past the end of page 5 (fuzzing found it)
        let mut file = vec![0u8; 6 * 8192];
        file[FSP_FLAGS_AT..FSP_FLAGS_AT + 4].copy_from_slice(&(4u32 << 1).to_be_bytes());
        for page in 1..6usize {
            file[page * 8192 + 4..page * 8192 + 8].copy_from_slice(&(page as u32).to_be_bytes());
            file[page * 8192 + 24..page * 8192 + 26].copy_from_slice(&7u16.to_be_bytes()); // TRX_SYS
        }
        let mut scanner = InnodbScanner::new();
        scanner.feed(&file, 0);
        scanner.close(true);
        assert_eq!(scanner.facts().iter().find(|(k, _)| *k == "page_size").map(|(_, v)| v.clone()),
                   Some(Value::Int(8192)));
        assert!(scanner.doublewrite.is_empty());
    }
}
