//! A file that pg_basebackup's backup_manifest lists (formats.md 3.11): its size, and its
//! checksum computed as the content streams past.

use sha2::Digest;

use crate::fields;
use crate::finding::Found;
use crate::tar::ContentScanner;

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Listed {
    pub size: u64,
    pub algorithm: Option<String>, // CRC32C, SHA224, SHA256, SHA384, SHA512 (upper case)
    pub checksum: Option<String>,
}

enum Hash {
    Crc32c(u32),
    Sha224(sha2::Sha224),
    Sha256(sha2::Sha256),
    Sha384(sha2::Sha384),
    Sha512(sha2::Sha512),
}

impl Hash {
    fn of(algorithm: &str) -> Option<Self> {
        Some(match algorithm {
            "CRC32C" => Hash::Crc32c(0),
            "SHA224" => Hash::Sha224(Default::default()),
            "SHA256" => Hash::Sha256(Default::default()),
            "SHA384" => Hash::Sha384(Default::default()),
            "SHA512" => Hash::Sha512(Default::default()),
            _ => return None,
        })
    }

    fn update(&mut self, data: &[u8]) {
        match self {
            Hash::Crc32c(v) => *v = crc32c::crc32c_append(*v, data),
            Hash::Sha224(h) => h.update(data),
            Hash::Sha256(h) => h.update(data),
            Hash::Sha384(h) => h.update(data),
            Hash::Sha512(h) => h.update(data),
        }
    }

    /// As the server writes it: CRC32C as its little-endian bytes in hex.
    fn hex(&self) -> String {
        let bytes: Vec<u8> = match self {
            Hash::Crc32c(v) => v.to_le_bytes().to_vec(),
            Hash::Sha224(h) => h.clone().finalize().to_vec(),
            Hash::Sha256(h) => h.clone().finalize().to_vec(),
            Hash::Sha384(h) => h.clone().finalize().to_vec(),
            Hash::Sha512(h) => h.clone().finalize().to_vec(),
        };
        bytes.iter().map(|b| format!("{b:02x}")).collect()
    }
}

pub struct ListedFileScanner {
    path: String,
    listed: Listed,
    size: u64,
    hash: Option<Hash>,
    found: Vec<Found>,
}

impl ListedFileScanner {
    pub fn new(path: &str, listed: Listed, size: u64) -> Self {
        let hash = listed.algorithm.as_deref().and_then(Hash::of);
        ListedFileScanner { path: path.to_string(), listed, size, hash, found: Vec::new() }
    }
}

impl ContentScanner for ListedFileScanner {
    fn feed(&mut self, data: &[u8], _offset: u64) {
        if let Some(h) = self.hash.as_mut() {
            h.update(data);
        }
    }

    fn close(&mut self, complete: bool) {
        let place = fields![("relation", self.path.as_str())];
        if self.size != self.listed.size {
            self.found.push(Found { code: "PG_MANIFEST_FILE_SIZE", offset: 0, length: self.size, place,
                details: fields![("path", self.path.as_str()), ("actual", self.size), ("expected", self.listed.size)] });
            return;
        }
        if let (true, Some(hash)) = (complete, &self.hash) {
            let actual = hash.hex();
            let expected = self.listed.checksum.clone().unwrap_or_default();
            if actual != expected.to_lowercase() {
                self.found.push(Found { code: "PG_MANIFEST_FILE_CHECKSUM", offset: 0, length: self.size, place,
                    details: fields![("path", self.path.as_str()),
                                     ("algorithm", self.listed.algorithm.clone().unwrap_or_default()),
                                     ("actual", actual), ("expected", expected)] });
            }
        }
    }

    fn take_found(&mut self) -> Vec<Found> {
        std::mem::take(&mut self.found)
    }
}
