//! CPU kernels with backward passes, for training: GELU (erf), LayerNorm and the attention
//! softmax (scale, additive mask, softmax) as one op each, forward and backward one pass over
//! rows on rayon's threads, instead of candle's chains of element-wise ops (and their
//! backward chains, several single-threaded or on candle's spinning barrier pool).
//!
//! The formulas are torch's: GELU′(x) = Φ(x) + x·φ(x); LayerNorm's input gradient
//! `inv·(g − mean(g) − x̂·mean(g·x̂))` with g = dy·w, weight and bias gradients summed over
//! rows; softmax's `dS = scale·P·(dP − Σ P·dP)`. Sums over rows go in fixed chunks combined in
//! order, so results do not depend on the thread count. Inputs must be contiguous f32 on the
//! CPU ([`applies`]); callers use candle's ops elsewhere.

use candle_core::{CpuStorage, CustomOp1, CustomOp2, CustomOp3, DType, Layout, Shape, Tensor};
use rayon::prelude::*;

use super::{contiguous_f32, erfc_pos, exp, sum_by};

/// Rows per parallel task of the reductions over rows (fixed: the sums' order must not depend
/// on the threads).
const ROWS: usize = 64;

/// Whether the kernels here take `x`: f32 on the CPU.
pub fn applies(x: &Tensor) -> bool {
    x.device().is_cpu() && x.dtype() == DType::F32
}

fn host(t: &Tensor) -> candle_core::Result<Vec<f32>> {
    t.contiguous()?.flatten_all()?.to_vec1()
}

// ---------------------------------------------------------------------------------------------
// GELU

/// Φ(x), the standard normal CDF, from the same `erfc` as the fused GELU.
#[inline]
fn cdf(x: f32) -> f32 {
    let y = erfc_pos(x.abs() * std::f32::consts::FRAC_1_SQRT_2);
    if x >= 0.0 { 1.0 - 0.5 * y } else { 0.5 * y }
}

struct Gelu;
struct GeluGrad;

