//! The tar walk with the database scanners (archcheck_core::tar::TarWalker behind a
//! scan::Router), driven as native/python/src/lib.rs's TarWalker and layers/stream.py drive it.
//!
//! Input: 8 control bytes, then the (decoded) tar stream.
//!   control[0] bits 0-1: digest (0 xxh3-128, 1 BLAKE3, 2 none, 3 xxh3-128)
//!              bit 2:    fix the checksum of every block-aligned "ustar" header first
//!              bit 3:    lose the stream's content after piece control[6] (`lost`, as after a
//!                        frame that failed to decode; finish then says upstream damage)
//!   control[1..5]: piece lengths (archcheck_fuzz::piece_len, around 512-byte blocks)
//!   control[5]:    take a checkpoint after this many pieces (past the end: before `finish`)
//!   control[7]:    rotates the piece lengths of the walk restored from that checkpoint
//!
//! Never panics; checks that members come out in order and counted, that a checkpoint survives
//! its JSON round trip, and that a walk restored from a mid-stream checkpoint finds the same
//! members and findings after it as the walk that went on.
#![no_main]

use archcheck_core::digest::DigestKind;
use archcheck_core::finding::Finding;
use archcheck_core::scan::Router;
use archcheck_core::tar::{Checkpoint, Member, TarWalker};
use archcheck_fuzz::{fix_tar_checksums, split, Pieces, BLOCK};
use libfuzzer_sys::fuzz_target;

fn walker(digest: Option<DigestKind>) -> TarWalker {
    TarWalker::new(digest, Some(Box::new(Router::new(None, "", None))))
}

/// What the Python side takes after each piece: members, findings, handoffs.
#[derive(Default)]
struct Taken {
    members: Vec<Member>,
    findings: Vec<Finding>,
}

impl Taken {
    fn drain(&mut self, w: &mut TarWalker) {
        self.members.extend(w.take_members());
        self.findings.append(&mut w.findings);
        for h in std::mem::take(&mut w.handoffs) {
            let handoff = h.handoff;
            if let Some(data) = &handoff.data {
                assert_eq!(data.len() as u64, handoff.received, "a handoff keeps what it received");
            }
        }
    }
}

/// A checkpoint as the Python side keeps it: JSON, and back.
fn round_trip(cp: &Checkpoint) -> Checkpoint {
    let text = serde_json::to_string(cp).expect("a checkpoint serialises");
    let back: Checkpoint = serde_json::from_str(&text).expect("a checkpoint's JSON reads back");
    assert_eq!(serde_json::to_string(&back).expect("serialises again"), text, "checkpoint JSON round trip");
    back
}

/// Recent members as `recent_json` hands them over, read back as `restore` reads them.
fn recent_json(w: &TarWalker) -> Vec<Member> {
    let recent: Vec<&Member> = w.recent().collect();
    let from = recent.len().saturating_sub(16);
    recent[from..].iter().map(|m| {
        let mut text = String::new();
        m.write_json(&mut text);
        let value: serde_json::Value = serde_json::from_str(&text).expect("members JSON parses");
        let back = Member::from_json(&value).expect("a member's JSON reads back");
        assert_eq!(&back, *m, "member JSON round trip");
        back
    }).collect()
}

fn check_members(members: &[Member], count: u64) {
    assert_eq!(members.len() as u64, count, "every member counted is handed out once");
    let mut last: Option<u64> = None;
    for m in members {
        assert!(m.header_offset + BLOCK as u64 <= m.data_offset, "{m:?}: data before the end of its header");
        if let Some(prev) = last {
            assert!(m.header_offset > prev, "{m:?}: member out of order (after one at {prev})");
        }
        last = Some(m.header_offset);
    }
}

fn key(f: &Finding) -> (&'static str, u64, u64) {
    (f.code, f.start, f.end)
}

