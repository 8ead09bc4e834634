//! CPU kernels with backward passes, for training: GELU (erf), LayerNorm, a bias add and
//! the whole self-attention of a layer (heads, scale, mask, softmax, dropout, weighted values)
//! as one op each, forward and backward one pass on rayon's threads, compiled for the CPU's
//! widest vectors (pulp's dispatch), instead of candle's chains of element-wise ops (and their
//! backward chains, several single-threaded or on candle's spinning barrier pool, each node's
//! gradient a fresh zero tensor plus an add).
//!
//! The formulas are torch's: GELU′(x) = Φ(x) + x·φ(x); LayerNorm's input gradient
//! `inv·(g − mean(g) − x̂·mean(g·x̂))` with g = dy·w, weight and bias gradients summed over
//! rows; softmax's `dS = P·(dP − Σ P·dP)`. Sums over rows go in fixed chunks combined in
//! order, so results do not depend on the thread count. Inputs must be contiguous f32 on the
//! CPU ([`applies`]); callers use candle's ops elsewhere.

use candle_core::{CpuStorage, CustomOp1, CustomOp2, CustomOp3, DType, Layout, Shape, Tensor};
use rayon::prelude::*;

use super::matmul::{View, product, product_new};
use super::{contiguous_f32, erfc_pos, exp, par_simd, simd, sum_by};
use crate::rng::{mix, unit};

/// Rows per parallel task of the reductions over rows (fixed: the sums' order must not depend
/// on the threads).
const ROWS: usize = 64;

/// Elements per parallel task of the element-wise kernels.
const ELEMENTS: usize = 1 << 14;

/// Whether the kernels here take `x`: f32 on the CPU.
pub fn applies(x: &Tensor) -> bool {
    x.device().is_cpu() && x.dtype() == DType::F32
}

/// The threads gemm's products run on: rayon's, as candle's.
fn threads() -> usize {
    rayon::current_num_threads()
}

/// The values of a contiguous f32 CPU tensor's storage, read in place (backward passes make
/// their inputs contiguous first, a no-op for the tensors the forward passes made).
fn values<'a>(s: &'a candle_core::Storage, l: &Layout, op: &str) -> candle_core::Result<&'a [f32]> {
    match s {
        candle_core::Storage::Cpu(s) => contiguous_f32(s, l, op),
        _ => candle_core::bail!("{op}: CPU tensors only"),
    }
}

// ---------------------------------------------------------------------------------------------
// GELU

/// Φ(x), the standard normal CDF, from the same `erfc` as the fused GELU.
#[inline(always)]
fn cdf(x: f32) -> f32 {
    let y = erfc_pos(x.abs() * std::f32::consts::FRAC_1_SQRT_2);
    if x >= 0.0 { 1.0 - 0.5 * y } else { 0.5 * y }
}

/// `dy·GELU′(x)` element by element, with GELU′(x) = Φ(x) + x·φ(x).
fn gelu_backward(x: &[f32], dy: &[f32]) -> Vec<f32> {
    let inv_sqrt_2pi = 0.398_942_3_f32;
    let mut out = vec![0f32; x.len()];
    par_simd(
        &mut out,
        ELEMENTS,
        #[inline(always)]
        |start, o| {
            for ((o, &v), &g) in o.iter_mut().zip(&x[start..]).zip(&dy[start..]) {
                *o = g * (cdf(v) + v * inv_sqrt_2pi * exp(-0.5 * v * v));
            }
        },
    );
    out
}

struct Gelu;
struct GeluGrad;

impl CustomOp1 for Gelu {
    fn name(&self) -> &'static str {
        "gelu-erf-grad"
    }

    fn cpu_fwd(&self, s: &CpuStorage, l: &Layout) -> candle_core::Result<(CpuStorage, Shape)> {
        let x = contiguous_f32(s, l, "gelu")?;
        let mut out = vec![0f32; x.len()];
        par_simd(
            &mut out,
            ELEMENTS,
            #[inline(always)]
            |start, o| {
                for (o, &v) in o.iter_mut().zip(&x[start..]) {
                    *o = v * cdf(v);
                }
            },
        );
        Ok((CpuStorage::F32(out), l.shape().clone()))
    }

    fn bwd(
        &self,
        arg: &Tensor,
        _res: &Tensor,
        grad: &Tensor,
    ) -> candle_core::Result<Option<Tensor>> {
        Ok(Some(
            arg.contiguous()?
                .apply_op2_no_bwd(&grad.contiguous()?, &GeluGrad)?,
        ))
    }
}

impl CustomOp2 for GeluGrad {
    fn name(&self) -> &'static str {
        "gelu-erf-backward"
    }

    fn cpu_fwd(
        &self,
        s1: &CpuStorage,
        l1: &Layout,
        s2: &CpuStorage,
        l2: &Layout,
    ) -> candle_core::Result<(CpuStorage, Shape)> {
        let x = contiguous_f32(s1, l1, "gelu backward")?;
        let dy = contiguous_f32(s2, l2, "gelu backward")?;
        Ok((CpuStorage::F32(gelu_backward(x, dy)), l1.shape().clone()))
    }
}

/// GELU (erf form) with a backward pass.
pub fn gelu(x: &Tensor) -> candle_core::Result<Tensor> {
    x.contiguous()?.apply_op1(Gelu)
}

