//! Layout of an exported Hugging Face folder: shard planning and safetensors headers.
//!
//! A single shard is written as `model.safetensors`; several as
//! `model-00001-of-0000N.safetensors` with `model.safetensors.index.json` (`metadata.total_size`
//! and `weight_map`), exactly as `transformers`' `save_pretrained` names them.

use std::collections::BTreeMap;

use serde_json::{Value, json};

use super::manifest::{Manifest, ManifestTensor};
use super::{INDEX_FILE, SINGLE_FILE};

/// One output file and the tensors (indices into the manifest) it holds, in order.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Shard {
    pub file_name: String,
    pub tensors: Vec<usize>,
}

/// Groups tensors, in manifest order, into shards of at most `max_shard_size` bytes of data
/// (a tensor larger than the limit gets a shard of its own, as `transformers` does).
pub fn plan_shards(manifest: &Manifest, max_shard_size: Option<u64>) -> Vec<Shard> {
    let mut groups: Vec<Vec<usize>> = vec![Vec::new()];
    let mut size = 0u64;
    for (i, t) in manifest.tensors.iter().enumerate() {
        let len = t.byte_len();
        let current = groups.last_mut().expect("never empty");
        if let Some(max) = max_shard_size
            && !current.is_empty()
            && size + len > max
        {
            groups.push(vec![i]);
            size = len;
        } else {
            current.push(i);
            size += len;
        }
    }
    let n = groups.len();
    groups
        .into_iter()
        .enumerate()
        .map(|(i, tensors)| Shard {
            file_name: if n == 1 {
                SINGLE_FILE.to_owned()
            } else {
                format!("model-{:05}-of-{n:05}.safetensors", i + 1)
            },
            tensors,
        })
        .collect()
}

/// The header bytes of a shard (8-byte length, JSON padded with spaces to a multiple of 8).
pub fn shard_header(manifest: &Manifest, shard: &Shard) -> Vec<u8> {
    let mut map = serde_json::Map::new();
    let mut metadata = manifest.metadata.clone();
    metadata
        .entry("format".to_owned())
        .or_insert_with(|| "pt".to_owned());
    map.insert("__metadata__".to_owned(), json!(metadata));
    let mut offset = 0u64;
    for &i in &shard.tensors {
        let t: &ManifestTensor = &manifest.tensors[i];
        let end = offset + t.byte_len();
        map.insert(
            t.name.clone(),
            json!({"dtype": t.dtype.name(), "shape": t.shape, "data_offsets": [offset, end]}),
        );
        offset = end;
    }
    let mut text = serde_json::to_vec(&Value::Object(map)).expect("serializes");
    while !text.len().is_multiple_of(8) {
        text.push(b' ');
    }
    let mut out = Vec::with_capacity(8 + text.len());
    out.extend_from_slice(&(text.len() as u64).to_le_bytes());
    out.extend_from_slice(&text);
    out
}

/// `model.safetensors.index.json` for several shards; `None` for one.
pub fn index_json(manifest: &Manifest, shards: &[Shard]) -> Option<(String, Vec<u8>)> {
    if shards.len() < 2 {
        return None;
    }
    let mut weight_map = BTreeMap::new();
    for s in shards {
        for &i in &s.tensors {
            weight_map.insert(manifest.tensors[i].name.clone(), s.file_name.clone());
        }
    }
    let index = json!({
        "metadata": {"total_size": manifest.tensor_bytes()},
        "weight_map": weight_map,
    });
    let mut bytes = serde_json::to_vec_pretty(&index).expect("serializes");
    bytes.push(b'\n');
    Some((INDEX_FILE.to_owned(), bytes))
}

/// Parses sizes such as `5GB`, `500MB`, `2GiB`, `1048576` (bytes), as `transformers` accepts.
pub fn parse_size(s: &str) -> Option<u64> {
    let s = s.trim();
    let split = s.find(|c: char| !c.is_ascii_digit()).unwrap_or(s.len());
    let (num, unit) = s.split_at(split);
    let n: u64 = num.parse().ok()?;
    let mult: u64 = match unit.trim().to_ascii_uppercase().as_str() {
        "" | "B" => 1,
        "KB" => 1_000,
        "MB" => 1_000_000,
        "GB" => 1_000_000_000,
        "KIB" => 1 << 10,
        "MIB" => 1 << 20,
        "GIB" => 1 << 30,
        _ => return None,
    };
    n.checked_mul(mult).filter(|&v| v > 0)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::checkpoint::manifest::ManifestTensor;
    use crate::tensor::Dtype;

    fn manifest(sizes: &[u64]) -> Manifest {
        let tensors = sizes
            .iter()
            .enumerate()
            .map(|(i, &n)| ManifestTensor {
                name: format!("t{i}"),
                dtype: Dtype::U8,
                shape: vec![n],
                id: crate::id::ObjectId::zero(),
            })
            .collect();
        Manifest::new(tensors, Vec::new(), BTreeMap::new())
    }

    #[test]
    fn shards_split_at_the_limit_and_keep_big_tensors_whole() {
        let m = manifest(&[40, 40, 40, 100, 10]);
        let shards = plan_shards(&m, Some(90));
        let groups: Vec<_> = shards.iter().map(|s| s.tensors.clone()).collect();
        assert_eq!(groups, vec![vec![0, 1], vec![2], vec![3], vec![4]]);
        assert_eq!(shards[0].file_name, "model-00001-of-00004.safetensors");
        assert_eq!(plan_shards(&m, None)[0].file_name, "model.safetensors");
        assert!(index_json(&m, &shards).is_some());
    }

    #[test]
    fn header_is_padded_and_parses_back() {
        let m = manifest(&[3, 5]);
        let shard = &plan_shards(&m, None)[0];
        let h = shard_header(&m, shard);
        assert_eq!(h.len() % 8, 0);
        let n = u64::from_le_bytes(h[..8].try_into().unwrap());
        let (t, meta) = crate::checkpoint::safetensors::parse_header(&h[8..], 8).unwrap();
        assert_eq!(n as usize, h.len() - 8);
        assert_eq!(t.len(), 2);
        assert_eq!(meta.get("format").map(String::as_str), Some("pt"));
    }

    #[test]
    fn sizes_parse_like_transformers() {
        assert_eq!(parse_size("5GB"), Some(5_000_000_000));
        assert_eq!(parse_size("2GiB"), Some(2 << 30));
        assert_eq!(parse_size("100"), Some(100));
        assert_eq!(parse_size("0"), None);
        assert_eq!(parse_size("5XB"), None);
    }
}
