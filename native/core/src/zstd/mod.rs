//! zstd: the frame walk (structure) and frame decoding.
pub mod decode;
pub mod walk;