// ---------------------------------------------------------------------------------------------
// LayerNorm

struct Norm {
    eps: f32,
}

/// A row's mean and 1/√(var + eps) (biased variance, as torch).
#[inline(always)]
fn moments(x: &[f32], eps: f32) -> (f32, f32) {
    let n = x.len() as f32;
    let mean = sum_by(x, |v| v) / n;
    let var = sum_by(x, |v| (v - mean) * (v - mean)) / n;
    (mean, 1.0 / (var + eps).sqrt())
}

impl CustomOp3 for Norm {
    fn name(&self) -> &'static str {
        "layer-norm-grad"
    }

    fn cpu_fwd(
        &self,
        s1: &CpuStorage,
        l1: &Layout,
        s2: &CpuStorage,
        l2: &Layout,
        s3: &CpuStorage,
        l3: &Layout,
    ) -> candle_core::Result<(CpuStorage, Shape)> {
        let x = contiguous_f32(s1, l1, "layer norm")?;
        let (w, b) = (
            contiguous_f32(s2, l2, "layer norm")?,
            contiguous_f32(s3, l3, "layer norm")?,
        );
        let h = w.len();
        let mut out = vec![0f32; x.len()];
        par_simd(
            &mut out,
            h * ROWS,
            #[inline(always)]
            |start, o| {
                for (o, x) in o.chunks_exact_mut(h).zip(x[start..].chunks_exact(h)) {
                    let (mean, inv) = moments(x, self.eps);
                    for (((o, &x), &w), &b) in o.iter_mut().zip(x).zip(w).zip(b) {
                        *o = (x - mean) * inv * w + b;
                    }
                }
            },
        );
        Ok((CpuStorage::F32(out), l1.shape().clone()))
    }

    fn bwd(
        &self,
        x: &Tensor,
        w: &Tensor,
        _b: &Tensor,
        _res: &Tensor,
        grad: &Tensor,
    ) -> candle_core::Result<(Option<Tensor>, Option<Tensor>, Option<Tensor>)> {
        let (x, w, grad) = (x.contiguous()?, w.contiguous()?, grad.contiguous()?);
        let what = "layer norm backward";
        let ((xg, xl), (wg, wl), (gg, gl)) = (
            x.storage_and_layout(),
            w.storage_and_layout(),
            grad.storage_and_layout(),
        );
        let (xs, ws, dy) = (
            values(&xg, xl, what)?,
            values(&wg, wl, what)?,
            values(&gg, gl, what)?,
        );
        let h = ws.len();
        let mut dx = vec![0f32; xs.len()];
        // Per chunk of rows: dx for its rows, and its partial Σ dy·x̂ and Σ dy.
        let partials: Vec<(Vec<f32>, Vec<f32>)> = dx
            .par_chunks_mut(h * ROWS)
            .zip(xs.par_chunks(h * ROWS))
            .zip(dy.par_chunks(h * ROWS))
            .map(|((dx, x), dy)| {
                simd(
                    #[inline(always)]
                    || {
                        let mut dw = vec![0f32; h];
                        let mut db = vec![0f32; h];
                        let mut xhat = vec![0f32; h];
                        for ((dx, x), dy) in dx.chunks_mut(h).zip(x.chunks(h)).zip(dy.chunks(h)) {
                            let (mean, inv) = moments(x, self.eps);
                            for (xh, &v) in xhat.iter_mut().zip(x) {
                                *xh = (v - mean) * inv;
                            }
                            let n = h as f32;
                            let mut sum_g = 0f32;
                            let mut sum_gx = 0f32;
                            for i in 0..h {
                                let g = dy[i] * ws[i];
                                sum_g += g;
                                sum_gx += g * xhat[i];
                                dw[i] += dy[i] * xhat[i];
                                db[i] += dy[i];
                            }
                            let (mg, mgx) = (sum_g / n, sum_gx / n);
                            for i in 0..h {
                                dx[i] = inv * (dy[i] * ws[i] - mg - xhat[i] * mgx);
                            }
                        }
                        (dw, db)
                    },
                )
            })
            .collect();
        let mut dw = vec![0f32; h];
        let mut db = vec![0f32; h];
        for (pw, pb) in partials {
            for i in 0..h {
                dw[i] += pw[i];
                db[i] += pb[i];
            }
        }
        let dev = x.device();
        Ok((
            Some(Tensor::from_vec(dx, x.shape(), dev)?),
            Some(Tensor::from_vec(dw, w.shape(), dev)?),
            Some(Tensor::from_vec(db, w.shape(), dev)?),
        ))
    }
}

/// LayerNorm over the last dimension with a backward pass for the input, weight and bias.
pub fn layer_norm(x: &Tensor, w: &Tensor, b: &Tensor, eps: f64) -> candle_core::Result<Tensor> {
    x.contiguous()?
        .apply_op3(&w.contiguous()?, &b.contiguous()?, Norm { eps: eps as f32 })
}

// ---------------------------------------------------------------------------------------------
// Bias

/// `y + b` over rows `(n, out)`, the bias `(out)`: one node whose backward pass passes the
/// gradient through and sums it over rows in parallel (candle's broadcast add records a
/// broadcast and an add, and sums the bias gradient on one thread).
struct BiasAdd;

