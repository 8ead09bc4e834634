//! Training state files: safetensors (f32 tensors, the metadata in `__metadata__` under
//! `crossmerge_training_state`), so standard tools can read them too.

use std::collections::HashMap;

use candle_core::{Device, Tensor};
use serde_json::{Map, Value, json};

use crate::error::{Error, Result};

/// A trained weight: name, shape, f32 values.
pub type Trained = (String, Vec<usize>, Vec<f32>);

const KEY: &str = "crossmerge_training_state";

pub(super) fn corrupt(why: &str) -> Error {
    Error::invalid(
        format!("the saved training state is damaged: {why}"),
        "start the run again without --resume",
    )
}

/// Tensors (f32) and metadata as safetensors bytes.
pub(super) fn encode(tensors: &[(String, Tensor)], meta: &Value) -> Result<Vec<u8>> {
    let weights = tensors
        .iter()
        .map(|(name, t)| {
            let values: Vec<f32> = t
                .flatten_all()
                .and_then(|x| x.to_vec1())
                .map_err(|e| corrupt(&e.to_string()))?;
            Ok((name.clone(), t.dims().to_vec(), values))
        })
        .collect::<Result<Vec<Trained>>>()?;
    Ok(encode_weights(&weights, meta))
}

/// Weights (name, shape, f32 values) and metadata as safetensors bytes: the training state's
/// format, also for the best dev step's weights.
pub fn encode_weights(weights: &[Trained], meta: &Value) -> Vec<u8> {
    let mut header = Map::new();
    header.insert("__metadata__".to_owned(), json!({ KEY: meta.to_string() }));
    let mut data = Vec::new();
    for (name, shape, values) in weights {
        let start = data.len();
        for v in values {
            data.extend_from_slice(&v.to_le_bytes());
        }
        header.insert(
            name.clone(),
            json!({"dtype": "F32", "shape": shape, "data_offsets": [start, data.len()]}),
        );
    }
    let mut head = serde_json::to_vec(&Value::Object(header)).expect("JSON serialises");
    while !head.len().is_multiple_of(8) {
        head.push(b' ');
    }
    let mut out = Vec::with_capacity(8 + head.len() + data.len());
    out.extend_from_slice(&(head.len() as u64).to_le_bytes());
    out.extend_from_slice(&head);
    out.extend_from_slice(&data);
    out
}

/// The weights (sorted by name) and metadata of [`encode_weights`]'s bytes, checked.
pub fn decode_weights(bytes: &[u8]) -> Result<(Vec<Trained>, Value)> {
    decode_raw(bytes, KEY)
}

/// The tensors (on `device`) and metadata of [`encode`]'s bytes, checked.
pub(super) fn decode(bytes: &[u8], device: &Device) -> Result<(HashMap<String, Tensor>, Value)> {
    decode_with(bytes, device, KEY)
}

/// [`decode`] with the metadata JSON under `key`.
pub(super) fn decode_with(
    bytes: &[u8],
    device: &Device,
    key: &str,
) -> Result<(HashMap<String, Tensor>, Value)> {
    let (weights, meta) = decode_raw(bytes, key)?;
    let tensors = weights
        .into_iter()
        .map(|(name, shape, values)| {
            let t = Tensor::from_vec(values, shape, device).map_err(|e| corrupt(&e.to_string()))?;
            Ok((name, t))
        })
        .collect::<Result<_>>()?;
    Ok((tensors, meta))
}

fn decode_raw(bytes: &[u8], key: &str) -> Result<(Vec<Trained>, Value)> {
    let n = bytes
        .get(..8)
        .map(|b| u64::from_le_bytes(b.try_into().expect("8 bytes")))
        .ok_or_else(|| corrupt("shorter than its header"))?;
    let end = usize::try_from(n)
        .ok()
        .and_then(|n| n.checked_add(8))
        .filter(|&e| e <= bytes.len())
        .ok_or_else(|| corrupt("header past the end"))?;
    let header: Map<String, Value> =
        serde_json::from_slice(&bytes[8..end]).map_err(|e| corrupt(&e.to_string()))?;
    let data = &bytes[end..];
    let mut meta = Value::Null;
    let mut weights = Vec::new();
    for (name, info) in header {
        if name == "__metadata__" {
            let s = info[key].as_str().ok_or_else(|| corrupt("no metadata"))?;
            meta = serde_json::from_str(s).map_err(|e| corrupt(&e.to_string()))?;
            continue;
        }
        let shape: Vec<usize> =
            serde_json::from_value(info["shape"].clone()).map_err(|e| corrupt(&e.to_string()))?;
        let offsets: [usize; 2] = serde_json::from_value(info["data_offsets"].clone())
            .map_err(|e| corrupt(&e.to_string()))?;
        let count: usize = shape.iter().product();
        let raw = data
            .get(offsets[0]..offsets[1])
            .filter(|r| info["dtype"] == "F32" && r.len() == count * 4)
            .ok_or_else(|| corrupt(&format!("tensor `{name}`")))?;
        let values: Vec<f32> = raw
            .chunks_exact(4)
            .map(|c| f32::from_le_bytes(c.try_into().expect("4 bytes")))
            .collect();
        weights.push((name, shape, values));
    }
    if meta.is_null() {
        return Err(corrupt("no metadata"));
    }
    weights.sort_by(|a, b| a.0.cmp(&b.0));
    Ok((weights, meta))
}
