//! Fused CPU kernels for the encoder's element-wise steps, each one pass after the matrix
//! product it follows: bias + GELU and bias + residual + LayerNorm (in place), self-attention
//! from the stacked Q/K/V projection (biases, scale, mask, softmax, context, heads merged);
//! and plain GELU and LayerNorm for the heads.
//!
//! candle runs these steps as chains of element-wise ops, several single-threaded (GELU alone,
//! in scalar `erff`, was a fifth of an evaluation's time). Here each is one pass over rows,
//! spread over rayon's threads and compiled for the CPU's vector units at run time
//! (pulp picks AVX2+FMA when present; the kernel bodies are `#[inline(always)]` so they are
//! compiled inside that context), with `exp` and `erfc` as branch-free polynomials so the
//! loops vectorize. Accuracy: `exp` within 2 ulp (Cephes' `expf` polynomial), `erfc` within
//! 1.2e-7 relative (Numerical Recipes' Chebyshev fit), far inside the 1e-4 parity with
//! transformers.
//!
//! On other devices (CUDA) and dtypes the callers' plain candle ops run instead. These kernels
//! have no backward pass: evaluation needs none; training on the CPU runs [`grad`]'s kernels,
//! which have one.

// b, t, h, d, q, k, v: the formulas' names.
#![allow(clippy::many_single_char_names)]
// The kernel bodies must be inlined into pulp's vector context to be compiled for it.
#![allow(clippy::inline_always)]

pub mod grad;
mod matmul;

use rayon::prelude::*;

use candle_core::{CpuStorage, CustomOp1, DType, InplaceOp1, InplaceOp2, Layout, Shape, Tensor};

/// Elements per parallel task: large enough to amortise scheduling.
const CHUNK: usize = 1 << 14;

/// `eˣ` in f32 (Cephes `expf`: Cody–Waite reduction by ln 2, a degree-6 polynomial, the
/// exponent built from bits); exactly 0 below −87. Branch-free.
#[inline(always)]
fn exp(x: f32) -> f32 {
    let under = x < -87.0;
    let x = x.clamp(-87.0, 88.0);
    // Round to nearest by adding 1.5·2²³: n sits in the low mantissa bits of `m`, so both n
    // (as a float) and 2ⁿ (as bits) come without a float-to-int conversion or `floor`.
    let m = x * std::f32::consts::LOG2_E + 12_582_912.0;
    let n = m - 12_582_912.0;
    let r = x - n * 0.693_359_4 + n * 2.121_944_4e-4;
    let z = r * r;
    let p = ((((1.987_569_1e-4 * r + 1.398_199_9e-3) * r + 8.333_452e-3) * r + 4.166_579_6e-2) * r
        + 0.166_666_65)
        * r
        + 0.5;
    let two_n = f32::from_bits(m.to_bits().wrapping_sub(0x4B40_0000 - 127) << 23);
    let y = (p * z + r + 1.0) * two_n;
    if under { 0.0 } else { y }
}

/// `erfc(z)` for z ≥ 0 (Numerical Recipes, `erfcc`: fractional error below 1.2e-7).
#[inline(always)]
fn erfc_pos(z: f32) -> f32 {
    let t = 1.0 / (1.0 + 0.5 * z);
    let poly = -1.265_512_2
        + t * (1.000_023_7
            + t * (0.374_091_96
                + t * (0.096_784_18
                    + t * (-0.186_288_06
                        + t * (0.278_868_07
                            + t * (-1.135_204
                                + t * (1.488_515_9 + t * (-0.822_152_23 + t * 0.170_872_77))))))));
    t * exp(-z * z + poly)
}

/// `x·Φ(x) = x·(1 + erf(x/√2))/2`, as torch's `gelu` (approximate = "none").
#[inline(always)]
fn gelu1(x: f32) -> f32 {
    let y = erfc_pos(x.abs() * std::f32::consts::FRAC_1_SQRT_2);
    let cdf = if x >= 0.0 { 1.0 - 0.5 * y } else { 0.5 * y };
    x * cdf
}