impl CustomOp2 for BiasAdd {
    fn name(&self) -> &'static str {
        "bias-add-grad"
    }

    fn cpu_fwd(
        &self,
        s1: &CpuStorage,
        l1: &Layout,
        s2: &CpuStorage,
        l2: &Layout,
    ) -> candle_core::Result<(CpuStorage, Shape)> {
        let y = contiguous_f32(s1, l1, "bias add")?;
        let b = contiguous_f32(s2, l2, "bias add")?;
        let n = b.len();
        if n == 0 || y.len() % n != 0 {
            candle_core::bail!("bias add: {:?} + {:?}", l1.dims(), l2.dims());
        }
        let mut out = vec![0f32; y.len()];
        par_simd(
            &mut out,
            n * ROWS,
            #[inline(always)]
            |start, o| {
                for (o, y) in o.chunks_exact_mut(n).zip(y[start..].chunks_exact(n)) {
                    for ((o, &y), &b) in o.iter_mut().zip(y).zip(b) {
                        *o = y + b;
                    }
                }
            },
        );
        Ok((CpuStorage::F32(out), l1.shape().clone()))
    }

    fn bwd(
        &self,
        _y: &Tensor,
        b: &Tensor,
        _res: &Tensor,
        grad: &Tensor,
    ) -> candle_core::Result<(Option<Tensor>, Option<Tensor>)> {
        let grad = grad.contiguous()?;
        let db = {
            let (gg, gl) = grad.storage_and_layout();
            row_sums(values(&gg, gl, "bias add backward")?, b.elem_count())
        };
        Ok((
            Some(grad.clone()),
            Some(Tensor::from_vec(db, b.shape(), b.device())?),
        ))
    }
}

/// The sums of the rows of `n` values of `g`: per chunk of [`ROWS`] rows a partial sum on
/// rayon's threads, the partials added in order (the same bits whatever the thread count).
fn row_sums(g: &[f32], n: usize) -> Vec<f32> {
    let partials: Vec<Vec<f32>> = g
        .par_chunks(n * ROWS)
        .map(|g| {
            simd(
                #[inline(always)]
                || {
                    let mut sum = vec![0f32; n];
                    for row in g.chunks_exact(n) {
                        for (s, &x) in sum.iter_mut().zip(row) {
                            *s += x;
                        }
                    }
                    sum
                },
            )
        })
        .collect();
    let mut sums = vec![0f32; n];
    for p in partials {
        for (s, x) in sums.iter_mut().zip(p) {
            *s += x;
        }
    }
    sums
}

/// `y + b` for rows `y` `(n, out)` and a bias `(out)`, with a backward pass for both.
pub fn bias_add(y: &Tensor, b: &Tensor) -> candle_core::Result<Tensor> {
    y.contiguous()?.apply_op2(&b.contiguous()?, BiasAdd)
}

// ---------------------------------------------------------------------------------------------
// Linear

/// A linear layer on rows, `x·Wᵀ + b` for `x` `(n, in)`, a weight `(out, in)` and a bias
/// `(out)`, then GELU (the intermediate layer) or, in training, dropout: one node of the
/// autograd graph where candle's ops make up to five (the weight's transposed view, the
/// product, the bias add, the activation or the dropout), each of which costs the backward
/// pass a zeroed tensor of its size and an add. The products are gemm's on rayon's threads,
/// as candle's are; the backward pass recomputes the dropout mask from its stream.
struct Linear {
    dropout: Option<MaskOp>,
    /// GELU on the result (the intermediate layer), and the values it was applied to, kept
    /// for the backward pass (one node instead of two, the activation's input held here
    /// instead of as a tensor of the graph).
    gelu: Option<std::sync::Mutex<Vec<f32>>>,
}

impl Linear {
    /// `(n, in, out)` of a product of `x` by a weight of `w` values and a bias of `out`.
    fn dims(x: usize, w: usize, out: usize) -> candle_core::Result<(usize, usize, usize)> {
        if out == 0 || w == 0 || !w.is_multiple_of(out) || !x.is_multiple_of(w / out) {
            candle_core::bail!("linear: {x} inputs, a {w}-value weight, a bias of {out}");
        }
        let k = w / out;
        Ok((x / k, k, out))
    }
}

