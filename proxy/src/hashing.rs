//! Streaming digest computation for the algorithms `reference::Digest` accepts.

use sha2::{Digest as _, Sha256, Sha512};

use crate::reference::{Algorithm, Digest};

/// Hashes bytes as they stream past, with the algorithm the expected digest names.
#[derive(Clone)]
pub enum DigestHasher {
    Sha256(Sha256),
    Sha512(Sha512),
}

impl DigestHasher {
    pub fn new(algorithm: Algorithm) -> Self {
        match algorithm {
            Algorithm::Sha256 => Self::Sha256(Sha256::new()),
            Algorithm::Sha512 => Self::Sha512(Sha512::new()),
        }
    }

    pub fn update(&mut self, bytes: &[u8]) {
        match self {
            Self::Sha256(h) => h.update(bytes),
            Self::Sha512(h) => h.update(bytes),
        }
    }

    pub fn finish(self) -> Digest {
        match self {
            Self::Sha256(h) => Digest::from_hash(Algorithm::Sha256, &h.finalize()),
            Self::Sha512(h) => Digest::from_hash(Algorithm::Sha512, &h.finalize()),
        }
    }
}

/// The digest of a whole byte slice (manifests are small enough to hash at once).
pub fn digest_of(algorithm: Algorithm, bytes: &[u8]) -> Digest {
    let mut hasher = DigestHasher::new(algorithm);
    hasher.update(bytes);
    hasher.finish()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn known_vectors() {
        assert_eq!(
            digest_of(Algorithm::Sha256, b"").to_string(),
            "sha256:e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855"
        );
        assert_eq!(
            digest_of(Algorithm::Sha512, b"abc").to_string(),
            "sha512:ddaf35a193617abacc417349ae20413112e6fa4e89a97ea20a9eeee64b55d39a\
2192992a274fc1a836ba3c23a3feebbd454d4423643ce80e2a9ac94fa54ca49f"
        );
        let mut streaming = DigestHasher::new(Algorithm::Sha256);
        streaming.update(b"ab");
        streaming.update(b"c");
        assert_eq!(streaming.finish(), digest_of(Algorithm::Sha256, b"abc"));
    }
}
