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

use rayon::prelude::*;

use crate::error::Result;
use crate::id::ObjectId;
use crate::progress::Progress;
use crate::store::Backend;
use crate::tensor::Dtype;
use crate::window::Windows;
pub use crate::window::to_f32;

pub use crate::window::WINDOW_ELEMENTS;
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
    run_all(backend, jobs, progress, true)
}

/// Reads (decodes and verifies) everything the jobs need exactly as [`run`] does, and
/// computes nothing: the read bound `compare` is measured against.
pub fn read_only(backend: &dyn Backend, jobs: &[Job], progress: &dyn Progress) -> Result<()> {
    run_all(backend, jobs, progress, false).map(|_| ())
}

fn run_all(
    backend: &dyn Backend,
    jobs: &[Job],
    progress: &dyn Progress,
    compute: bool,
) -> Result<Vec<PairStats>> {
    progress.start("streaming", jobs.iter().map(|j| j.elements).sum());
    let out = jobs
        .par_iter()
        .map(|job| {
            let stats = run_job(backend, job, compute);
            progress.advance(job.elements);
            stats
        })
        .collect::<Result<Vec<_>>>();
    progress.finish();
    out
}

fn run_job(backend: &dyn Backend, job: &Job, compute: bool) -> Result<PairStats> {
    let k = job.operands.len();
    let elements = usize::try_from(job.elements).expect("tensor fits in memory addressing");
    let window = WINDOW_ELEMENTS.min(elements.max(1));
    let mut objects = Vec::with_capacity(2 * k);
    for op in &job.operands {
        objects.push(op.plus);
        objects.extend(op.minus);
    }
    let mut windows = Windows::open(backend, &job.name, job.elements, &objects, compute, window)?;
    let mut wiring = Vec::with_capacity(k);
    let mut requested = 0..objects.len();
    for op in &job.operands {
        let plus = windows.slot(requested.next().expect("one per plus"));
        let minus = op
            .minus
            .map(|_| windows.slot(requested.next().expect("one per minus")));
        wiring.push((plus, minus));
    }
    let mut stats = PairStats::new(k);
    let mut start = 0usize;
    while start < elements {
        let n = window.min(elements - start);
        windows.load(start, n)?;
        if compute {
            let values: Vec<&[f32]> = (0..windows.len()).map(|i| windows.values(i, n)).collect();
            stats.add(&accumulate(&values, &wiring, n));
        } else {
            stats.elements += n as u64;
        }
        start += n;
    }
    windows.finish()?;
    Ok(stats)
}