/// `Σ f(xᵢ)` in eight interleaved partial sums, so the loop vectorizes (a single running sum
/// is a serial chain of additions).
#[inline(always)]
fn sum_by(x: &[f32], f: impl Fn(f32) -> f32) -> f32 {
    let mut acc = [0f32; 8];
    let chunks = x.chunks_exact(8);
    let tail: f32 = chunks.remainder().iter().map(|&v| f(v)).sum();
    for c in chunks {
        for (a, &v) in acc.iter_mut().zip(c) {
            *a += f(v);
        }
    }
    acc.iter().sum::<f32>() + tail
}

/// LayerNorm of one row in place: biased variance, as torch.
#[inline(always)]
fn normalize(o: &mut [f32], w: &[f32], b: &[f32], eps: f32) {
    let n = o.len() as f32;
    let mean = sum_by(o, |x| x) / n;
    let var = sum_by(o, |x| (x - mean) * (x - mean)) / n;
    let inv = 1.0 / (var + eps).sqrt();
    for ((o, &w), &b) in o.iter_mut().zip(w).zip(b) {
        *o = (*o - mean) * inv * w + b;
    }
}

/// A kernel filling whole rows of its output; `fill` must be `#[inline(always)]` so that it
/// is compiled inside pulp's vector context.
trait Rows: Sync {
    /// Elements per row.
    fn row(&self) -> usize;
    /// Fills `out`, the output's elements from `start` on (whole rows).
    fn fill(&self, start: usize, out: &mut [f32]);
}

struct Vectorized<'a, K>(&'a K, usize, &'a mut [f32]);

impl<K: Rows> pulp::WithSimd for Vectorized<'_, K> {
    type Output = ();

    #[inline(always)]
    fn with_simd<S: pulp::Simd>(self, _: S) {
        self.0.fill(self.1, self.2);
    }
}

/// Runs `f` compiled for the CPU's widest vectors (pulp's dispatch: AVX-512 or AVX2 where the
/// build's baseline is SSE2), so that its loops and the `#[inline(always)]` helpers they call
/// vectorize. The width changes no result: nothing is reassociated or fused.
///
/// `f` must be marked `#[inline(always)]` where it is written (`simd(#[inline(always)] || …)`):
/// a closure is a function of its own, compiled for the baseline, unless it is inlined into
/// pulp's wide-vector function, and LLVM does not inline a closure that big by itself (the
/// training kernels ran as SSE2 code, four lanes, until they were marked).
#[inline(always)]
pub(crate) fn simd<R>(f: impl FnOnce() -> R) -> R {
    pulp::Arch::new().dispatch(f)
}

/// `f(start, chunk)` over `out` in chunks of `size` elements on rayon's threads, each chunk
/// through [`simd`] (`f` marked `#[inline(always)]`, as there).
pub(crate) fn par_simd(out: &mut [f32], size: usize, f: impl Fn(usize, &mut [f32]) + Sync) {
    let size = size.max(1);
    out.par_chunks_mut(size).enumerate().for_each(|(c, o)| {
        simd(
            #[inline(always)]
            || f(c * size, o),
        );
    });
}

/// Runs kernel `k` over `data` in place, in chunks of whole rows, on rayon's global pool:
/// the one candle's matrix products (gemm) run on, so the two share the cores (on candle's
/// own barrier pool, whose idle workers spin, evaluation was 10–20% slower).
fn in_place<K: Rows>(data: &mut [f32], k: &K) {
    let row = k.row().max(1);
    let size = (CHUNK / row).max(1) * row;
    data.par_chunks_mut(size).enumerate().for_each(|(c, o)| {
        pulp::Arch::new().dispatch(Vectorized(k, c * size, o));
    });
}

/// [`in_place`] into a new output of `len` elements.
fn run<K: Rows>(len: usize, k: &K) -> Vec<f32> {
    let mut out = vec![0f32; len];
    in_place(&mut out, k);
    out
}

