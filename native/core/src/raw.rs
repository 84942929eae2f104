//! The raw layer: BLAKE3 of fixed leaves of the archive file, and a tree root over them, so
//! the root does not depend on how the file was cut into segments.

/// The BLAKE3 digest of each `leaf_size` piece of `data` (the last may be shorter).
pub fn leaf_digests(data: &[u8], leaf_size: usize) -> Vec<[u8; 32]> {
    data.chunks(leaf_size.max(1)).map(|leaf| *blake3::hash(leaf).as_bytes()).collect()
}

/// BLAKE3 over the leaf digests, in order.
pub fn combine<'a>(leaves: impl IntoIterator<Item = &'a [u8; 32]>) -> [u8; 32] {
    let mut hasher = blake3::Hasher::new();
    for leaf in leaves {
        hasher.update(leaf);
    }
    *hasher.finalize().as_bytes()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn leaves_cover_the_data_and_the_root_is_over_them() {
        let data = vec![7u8; 2500];
        let leaves = leaf_digests(&data, 1024);
        assert_eq!(leaves.len(), 3);
        assert_eq!(leaves[2], *blake3::hash(&data[2048..]).as_bytes());
        let mut concat = Vec::new();
        leaves.iter().for_each(|l| concat.extend_from_slice(l));
        assert_eq!(combine(&leaves), *blake3::hash(&concat).as_bytes());
    }
}