impl CustomOp3 for Linear {
    fn name(&self) -> &'static str {
        "linear-grad"
    }

    fn cpu_fwd(
        &self,
        s1: &CpuStorage,
        l1: &Layout,
        s2: &CpuStorage,
        l2: &Layout,
        s3: &CpuStorage,
        l3: &Layout,
    ) -> candle_core::Result<(CpuStorage, Shape)> {
        let x = contiguous_f32(s1, l1, "linear")?;
        let w = contiguous_f32(s2, l2, "linear")?;
        let b = contiguous_f32(s3, l3, "linear")?;
        let (n, k, out) = Self::dims(x.len(), w.len(), b.len())?;
        let mut y = product_new(
            (x, View::rows(n, k, 0, k)),
            (w, View::rows(out, k, 0, k).t()),
            1.0,
            threads(),
        );
        let size = out * ROWS;
        // Rows of chunk `c`: the bias, then GELU (its input into `z`) or dropout.
        let rows = |c: usize, y: &mut [f32], z: &mut [f32]| {
            simd(
                #[inline(always)]
                || {
                    for (r, row) in y.chunks_exact_mut(out).enumerate() {
                        for (v, &b) in row.iter_mut().zip(b) {
                            *v += b;
                        }
                        if !z.is_empty() {
                            for (v, z) in row.iter_mut().zip(&mut z[r * out..(r + 1) * out]) {
                                *z = *v;
                                *v *= cdf(*v);
                            }
                        }
                        if let Some(m) = self.dropout {
                            let (first, keep) = (c * size + r * out, m.scale());
                            for (j, v) in row.iter_mut().enumerate() {
                                *v = if m.kept(first + j) { *v * keep } else { 0.0 };
                            }
                        }
                    }
                },
            );
        };
        let mut z = Vec::new();
        if self.gelu.is_some() {
            z = vec![0f32; y.len()];
            y.par_chunks_mut(size)
                .zip(z.par_chunks_mut(size))
                .enumerate()
                .for_each(|(c, (y, z))| rows(c, y, z));
        } else {
            y.par_chunks_mut(size)
                .enumerate()
                .for_each(|(c, y)| rows(c, y, &mut []));
        }
        if let Some(kept) = &self.gelu {
            *kept
                .lock()
                .unwrap_or_else(std::sync::PoisonError::into_inner) = z;
        }
        Ok((CpuStorage::F32(y), Shape::from((n, out))))
    }

    /// With `dZ` the gradient back through the dropout mask or GELU (at the kept input):
    /// `dx = dZ·W`, `dW = dZᵀ·x`, `db` the sum of `dZ`'s rows; only for the arguments that
    /// are in the graph (a frozen weight gets none).
    fn bwd(
        &self,
        x: &Tensor,
        w: &Tensor,
        b: &Tensor,
        _res: &Tensor,
        grad: &Tensor,
    ) -> candle_core::Result<(Option<Tensor>, Option<Tensor>, Option<Tensor>)> {
        let grad = match self.dropout {
            Some(m) => grad.contiguous()?.apply_op1_no_bwd(&m)?,
            None => grad.contiguous()?,
        };
        // Through GELU: dZ = dY·GELU′(z).
        let grad = match &self.gelu {
            Some(kept) => {
                let z = kept
                    .lock()
                    .unwrap_or_else(std::sync::PoisonError::into_inner);
                let (gg, gl) = grad.storage_and_layout();
                let dy = values(&gg, gl, "linear backward")?;
                if z.len() != dy.len() {
                    candle_core::bail!("linear backward: the GELU input was not kept");
                }
                Tensor::from_vec(gelu_backward(&z, dy), grad.shape(), grad.device())?
            }
            None => grad,
        };
        let (x, w) = (x.contiguous()?, w.contiguous()?);
        let (n, k, out) = Self::dims(x.elem_count(), w.elem_count(), b.elem_count())?;
        let what = "linear backward";
        let (gg, gl) = grad.storage_and_layout();
        let g = values(&gg, gl, what)?;
        let gv = View::rows(n, out, 0, out);
        let dev = x.device();
        let db = if b.track_op() {
            Some(Tensor::from_vec(row_sums(g, out), b.shape(), dev)?)
        } else {
            None
        };
        let dx = if x.track_op() {
            let (wg, wl) = w.storage_and_layout();
            let wv = values(&wg, wl, what)?;
            let dx = product_new((g, gv), (wv, View::rows(out, k, 0, k)), 1.0, threads());
            Some(Tensor::from_vec(dx, x.shape(), dev)?)
        } else {
            None
        };
        let dw = if w.track_op() {
            let (xg, xl) = x.storage_and_layout();
            let xv = values(&xg, xl, what)?;
            let dw = product_new((g, gv.t()), (xv, View::rows(n, k, 0, k)), 1.0, threads());
            Some(Tensor::from_vec(dw, w.shape(), dev)?)
        } else {
            None
        };
        Ok((dx, dw, db))
    }
}

/// `x·Wᵀ + b` for rows `x` `(n, in)`, a weight `(out, in)` and a bias `(out)`, then GELU
/// (`gelu`) or dropout (training), with a backward pass for all three: the rows `(n, out)`.
pub fn linear(
    x: &Tensor,
    w: &Tensor,
    b: &Tensor,
    dropout: Option<MaskOp>,
    gelu: bool,
) -> candle_core::Result<Tensor> {
    if gelu && dropout.is_some() {
        candle_core::bail!("linear: GELU and dropout on one layer");
    }
    let ((_, k), (out, k2)) = (x.dims2()?, w.dims2()?);
    if k != k2 || b.dims1()? != out {
        candle_core::bail!(
            "linear: rows {:?}, weight {:?}, bias {:?}",
            x.dims(),
            w.dims(),
            b.dims()
        );
    }
    x.contiguous()?.apply_op3(
        &w.contiguous()?,
        &b.contiguous()?,
        Linear {
            dropout,
            gelu: gelu.then(|| std::sync::Mutex::new(Vec::new())),
        },
    )
}

// ---------------------------------------------------------------------------------------------
// Dropout mask

/// One call site's dropout mask: element i is kept unless `unit(mix(stream ^ i)) < p`.
#[derive(Clone, Copy, Debug)]
pub struct MaskOp {
    stream: u64,
    p: f64,
}

impl MaskOp {
    /// The mask of stream `stream` at rate `p`.
    pub fn new(stream: u64, p: f64) -> Self {
        Self { stream, p }
    }