/// The values of a contiguous f32 CPU storage, mutable (an error naming `op` otherwise).
pub(crate) fn contiguous_mut<'a>(
    s: &'a mut CpuStorage,
    l: &Layout,
    op: &str,
) -> candle_core::Result<&'a mut [f32]> {
    let CpuStorage::F32(v) = s else {
        candle_core::bail!("{op}: f32 only")
    };
    let Some((a, b)) = l.contiguous_offsets() else {
        candle_core::bail!("{op}: contiguous input only")
    };
    Ok(&mut v[a..b])
}

/// The values of a contiguous f32 CPU storage (an error naming `op` otherwise).
pub(crate) fn contiguous_f32<'a>(
    s: &'a CpuStorage,
    l: &Layout,
    op: &str,
) -> candle_core::Result<&'a [f32]> {
    let CpuStorage::F32(v) = s else {
        candle_core::bail!("{op}: f32 only")
    };
    let Some((a, b)) = l.contiguous_offsets() else {
        candle_core::bail!("{op}: contiguous input only")
    };
    Ok(&v[a..b])
}

/// `GELU(x + bias)` over rows of `bias.len()` (no bias: plain GELU).
struct Gelu<'a> {
    bias: Option<&'a [f32]>,
}

struct GeluRows<'a> {
    /// The input, or `None` when the output already holds it (in place).
    x: Option<&'a [f32]>,
    bias: Option<&'a [f32]>,
}

impl Rows for GeluRows<'_> {
    fn row(&self) -> usize {
        self.bias.map_or(1, <[f32]>::len)
    }

    #[inline(always)]
    fn fill(&self, start: usize, out: &mut [f32]) {
        if let Some(x) = self.x {
            out.copy_from_slice(&x[start..start + out.len()]);
        }
        match self.bias {
            Some(bias) => {
                for o in out.chunks_exact_mut(bias.len()) {
                    for (o, &b) in o.iter_mut().zip(bias) {
                        *o = gelu1(*o + b);
                    }
                }
            }
            None => {
                for o in out.iter_mut() {
                    *o = gelu1(*o);
                }
            }
        }
    }
}

impl Gelu<'_> {
    fn check(&self, l: &Layout) -> candle_core::Result<()> {
        if let Some(b) = self.bias
            && l.dims().last() != Some(&b.len())
        {
            candle_core::bail!("bias-gelu over {:?} with {} biases", l.dims(), b.len());
        }
        Ok(())
    }
}

impl CustomOp1 for Gelu<'_> {
    fn name(&self) -> &'static str {
        "crossmerge-gelu"
    }

    fn cpu_fwd(&self, s: &CpuStorage, l: &Layout) -> candle_core::Result<(CpuStorage, Shape)> {
        let x = contiguous_f32(s, l, CustomOp1::name(self))?;
        self.check(l)?;
        let k = GeluRows {
            x: Some(x),
            bias: self.bias,
        };
        Ok((CpuStorage::F32(run(x.len(), &k)), l.shape().clone()))
    }
}

impl InplaceOp1 for Gelu<'_> {
    fn name(&self) -> &'static str {
        "crossmerge-bias-gelu"
    }

    fn cpu_fwd(&self, s: &mut CpuStorage, l: &Layout) -> candle_core::Result<()> {
        self.check(l)?;
        let data = contiguous_mut(s, l, InplaceOp1::name(self))?;
        in_place(
            data,
            &GeluRows {
                x: None,
                bias: self.bias,
            },
        );
        Ok(())
    }
}

/// `LayerNorm(y [+ bias + residual])` over rows.
struct Norm<'a> {
    weights: &'a NormWeights,
    eps: f32,
    bias: Option<&'a [f32]>,
}

struct NormRows<'a> {
    /// The input, or `None` when the output already holds it (in place).
    y: Option<&'a [f32]>,
    add: Option<(&'a [f32], &'a [f32])>,
    norm: &'a NormWeights,
    eps: f32,
}

