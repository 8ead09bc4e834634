//! The streaming engine: one pass over many tensors of many vectors, all pairwise statistics
//! accumulated together in f64.
//!
//! A [`Job`] is one tensor name across `k` operands (`plus − minus`, or `plus` alone). Each
//! distinct stored object a job needs is decoded once per window of [`WINDOW_ELEMENTS`]
//! elements (a vector family shares its base, which is read once, not k times), converted
//! to f32, re-hashed as it streams (a mismatch fails the whole job: no statistic is ever
//! computed from wrong bytes), and the k operand windows feed every pair's dot product, sign
//! agreement and count, block by block so the operands stay in cache. Jobs run in parallel;
//! memory is a few windows per job in flight, never a whole model.

use std::collections::HashMap;

use rayon::prelude::*;

use crate::error::Result;
use crate::id::ObjectId;
use crate::registry::{Progress, decode_error};
use crate::store::Backend;
use crate::store::codec::{self, DecodeError, Decoder, ObjectKind};
use crate::tensor::Dtype;

/// Elements per window: a whole number of 4 MiB chunks for 2-, 4- and 8-byte dtypes.
pub const WINDOW_ELEMENTS: usize = 2 << 20;
/// Elements per block of the pairwise loop (k blocks of f32 stay in L2).
const BLOCK: usize = 4096;

/// `plus − minus` (or `plus`), each a stored tensor object and its dtype.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct Operand {
    pub plus: (ObjectId, Dtype),
    pub minus: Option<(ObjectId, Dtype)>,
}

/// One tensor, as `k` operands of `elements` values each.
#[derive(Clone, Debug)]
pub struct Job {
    pub name: String,
    pub elements: u64,
    pub operands: Vec<Operand>,
}

/// Pairwise sums over a set of elements: `dot[i·k + j] = Σ aᵢ·aⱼ` (so `dot[i·k + i]` is
/// ‖aᵢ‖²), `agree` counts elements where both are non-zero with equal signs, `both_nonzero`
/// those where both are non-zero.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct PairStats {
    pub k: usize,
    pub elements: u64,
    pub dot: Vec<f64>,
    pub agree: Vec<u64>,
    pub both_nonzero: Vec<u64>,
}

impl PairStats {
    pub fn new(k: usize) -> Self {
        Self {
            k,
            elements: 0,
            dot: vec![0.0; k * k],
            agree: vec![0; k * k],
            both_nonzero: vec![0; k * k],
        }
    }

    pub fn add(&mut self, other: &PairStats) {
        self.elements += other.elements;
        self.dot
            .iter_mut()
            .zip(&other.dot)
            .for_each(|(a, b)| *a += b);
        self.agree
            .iter_mut()
            .zip(&other.agree)
            .for_each(|(a, b)| *a += b);
        self.both_nonzero
            .iter_mut()
            .zip(&other.both_nonzero)
            .for_each(|(a, b)| *a += b);
    }

    pub fn norm(&self, i: usize) -> f64 {
        self.dot[i * self.k + i].sqrt()
    }

    /// Cosine similarity; `None` when either operand is all zeros.
    pub fn cosine(&self, i: usize, j: usize) -> Option<f64> {
        let d = self.norm(i) * self.norm(j);
        (d > 0.0).then(|| (self.dot[i * self.k + j] / d).clamp(-1.0, 1.0))
    }

    /// Fraction of elements, among those non-zero in both, whose signs agree.
    pub fn sign_agreement(&self, i: usize, j: usize) -> Option<f64> {
        let n = self.both_nonzero[i * self.k + j];
        (n > 0).then(|| self.agree[i * self.k + j] as f64 / n as f64)
    }
}

/// Runs every job (in parallel) and returns one [`PairStats`] per job, in order.
pub fn run(backend: &dyn Backend, jobs: &[Job], progress: &dyn Progress) -> Result<Vec<PairStats>> {
    progress.start("streaming", jobs.iter().map(|j| j.elements).sum());
    let out = jobs
        .par_iter()
        .map(|job| {
            let stats = run_job(backend, job);
            progress.advance(job.elements);
            stats
        })
        .collect::<Result<Vec<_>>>();
    progress.finish();
    out
}

