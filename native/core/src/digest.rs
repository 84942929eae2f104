//! Digests of member content: xxh3-128 (the default: fast enough to hide behind decoding) or
//! BLAKE3, streamed as the content passes.

use twox_hash::XxHash3_128;

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum DigestKind {
    Xxh3_128,
    Blake3,
}

impl DigestKind {
    pub fn parse(name: &str) -> Option<Self> {
        match name {
            "xxh3-128" => Some(Self::Xxh3_128),
            "blake3" => Some(Self::Blake3),
            _ => None,
        }
    }

    pub fn start(self) -> MemberDigest {
        match self {
            Self::Xxh3_128 => MemberDigest::Xxh3(Box::new(XxHash3_128::new())),
            Self::Blake3 => MemberDigest::Blake3(Box::default()),
        }
    }
}

pub enum MemberDigest {
    Xxh3(Box<XxHash3_128>),
    Blake3(Box<blake3::Hasher>),
}

impl MemberDigest {
    pub fn update(&mut self, data: &[u8]) {
        match self {
            Self::Xxh3(h) => h.write(data),
            Self::Blake3(h) => {
                h.update(data);
            }
        }
    }

    /// Lower-case hex, as the members file has always held it.
    pub fn hex(&self) -> String {
        match self {
            Self::Xxh3(h) => format!("{:032x}", h.finish_128()),
            Self::Blake3(h) => h.finalize().to_hex().to_string(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn known_digests_of_abc() {
        let mut x = DigestKind::Xxh3_128.start();
        x.update(b"a");
        x.update(b"bc");
        assert_eq!(x.hex(), "06b05ab6733a618578af5f94892f3950");
        let mut b = DigestKind::Blake3.start();
        b.update(b"abc");
        assert_eq!(b.hex(), "6437b3ac38465133ffb63b75273a8db548c558465d79db03fd359c6cd5bd9d85");
    }
}