impl Rows for NormRows<'_> {
    fn row(&self) -> usize {
        self.norm.w.len()
    }

    #[inline(always)]
    fn fill(&self, start: usize, out: &mut [f32]) {
        let n = self.norm.w.len();
        if let Some(y) = self.y {
            out.copy_from_slice(&y[start..start + out.len()]);
        }
        let (w, b) = (self.norm.w.as_slice(), self.norm.b.as_slice());
        match self.add {
            Some((bias, residual)) => {
                let r = &residual[start..start + out.len()];
                for (o, r) in out.chunks_exact_mut(n).zip(r.chunks_exact(n)) {
                    for ((o, &r), &bias) in o.iter_mut().zip(r).zip(bias) {
                        *o += bias + r;
                    }
                    normalize(o, w, b, self.eps);
                }
            }
            None => {
                for o in out.chunks_exact_mut(n) {
                    normalize(o, w, b, self.eps);
                }
            }
        }
    }
}

impl Norm<'_> {
    fn check(&self, l: &Layout) -> candle_core::Result<()> {
        let n = self.weights.w.len();
        if l.dims().last() != Some(&n) || self.bias.is_some_and(|b| b.len() != n) {
            candle_core::bail!("layer norm over {:?} with {n} weights", l.dims());
        }
        Ok(())
    }
}

impl CustomOp1 for Norm<'_> {
    fn name(&self) -> &'static str {
        "crossmerge-layer-norm"
    }

    fn cpu_fwd(&self, s: &CpuStorage, l: &Layout) -> candle_core::Result<(CpuStorage, Shape)> {
        let y = contiguous_f32(s, l, CustomOp1::name(self))?;
        self.check(l)?;
        let k = NormRows {
            y: Some(y),
            add: None,
            norm: self.weights,
            eps: self.eps,
        };
        Ok((CpuStorage::F32(run(y.len(), &k)), l.shape().clone()))
    }
}

impl InplaceOp2 for Norm<'_> {
    fn name(&self) -> &'static str {
        "crossmerge-bias-residual-norm"
    }

    fn cpu_fwd(
        &self,
        s1: &mut CpuStorage,
        l1: &Layout,
        s2: &CpuStorage,
        l2: &Layout,
    ) -> candle_core::Result<()> {
        self.check(l1)?;
        let residual = contiguous_f32(s2, l2, InplaceOp2::name(self))?;
        let y = contiguous_mut(s1, l1, InplaceOp2::name(self))?;
        let (Some(bias), true) = (self.bias, y.len() == residual.len()) else {
            candle_core::bail!("bias-residual-norm: {:?} + {:?}", l1.dims(), l2.dims());
        };
        let k = NormRows {
            y: None,
            add: Some((bias, residual)),
            norm: self.weights,
            eps: self.eps,
        };
        in_place(y, &k);
        Ok(())
    }
}

/// Self-attention of one layer from its stacked projections `(b·t, 3H)` (biases not yet
/// added): the biases added in one pass, then per sequence and head `softmax(q·kᵀ/√d +
/// mask)·v` as gemm's matrix products, written straight into the merged-heads layout
/// `(b·t, H)` ([`grad::attend`], training's forward pass without dropout).
struct Attention<'a> {
    bias: &'a [f32],
    mask: &'a [f32],
    b: usize,
    t: usize,
    heads: usize,
    scale: f32,
}

/// `Σ aᵢ·bᵢ` in eight partial sums (vectorizes).
#[inline(always)]
fn dot(a: &[f32], b: &[f32]) -> f32 {
    let mut acc = [0f32; 8];
    let (ca, cb) = (a.chunks_exact(8), b.chunks_exact(8));
    let tail: f32 = ca
        .remainder()
        .iter()
        .zip(cb.remainder())
        .map(|(x, y)| x * y)
        .sum();
    for (x, y) in ca.zip(cb) {
        for ((a, &x), &y) in acc.iter_mut().zip(x).zip(y) {
            *a += x * y;
        }
    }
    acc.iter().sum::<f32>() + tail
}