struct Input {
    id: ObjectId,
    dtype: Dtype,
    decoder: Decoder,
    hash: blake3::Hasher,
    bytes: Vec<u8>,
    values: Vec<f32>,
}

fn run_job(backend: &dyn Backend, job: &Job) -> Result<PairStats> {
    let k = job.operands.len();
    let elements = usize::try_from(job.elements).expect("tensor fits in memory addressing");
    let window = WINDOW_ELEMENTS.min(elements.max(1));
    // Distinct objects, each decoded once per window.
    let mut index: HashMap<ObjectId, usize> = HashMap::new();
    let mut inputs: Vec<Input> = Vec::new();
    let mut slot = |id: ObjectId, dtype: Dtype| -> Result<usize> {
        if let Some(&i) = index.get(&id) {
            return Ok(i);
        }
        let fail = |e| decode_error(&id, Some(&job.name), e);
        let decoder = Decoder::open(backend, &id).map_err(fail)?;
        let expected = job.elements * dtype.size() as u64;
        if decoder.header.kind != ObjectKind::Tensor || decoder.header.raw_len != expected {
            return Err(fail(DecodeError::Corrupted(format!(
                "holds {} bytes, the manifest says {expected}",
                decoder.header.raw_len
            ))));
        }
        let mut hash = codec::hasher(ObjectKind::Tensor);
        hash.update(&decoder.header.prefix);
        inputs.push(Input {
            id,
            dtype,
            decoder,
            hash,
            bytes: vec![0; window * dtype.size()],
            values: vec![0.0; window],
        });
        index.insert(id, inputs.len() - 1);
        Ok(inputs.len() - 1)
    };
    let mut wiring = Vec::with_capacity(k);
    for op in &job.operands {
        let plus = slot(op.plus.0, op.plus.1)?;
        let minus = op.minus.map(|(id, d)| slot(id, d)).transpose()?;
        wiring.push((plus, minus));
    }
    let mut operands: Vec<Vec<f32>> = vec![vec![0.0; window]; k];
    let mut stats = PairStats::new(k);
    let mut start = 0usize;
    while start < elements {
        let n = window.min(elements - start);
        inputs.par_iter_mut().try_for_each(|input| -> Result<()> {
            let w = input.dtype.size();
            let bytes = &mut input.bytes[..n * w];
            decode_range(&input.decoder, (start * w) as u64, bytes)
                .map_err(|e| decode_error(&input.id, Some(&job.name), e))?;
            input.hash.update(bytes);
            to_f32(input.dtype, bytes, &mut input.values[..n]);
            Ok(())
        })?;
        operands
            .par_iter_mut()
            .zip(&wiring)
            .for_each(|(out, &(plus, minus))| {
                let p = &inputs[plus].values[..n];
                match minus {
                    None => out[..n].copy_from_slice(p),
                    Some(m) => {
                        let m = &inputs[m].values[..n];
                        for ((o, a), b) in out[..n].iter_mut().zip(p).zip(m) {
                            *o = a - b;
                        }
                    }
                }
            });
        stats.add(&accumulate(&operands, n));
        start += n;
    }
    for input in inputs {
        if ObjectId::from_bytes(*input.hash.finalize().as_bytes()) != input.id {
            return Err(decode_error(
                &input.id,
                Some(&job.name),
                DecodeError::Corrupted("content does not match its id".into()),
            ));
        }
    }
    Ok(stats)
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
        other => {
            for (o, b) in out.iter_mut().zip(bytes.chunks_exact(other.size())) {
                let _ = b;
                *o = 0.0;
            }
        }
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

/// Pairwise statistics of the first `n` values of each operand.
fn accumulate(operands: &[Vec<f32>], n: usize) -> PairStats {
    let k = operands.len();
    (0..n.div_ceil(BLOCK))
        .into_par_iter()
        .map(|b| {
            let range = b * BLOCK..((b + 1) * BLOCK).min(n);
            let mut s = PairStats::new(k);
            s.elements = range.len() as u64;
            for i in 0..k {
                for j in i..k {
                    let (dot, agree, both) =
                        pair(&operands[i][range.clone()], &operands[j][range.clone()]);
                    for (x, y) in [(i, j), (j, i)] {
                        s.dot[x * k + y] = dot;
                        s.agree[x * k + y] = agree;
                        s.both_nonzero[x * k + y] = both;
                    }
                }
            }
            s
        })
        .reduce(
            || PairStats::new(k),
            |mut a, b| {
                a.add(&b);
                a
            },
        )
}

/// (Σ a·b in f64, #same sign among both non-zero, #both non-zero).
fn pair(a: &[f32], b: &[f32]) -> (f64, u64, u64) {
    let mut acc = [0f64; 8];
    let mut agree = [0u32; 8];
    let mut both = [0u32; 8];
    let (ca, cb) = (a.chunks_exact(8), b.chunks_exact(8));
    let (ra, rb) = (ca.remainder(), cb.remainder());
    for (x, y) in ca.zip(cb) {
        for l in 0..8 {
            acc[l] += f64::from(x[l]) * f64::from(y[l]);
            let nz = u32::from(x[l] != 0.0) & u32::from(y[l] != 0.0);
            both[l] += nz;
            agree[l] += nz & u32::from((x[l].to_bits() ^ y[l].to_bits()) >> 31 == 0);
        }
    }
    let mut dot: f64 = acc.iter().sum();
    let mut agree: u64 = agree.iter().map(|&v| u64::from(v)).sum();
    let mut both: u64 = both.iter().map(|&v| u64::from(v)).sum();
    for (x, y) in ra.iter().zip(rb) {
        dot += f64::from(*x) * f64::from(*y);
        let nz = *x != 0.0 && *y != 0.0;
        both += u64::from(nz);
        agree += u64::from(nz && (x.to_bits() ^ y.to_bits()) >> 31 == 0);
    }
    (dot, agree, both)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn pairs_match_a_plain_loop() {
        let a: Vec<f32> = (0..1003)
            .map(|i| ((i * 7919) % 201) as f32 - 100.0)
            .collect();
        let b: Vec<f32> = (0..1003)
            .map(|i| ((i * 104_729) % 53) as f32 - 26.0)
            .collect();
        let (dot, agree, both) = pair(&a, &b);
        let want: f64 = a
            .iter()
            .zip(&b)
            .map(|(x, y)| f64::from(*x) * f64::from(*y))
            .sum();
        assert!((dot - want).abs() < 1e-9 * want.abs().max(1.0));
        let nz: Vec<_> = a
            .iter()
            .zip(&b)
            .filter(|(x, y)| **x != 0.0 && **y != 0.0)
            .collect();
        assert_eq!(both, nz.len() as u64);
        assert_eq!(
            agree,
            nz.iter()
                .filter(|(x, y)| (**x > 0.0) == (**y > 0.0))
                .count() as u64
        );
    }

    #[test]
    fn accumulate_is_symmetric_and_blockwise_exact() {
        let ops = vec![vec![1.0f32, 2.0, 0.0, -1.0], vec![1.0, -2.0, 3.0, -1.0]];
        let s = accumulate(&ops, 4);
        assert_eq!(s.dot, vec![6.0, -2.0, -2.0, 15.0]);
        assert_eq!(s.agree[1], 2);
        assert_eq!(s.both_nonzero[1], 3);
        assert_eq!(s.elements, 4);
    }

    #[test]
    #[allow(clippy::float_cmp)] // these conversions are exact
    fn every_float_dtype_converts() {
        let mut out = [0f32; 2];
        to_f32(Dtype::Bf16, &[0x80, 0x3F, 0x00, 0xC0], &mut out);
        assert_eq!(out, [1.0, -2.0]);
        to_f32(Dtype::F16, &[0x00, 0x3C, 0x00, 0xB8], &mut out);
        assert_eq!(out, [1.0, -0.5]);
        to_f32(Dtype::F8E4m3, &[0x38, 0xC0], &mut out);
        assert_eq!(out, [1.0, -2.0]);
        to_f32(Dtype::F8E5m2, &[0x3C, 0xC0], &mut out);
        assert_eq!(out, [1.0, -2.0]);
    }
}