fuzz_target!(|input: &[u8]| {
    let (control, data) = split(input);
    let flags = control[0];
    let digest = match flags & 3 {
        1 => Some(DigestKind::Blake3),
        2 => None,
        _ => Some(DigestKind::Xxh3_128),
    };
    let fixed;
    let data: &[u8] = if flags & 4 != 0 {
        fixed = {
            let mut d = data.to_vec();
            fix_tar_checksums(&mut d);
            d
        };
        &fixed
    } else {
        data
    };
    let lose_after = (flags & 8 != 0).then_some(control[6] as usize);
    let checkpoint_after = control[5] as usize;
    let len = data.len() as u64;

    let mut a = walker(digest);
    let mut taken = Taken::default();
    // (checkpoint, recent members, findings taken before it)
    let mut mid: Option<(Checkpoint, Vec<Member>, usize)> = None;
    let mut lost = false;
    let mut pieces = Pieces::new(data, 0, &control[1..5], BLOCK).enumerate().peekable();
    loop {
        let k = pieces.peek().map_or(usize::MAX, |(k, _)| *k);
        if mid.is_none() && !lost && (k == checkpoint_after || k == usize::MAX) {
            if let Some(cp) = a.checkpoint() {
                // as stream.py takes one: the checkpoint, then a flush, then the recent members
                a.flush();
                taken.drain(&mut a);
                mid = Some((cp, recent_json(&a), taken.findings.len()));
            }
        }
        let Some((k, (offset, piece))) = pieces.next() else { break };
        assert_eq!(a.position(), offset);
        a.feed(piece, offset);
        taken.drain(&mut a);
        if lose_after == Some(k) {
            let _ = a.lost(a.position());
            lost = true;
        }
        let _ = a.member_at(offset);
        let _ = a.first_member_after(offset);
    }
    a.finish(len, lost);
    a.flush();
    taken.drain(&mut a);
    let _ = a.members_since(0, 0);
    check_members(&taken.members, a.count);
    for f in &taken.findings {
        assert!(f.start <= f.end, "{f:?}: a finding ends before it starts");
    }

    // after the end, as the bindings allow: a checkpoint, restored into a fresh walker
    if let Some(cp) = a.checkpoint() {
        let cp = round_trip(&cp);
        let mut b = walker(digest);
        b.restore(&cp, recent_json(&a)).expect("this core's checkpoint restores");
        if cp.at <= len {
            b.feed(&data[cp.at as usize..], cp.at);
        }
        b.finish(len, lost);
        b.flush();
        let _ = b.take_members();
    }

    // a walk restored from the mid-stream checkpoint sees what the first walk saw after it
    let Some((cp, recent, before)) = mid else { return };
    let at = cp.at;
    let cp = round_trip(&cp);
    let mut b = walker(digest);
    b.restore(&cp, recent).expect("this core's checkpoint restores");
    let mut again = Taken::default();
    if at <= len {
        let pattern = [control[(1 + control[7] as usize) % 4 + 1], control[2], control[3], control[4]];
        for (offset, piece) in Pieces::new(&data[at as usize..], at, &pattern, BLOCK) {
            b.feed(piece, offset);
            again.drain(&mut b);
        }
    }
    b.finish(len, lost);
    b.flush();
    again.drain(&mut b);
    if lost || at > len {
        return; // the first walk lost bytes the restored one reads, or the checkpoint is past the end
    }
    assert_eq!(b.count, a.count, "member count after restoring at {at}");
    let after: Vec<&Member> = taken.members.iter().filter(|m| m.header_offset >= at).collect();
    let restored: Vec<&Member> = again.members.iter().collect();
    assert_eq!(after, restored, "members after the checkpoint at {at}");
    let mut first: Vec<_> = taken.findings.iter().enumerate()
        .filter(|(i, f)| *i >= before || f.start >= at)
        .map(|(_, f)| key(f))
        .collect();
    let mut second: Vec<_> = again.findings.iter().map(key).collect();
    first.sort();
    second.sort();
    assert_eq!(first, second, "findings after the checkpoint at {at}");
});