impl CustomOp1 for Attention<'_> {
    fn name(&self) -> &'static str {
        "crossmerge-attention"
    }

    fn cpu_fwd(&self, s: &CpuStorage, l: &Layout) -> candle_core::Result<(CpuStorage, Shape)> {
        let x = contiguous_f32(s, l, self.name())?;
        let (b, t, heads) = (self.b, self.t, self.heads);
        let h = self.bias.len() / 3;
        if x.len() != b * t * 3 * h
            || heads == 0
            || !h.is_multiple_of(heads)
            || self.bias.len() != 3 * h
            || self.mask.len() != b * t
        {
            candle_core::bail!("attention over {:?} with {heads} heads", l.dims());
        }
        // The rows with their biases, in one pass.
        let mut rows = vec![0f32; x.len()];
        par_simd(
            &mut rows,
            (CHUNK / (3 * h)).max(1) * 3 * h,
            #[inline(always)]
            |start, rows| {
                for (row, src) in rows
                    .chunks_exact_mut(3 * h)
                    .zip(x[start..].chunks_exact(3 * h))
                {
                    for ((o, &v), &b) in row.iter_mut().zip(src).zip(self.bias) {
                        *o = v + b;
                    }
                }
            },
        );
        let out = grad::attend(&rows, self.mask, (t, heads), self.scale)?;
        Ok((CpuStorage::F32(out), Shape::from((b * t, h))))
    }
}

/// Self-attention from the stacked query/key/value projections `(b·t, 3H)` without their
/// biases, with the additive key mask `(b·t)`: the context `(b·t, H)`, heads merged (CPU,
/// f32).
pub fn attention(
    qkv: &Tensor,
    bias: &[f32],
    mask: &[f32],
    (b, t, heads): (usize, usize, usize),
    scale: f64,
) -> candle_core::Result<Tensor> {
    qkv.contiguous()?.apply_op1_no_bwd(&Attention {
        bias,
        mask,
        b,
        t,
        heads,
        scale: scale as f32,
    })
}

/// Whether `x` can take the fused kernels (f32 on the CPU, not part of an autograd graph).
pub fn fused(x: &Tensor) -> bool {
    // The fused kernels record no backward pass: a tensor in an autograd graph (a training
    // variable, or computed from one) takes candle's differentiable ops instead.
    x.device().is_cpu() && x.dtype() == DType::F32 && !x.track_op()
}

/// GELU (erf form): fused on the CPU, candle's `gelu_erf` elsewhere.
pub fn gelu(x: &Tensor) -> candle_core::Result<Tensor> {
    if fused(x) {
        x.contiguous()?.apply_op1_no_bwd(&Gelu { bias: None })
    } else if grad::applies(x) {
        grad::gelu(x)
    } else {
        x.gelu_erf()
    }
}

/// `GELU(y + bias)` over the last dimension, in place (CPU, f32): `y` must be a fresh
/// result no other tensor shares (a matrix product's output).
#[allow(clippy::needless_pass_by_value)] // by value: it is overwritten in place
pub fn bias_gelu(y: Tensor, bias: &[f32]) -> candle_core::Result<Tensor> {
    let y = y.contiguous()?;
    y.inplace_op1(&Gelu { bias: Some(bias) })?;
    Ok(y)
}

/// `LayerNorm(y + bias + residual)` over the last dimension, in place in `y` (CPU, f32): `y`
/// must be a fresh result no other tensor shares.
#[allow(clippy::needless_pass_by_value)] // by value: `y` is overwritten in place
pub fn bias_residual_norm(
    y: Tensor,
    bias: &[f32],
    residual: &Tensor,
    norm: &NormWeights,
    eps: f64,
) -> candle_core::Result<Tensor> {
    let y = y.contiguous()?;
    y.inplace_op2(
        &residual.contiguous()?,
        &Norm {
            weights: norm,
            eps: eps as f32,
            bias: Some(bias),
        },
    )?;
    Ok(y)
}