    /// Whether element `i` is kept.
    #[allow(clippy::inline_always)] // inlined into the kernels' vector code (`kernels::simd`)
    #[inline(always)]
    pub fn kept(self, i: usize) -> bool {
        unit(mix(self.stream ^ i as u64)) >= self.p
    }

    /// What a kept element is multiplied by: 1/(1 − p).
    pub fn scale(self) -> f32 {
        (1.0 / (1.0 - self.p)) as f32
    }
}

impl candle_core::CustomOp1 for MaskOp {
    fn name(&self) -> &'static str {
        "dropout"
    }

    fn cpu_fwd(
        &self,
        storage: &candle_core::CpuStorage,
        layout: &candle_core::Layout,
    ) -> candle_core::Result<(candle_core::CpuStorage, candle_core::Shape)> {
        let values = contiguous_f32(storage, layout, "dropout")?;
        let keep = self.scale();
        let mut out = vec![0f32; values.len()];
        par_simd(
            &mut out,
            1 << 14,
            #[inline(always)]
            |start, o| {
                for (i, (o, &x)) in o.iter_mut().zip(&values[start..]).enumerate() {
                    *o = if self.kept(start + i) { x * keep } else { 0.0 };
                }
            },
        );
        Ok((candle_core::CpuStorage::F32(out), layout.shape().clone()))
    }

    /// The same mask on the gradient (dropout is linear).
    fn bwd(
        &self,
        _arg: &Tensor,
        _res: &Tensor,
        grad: &Tensor,
    ) -> candle_core::Result<Option<Tensor>> {
        Ok(Some(grad.contiguous()?.apply_op1_no_bwd(self)?))
    }
}

// ---------------------------------------------------------------------------------------------
// Self-attention

/// Scaled dot-product self-attention of one layer, `softmax(Q·Kᵀ·scale + mask)·V` per head with
/// dropout on the probabilities, from the stacked query/key/value rows `(b·t, 3H)` (biases
/// added): the context `(b·t, H)`, heads merged. One op instead of candle's chain (three
/// head splits copied out, a batch of `b·heads` tiny matrix products each way, each with its
/// own thread dispatch, and their backward chain). Per sequence and head the products are
/// gemm's, called directly ([`super::matmul`]); the probabilities are not kept: the backward
/// pass recomputes them (`t × t × d` work beside the projections' `t × H × H`). Parallel over
/// sequences; each sequence's arithmetic is in a fixed order, so the result does not depend on
/// the thread count.
struct SelfAttention {
    /// Additive per key `(b·t)`: 0 on tokens, the lowest f32 on padding.
    mask: std::sync::Arc<Vec<f32>>,
    t: usize,
    heads: usize,
    scale: f32,
    /// Dropout on the probabilities, element `((s·heads + head)·t + i)·t + j` as the
    /// probabilities tensor `(b, heads, t, t)` would be indexed.
    dropout: Option<MaskOp>,
}

struct SelfAttentionGrad<'a>(&'a SelfAttention);

/// The largest of `x`, in sixteen lanes (vectorizes; the maximum does not depend on the order).
#[inline(always)]
fn max_of(x: &[f32]) -> f32 {
    let mut acc = [f32::MIN; 16];
    let chunks = x.chunks_exact(16);
    let tail = chunks
        .remainder()
        .iter()
        .fold(f32::MIN, |m, &v| if v > m { v } else { m });
    for c in chunks {
        for (a, &v) in acc.iter_mut().zip(c) {
            *a = if v > *a { v } else { *a };
        }
    }
    acc.iter().fold(tail, |m, &v| if v > m { v } else { m })
}

/// A row of scaled scores into probabilities, in place: the key mask added, then the softmax.
#[inline(always)]
fn softmax(row: &mut [f32], mask: &[f32]) {
    for (x, &m) in row.iter_mut().zip(mask) {
        *x += m;
    }
    let max = max_of(row);
    for x in row.iter_mut() {
        *x = exp(*x - max);
    }
    let inv = 1.0 / sum_by(row, |x| x);
    for x in row.iter_mut() {
        *x *= inv;
    }
}

impl SelfAttention {
    fn dims(&self, len: usize) -> candle_core::Result<(usize, usize)> {
        let (t, heads) = (self.t, self.heads);
        let rows = self.mask.len();
        if t == 0 || heads == 0 || !rows.is_multiple_of(t) || !len.is_multiple_of(rows * 3) {
            candle_core::bail!("self-attention over {len} values for {rows} rows of {t}");
        }
        let h = len / rows / 3;
        if !h.is_multiple_of(heads) {
            candle_core::bail!("self-attention: {h} columns over {heads} heads");
        }
        Ok((h, h / heads))
    }

    /// Head `head`'s query, key and value rows `(t, d)` in a sequence's `(t, 3H)` block.
    fn views(&self, head: usize, h: usize, d: usize) -> [View; 3] {
        [0, h, 2 * h].map(|col| View::rows(self.t, d, col + head * d, 3 * h))
    }

    /// The probabilities `(t, t)` of head `head` into `p`: `Q·Kᵀ·scale` (one matrix
    /// product), then each row's mask and softmax.
    #[inline(always)]
    fn probs(&self, block: &[f32], [q, k, _]: [View; 3], mask: &[f32], p: &mut [f32]) {
        let t = self.t;
        let square = View::rows(t, t, 0, t);
        product((p, square), (block, q), (block, k.t()), self.scale, false);
        for row in p.chunks_exact_mut(t) {
            softmax(row, mask);
        }
    }

