//! The streaming merge engine: a [`MergePlan`] in, one new tensor object per merged tensor out.
//!
//! Each merged tensor is read window by window from the registry (`Windows`: every distinct
//! object decoded once per window, deltas over their base, everything re-hashed), its inputs'
//! task vectors (or models) formed in f32, sparsified, combined by the method in f64, and the
//! result converted to the output dtype and streamed into a [`Sink`] that compresses on all
//! cores and names the object by its hash at the end. Nothing is committed here: the caller
//! gets the uncommitted writers and records its intent in the catalog first.
//!
//! Memory is bounded whatever the model size: a tensor of at most [`IN_MEMORY`] elements is one
//! window (its top-k thresholds are found in memory); a larger one (a 250k-row embedding) is
//! read in windows of [`WINDOW_ELEMENTS`], and methods that trim by magnitude first find each
//! input's exact threshold with two streaming radix-select passes, then merge on a third.

#![allow(clippy::many_single_char_names)] // the formulas' names: θ, τ, λ, t, n, k

use rayon::prelude::*;

use crate::error::{Error, Result};
use crate::id::ObjectId;
use crate::method::{Combine, Method, Operands, Sparsify};
use crate::pool;
use crate::progress::Progress;
use crate::recipe::plan::{Action, MergePlan, Operand, PlannedTensor};
use crate::store::Backend;
use crate::store::codec::{EncodeError, Finished, Header, ObjectKind, Sink};
use crate::tensor::merge::select::{RadixSelect, Threshold, Trim, kept, threshold_of};
use crate::tensor::merge::{Weighted, dare_in_place, dare_l1_sums, l1_factor, stream_of};
use crate::tensor::{Dtype, canonical_prefix};
use crate::window::{WINDOW_ELEMENTS, Windows};

/// Tensors up to this many elements are merged as one window.
pub const IN_MEMORY: usize = 4 << 20;
/// Elements per block of the element-wise steps (parallel over blocks).
const BLOCK: usize = 1 << 16;

/// The fixed parameters of one merge (one sweep point).
#[derive(Clone, Debug)]
pub struct Settings {
    pub method: Method,
    pub lambda: f64,
    pub normalize: bool,
    pub rescale: bool,
    /// DARE with `rescale`: match each masked tensor's L1 norm (mergekit) instead of dividing
    /// by the density.
    pub rescale_l1: bool,
    pub seed: u64,
    /// Per input.
    pub weights: Vec<f64>,
    /// Largest window in elements (tests shrink it to exercise the streaming passes; the
    /// result is the same bits whatever the window).
    pub max_window: Option<usize>,
}

/// A merged tensor written but not committed.
pub struct Output {
    /// Index into the plan's tensors.
    pub tensor: usize,
    pub finished: Finished,
    pub delta_base: Option<ObjectId>,
}

/// Merges every `Merge` tensor of `plan`. `delta_ok` says whether an object may serve as a
/// delta base (stored, not itself a delta).
pub fn run(
    backend: &dyn Backend,
    plan: &MergePlan,
    settings: &Settings,
    delta_ok: &(dyn Fn(&ObjectId) -> bool + Sync),
    progress: &dyn Progress,
) -> Result<Vec<Output>> {
    let jobs: Vec<usize> = plan
        .tensors
        .iter()
        .enumerate()
        .filter(|(_, t)| matches!(t.action, Action::Merge { .. }))
        .map(|(i, _)| i)
        .collect();
    progress.start("merging", plan.merged_elements());
    // Small tensors in parallel; large ones one at a time, each on all cores, so memory stays
    // a few windows whatever the model.
    let (small, large): (Vec<usize>, Vec<usize>) = jobs
        .iter()
        .partition(|&&i| plan.tensors[i].elements() < (1 << 20));
    let one = |i: usize| -> Result<Output> {
        let t = &plan.tensors[i];
        let out = merge_tensor(backend, t, settings, delta_ok)?;
        progress.advance(t.elements());
        Ok(Output {
            tensor: i,
            finished: out.0,
            delta_base: out.1,
        })
    };
    let mut outputs: Vec<Output> = small.par_iter().map(|&i| one(i)).collect::<Result<_>>()?;
    for i in large {
        outputs.push(one(i)?);
    }
    progress.finish();
    Ok(outputs)
}