/// The weights of a LayerNorm, kept as host vectors for the fused kernels.
pub struct NormWeights {
    w: Vec<f32>,
    b: Vec<f32>,
}

impl NormWeights {
    /// `None` unless both are f32 on the CPU.
    pub fn new(w: &Tensor, b: &Tensor) -> candle_core::Result<Option<Self>> {
        if !(fused(w) && fused(b)) {
            return Ok(None);
        }
        Ok(Some(Self {
            w: w.flatten_all()?.to_vec1()?,
            b: b.flatten_all()?.to_vec1()?,
        }))
    }

    /// LayerNorm over the last dimension: `(x − mean)/√(var + eps)·w + b`, biased variance, as
    /// torch computes it.
    pub fn forward(&self, x: &Tensor, eps: f64) -> candle_core::Result<Tensor> {
        x.contiguous()?.apply_op1_no_bwd(&Norm {
            weights: self,
            eps: eps as f32,
            bias: None,
        })
    }
}

#[cfg(test)]
mod tests {
    use candle_core::{D, Device};

    use super::*;

    fn grid() -> Vec<f32> {
        (-4000..=4000).map(|i| i as f32 * 0.0025).collect()
    }

    fn max_diff(a: &Tensor, b: &Tensor) -> f32 {
        (a - b)
            .unwrap()
            .abs()
            .unwrap()
            .flatten_all()
            .unwrap()
            .max(0)
            .unwrap()
            .to_scalar()
            .unwrap()
    }

    fn wave(shape: &[usize], step: f32) -> Tensor {
        let n: usize = shape.iter().product();
        (Tensor::arange(0f32, n as f32, &Device::Cpu).unwrap() * f64::from(step))
            .unwrap()
            .sin()
            .unwrap()
            .reshape(shape)
            .unwrap()
    }

    #[test]
    fn exp_and_gelu_match_the_exact_functions() {
        for x in grid().into_iter().map(|x| x * 8.0) {
            let (got, want) = (f64::from(exp(x)), f64::from(x).exp());
            assert!(
                ((got - want) / want).abs() < 4e-7,
                "exp({x}) = {got}, want {want}"
            );
        }
        assert!(exp(-100.0) == 0.0 && exp(f32::MIN) == 0.0);
        let xs = grid();
        let t = Tensor::new(xs.as_slice(), &Device::Cpu).unwrap();
        let fast: Vec<f32> = gelu(&t).unwrap().to_vec1().unwrap();
        let exact: Vec<f32> = t.gelu_erf().unwrap().to_vec1().unwrap();
        for ((x, a), b) in xs.iter().zip(fast).zip(exact) {
            assert!(
                (a - b).abs() <= 1e-6 * (1.0 + b.abs()),
                "gelu({x}) = {a}, want {b}"
            );
        }
    }

