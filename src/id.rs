//! Content ids: one newtype per kind of object, all 32-byte blake3 digests.
//!
//! Every id is a keyed blake3 hash (`blake3::derive_key` mode) over a canonical encoding of
//! logical content; the context string differs per kind, so a tensor id can never equal a
//! manifest id for the same bytes. `schemas/FORMAT.md` specifies each encoding byte by byte.
//!
//! Ids display as 12 hex characters (`{}`) and as 64 with `{:#}` or [`ObjectId::to_hex`].

use std::fmt;

/// blake3 `derive_key` context of tensor objects.
pub const TENSOR_CONTEXT: &str = "crossmerge 2026-11 tensor v1";
/// blake3 `derive_key` context of file objects (config.json, tokenizer files).
pub const BLOB_CONTEXT: &str = "crossmerge 2026-11 blob v1";
/// blake3 `derive_key` context of manifest objects.
pub const MANIFEST_CONTEXT: &str = "crossmerge 2026-11 manifest v1";

/// Characters shown by the short display form.
pub const SHORT_HEX: usize = 12;
/// The fewest hex characters a user may give as an id prefix.
pub const MIN_PREFIX: usize = 6;

/// The id of any stored object: a blake3 digest. Typed wrappers below say what it names.
#[derive(Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct ObjectId([u8; 32]);

/// Serialised as its 64 lowercase hex characters, as every JSON output and manifest spells it.
impl serde::Serialize for ObjectId {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(&self.to_hex())
    }
}

impl ObjectId {
    pub const fn from_bytes(bytes: [u8; 32]) -> Self {
        Self(bytes)
    }

    pub const fn as_bytes(&self) -> &[u8; 32] {
        &self.0
    }

    pub fn to_hex(&self) -> String {
        let mut s = String::with_capacity(64);
        for b in self.0 {
            s.push(char::from(HEX[usize::from(b >> 4)]));
            s.push(char::from(HEX[usize::from(b & 15)]));
        }
        s
    }

    /// Parses exactly 64 lowercase or uppercase hex characters.
    pub fn parse_hex(s: &str) -> Option<Self> {
        let bytes = s.as_bytes();
        if bytes.len() != 64 {
            return None;
        }
        let mut out = [0u8; 32];
        for (i, pair) in bytes.chunks_exact(2).enumerate() {
            out[i] = (hex_val(pair[0])? << 4) | hex_val(pair[1])?;
        }
        Some(Self(out))
    }

    /// The id of an all-zero digest, used on disk to mean "none".
    pub const fn zero() -> Self {
        Self([0; 32])
    }

    pub fn is_zero(&self) -> bool {
        self.0 == [0; 32]
    }
}

const HEX: &[u8; 16] = b"0123456789abcdef";

fn hex_val(c: u8) -> Option<u8> {
    match c {
        b'0'..=b'9' => Some(c - b'0'),
        b'a'..=b'f' => Some(c - b'a' + 10),
        b'A'..=b'F' => Some(c - b'A' + 10),
        _ => None,
    }
}

/// Whether `s` could be an id prefix a user typed: hex, at least [`MIN_PREFIX`] long.
pub fn is_hex_prefix(s: &str) -> bool {
    s.len() >= MIN_PREFIX && s.len() <= 64 && s.bytes().all(|c| hex_val(c).is_some())
}

impl fmt::Display for ObjectId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let hex = self.to_hex();
        if f.alternate() {
            f.write_str(&hex)
        } else {
            f.write_str(&hex[..SHORT_HEX])
        }
    }
}

impl fmt::Debug for ObjectId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "ObjectId({})", self.to_hex())
    }
}

macro_rules! typed_id {
    ($(#[$doc:meta])* $name:ident) => {
        $(#[$doc])*
        #[derive(Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Debug)]
        pub struct $name(ObjectId);

        impl $name {
            pub const fn new(id: ObjectId) -> Self {
                Self(id)
            }
            pub const fn object(&self) -> ObjectId {
                self.0
            }
            pub fn to_hex(&self) -> String {
                self.0.to_hex()
            }
        }

        impl fmt::Display for $name {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                fmt::Display::fmt(&self.0, f)
            }
        }
    };
}

typed_id!(
    /// Id of a tensor: blake3 (context [`TENSOR_CONTEXT`]) over its canonical encoding.
    TensorId
);
typed_id!(
    /// Id of a file kept beside the weights (config, tokenizer), over its exact bytes.
    BlobId
);
typed_id!(
    /// Id of a checkpoint manifest: blake3 (context [`MANIFEST_CONTEXT`]) over its canonical JSON.
    ManifestId
);

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn hex_round_trip_and_short_display() {
        let id = ObjectId::from_bytes(*blake3::hash(b"x").as_bytes());
        let hex = id.to_hex();
        assert_eq!(hex, blake3::hash(b"x").to_hex().as_str());
        assert_eq!(ObjectId::parse_hex(&hex), Some(id));
        assert_eq!(format!("{id}"), &hex[..12]);
        assert_eq!(format!("{id:#}"), hex);
        assert_eq!(ObjectId::parse_hex(&hex[..63]), None);
        assert_eq!(ObjectId::parse_hex(&"g".repeat(64)), None);
    }

    #[test]
    fn prefixes_need_six_hex_characters() {
        assert!(is_hex_prefix("abcdef"));
        assert!(!is_hex_prefix("abcde"));
        assert!(!is_hex_prefix("abcdeg"));
    }
}
