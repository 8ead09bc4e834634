//! Decoded windows of stored tensors: the read side of every streaming pass (vector
//! statistics, merges).
//!
//! [`Windows`] opens a set of stored tensor objects of one element count and decodes the same
//! element range of each into f32, window after window. Each distinct object is decoded once
//! per window, however often it is requested (a family shares its base); an object stored as
//! a delta against another object of the set is decoded over that object's already decoded
//! bytes; everything is re-hashed as it streams and [`Windows::finish`] fails if any object's
//! content does not match its id, so no result is ever kept from wrong bytes.

use std::collections::HashMap;

use rayon::prelude::*;

use crate::error::Result;
use crate::error::decode_error;
use crate::id::ObjectId;
use crate::pool;
use crate::store::Backend;
use crate::store::codec::{self, DecodeError, Decoder, ObjectKind};
use crate::tensor::Dtype;

/// Elements per window: a whole number of 4 MiB chunks for 2-, 4- and 8-byte dtypes.
pub const WINDOW_ELEMENTS: usize = 2 << 20;

struct Input {
    id: ObjectId,
    dtype: Dtype,
    decoder: Decoder,
    hash: blake3::Hasher,
    bytes: Vec<u8>,
    values: Vec<f32>,
    /// Index of this delta object's base among the inputs, when it is one.
    over: Option<usize>,
    /// The payload is decoded into `values` itself (f32 on a little-endian machine).
    direct: bool,
}

/// The payload bytes of an input's window: its own buffer, or its values viewed as bytes.
fn raw<'a>(direct: bool, values: &'a [f32], bytes: &'a [u8], len: usize) -> &'a [u8] {
    if direct {
        &bytemuck::cast_slice(values)[..len]
    } else {
        &bytes[..len]
    }
}

fn raw_mut<'a>(
    direct: bool,
    values: &'a mut [f32],
    bytes: &'a mut [u8],
    len: usize,
) -> &'a mut [u8] {
    if direct {
        &mut bytemuck::cast_slice_mut(values)[..len]
    } else {
        &mut bytes[..len]
    }
}

/// A set of stored tensors read window by window (see the module docs).
pub struct Windows {
    name: String,
    inputs: Vec<Input>,
    /// Inputs `0..plain` are decoded on their own; the rest over one of them.
    plain: usize,
    /// Slot of each requested object.
    slots: Vec<usize>,
    compute: bool,
}

impl Windows {
    /// Opens `objects` (each with its dtype; repeats allowed) of `elements` elements each, for
    /// windows of at most `window` elements. `name` names the tensor in errors. Without
    /// `compute` nothing is converted to f32 (a pure read, for benchmarks' bounds).
    pub fn open(
        backend: &dyn Backend,
        name: &str,
        elements: u64,
        objects: &[(ObjectId, Dtype)],
        compute: bool,
        window: usize,
    ) -> Result<Self> {
        let mut index: HashMap<ObjectId, usize> = HashMap::new();
        let mut inputs: Vec<Input> = Vec::new();
        let mut requested = Vec::with_capacity(objects.len());
        for &(id, dtype) in objects {
            if let Some(&i) = index.get(&id) {
                requested.push(i);
                continue;
            }
            let fail = |e| decode_error(&id, Some(name), e);
            let decoder = Decoder::open(backend, &id).map_err(fail)?;
            let expected = elements * dtype.size() as u64;
            if decoder.header.kind != ObjectKind::Tensor || decoder.header.raw_len != expected {
                return Err(fail(DecodeError::Corrupted(format!(
                    "holds {} bytes, the manifest says {expected}",
                    decoder.header.raw_len
                ))));
            }
            let mut hash = codec::hasher(ObjectKind::Tensor);
            hash.update(&decoder.header.prefix);
            // Little-endian f32 is decoded straight into the values: no conversion pass.
            let direct = compute && dtype == Dtype::F32 && cfg!(target_endian = "little");
            inputs.push(Input {
                id,
                dtype,
                decoder,
                hash,
                bytes: if direct {
                    Vec::new()
                } else {
                    pool::take(&pool::BYTES, window * dtype.size())
                },
                direct,
                values: if compute {
                    pool::take(&pool::FLOATS, window)
                } else {
                    Vec::new()
                },
                over: None,
            });
            index.insert(id, inputs.len() - 1);
            requested.push(inputs.len() - 1);
        }
        // A delta whose base is itself an input is decoded over the base's decoded bytes
        // instead of decoding the base a second time. Plain inputs first, then those deltas.
        let mut order: Vec<usize> = (0..inputs.len()).collect();
        let base_of = |i: &Input| {
            i.decoder
                .header
                .delta_base
                .and_then(|b| index.get(&b).copied())
        };
        order.sort_by_key(|&i| base_of(&inputs[i]).is_some());
        let mut position = vec![0; inputs.len()];
        for (new, &old) in order.iter().enumerate() {
            position[old] = new;
        }
        for input in &mut inputs {
            input.over = base_of(input).map(|b| position[b]);
        }
        let mut taken: Vec<Option<Input>> = inputs.into_iter().map(Some).collect();
        let inputs: Vec<Input> = order
            .iter()
            .map(|&i| taken[i].take().expect("each once"))
            .collect();
        let plain = inputs.iter().take_while(|i| i.over.is_none()).count();
        Ok(Self {
            name: name.to_owned(),
            inputs,
            plain,
            slots: requested.iter().map(|&r| position[r]).collect(),
            compute,
        })
    }

