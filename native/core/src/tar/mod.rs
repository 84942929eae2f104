//! Tar: headers, members and the incremental walk.
pub mod header;
pub mod member;
pub mod sparse;
pub mod walker;

pub use member::Member;
pub use walker::{Checkpoint, ContentScanner, HandedOff, Handoff, ScannerRouter, TarWalker};