fn store_error(name: &str, e: EncodeError) -> Error {
    match e {
        EncodeError::Store(io) | EncodeError::Source(io) => Error::io(
            "writing a merged tensor into",
            format!("the registry (tensor `{name}`)"),
            io,
        ),
        other => Error::invalid(
            format!("tensor `{name}`: {other}"),
            "run `crossmerge verify`",
        ),
    }
}

/// The inputs of one tensor that contribute, with their slots in the window set.
struct Active {
    input: usize,
    op: Operand,
    plus: usize,
    minus: Option<usize>,
    density: f64,
}

#[allow(clippy::too_many_lines)]
fn merge_tensor(
    backend: &dyn Backend,
    t: &PlannedTensor,
    s: &Settings,
    delta_ok: &(dyn Fn(&ObjectId) -> bool + Sync),
) -> Result<(Finished, Option<ObjectId>)> {
    let Action::Merge {
        base,
        base_dtype,
        operands,
        scale,
        densities,
        gamma,
        t: slerp_t,
    } = &t.action
    else {
        unreachable!("only merged tensors reach the engine")
    };
    let n_total = usize::try_from(t.elements()).expect("tensor fits in memory addressing");
    let (limit, streamed) = s
        .max_window
        .map_or((IN_MEMORY, WINDOW_ELEMENTS), |w| (w, w));
    let window = if n_total <= limit {
        n_total.max(1)
    } else {
        streamed
    };
    let mut objects: Vec<(ObjectId, Dtype)> = Vec::new();
    if let Some(b) = base {
        objects.push((*b, *base_dtype));
    }
    let mut active: Vec<Active> = Vec::new();
    for (i, op) in operands.iter().enumerate() {
        let Some(op) = op else { continue };
        objects.push((op.plus, op.plus_dtype));
        let plus = objects.len() - 1;
        let minus = op.minus.map(|m| {
            objects.push((m, op.minus_dtype));
            objects.len() - 1
        });
        active.push(Active {
            input: i,
            op: *op,
            plus,
            minus,
            density: densities[i].unwrap_or(1.0),
        });
    }
    let open = || Windows::open(backend, &t.name, n_total as u64, &objects, true, window);
    let mut windows = open()?;
    let base_slot = base.map(|_| windows.slot(0));
    for a in &mut active {
        a.plus = windows.slot(a.plus);
        a.minus = a.minus.map(|m| windows.slot(m));
    }
    let method = s.method.get();
    let sparsify = method.sparsify();
    // Trim methods select on the task vectors; model methods (linear, slerp) combine models.
    let wants_models = method.operands() == Operands::Models;
    let k = active.len();
    let mut vals: Vec<Vec<f32>> = (0..k).map(|_| pool::take(&pool::FLOATS, window)).collect();
    let form = |windows: &Windows, vals: &mut [Vec<f32>], n: usize| {
        let base_vals = base_slot.map(|b| windows.values(b, n));
        // Input after input, each over blocks on all cores.
        for (dst, a) in vals.iter_mut().zip(&active) {
            let plus = windows.values(a.plus, n);
            let minus = a.minus.map(|m| windows.values(m, n));
            dst[..n]
                .par_chunks_mut(BLOCK)
                .enumerate()
                .for_each(|(blk, d)| {
                    let r = blk * BLOCK..blk * BLOCK + d.len();
                    let p = &plus[r.clone()];
                    match (a.op.model, minus, wants_models, base_vals) {
                        (false, Some(m), false, _) => {
                            for ((d, p), q) in d.iter_mut().zip(p).zip(&m[r]) {
                                *d = p - q;
                            }
                        }
                        (false, Some(m), true, Some(b)) => {
                            for (((d, p), q), b) in
                                d.iter_mut().zip(p).zip(&m[r.clone()]).zip(&b[r])
                            {
                                *d = (f64::from(*b) + f64::from(p - q)) as f32;
                            }
                        }
                        (true, _, true, _) | (true, _, false, None) => d.copy_from_slice(p),
                        (true, _, false, Some(b)) => {
                            for ((d, p), b) in d.iter_mut().zip(p).zip(&b[r]) {
                                *d = p - b;
                            }
                        }
                        _ => unreachable!("a task-vector operand has a minus"),
                    }
                });
        }
    };

    // Thresholds of the trim methods, and slerp's norms: from the window itself when the
    // tensor is one window, else from extra streaming passes.
    let ranks: Vec<Vec<u64>> = active
        .iter()
        .map(|a| {
            let d = a.density as f32;
            match sparsify {
                Sparsify::TopK => vec![kept(n_total, d) as u64],
                Sparsify::Band => {
                    let lo = kept(n_total, gamma.unwrap_or(0.0) as f32);
                    vec![(lo + kept(n_total, d)).min(n_total) as u64, lo as u64]
                }
                Sparsify::None | Sparsify::Random => Vec::new(),
            }
        })
        .collect();
    let trims_needed = ranks.iter().any(|r| !r.is_empty());
    let single = n_total <= window;
    let mut thresholds: Vec<Vec<Threshold>> = Vec::new();
    let mut norms = (0f64, 0f64, 0f64);
    let needs_norms = method.needs_norms();
    if !single && (trims_needed || needs_norms) {
        let mut radix: Vec<RadixSelect> = ranks
            .iter()
            .map(|r| RadixSelect::new(n_total as u64, r))
            .collect();
        let mut passes = if trims_needed { 2 } else { 1 };
        let mut pass = 0;
        while pass < passes {
            let mut w = open()?;
            let mut start = 0;
            while start < n_total {
                let n = window.min(n_total - start);
                w.load(start, n)?;
                form(&w, &mut vals, n);
                if trims_needed {
                    radix.par_iter_mut().zip(&vals).for_each(|(r, v)| {
                        if pass == 0 && start == 0 {
                            r.guess(&v[..n]);
                        }
                        if pass == 0 {
                            r.first_pass(&v[..n]);
                        } else {
                            r.second_pass(&v[..n]);
                        }
                    });
                } else {
                    let b = w.values(base_slot.expect("a norms method has a base"), n);
                    let (x, y, z) = norm_sums(b, &vals[0][..n]);
                    norms = (norms.0 + x, norms.1 + y, norms.2 + z);
                }
                start += n;
            }
            w.finish()?;
            pass += 1;
            // Usually the first pass kept every key near each threshold: no second pass.
            if trims_needed && pass == 1 {
                let found: Option<Vec<Vec<Threshold>>> =
                    radix.iter_mut().map(RadixSelect::try_thresholds).collect();
                if let Some(found) = found {
                    thresholds = found;
                    passes = 1;
                }
            }
        }
        if thresholds.is_empty() {
            thresholds = radix.into_iter().map(RadixSelect::thresholds).collect();
        }
    }

    // mergekit's DARE rescale: each input's masked tensor back to its L1 norm, which needs the
    // sums over the whole tensor before the first window is merged (an extra pass when the
    // tensor is streamed).
    let l1 = s.rescale && s.rescale_l1 && sparsify == Sparsify::Random;
    let mut l1_sums = vec![(0f64, 0f64); k];
    let add_l1 = |sums: &mut [(f64, f64)], vals: &[Vec<f32>], start: usize, n: usize| {
        sums.par_iter_mut()
            .zip(&active)
            .zip(vals)
            .for_each(|((acc, a), v)| {
                let (b, m) = dare_l1_sums(
                    a.density as f32,
                    s.seed,
                    stream_of(&t.name, a.input),
                    start as u64,
                    &v[..n],
                );
                acc.0 += b;
                acc.1 += m;
            });
    };
    if l1 && !single {
        let mut w = open()?;
        let mut start = 0;
        while start < n_total {
            let n = window.min(n_total - start);
            w.load(start, n)?;
            form(&w, &mut vals, n);
            add_l1(&mut l1_sums, &vals, start, n);
            start += n;
        }
        w.finish()?;
    }

    let out_dtype = t.dtype;
    let delta_base = base.filter(|b| *base_dtype == out_dtype && delta_ok(b) && n_total > 0);
    let mut header = Header::new(
        ObjectKind::Tensor,
        out_dtype.size() as u8,
        t.elements() * out_dtype.size() as u64,
        canonical_prefix(out_dtype, &t.shape),
    );
    header.delta_base = delta_base;
    let mut sink = Sink::new(backend, header).map_err(|e| store_error(&t.name, e))?;
    let mut merged = pool::take(&pool::FLOATS, window);
    let mut bytes = pool::take(&pool::BYTES, window * out_dtype.size());
    let mut trims: Vec<Vec<Trim>> = (0..k).map(|_| Vec::new()).collect();
    let mut trims_ready = false;
    let lambda_scale = s.lambda * scale;
    let weight_of = |a: &Active| s.weights[a.input] as f32;
    let mut start = 0;
    while start < n_total {
        let n = window.min(n_total - start);
        windows.load(start, n)?;
        form(&windows, &mut vals, n);
        if trims_needed && !trims_ready {
            trims_ready = true;
            if single {
                thresholds = ranks
                    .par_iter()
                    .zip(&vals)
                    .map(|(r, v)| {
                        r.iter()
                            .map(|&k| threshold_of(&v[..n], k as usize))
                            .collect()
                    })
                    .collect();
            }
            trims = thresholds
                .iter()
                .map(|ts| ts.iter().map(|t| t.walker()).collect())
                .collect();
        }
        if needs_norms && single {
            let b = windows.values(base_slot.expect("a norms method has a base"), n);
            norms = norm_sums(b, &vals[0][..n]);
        }
        if l1 && single {
            add_l1(&mut l1_sums, &vals, start, n);
        }
        // Sparsify in place.
        vals.par_iter_mut()
            .zip(&active)
            .zip(trims.par_iter_mut())
            .zip(&l1_sums)
            .for_each(|(((v, a), trim), sums)| {
                let v = &mut v[..n];
                match sparsify {
                    Sparsify::TopK => trim[0].apply(v),
                    Sparsify::Band => {
                        let (hi, lo) = trim.split_at_mut(1);
                        for x in v.iter_mut() {
                            let in_hi = hi[0].keep(*x);
                            let in_lo = lo[0].keep(*x);
                            if !in_hi || in_lo {
                                *x = 0.0;
                            }
                        }
                    }
                    Sparsify::Random => {
                        dare_in_place(
                            a.density as f32,
                            s.rescale && !l1,
                            s.seed,
                            stream_of(&t.name, a.input),
                            start as u64,
                            v,
                        );
                        if l1 {
                            let f = l1_factor(sums.0, sums.1);
                            for x in v.iter_mut() {
                                *x = (f64::from(*x) * f) as f32;
                            }
                        }
                    }
                    Sparsify::None => {}
                }
            });
        let how = Combine {
            normalize: s.normalize,
            t: *slerp_t,
            norms,
        };
        let base_vals = base_slot.map(|b| windows.values(b, n));
        merged[..n]
            .par_chunks_mut(BLOCK)
            .zip(bytes[..n * out_dtype.size()].par_chunks_mut(BLOCK * out_dtype.size()))
            .enumerate()
            .for_each(|(blk, (m, out))| {
                let r = blk * BLOCK..blk * BLOCK + m.len();
                let inputs: Vec<Weighted<'_>> = active
                    .iter()
                    .zip(&vals)
                    .map(|(a, v)| Weighted {
                        values: &v[r.clone()],
                        weight: weight_of(a),
                    })
                    .collect();
                let b = base_vals.map(|b| &b[r.clone()]);
                if inputs.is_empty() && wants_models {
                    // Nothing contributes: the base, converted.
                    if let Some(b) = b {
                        m.copy_from_slice(b);
                    } else {
                        m.fill(0.0);
                    }
                } else {
                    method.combine(&inputs, b, &how, m);
                }
                // θ = base + λ·scale·Δ (task-vector methods) or base + scale·(θ_m − base).
                if let Some(b) = b {
                    if !wants_models {
                        for (o, x) in m.iter_mut().zip(b) {
                            *o = (f64::from(*x) + lambda_scale * f64::from(*o)) as f32;
                        }
                    } else if (*scale - 1.0).abs() > 0.0 {
                        for (o, x) in m.iter_mut().zip(b) {
                            let x = f64::from(*x);
                            *o = (x + scale * (f64::from(*o) - x)) as f32;
                        }
                    }
                }
                from_f32(out_dtype, m, out);
            });
        let base_raw = delta_base.map(|_| windows.raw(base_slot.expect("delta over the base"), n));
        sink.push(&bytes[..n * out_dtype.size()], base_raw)
            .map_err(|e| store_error(&t.name, e))?;
        start += n;
    }
    windows.finish()?;
    for v in vals {
        pool::give(&pool::FLOATS, v);
    }
    pool::give(&pool::FLOATS, merged);
    pool::give(&pool::BYTES, bytes);
    let finished = sink.finish().map_err(|e| store_error(&t.name, e))?;
    Ok((finished, delta_base))
}