    #[test]
    fn fused_steps_match_plain_ops() {
        let (b, t, heads, h) = (3, 7, 4, 32);
        let y = wave(&[b * t, h], 0.37);
        let bias_t = wave(&[h], 0.11);
        let bias: Vec<f32> = bias_t.to_vec1().unwrap();
        // bias + GELU
        let plain = y.broadcast_add(&bias_t).unwrap().gelu_erf().unwrap();
        assert!(max_diff(&bias_gelu(y.copy().unwrap(), &bias).unwrap(), &plain) < 1e-6);
        // bias + residual + LayerNorm
        let residual = wave(&[b * t, h], 0.73);
        let (w, nb) = (wave(&[h], 0.05), wave(&[h], 0.02));
        let norm = NormWeights::new(&w, &nb).unwrap().unwrap();
        let z = (y.broadcast_add(&bias_t).unwrap() + &residual).unwrap();
        let mean = z.mean_keepdim(D::Minus1).unwrap();
        let c = z.broadcast_sub(&mean).unwrap();
        let var = c.sqr().unwrap().mean_keepdim(D::Minus1).unwrap();
        let plain = c
            .broadcast_div(&(var + 1e-12).unwrap().sqrt().unwrap())
            .unwrap()
            .broadcast_mul(&w)
            .unwrap()
            .broadcast_add(&nb)
            .unwrap();
        let fused = bias_residual_norm(y.copy().unwrap(), &bias, &residual, &norm, 1e-12).unwrap();
        assert!(max_diff(&fused, &plain) < 1e-5);
        // attention: stacked projections + biases → merged-heads context, padding keys masked
        let qkv = wave(&[b * t, 3 * h], 0.3);
        let bias3 = wave(&[3 * h], 0.13);
        let mut mask = vec![0f32; b * t];
        mask[t - 2..t].fill(f32::MIN);
        let d = h / heads;
        let fused = attention(
            &qkv,
            &bias3.to_vec1::<f32>().unwrap(),
            &mask,
            (b, t, heads),
            0.25,
        )
        .unwrap();
        let biased = qkv.broadcast_add(&bias3).unwrap();
        let part = |i: usize| {
            biased
                .narrow(1, i * h, h)
                .unwrap()
                .reshape((b, t, heads, d))
                .unwrap()
                .transpose(1, 2)
                .unwrap()
                .contiguous()
                .unwrap()
        };
        let m = Tensor::from_vec(mask, (b, 1, 1, t), &Device::Cpu).unwrap();
        let scores = ((part(0).matmul(&part(1).t().unwrap()).unwrap()) * 0.25)
            .unwrap()
            .broadcast_add(&m)
            .unwrap();
        let e = scores
            .broadcast_sub(&scores.max_keepdim(D::Minus1).unwrap())
            .unwrap()
            .exp()
            .unwrap();
        let p = e.broadcast_div(&e.sum_keepdim(D::Minus1).unwrap()).unwrap();
        let plain = p
            .matmul(&part(2))
            .unwrap()
            .transpose(1, 2)
            .unwrap()
            .reshape((b * t, h))
            .unwrap();
        assert!(
            max_diff(&fused, &plain) < 1e-5,
            "{}",
            max_diff(&fused, &plain)
        );
        // the masked keys' weights are exactly 0: changing their values changes nothing
        let mut other: Vec<f32> = qkv.flatten_all().unwrap().to_vec1().unwrap();
        for v in &mut other[(t - 2) * 3 * h..t * 3 * h] {
            *v += 100.0;
        }
        let other = Tensor::from_vec(other, (b * t, 3 * h), &Device::Cpu).unwrap();
        let mut mask = vec![0f32; b * t];
        mask[t - 2..t].fill(f32::MIN);
        let moved = attention(
            &other,
            &bias3.to_vec1::<f32>().unwrap(),
            &mask,
            (b, t, heads),
            0.25,
        )
        .unwrap();
        let first = |x: &Tensor| -> Vec<f32> {
            x.narrow(0, 0, t - 2)
                .unwrap()
                .flatten_all()
                .unwrap()
                .to_vec1()
                .unwrap()
        };
        assert_eq!(first(&moved), first(&fused));
        // plain LayerNorm
        let plain_norm = {
            let mean = y.mean_keepdim(D::Minus1).unwrap();
            let c = y.broadcast_sub(&mean).unwrap();
            let var = c.sqr().unwrap().mean_keepdim(D::Minus1).unwrap();
            c.broadcast_div(&(var + 1e-5).unwrap().sqrt().unwrap())
                .unwrap()
                .broadcast_mul(&w)
                .unwrap()
                .broadcast_add(&nb)
                .unwrap()
        };
        assert!(max_diff(&norm.forward(&y, 1e-5).unwrap(), &plain_norm) < 1e-5);
    }
}