    /// The context rows `(b·t, H)` from the stacked rows `x` `(b·t, 3H)`.
    fn forward(&self, x: &[f32]) -> candle_core::Result<Vec<f32>> {
        let (h, d) = self.dims(x.len())?;
        let t = self.t;
        let square = View::rows(t, t, 0, t);
        let mut out = vec![0f32; x.len() / 3];
        out.par_chunks_mut(t * h)
            .zip(x.par_chunks(t * 3 * h))
            .enumerate()
            .for_each(|(seq, (out, block))| {
                simd(
                    #[inline(always)]
                    || {
                        let mask = &self.mask[seq * t..(seq + 1) * t];
                        let mut p = vec![0f32; t * t];
                        let mut keep = vec![0f32; if self.dropout.is_some() { t * t } else { 0 }];
                        for head in 0..self.heads {
                            let qkv = self.views(head, h, d);
                            self.probs(block, qkv, mask, &mut p);
                            if let Some(m) = self.dropout {
                                self.keep(m, seq, head, &mut keep);
                                for (x, &k) in p.iter_mut().zip(&keep) {
                                    *x *= k;
                                }
                            }
                            let ctx = View::rows(t, d, head * d, h);
                            product((out, ctx), (&p, square), (block, qkv[2]), 1.0, false);
                        }
                    },
                );
            });
        Ok(out)
    }

    /// Head `head`'s dropout factors `(t, t)` of sequence `seq` into `keep`: 0 or 1/(1 − p)
    /// each (the block is contiguous in the probabilities tensor's `(b, heads, t, t)` order).
    #[inline(always)]
    fn keep(&self, m: MaskOp, seq: usize, head: usize, keep: &mut [f32]) {
        let start = (seq * self.heads + head) * self.t * self.t;
        let scale = m.scale();
        for (j, k) in keep.iter_mut().enumerate() {
            *k = if m.kept(start + j) { scale } else { 0.0 };
        }
    }
}

impl CustomOp1 for SelfAttention {
    fn name(&self) -> &'static str {
        "self-attention-grad"
    }

    fn cpu_fwd(&self, s: &CpuStorage, l: &Layout) -> candle_core::Result<(CpuStorage, Shape)> {
        let x = contiguous_f32(s, l, "self-attention")?;
        let (h, _) = self.dims(x.len())?;
        let out = self.forward(x)?;
        Ok((CpuStorage::F32(out), Shape::from((x.len() / 3 / h, h))))
    }

    fn bwd(
        &self,
        arg: &Tensor,
        _res: &Tensor,
        grad: &Tensor,
    ) -> candle_core::Result<Option<Tensor>> {
        let g = arg.apply_op2_no_bwd(&grad.contiguous()?, &SelfAttentionGrad(self))?;
        Ok(Some(g))
    }
}

impl CustomOp2 for SelfAttentionGrad<'_> {
    fn name(&self) -> &'static str {
        "self-attention-backward"
    }

    /// With `P = softmax(Q·Kᵀ·scale + mask)`, `Pd = P∘keep` and `O = Pd·V`, per sequence and
    /// head, as matrix products: `dV = Pdᵀ·dO`, `dP = (dO·Vᵀ)∘keep`, `dS = P∘(dP − Σⱼ P·dP)`
    /// (row-wise), `dQ = scale·dS·K`, `dK = scale·dSᵀ·Q`.
    fn cpu_fwd(
        &self,
        s1: &CpuStorage,
        l1: &Layout,
        s2: &CpuStorage,
        l2: &Layout,
    ) -> candle_core::Result<(CpuStorage, Shape)> {
        let op = self.0;
        let x = contiguous_f32(s1, l1, "self-attention backward")?;
        let dout = contiguous_f32(s2, l2, "self-attention backward")?;
        let (h, d) = op.dims(x.len())?;
        if dout.len() * 3 != x.len() {
            candle_core::bail!("self-attention backward: gradient of {} values", dout.len());
        }
        let t = op.t;
        let square = View::rows(t, t, 0, t);
        let mut dx = vec![0f32; x.len()];
        dx.par_chunks_mut(t * 3 * h)
            .zip(x.par_chunks(t * 3 * h).zip(dout.par_chunks(t * h)))
            .enumerate()
            .for_each(|(seq, (dx, (block, dout)))| {
                simd(
                    #[inline(always)]
                    || {
                        let mask = &op.mask[seq * t..(seq + 1) * t];
                        let (mut p, mut ds) = (vec![0f32; t * t], vec![0f32; t * t]);
                        let dropped = if op.dropout.is_some() { t * t } else { 0 };
                        let (mut keep, mut pd) = (vec![0f32; dropped], vec![0f32; dropped]);
                        for head in 0..op.heads {
                            let qkv @ [q, k, v] = op.views(head, h, d);
                            let at = |col: usize| View::rows(t, d, col + head * d, 3 * h);
                            let g = View::rows(t, d, head * d, h);
                            op.probs(block, qkv, mask, &mut p);
                            let pd: &[f32] = match op.dropout {
                                Some(m) => {
                                    op.keep(m, seq, head, &mut keep);
                                    for ((o, &pj), &kj) in pd.iter_mut().zip(&p).zip(&keep) {
                                        *o = pj * kj;
                                    }
                                    &pd
                                }
                                None => &p,
                            };
                            // dV = Pdᵀ·dO
                            product((dx, at(2 * h)), (pd, square.t()), (dout, g), 1.0, false);
                            // dPd = dO·Vᵀ, then dS row by row.
                            product((&mut ds, square), (dout, g), (block, v.t()), 1.0, false);
                            if op.dropout.is_some() {
                                for (x, &kj) in ds.iter_mut().zip(&keep) {
                                    *x *= kj;
                                }
                            }
                            for (dsi, pi) in ds.chunks_exact_mut(t).zip(p.chunks_exact(t)) {
                                let dot = super::dot(pi, dsi);
                                for (x, &pj) in dsi.iter_mut().zip(pi) {
                                    *x = pj * (*x - dot);
                                }
                            }
                            product((dx, at(0)), (&ds, square), (block, k), op.scale, false);
                            product((dx, at(h)), (&ds, square.t()), (block, q), op.scale, false);
                        }
                    },
                );
            });
        Ok((CpuStorage::F32(dx), l1.shape().clone()))
    }
}

