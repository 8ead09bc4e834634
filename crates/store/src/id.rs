//! Content ids: 32-byte blake3 digests, one type for every kind of object (the kind is in the
//! hash's context string and in the object's header, not in the Rust type).
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

/// Read from exactly 64 lowercase hex characters, the only spelling crossmerge writes (so a
/// manifest re-serialises to the bytes its id was taken over).
impl<'de> serde::Deserialize<'de> for ObjectId {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let s = <std::borrow::Cow<'de, str>>::deserialize(d)?;
        if s.bytes().any(|c| c.is_ascii_uppercase()) {
            return Err(serde::de::Error::custom(
                "an id is 64 lowercase hex characters",
            ));
        }
        Self::parse_hex(&s)
            .ok_or_else(|| serde::de::Error::custom("an id is 64 lowercase hex characters"))
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
