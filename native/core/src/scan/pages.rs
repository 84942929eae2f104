//! PostgreSQL page checks (formats.md 3.2-3.6): pure functions of one page's bytes. A page is
//! checked the way PostgreSQL's PageIsVerified does, plus the header and line-pointer rules
//! that hold on every correct heap and btree page.

pub const BLCKSZ: usize = 8192;
const HEADER: usize = 24;
const LAYOUT: u16 = (BLCKSZ as u16) | 4; // pd_pagesize_version: 8 KiB pages, layout 4
const MAX_HEAP_ITEMS: usize = 291;
const FNV_PRIME: u32 = 16_777_619;
const BASE: [u32; 32] = [
    0x5B1F36E9, 0xB8525960, 0x02AB50AA, 0x1DE66D2A, 0x79FF467A, 0x9BB9F8A3, 0x217E7CD2, 0x83E13D2C,
    0xF8D4474F, 0xE39EB970, 0x42C6AE16, 0x993216FA, 0x7B093B5D, 0x98DAFF3C, 0xF718902A, 0x0B1C9CDB,
    0xE58F764B, 0x187636BC, 0x5D7B3BB1, 0xE73DE7DE, 0x92BEC979, 0xCCA6C0B2, 0x304A0979, 0x85AA43D4,
    0x783125BB, 0x6CA8EAA2, 0xE407EAC6, 0x4B5CFC3E, 0x9FBF8C76, 0x15CA20BE, 0xF2CA9FD3, 0x959BD756,
];
const BTREE_META_MAGIC: u32 = 0x053162;
const BT_ROOT: u16 = 0x2;
const BT_META: u16 = 0x8;

fn u16_at(page: &[u8], at: usize) -> u16 {
    u16::from_le_bytes([page[at], page[at + 1]])
}

fn u32_at(page: &[u8], at: usize) -> u32 {
    u32::from_le_bytes([page[at], page[at + 1], page[at + 2], page[at + 3]])
}

/// pg_checksum_page: 32 lanes of FNV-1a-style mixing over the page read as 64 rows of 32
/// words, pd_checksum counted as zero, then the absolute block number, folded to 1..=65535.
/// Row by row over fixed-size arrays, with no branch inside, so the compiler vectorises the
/// lanes as PostgreSQL's C compiler does.
pub fn checksum(page: &[u8], block: u32) -> u16 {
    let mut sums = BASE;
    let mut first = [0u8; ROW];
    first.copy_from_slice(&page[..ROW]);
    first[8..10].fill(0); // pd_checksum is bytes 8-9
    mix_row(&mut sums, &first);
    for row in page[ROW..BLCKSZ].chunks_exact(ROW) {
        mix_row(&mut sums, row.try_into().expect("a row is ROW bytes"));
    }
    let zero = [0u8; ROW];
    mix_row(&mut sums, &zero);
    mix_row(&mut sums, &zero);
    let h = sums.iter().fold(0u32, |acc, s| acc ^ s) ^ block;
    (h % 65535 + 1) as u16
}

const ROW: usize = 128; // 32 lanes of 4 bytes

#[inline(always)]
fn mix_row(sums: &mut [u32; 32], row: &[u8; ROW]) {
    for (sum, word) in sums.iter_mut().zip(row.chunks_exact(4)) {
        let t = *sum ^ u32::from_le_bytes([word[0], word[1], word[2], word[3]]);
        *sum = t.wrapping_mul(FNV_PRIME) ^ (t >> 17);
    }
}

pub struct Header {
    pub lsn: u64,
    pub checksum: u16,
    flags: u16,
    lower: usize,
    upper: usize,
    special: usize,
    layout: u16,
}

impl Header {
    pub fn read(page: &[u8]) -> Self {
        Header {
            lsn: ((u32_at(page, 0) as u64) << 32) | u32_at(page, 4) as u64,
            checksum: u16_at(page, 8),
            flags: u16_at(page, 10),
            lower: u16_at(page, 12) as usize,
            upper: u16_at(page, 14) as usize,
            special: u16_at(page, 16) as usize,
            layout: u16_at(page, 18),
        }
    }
}

/// A page never written (pd_upper 0 and every byte zero) is valid.
pub fn is_new_and_zero(page: &[u8], h: &Header) -> bool {
    h.upper == 0 && page.iter().all(|&b| b == 0)
}

/// The first header rule the page breaks.
pub fn header_problem(h: &Header) -> Option<&'static str> {
    if h.upper == 0 {
        return Some("pd_upper is 0 (a new page) but the page is not all zero");
    }
    if h.flags & !7 != 0 {
        return Some("pd_flags has undefined bits set");
    }
    if h.layout != LAYOUT {
        return Some("pd_pagesize_version is not 8192, layout 4");
    }
    if h.lower < HEADER {
        return Some("pd_lower is inside the page header");
    }
    if h.lower > h.upper || h.upper > h.special || h.special > BLCKSZ {
        return Some("pd_lower <= pd_upper <= pd_special <= 8192 does not hold");
    }
    if h.special % 8 != 0 {
        return Some("pd_special is not a multiple of 8");
    }
    None
}

/// A line pointer: (offset, kind, length).
type Item = (usize, u32, usize);