/// The context rows `(b·t, H)` of self-attention without dropout, from the stacked rows `x`
/// `(b·t, 3H)` with their biases added and the additive key mask `(b·t)`, for sequences of `t`
/// (evaluation's kernel: the same computation as training's forward pass).
pub(crate) fn attend(
    x: &[f32],
    mask: &[f32],
    (t, heads): (usize, usize),
    scale: f32,
) -> candle_core::Result<Vec<f32>> {
    SelfAttention {
        mask: std::sync::Arc::new(mask.to_vec()),
        t,
        heads,
        scale,
        dropout: None,
    }
    .forward(x)
}

/// Self-attention from the stacked query/key/value rows `(b·t, 3H)` (biases added) with the
/// additive key mask `(b·t)` and, in training, dropout on the probabilities: the context
/// `(b·t, H)`, with a backward pass for the rows (the probabilities recomputed, not kept).
pub fn self_attention(
    qkv: &Tensor,
    mask: std::sync::Arc<Vec<f32>>,
    (t, heads): (usize, usize),
    scale: f64,
    dropout: Option<MaskOp>,
) -> candle_core::Result<Tensor> {
    qkv.contiguous()?.apply_op1(SelfAttention {
        mask,
        t,
        heads,
        scale: scale as f32,
        dropout,
    })
}

#[cfg(test)]
mod tests {
    use candle_core::{D, Device, Tensor, Var};

    use super::{MaskOp, gelu, layer_norm, linear, self_attention};

    fn random(shape: &[usize], seed: u64) -> Vec<f32> {
        let n: usize = shape.iter().product();
        (0..n as u64)
            .map(|i| (crate::rng::unit(crate::rng::mix(seed ^ i)) as f32 - 0.5) * 3.0)
            .collect()
    }

    /// The gradients of `Σ y·up`.
    fn gradients(y: &Tensor, up: &Tensor) -> candle_core::backprop::GradStore {
        (y * up).unwrap().sum_all().unwrap().backward().unwrap()
    }

    fn close(a: &Tensor, b: &Tensor, what: &str) {
        let a: Vec<f32> = a.flatten_all().unwrap().to_vec1().unwrap();
        let b: Vec<f32> = b.flatten_all().unwrap().to_vec1().unwrap();
        assert_eq!(a.len(), b.len());
        for (i, (x, y)) in a.iter().zip(&b).enumerate() {
            // 1e-5 relative, 1e-6 absolute (a gradient near zero is a difference of larger
            // terms).
            assert!(
                (x - y).abs() <= 1e-5 * y.abs() + 1e-6,
                "{what}[{i}]: {x} vs {y}"
            );
        }
    }

