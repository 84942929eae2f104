//! archcheck's core: the per-byte work, sans I/O. It is handed buffers and never opens a file,
//! so every source (a local file, an object store) works with it.
#![forbid(unsafe_code)]

pub mod age;
pub mod digest;
pub mod finding;
pub mod raw;
pub mod scan;
pub mod stream;
pub mod tar;
pub mod text;
pub mod zstd;

pub fn version() -> &'static str {
    env!("CARGO_PKG_VERSION")
}