/// Pairwise statistics of the first `n` values of each operand.
///
/// Per block of [`BLOCK`] elements each operand's signs and non-zeros are packed into bit
/// masks once (O(k·n)); then every pair costs one f64 dot product, which the compiler
/// vectorises, and popcounts over the masks (O(k²·n/64)).
fn accumulate(values: &[&[f32]], wiring: &[(usize, Option<usize>)], n: usize) -> PairStats {
    let k = wiring.len();
    (0..n.div_ceil(BLOCK))
        .into_par_iter()
        .map(|b| {
            let range = b * BLOCK..((b + 1) * BLOCK).min(n);
            let len = range.len();
            let words = len.div_ceil(64);
            SCRATCH.with(|scratch| {
                let (wide, sign, nonzero, flags) = &mut *scratch.borrow_mut();
                wide.resize(k * BLOCK, 0.0);
                sign.resize(k * words, 0);
                nonzero.resize(k * words, 0);
                flags.resize(2 * BLOCK.next_multiple_of(64), 0);
                for (i, &(plus, minus)) in wiring.iter().enumerate() {
                    let (fs, fz) = flags.split_at_mut(BLOCK.next_multiple_of(64));
                    let padded = len.next_multiple_of(64);
                    let dst = &mut wide[i * BLOCK..i * BLOCK + len];
                    let p = &values[plus][range.clone()];
                    // The operand (in f32, as vectors are defined), widened for the sums.
                    match minus {
                        Some(m) => {
                            for ((d, a), b) in dst.iter_mut().zip(p).zip(&values[m][range.clone()])
                            {
                                *d = f64::from(a - b);
                            }
                        }
                        None => {
                            for (d, a) in dst.iter_mut().zip(p) {
                                *d = f64::from(*a);
                            }
                        }
                    }
                    for ((s, z), x) in fs.iter_mut().zip(fz.iter_mut()).zip(dst.iter()) {
                        *s = (x.to_bits() >> 63) as u8;
                        *z = u8::from(*x != 0.0);
                    }
                    fs[len..padded].fill(0);
                    fz[len..padded].fill(0);
                    pack(&fs[..padded], &mut sign[i * words..(i + 1) * words]);
                    pack(&fz[..padded], &mut nonzero[i * words..(i + 1) * words]);
                }
                let mut s = PairStats::new(k);
                s.elements = len as u64;
                for i in 0..k {
                    let vi = &wide[i * BLOCK..i * BLOCK + len];
                    let (a0, a1) = (i * words, (i + 1) * words);
                    for j in i..k {
                        let vj = &wide[j * BLOCK..j * BLOCK + len];
                        let (b0, b1) = (j * words, (j + 1) * words);
                        let dot = dot_f64(vi, vj);
                        let (mut agree, mut both) = (0u64, 0u64);
                        for ((sa, sb), (za, zb)) in sign[a0..a1]
                            .iter()
                            .zip(&sign[b0..b1])
                            .zip(nonzero[a0..a1].iter().zip(&nonzero[b0..b1]))
                        {
                            let nz = za & zb;
                            both += u64::from(nz.count_ones());
                            agree += u64::from((!(sa ^ sb) & nz).count_ones());
                        }
                        for (x, y) in [(i, j), (j, i)] {
                            s.dot[x * k + y] = dot;
                            s.agree[x * k + y] = agree;
                            s.both_nonzero[x * k + y] = both;
                        }
                    }
                }
                s
            })
        })
        // Collected in block order and summed in that order: rayon's own `reduce` associates
        // as the work happened to split, which moves the last bits from run to run.
        .collect::<Vec<PairStats>>()
        .iter()
        .fold(PairStats::new(k), |mut a, b| {
            a.add(b);
            a
        })
}

/// Packs 0/1 bytes into bits, 64 to a word. The bit order within a word is the multiply
/// trick's, not positional, but it is the same for every operand, which is all the pairwise
/// popcounts need.
fn pack(flags: &[u8], out: &mut [u64]) {
    for (word, group) in out.iter_mut().zip(flags.chunks_exact(64)) {
        let mut bytes = [0u8; 8];
        for (b, eight) in bytes.iter_mut().zip(group.chunks_exact(8)) {
            let v = u64::from_le_bytes(eight.try_into().expect("8 bytes"));
            *b = (v.wrapping_mul(0x0102_0408_1020_4080) >> 56) as u8;
        }
        *word = u64::from_le_bytes(bytes);
    }
}

thread_local! {
    /// Per-thread block scratch of [`accumulate`]: widened values, sign and non-zero masks, flags.
    #[allow(clippy::type_complexity)]
    static SCRATCH: std::cell::RefCell<(Vec<f64>, Vec<u64>, Vec<u64>, Vec<u8>)> =
        const { std::cell::RefCell::new((Vec::new(), Vec::new(), Vec::new(), Vec::new())) };
}

/// Σ a·b over equal-length f64 slices, with independent lanes the compiler vectorises.
fn dot_f64(a: &[f64], b: &[f64]) -> f64 {
    let mut acc = [0f64; 8];
    let (ca, cb) = (a.chunks_exact(8), b.chunks_exact(8));
    let tail: f64 = ca
        .remainder()
        .iter()
        .zip(cb.remainder())
        .map(|(x, y)| x * y)
        .sum();
    for (x, y) in ca.zip(cb) {
        for l in 0..8 {
            acc[l] += x[l] * y[l];
        }
    }
    acc.iter().sum::<f64>() + tail
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn pairs_match_a_plain_loop() {
        let a: Vec<f32> = (0..10_003)
            .map(|i| ((i * 7919) % 201) as f32 - 100.0)
            .collect();
        let b: Vec<f32> = (0..10_003)
            .map(|i| ((i * 104_729) % 53) as f32 - 26.0)
            .collect();
        let s = accumulate(&[&a, &b], &[(0, None), (1, None)], a.len());
        let (dot, agree, both) = (s.dot[1], s.agree[1], s.both_nonzero[1]);
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
        let ops = [[1.0f32, 2.0, 0.0, -1.0], [1.0, -2.0, 3.0, -1.0]];
        let s = accumulate(&[&ops[0], &ops[1]], &[(0, None), (1, None)], 4);
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