    /// The slot (index for [`Windows::values`]) of the `i`-th requested object.
    pub fn slot(&self, i: usize) -> usize {
        self.slots[i]
    }

    /// How many distinct objects are read.
    pub fn len(&self) -> usize {
        self.inputs.len()
    }

    /// Decodes elements `[start, start + n)` of every object (n at most the window).
    pub fn load(&mut self, start: usize, n: usize) -> Result<()> {
        let compute = self.compute;
        let name = self.name.as_str();
        let (bases, deltas) = self.inputs.split_at_mut(self.plain);
        let finish = |input: &mut Input| {
            let len = n * input.dtype.size();
            input
                .hash
                .update(raw(input.direct, &input.values, &input.bytes, len));
            if compute && !input.direct {
                to_f32(input.dtype, &input.bytes[..len], &mut input.values[..n]);
            }
        };
        bases.par_iter_mut().try_for_each(|input| -> Result<()> {
            let w = input.dtype.size();
            decode_range(
                &input.decoder,
                (start * w) as u64,
                raw_mut(input.direct, &mut input.values, &mut input.bytes, n * w),
            )
            .map_err(|e| decode_error(&input.id, Some(name), e))?;
            finish(input);
            Ok(())
        })?;
        let bases = &*bases;
        deltas.par_iter_mut().try_for_each(|input| -> Result<()> {
            let w = input.dtype.size();
            let b = &bases[input.over.expect("deltas come last")];
            let base = raw(b.direct, &b.values, &b.bytes, n * w);
            decode_range_over(
                &input.decoder,
                (start * w) as u64,
                raw_mut(input.direct, &mut input.values, &mut input.bytes, n * w),
                base,
            )
            .map_err(|e| decode_error(&input.id, Some(name), e))?;
            finish(input);
            Ok(())
        })?;
        Ok(())
    }

    /// The first `n` values of slot `slot`'s current window, as f32.
    pub fn values(&self, slot: usize, n: usize) -> &[f32] {
        &self.inputs[slot].values[..n]
    }

    /// The raw little-endian bytes of slot `slot`'s current window of `n` elements.
    pub fn raw(&self, slot: usize, n: usize) -> &[u8] {
        let i = &self.inputs[slot];
        raw(i.direct, &i.values, &i.bytes, n * i.dtype.size())
    }

    /// Returns the buffers and checks every object's content against its id. Call it after
    /// the last window; a set dropped early (on an error) is simply discarded.
    pub fn finish(self) -> Result<()> {
        let mut bad = None;
        for input in self.inputs {
            pool::give(&pool::BYTES, input.bytes);
            pool::give(&pool::FLOATS, input.values);
            if bad.is_none() && ObjectId::from_bytes(*input.hash.finalize().as_bytes()) != input.id
            {
                bad = Some(input.id);
            }
        }
        match bad {
            None => Ok(()),
            Some(id) => Err(decode_error(
                &id,
                Some(&self.name),
                DecodeError::Corrupted("content does not match its id".into()),
            )),
        }
    }
}