/// Line-pointer rules of heap and btree pages (formats.md 3.4-3.5), for a page whose header
/// holds: (item number, problem). Other access methods keep other layouts and are not judged.
pub fn item_problem(page: &[u8], h: &Header) -> Option<(usize, String)> {
    let special_size = BLCKSZ - h.special;
    let tail = u16_at(page, BLCKSZ - 2);
    let flags_at = (h.special + 12).min(BLCKSZ - 2);
    let bt_flags = u16_at(page, flags_at);
    let heap = special_size == 0;
    // not the metapage, nor a deleted or half-dead page (PG14+ keeps a safexid where items were)
    let btree = special_size == 16 && tail <= 0xFF7F && bt_flags & (0x8 | 0x4 | 0x10) == 0;
    let lines = if h.lower > HEADER { (h.lower - HEADER) / 4 } else { 0 };
    if !(heap || btree) || lines == 0 {
        return None;
    }
    if heap && lines > MAX_HEAP_ITEMS {
        return Some((lines, format!("a heap page holds at most {MAX_HEAP_ITEMS} items")));
    }
    let items: Vec<Item> = (0..lines)
        .map(|k| {
            let raw = u32_at(page, HEADER + 4 * k);
            ((raw & 0x7FFF) as usize, (raw >> 15) & 3, (raw >> 17) as usize)
        })
        .collect();
    let first = |broken: &dyn Fn(&Item) -> bool, problem: &str| {
        items.iter().position(broken).map(|k| (k + 1, problem.to_string()))
    };
    // the first rule broken, at its first item
    first(&|&(off, _, len)| len != 0 && (off < h.upper || off + len > h.special),
          "its storage lies outside pd_upper..pd_special")
        .or_else(|| first(&|&(off, _, len)| len != 0 && off % 8 != 0, "its storage is not 8-byte aligned"))
        .or_else(|| first(&|&(off, kind, _)| kind == 2 && (off < 1 || off > lines), "it redirects to a missing item"))
}

/// The btree special space (formats.md 3.5): flags, the metapage, the root's siblings.
pub fn btree_problem(page: &[u8], h: &Header, block: u64) -> Option<&'static str> {
    if h.special != BLCKSZ - 16 {
        return None;
    }
    let at = h.special;
    let (prev, next) = (u32_at(page, at), u32_at(page, at + 4));
    let word = u32_at(page, at + 12);
    let (flags, cycle) = ((word & 0xFFFF) as u16, word >> 16);
    if cycle > 0xFF7F {
        return None; // hash, GiST and SP-GiST pages end in 0xFF80-0xFF82
    }
    if flags >= 0x200 {
        return Some("btpo_flags has undefined bits set");
    }
    if flags & BT_META != 0 && block != 0 {
        return Some("a page other than block 0 is marked as the metapage");
    }
    if flags & BT_META != 0 {
        let (magic, version) = (u32_at(page, 24), u32_at(page, 28));
        if magic != BTREE_META_MAGIC || !(2..=4).contains(&version) {
            return Some("the metapage's magic or version is wrong");
        }
    }
    if flags & BT_ROOT != 0 && (prev != 0 || next != 0) {
        return Some("the root page has siblings");
    }
    None
}

#[cfg(test)]
mod tests {
    use super::*;

    /// An empty page: only pd_lower, pd_upper, pd_special and pd_pagesize_version set.
    fn page(lower: u16, upper: u16, special: u16) -> Vec<u8> {
        let mut page = vec![0u8; BLCKSZ];
        for (at, value) in [(12, lower), (14, upper), (16, special), (18, LAYOUT)] {
            page[at..at + 2].copy_from_slice(&value.to_le_bytes());
        }
        page
    }

    #[test]
    fn checksum_test_vectors_from_formats_md() {
        let mut page = page(24, 8192, 8192);
        assert_eq!(checksum(&page, 0), 0x6560);
        assert_eq!(checksum(&page, 1), 0x655F);
        assert_eq!(checksum(&page, 131_077), 0x6559);
        page[8] = 0xAB; // pd_checksum itself does not count
        assert_eq!(checksum(&page, 0), 0x6560);
        page[4..8].copy_from_slice(&[0, 0, 0, 1]); // pd_lsn 0/01000000
        assert_eq!(checksum(&page, 0), 0x78DD);
    }

    #[test]
    fn a_deleted_btree_page_has_no_line_pointers_to_judge() {
        // PG14+ keeps a full transaction id where a deleted page's items were (pd_lower = 24 + 8)
        let mut page = page(32, 8176, 8176);
        page[24..32].copy_from_slice(&200_000u64.to_le_bytes()); // safexid: as line pointers, far away
        page[8188..8190].copy_from_slice(&(0x4u16 | 0x1 | 0x100).to_le_bytes()); // DELETED, LEAF, HAS_FULLXID
        let h = Header::read(&page);
        assert_eq!(header_problem(&h), None);
        assert_eq!(item_problem(&page, &h), None);
        page[8188..8190].copy_from_slice(&0x1u16.to_le_bytes()); // the same bytes on a live leaf page
        assert!(item_problem(&page, &Header::read(&page)).is_some());
    }
}
