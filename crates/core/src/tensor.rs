//! Pure facts about tensors: element types and the canonical encoding that tensor ids hash.
//!
//! Canonical encoding of a tensor (hashed with blake3 `derive_key` context
//! [`crate::id::TENSOR_CONTEXT`]; see `schemas/FORMAT.md`):
//!
//! ```text
//! u8        dtype tag (table in Dtype::tag)
//! u64 LE    rank
//! u64 LE    each dimension, outermost first
//! bytes     the elements, little-endian, row-major (exactly as safetensors stores them)
//! ```

pub mod merge;

use serde::{Deserialize, Serialize};

/// Element types, named as safetensors names them.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize, PartialOrd, Ord)]
#[serde(rename_all = "SCREAMING_SNAKE_CASE")]
pub enum Dtype {
    Bool,
    U8,
    I8,
    I16,
    U16,
    F16,
    Bf16,
    I32,
    U32,
    F32,
    F64,
    I64,
    U64,
    #[serde(rename = "F8_E4M3")]
    F8E4m3,
    #[serde(rename = "F8_E5M2")]
    F8E5m2,
}

impl Dtype {
    pub const ALL: [Dtype; 15] = [
        Dtype::Bool,
        Dtype::U8,
        Dtype::I8,
        Dtype::I16,
        Dtype::U16,
        Dtype::F16,
        Dtype::Bf16,
        Dtype::I32,
        Dtype::U32,
        Dtype::F32,
        Dtype::F64,
        Dtype::I64,
        Dtype::U64,
        Dtype::F8E4m3,
        Dtype::F8E5m2,
    ];

    /// Bytes per element.
    pub const fn size(self) -> usize {
        match self {
            Dtype::Bool | Dtype::U8 | Dtype::I8 | Dtype::F8E4m3 | Dtype::F8E5m2 => 1,
            Dtype::I16 | Dtype::U16 | Dtype::F16 | Dtype::Bf16 => 2,
            Dtype::I32 | Dtype::U32 | Dtype::F32 => 4,
            Dtype::F64 | Dtype::I64 | Dtype::U64 => 8,
        }
    }

    /// The name safetensors uses in its header.
    pub const fn name(self) -> &'static str {
        match self {
            Dtype::Bool => "BOOL",
            Dtype::U8 => "U8",
            Dtype::I8 => "I8",
            Dtype::I16 => "I16",
            Dtype::U16 => "U16",
            Dtype::F16 => "F16",
            Dtype::Bf16 => "BF16",
            Dtype::I32 => "I32",
            Dtype::U32 => "U32",
            Dtype::F32 => "F32",
            Dtype::F64 => "F64",
            Dtype::I64 => "I64",
            Dtype::U64 => "U64",
            Dtype::F8E4m3 => "F8_E4M3",
            Dtype::F8E5m2 => "F8_E5M2",
        }
    }

    pub fn from_name(name: &str) -> Option<Self> {
        Self::ALL.into_iter().find(|d| d.name() == name)
    }

    /// The tag byte of the canonical encoding. Never renumber: ids depend on it.
    pub const fn tag(self) -> u8 {
        match self {
            Dtype::Bool => 1,
            Dtype::U8 => 2,
            Dtype::I8 => 3,
            Dtype::I16 => 4,
            Dtype::U16 => 5,
            Dtype::F16 => 6,
            Dtype::Bf16 => 7,
            Dtype::I32 => 8,
            Dtype::U32 => 9,
            Dtype::F32 => 10,
            Dtype::F64 => 11,
            Dtype::I64 => 12,
            Dtype::U64 => 13,
            Dtype::F8E4m3 => 14,
            Dtype::F8E5m2 => 15,
        }
    }

    pub fn from_tag(tag: u8) -> Option<Self> {
        Self::ALL.into_iter().find(|d| d.tag() == tag)
    }

    pub const fn is_float(self) -> bool {
        matches!(
            self,
            Dtype::F16 | Dtype::Bf16 | Dtype::F32 | Dtype::F64 | Dtype::F8E4m3 | Dtype::F8E5m2
        )
    }
}

impl std::fmt::Display for Dtype {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.name())
    }
}

/// Number of elements of `shape`, or `None` on overflow.
pub fn element_count(shape: &[u64]) -> Option<u64> {
    shape.iter().try_fold(1u64, |acc, &d| acc.checked_mul(d))
}

/// Byte length of a tensor of `dtype` and `shape`, or `None` on overflow.
pub fn byte_len(dtype: Dtype, shape: &[u64]) -> Option<u64> {
    element_count(shape)?.checked_mul(dtype.size() as u64)
}

/// The canonical prefix (dtype tag, rank, dims) that precedes the data in the hashed encoding.
pub fn canonical_prefix(dtype: Dtype, shape: &[u64]) -> Vec<u8> {
    let mut out = Vec::with_capacity(9 + 8 * shape.len());
    out.push(dtype.tag());
    out.extend_from_slice(&(shape.len() as u64).to_le_bytes());
    for d in shape {
        out.extend_from_slice(&d.to_le_bytes());
    }
    out
}

/// Decodes a canonical prefix back into dtype and shape; `None` if malformed.
pub fn parse_canonical_prefix(bytes: &[u8]) -> Option<(Dtype, Vec<u64>)> {
    let (&tag, rest) = bytes.split_first()?;
    let dtype = Dtype::from_tag(tag)?;
    let rank = u64::from_le_bytes(rest.get(..8)?.try_into().ok()?);
    let dims = rest.get(8..)?;
    if rank > 64 || dims.len() as u64 != rank * 8 {
        return None;
    }
    let shape = dims
        .chunks_exact(8)
        .map(|c| u64::from_le_bytes(c.try_into().expect("chunk of 8")))
        .collect();
    Some((dtype, shape))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_tags_and_sizes_round_trip() {
        for d in Dtype::ALL {
            assert_eq!(Dtype::from_name(d.name()), Some(d));
            assert_eq!(Dtype::from_tag(d.tag()), Some(d));
            let json = serde_json::to_string(&d).unwrap();
            assert_eq!(json, format!("\"{}\"", d.name()));
        }
        assert_eq!(byte_len(Dtype::Bf16, &[3, 5]), Some(30));
        assert_eq!(byte_len(Dtype::F32, &[u64::MAX, 2]), None);
    }

    #[test]
    fn prefix_round_trips() {
        let p = canonical_prefix(Dtype::F32, &[2, 3]);
        assert_eq!(p.len(), 1 + 8 + 16);
        assert_eq!(parse_canonical_prefix(&p), Some((Dtype::F32, vec![2, 3])));
        assert_eq!(parse_canonical_prefix(&p[..p.len() - 1]), None);
    }
}