    /// Each kernel's value and gradients equal candle's differentiable ops on the same input.
    #[test]
    fn kernels_and_their_gradients_equal_candle_ops() {
        let dev = Device::Cpu;
        // GELU.
        let x = Var::from_vec(random(&[5, 7], 1), (5, 7), &dev).unwrap();
        let w = Tensor::from_vec(random(&[5, 7], 2), (5, 7), &dev).unwrap();
        let ours = gelu(x.as_tensor()).unwrap();
        let plain = x.as_tensor().gelu_erf().unwrap();
        close(&ours, &plain, "gelu");
        let g1 = gradients(&ours, &w);
        let g2 = gradients(&plain, &w);
        close(
            g1.get(x.as_tensor()).unwrap(),
            g2.get(x.as_tensor()).unwrap(),
            "gelu grad",
        );

        // LayerNorm over rows of 6 (more rows than a chunk).
        let rows = 150;
        let x = Var::from_vec(random(&[rows, 6], 3), (rows, 6), &dev).unwrap();
        let lw = Var::from_vec(random(&[6], 4), 6, &dev).unwrap();
        let lb = Var::from_vec(random(&[6], 5), 6, &dev).unwrap();
        let up = Tensor::from_vec(random(&[rows, 6], 6), (rows, 6), &dev).unwrap();
        let ours = layer_norm(x.as_tensor(), lw.as_tensor(), lb.as_tensor(), 1e-5).unwrap();
        let plain = {
            let x = x.as_tensor();
            let mean = x.mean_keepdim(D::Minus1).unwrap();
            let c = x.broadcast_sub(&mean).unwrap();
            let var = c.sqr().unwrap().mean_keepdim(D::Minus1).unwrap();
            c.broadcast_div(&(var + 1e-5).unwrap().sqrt().unwrap())
                .unwrap()
                .broadcast_mul(lw.as_tensor())
                .unwrap()
                .broadcast_add(lb.as_tensor())
                .unwrap()
        };
        close(&ours, &plain, "layer norm");
        let g1 = gradients(&ours, &up);
        let g2 = gradients(&plain, &up);
        for (v, what) in [(&x, "x"), (&lw, "w"), (&lb, "b")] {
            close(
                g1.get(v.as_tensor()).unwrap(),
                g2.get(v.as_tensor()).unwrap(),
                &format!("layer norm grad {what}"),
            );
        }

        // Self-attention: 2 sequences of 4 positions, 2 heads of 3, the last key of the
        // second sequence masked; without and with dropout on the probabilities.
        let (b, t, heads, d) = (2, 4, 2, 3);
        let h = heads * d;
        let qkv = Var::from_vec(random(&[b * t, 3 * h], 7), (b * t, 3 * h), &dev).unwrap();
        let mut mask = vec![0f32; b * t];
        mask[b * t - 1] = f32::MIN;
        let up = Tensor::from_vec(random(&[b * t, h], 8), (b * t, h), &dev).unwrap();
        for rate in [0.0, 0.5] {
            let drop = (rate > 0.0).then(|| MaskOp::new(11, rate));
            let ours = self_attention(
                qkv.as_tensor(),
                std::sync::Arc::new(mask.clone()),
                (t, heads),
                0.5,
                drop,
            )
            .unwrap();
            let plain = {
                let x = qkv.as_tensor().reshape((b, t, 3 * h)).unwrap();
                let part = |i: usize| {
                    x.narrow(D::Minus1, i * h, h)
                        .unwrap()
                        .reshape((b, t, heads, d))
                        .unwrap()
                        .transpose(1, 2)
                        .unwrap()
                        .contiguous()
                        .unwrap()
                };
                let (q, k, v) = (part(0), part(1), part(2));
                let m = Tensor::from_vec(mask.clone(), (b, 1, 1, t), &dev).unwrap();
                let z = (q.matmul(&k.t().unwrap()).unwrap() * 0.5)
                    .unwrap()
                    .broadcast_add(&m)
                    .unwrap();
                let max = z.max_keepdim(D::Minus1).unwrap();
                let e = z.broadcast_sub(&max).unwrap().exp().unwrap();
                let p = e.broadcast_div(&e.sum_keepdim(D::Minus1).unwrap()).unwrap();
                let p = match drop {
                    Some(m) => p.apply_op1(m).unwrap(),
                    None => p,
                };
                p.matmul(&v)
                    .unwrap()
                    .transpose(1, 2)
                    .unwrap()
                    .reshape((b * t, h))
                    .unwrap()
            };
            close(&ours, &plain, &format!("self-attention, dropout {rate}"));
            let g1 = gradients(&ours, &up);
            let g2 = gradients(&plain, &up);
            close(
                g1.get(qkv.as_tensor()).unwrap(),
                g2.get(qkv.as_tensor()).unwrap(),
                &format!("self-attention grad, dropout {rate}"),
            );
        }

        // A linear layer on 150 rows of 5 into 4 (more rows than a chunk): plain, with dropout
        // on its output, with GELU.
        let (n, k, out) = (150, 5, 4);
        let x = Var::from_vec(random(&[n, k], 9), (n, k), &dev).unwrap();
        let lw = Var::from_vec(random(&[out, k], 10), (out, k), &dev).unwrap();
        let lb = Var::from_vec(random(&[out], 12), out, &dev).unwrap();
        let up = Tensor::from_vec(random(&[n, out], 13), (n, out), &dev).unwrap();
        for (rate, act) in [(0.0, false), (0.5, false), (0.0, true)] {
            let drop = (rate > 0.0).then(|| MaskOp::new(17, rate));
            let ours = linear(x.as_tensor(), lw.as_tensor(), lb.as_tensor(), drop, act).unwrap();
            let plain = {
                let y = x
                    .as_tensor()
                    .matmul(&lw.as_tensor().t().unwrap())
                    .unwrap()
                    .broadcast_add(lb.as_tensor())
                    .unwrap();
                let y = if act { y.gelu_erf().unwrap() } else { y };
                match drop {
                    Some(m) => y.apply_op1(m).unwrap(),
                    None => y,
                }
            };
            let what = format!("dropout {rate}, gelu {act}");
            close(&ours, &plain, &format!("linear, {what}"));
            let g1 = gradients(&ours, &up);
            let g2 = gradients(&plain, &up);
            for (v, name) in [(&x, "x"), (&lw, "w"), (&lb, "b")] {
                close(
                    g1.get(v.as_tensor()).unwrap(),
                    g2.get(v.as_tensor()).unwrap(),
                    &format!("linear grad {name}, {what}"),
                );
            }
        }
        // A frozen weight and bias get no gradient; the input still does.
        let (fw, fb) = (lw.as_tensor().detach(), lb.as_tensor().detach());
        let y = linear(x.as_tensor(), &fw, &fb, None, false).unwrap();
        let g = gradients(&y, &up);
        assert!(g.get(x.as_tensor()).is_some() && g.get(&fw).is_none() && g.get(&fb).is_none());
    }
}