impl CustomOp1 for Gelu {
    fn name(&self) -> &'static str {
        "gelu-erf-grad"
    }

    fn cpu_fwd(&self, s: &CpuStorage, l: &Layout) -> candle_core::Result<(CpuStorage, Shape)> {
        let x = contiguous_f32(s, l, "gelu")?;
        let out: Vec<f32> = x
            .par_iter()
            .with_min_len(4096)
            .map(|&v| v * cdf(v))
            .collect();
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
        let inv_sqrt_2pi = 0.398_942_3_f32;
        let out: Vec<f32> = x
            .par_iter()
            .zip(dy.par_iter())
            .with_min_len(4096)
            .map(|(&v, &g)| g * (cdf(v) + v * inv_sqrt_2pi * exp(-0.5 * v * v)))
            .collect();
        Ok((CpuStorage::F32(out), l1.shape().clone()))
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
#[inline]
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
        out.par_chunks_mut(h)
            .zip(x.par_chunks(h))
            .with_min_len(16)
            .for_each(|(o, x)| {
                let (mean, inv) = moments(x, self.eps);
                for (((o, &x), &w), &b) in o.iter_mut().zip(x).zip(w).zip(b) {
                    *o = (x - mean) * inv * w + b;
                }
            });
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
        let (xs, ws, dy) = (host(x)?, host(w)?, host(grad)?);
        let h = ws.len();
        let mut dx = vec![0f32; xs.len()];
        // Per chunk of rows: dx for its rows, and its partial Σ dy·x̂ and Σ dy.
        let partials: Vec<(Vec<f32>, Vec<f32>)> = dx
            .par_chunks_mut(h * ROWS)
            .zip(xs.par_chunks(h * ROWS))
            .zip(dy.par_chunks(h * ROWS))
            .map(|((dx, x), dy)| {
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
// Attention softmax

/// `softmax(scores·scale + mask)` over the last dimension of `(b, heads, t, t)` scores, the
/// additive mask `(b, t)` broadcast over heads and queries.
struct Softmax {
    scale: f32,
    mask: std::sync::Arc<Vec<f32>>,
    heads: usize,
}

struct SoftmaxGrad {
    scale: f32,
}

impl CustomOp1 for Softmax {
    fn name(&self) -> &'static str {
        "attention-softmax-grad"
    }

    fn cpu_fwd(&self, s: &CpuStorage, l: &Layout) -> candle_core::Result<(CpuStorage, Shape)> {
        let x = contiguous_f32(s, l, "attention softmax")?;
        let t = l.dims()[l.dims().len() - 1];
        let per_sequence = self.heads * t * t;
        let mut out = vec![0f32; x.len()];
        out.par_chunks_mut(t)
            .zip(x.par_chunks(t))
            .enumerate()
            .with_min_len(32)
            .for_each(|(r, (o, x))| {
                let mask = &self.mask[(r * t / per_sequence) * t..][..t];
                let mut max = f32::MIN;
                for ((o, &x), &m) in o.iter_mut().zip(x).zip(mask) {
                    *o = x * self.scale + m;
                    max = max.max(*o);
                }
                let mut sum = 0f32;
                for o in o.iter_mut() {
                    *o = exp(*o - max);
                    sum += *o;
                }
                let inv = 1.0 / sum;
                for o in o.iter_mut() {
                    *o *= inv;
                }
            });
        Ok((CpuStorage::F32(out), l.shape().clone()))
    }

    fn bwd(
        &self,
        _arg: &Tensor,
        res: &Tensor,
        grad: &Tensor,
    ) -> candle_core::Result<Option<Tensor>> {
        let g = res.apply_op2_no_bwd(&grad.contiguous()?, &SoftmaxGrad { scale: self.scale })?;
        Ok(Some(g))
    }
}

impl CustomOp2 for SoftmaxGrad {
    fn name(&self) -> &'static str {
        "attention-softmax-backward"
    }

    fn cpu_fwd(
        &self,
        s1: &CpuStorage,
        l1: &Layout,
        s2: &CpuStorage,
        l2: &Layout,
    ) -> candle_core::Result<(CpuStorage, Shape)> {
        let p = contiguous_f32(s1, l1, "softmax backward")?;
        let dp = contiguous_f32(s2, l2, "softmax backward")?;
        let t = l1.dims()[l1.dims().len() - 1];
        let mut out = vec![0f32; p.len()];
        out.par_chunks_mut(t)
            .zip(p.par_chunks(t).zip(dp.par_chunks(t)))
            .with_min_len(32)
            .for_each(|(o, (p, dp))| {
                let dot: f32 = p.iter().zip(dp).map(|(&p, &d)| p * d).sum();
                for ((o, &p), &d) in o.iter_mut().zip(p).zip(dp) {
                    *o = self.scale * p * (d - dot);
                }
            });
        Ok((CpuStorage::F32(out), l1.shape().clone()))
    }
}

/// `softmax(scores·scale + mask)` over the last dimension of `(b, heads, t, t)` scores with
/// `mask` `(b·t)` additive per key, with a backward pass for the scores.
pub fn attention_softmax(
    scores: &Tensor,
    scale: f64,
    mask: std::sync::Arc<Vec<f32>>,
    heads: usize,
) -> candle_core::Result<Tensor> {
    scores.contiguous()?.apply_op1(Softmax {
        scale: scale as f32,
        mask,
        heads,
    })
}

#[cfg(test)]
mod tests {
    use candle_core::{D, Device, Tensor, Var};

    use super::{attention_softmax, gelu, layer_norm};

    fn random(shape: &[usize], seed: u64) -> Vec<f32> {
        let n: usize = shape.iter().product();
        (0..n as u64)
            .map(|i| (crate::rng::unit(crate::rng::mix(seed ^ i)) as f32 - 0.5) * 3.0)
            .collect()
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
        let g1 = (&ours * &w).unwrap().sum_all().unwrap().backward().unwrap();
        let g2 = (&plain * &w)
            .unwrap()
            .sum_all()
            .unwrap()
            .backward()
            .unwrap();
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
        let g1 = (&ours * &up)
            .unwrap()
            .sum_all()
            .unwrap()
            .backward()
            .unwrap();
        let g2 = (&plain * &up)
            .unwrap()
            .sum_all()
            .unwrap()
            .backward()
            .unwrap();
        for (v, what) in [(&x, "x"), (&lw, "w"), (&lb, "b")] {
            close(
                g1.get(v.as_tensor()).unwrap(),
                g2.get(v.as_tensor()).unwrap(),
                &format!("layer norm grad {what}"),
            );
        }

        // Attention softmax: 2 sequences, 3 heads, 4 positions, the last key of the second
        // sequence masked.
        let (b, h, t) = (2, 3, 4);
        let s = Var::from_vec(random(&[b, h, t, t], 7), (b, h, t, t), &dev).unwrap();
        let mut mask = vec![0f32; b * t];
        mask[b * t - 1] = f32::MIN;
        let up = Tensor::from_vec(random(&[b, h, t, t], 8), (b, h, t, t), &dev).unwrap();
        let ours =
            attention_softmax(s.as_tensor(), 0.5, std::sync::Arc::new(mask.clone()), h).unwrap();
        let plain = {
            let m = Tensor::from_vec(mask, (b, 1, 1, t), &dev).unwrap();
            let z = (s.as_tensor() * 0.5).unwrap().broadcast_add(&m).unwrap();
            let max = z.max_keepdim(D::Minus1).unwrap();
            let e = z.broadcast_sub(&max).unwrap().exp().unwrap();
            e.broadcast_div(&e.sum_keepdim(D::Minus1).unwrap()).unwrap()
        };
        close(&ours, &plain, "softmax");
        let g1 = (&ours * &up)
            .unwrap()
            .sum_all()
            .unwrap()
            .backward()
            .unwrap();
        let g2 = (&plain * &up)
            .unwrap()
            .sum_all()
            .unwrap()
            .backward()
            .unwrap();
        close(
            g1.get(s.as_tensor()).unwrap(),
            g2.get(s.as_tensor()).unwrap(),
            "softmax grad",
        );
    }
}