/// Like [`decode_range`] for a delta object whose base's bytes for the same range are given.
fn decode_range_over(
    d: &Decoder,
    offset: u64,
    out: &mut [u8],
    base: &[u8],
) -> Result<(), DecodeError> {
    let chunk = u64::from(d.header.chunk_size);
    let end = offset + out.len() as u64;
    let aligned =
        offset.is_multiple_of(chunk) && (end.is_multiple_of(chunk) || end == d.header.raw_len);
    if aligned {
        d.decode_chunks_over(usize::try_from(offset / chunk).expect("fits"), out, base)
    } else {
        decode_range(d, offset, out)
    }
}

/// Decodes bytes `[offset, offset + out.len())` of an object's payload.
fn decode_range(d: &Decoder, offset: u64, out: &mut [u8]) -> Result<(), DecodeError> {
    let chunk = u64::from(d.header.chunk_size);
    let end = offset + out.len() as u64;
    let aligned =
        offset.is_multiple_of(chunk) && (end.is_multiple_of(chunk) || end == d.header.raw_len);
    if aligned {
        return d.decode_chunks(usize::try_from(offset / chunk).expect("fits"), out);
    }
    let first = offset / chunk;
    let last = end.div_ceil(chunk).min(d.header.raw_len.div_ceil(chunk));
    let span_end = (last * chunk).min(d.header.raw_len);
    let mut tmp = vec![0u8; usize::try_from(span_end - first * chunk).expect("fits")];
    d.decode_chunks(usize::try_from(first).expect("fits"), &mut tmp)?;
    let skip = usize::try_from(offset - first * chunk).expect("fits");
    out.copy_from_slice(&tmp[skip..skip + out.len()]);
    Ok(())
}

/// Little-endian elements of any float dtype to f32.
pub fn to_f32(dtype: Dtype, bytes: &[u8], out: &mut [f32]) {
    match dtype {
        Dtype::F32 => {
            for (o, b) in out.iter_mut().zip(bytes.chunks_exact(4)) {
                *o = f32::from_le_bytes(b.try_into().expect("4 bytes"));
            }
        }
        Dtype::F64 => {
            for (o, b) in out.iter_mut().zip(bytes.chunks_exact(8)) {
                *o = f64::from_le_bytes(b.try_into().expect("8 bytes")) as f32;
            }
        }
        Dtype::Bf16 => {
            for (o, b) in out.iter_mut().zip(bytes.chunks_exact(2)) {
                *o = half::bf16::from_le_bytes([b[0], b[1]]).to_f32();
            }
        }
        Dtype::F16 => {
            for (o, b) in out.iter_mut().zip(bytes.chunks_exact(2)) {
                *o = half::f16::from_le_bytes([b[0], b[1]]).to_f32();
            }
        }
        Dtype::F8E5m2 => {
            for (o, &b) in out.iter_mut().zip(bytes) {
                *o = half::f16::from_bits(u16::from(b) << 8).to_f32();
            }
        }
        Dtype::F8E4m3 => {
            for (o, &b) in out.iter_mut().zip(bytes) {
                *o = f8_e4m3(b);
            }
        }
        _ => out.fill(0.0),
    }
}

/// OCP FP8 E4M3 (`float8_e4m3fn`: bias 7, no infinities, S.1111.111 is NaN).
fn f8_e4m3(b: u8) -> f32 {
    let sign = if b & 0x80 != 0 { -1.0 } else { 1.0 };
    let exp = i32::from((b >> 3) & 0x0F);
    let man_bits = b & 0x07;
    let man = f32::from(man_bits);
    if exp == 0x0F && man_bits == 7 {
        return f32::NAN;
    }
    if exp == 0 {
        sign * man / 8.0 * 2f32.powi(-6)
    } else {
        sign * (1.0 + man / 8.0) * 2f32.powi(exp - 7)
    }
}