/// (‖a‖², ‖b‖², a·b) in f64.
fn norm_sums(a: &[f32], b: &[f32]) -> (f64, f64, f64) {
    a.par_chunks(BLOCK)
        .zip(b.par_chunks(BLOCK))
        .map(|(x, y)| {
            let mut s = (0f64, 0f64, 0f64);
            for (p, q) in x.iter().zip(y) {
                let (p, q) = (f64::from(*p), f64::from(*q));
                s.0 += p * p;
                s.1 += q * q;
                s.2 += p * q;
            }
            s
        })
        // Summed in block order (rayon's `reduce` associates as the work split, which would
        // move the last bits, and so the merged tensor's, from run to run).
        .collect::<Vec<_>>()
        .into_iter()
        .fold((0.0, 0.0, 0.0), |a, b| (a.0 + b.0, a.1 + b.1, a.2 + b.2))
}

/// f32 values to little-endian elements of a float dtype (round to nearest even).
fn from_f32(dtype: Dtype, values: &[f32], out: &mut [u8]) {
    match dtype {
        Dtype::F32 => {
            for (o, v) in out.chunks_exact_mut(4).zip(values) {
                o.copy_from_slice(&v.to_le_bytes());
            }
        }
        Dtype::F64 => {
            for (o, v) in out.chunks_exact_mut(8).zip(values) {
                o.copy_from_slice(&f64::from(*v).to_le_bytes());
            }
        }
        Dtype::F16 => {
            for (o, v) in out.chunks_exact_mut(2).zip(values) {
                o.copy_from_slice(&half::f16::from_f32(*v).to_le_bytes());
            }
        }
        Dtype::Bf16 => {
            for (o, v) in out.chunks_exact_mut(2).zip(values) {
                o.copy_from_slice(&half::bf16::from_f32(*v).to_le_bytes());
            }
        }
        other => unreachable!("merged tensors are f32, f64, f16 or bf16, not {other}"),
    }
}
