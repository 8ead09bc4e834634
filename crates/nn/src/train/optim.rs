//! The optimizer step of transformers' `Trainer`, on candle variables: clip the gradients'
//! global L2 norm ([`clip_grad_norm`], as `torch.nn.utils.clip_grad_norm_`), then `AdamW`
//! ([`AdamW`], as `torch.optim.AdamW`: decoupled weight decay, bias-corrected moments) at the
//! learning rate of the linear warm-up and decay schedule ([`LinearSchedule`], as
//! `transformers.get_linear_schedule_with_warmup`). Weight decay skips biases and LayerNorm
//! weights ([`decays`], as `Trainer.get_decay_parameter_names`).
//!
//! Every operation follows torch's order (`_single_tensor_adamw`): `p ← p·(1 − lr·wd)`,
//! `m ← lerp(m, g, 1 − β₁)`, `v ← v·β₂ + (1 − β₂)·g²`, then
//! `p ← p − (lr / (1 − β₁ᵗ)) · m / (√v / √(1 − β₂ᵗ) + ε)`, in f32 like the parameters.
//! `tests/fixtures/train/adamw.json` (from `scripts/reference/adamw_steps.py`) pins it against
//! torch.

use candle_core::{CpuStorage, DType, Layout, Tensor, Var};
use rayon::prelude::*;

use crate::error::{Error, Result};
use crate::kernels::{contiguous_f32, contiguous_mut, par_simd};

/// Elements per parallel task of the in-place updates.
const CHUNK: usize = 1 << 15;

fn candle(e: &candle_core::Error) -> Error {
    Error::invalid(
        format!("optimizer computation: {e}"),
        "report this with the training settings",
    )
}

/// Whether transformers' `Trainer` applies weight decay to a parameter of this name: not to
/// biases, not to LayerNorm weights.
pub fn decays(name: &str) -> bool {
    !(name.contains("bias") || name.contains("LayerNorm") || name.contains("layer_norm"))
}

/// `AdamW`'s settings (transformers' defaults but the learning rate and weight decay, which a
/// run names).
#[derive(Clone, Debug, PartialEq)]
pub struct AdamWConfig {
    pub lr: f64,
    pub beta1: f64,
    pub beta2: f64,
    pub eps: f64,
    pub weight_decay: f64,
}

impl AdamWConfig {
    pub fn new(lr: f64, weight_decay: f64) -> Self {
        Self {
            lr,
            beta1: 0.9,
            beta2: 0.999,
            eps: 1e-8,
            weight_decay,
        }
    }
}

/// `get_linear_schedule_with_warmup`: the learning rate rises linearly from 0 over
/// `warmup_steps`, then falls linearly to 0 at `total_steps`.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct LinearSchedule {
    pub warmup_steps: u64,
    pub total_steps: u64,
}

impl LinearSchedule {
    /// The factor of the base learning rate at optimizer step `step` (0 for the first).
    pub fn factor(&self, step: u64) -> f64 {
        if step < self.warmup_steps {
            return step as f64 / self.warmup_steps.max(1) as f64;
        }
        let left = self.total_steps.saturating_sub(step) as f64;
        (left / self.total_steps.saturating_sub(self.warmup_steps).max(1) as f64).max(0.0)
    }
}

/// The global L2 norm of `grads` and torch's `clip_grad_norm_` coefficient for it:
/// `max_norm / (norm + 1e-6)`, capped at 1. [`AdamW::step`] applies the coefficient as it
/// reads each gradient (no scaled copy of every gradient). Absent gradients (parameters the
/// loss does not reach) are skipped.
pub fn grad_norm(grads: &[Option<Tensor>], max_norm: f64) -> Result<(f64, f32)> {
    let mut total = 0f64;
    for g in grads.iter().flatten() {
        total += squares(g)?;
    }
    let norm = total.sqrt() as f32;
    let coef = (max_norm as f32 / (norm + 1e-6)).min(1.0);
    Ok((f64::from(norm), coef))
}

/// Σ x² of a tensor in f64, read in place on the CPU: chunks of [`CHUNK`] elements summed on
/// rayon's threads, the chunks' sums added in chunk order (the same bits whatever the thread
/// count); a plain reduction elsewhere.
fn squares(g: &Tensor) -> Result<f64> {
    let chunked = |x: &[f32]| -> f64 {
        let sums: Vec<f64> = x
            .par_chunks(CHUNK)
            .map(|c| c.iter().map(|&v| f64::from(v) * f64::from(v)).sum())
            .collect();
        sums.iter().sum()
    };
    if let Some(sum) = with_host_f32(g, chunked) {
        return Ok(sum);
    }
    let n = g
        .to_dtype(DType::F32)
        .and_then(|g| g.sqr())
        .and_then(|g| g.sum_all())
        .and_then(|s| s.to_scalar::<f32>())
        .map_err(|e| candle(&e))?;
    Ok(f64::from(n))
}

/// Runs `f` on a contiguous f32 CPU tensor's values, without copying them.
fn with_host_f32<T>(t: &Tensor, f: impl FnOnce(&[f32]) -> T) -> Option<T> {
    let (storage, layout) = t.storage_and_layout();
    let (start, end) = layout.contiguous_offsets()?;
    match &*storage {
        candle_core::Storage::Cpu(CpuStorage::F32(v)) => Some(f(&v[start..end])),
        _ => None,
    }
}

/// Scales `grads` in place so that their global L2 norm is at most `max_norm` (torch's
/// `clip_grad_norm_`); returns the norm before clipping. (The training loop folds the
/// coefficient into [`AdamW::step_scaled`] instead: [`grad_norm`].)
pub fn clip_grad_norm(grads: &mut [Option<Tensor>], max_norm: f64) -> Result<f64> {
    let (norm, coef) = grad_norm(grads, max_norm)?;
    for g in grads.iter_mut().flatten() {
        *g = g.affine(f64::from(coef), 0.0).map_err(|e| candle(&e))?;
    }
    Ok(norm)
}

struct Slot {
    var: Var,
    decay: bool,
    m: Tensor,
    v: Tensor,
}

/// `AdamW` over named variables (see the module docs).
pub struct AdamW {
    config: AdamWConfig,
    slots: Vec<Slot>,
    step: u64,
}

impl AdamW {
    /// Moments start at zero; weight decay follows [`decays`] by name.
    pub fn new(params: Vec<(String, Var)>, config: AdamWConfig) -> Result<Self> {
        let slots = params
            .into_iter()
            .map(|(name, var)| {
                // Two buffers: the moments are updated in place.
                let zeros = || var.as_tensor().zeros_like().map_err(|e| candle(&e));
                Ok(Slot {
                    decay: decays(&name),
                    m: zeros()?,
                    v: zeros()?,
                    var,
                })
            })
            .collect::<Result<_>>()?;
        Ok(Self {
            config,
            slots,
            step: 0,
        })
    }

    /// Optimizer steps taken so far.
    pub fn steps(&self) -> u64 {
        self.step
    }

    /// The first and second moments, in parameter order (saved with the training state).
    pub fn moments(&self) -> impl Iterator<Item = (&Tensor, &Tensor)> {
        self.slots.iter().map(|s| (&s.m, &s.v))
    }

    /// Restores a saved state: the step count and the moments in parameter order.
    pub fn restore(&mut self, step: u64, moments: Vec<(Tensor, Tensor)>) -> Result<()> {
        if moments.len() != self.slots.len() {
            return Err(Error::invalid(
                format!(
                    "the saved optimizer state has {} parameters, the model {}",
                    moments.len(),
                    self.slots.len()
                ),
                "resume with the settings the run started with",
            ));
        }
        for (slot, (m, v)) in self.slots.iter_mut().zip(moments) {
            if m.shape() != slot.m.shape() || v.shape() != slot.v.shape() {
                return Err(Error::invalid(
                    "the saved optimizer state does not fit the model's shapes",
                    "resume with the settings the run started with",
                ));
            }
            slot.m = m;
            slot.v = v;
        }
        self.step = step;
        Ok(())
    }

    /// One step at learning rate `lr` with `grads` in the order the parameters were given;
    /// a parameter without a gradient is left as it is (its moments too), as torch does.
    pub fn step(&mut self, grads: &[Option<Tensor>], lr: f64) -> Result<()> {
        self.step_scaled(grads, 1.0, lr)
    }

    #[allow(clippy::many_single_char_names)] // the update's names: p, g, m, v, c, t
    /// [`AdamW::step`] on the gradients times `coef` (the clipping coefficient), each read
    /// once. On the CPU the parameter and both moments are updated in place in one pass (the
    /// same f32 operations, in the same order, as the tensor ops elsewhere); `coef` = 1 leaves
    /// the gradients exact.
    pub fn step_scaled(&mut self, grads: &[Option<Tensor>], coef: f32, lr: f64) -> Result<()> {
        if grads.len() != self.slots.len() {
            return Err(Error::invalid(
                format!(
                    "{} gradients for {} parameters",
                    grads.len(),
                    self.slots.len()
                ),
                "give one gradient (or none) per parameter, in order",
            ));
        }
        self.step += 1;
        let c = &self.config;
        let t = i32::try_from(self.step).unwrap_or(i32::MAX);
        let bias1 = 1.0 - c.beta1.powi(t);
        let bias2_sqrt = (1.0 - c.beta2.powi(t)).sqrt();
        let step_size = lr / bias1;
        for (slot, g) in self.slots.iter_mut().zip(grads) {
            let Some(g) = g else { continue };
            let fused = Fused {
                coef,
                keep1: (1.0 - c.beta1) as f32,
                beta2: c.beta2 as f32,
                keep2: (1.0 - c.beta2) as f32,
                inv_bias2: (1.0 / bias2_sqrt) as f32,
                eps: c.eps as f32,
                decay: if slot.decay && c.weight_decay != 0.0 {
                    Some((1.0 - lr * c.weight_decay) as f32)
                } else {
                    None
                },
                step_size: step_size as f32,
            };
            if fused.apply(slot, g)? {
                continue;
            }
            #[allow(clippy::float_cmp)] // exactly 1: the gradient as it is
            let g = &if coef == 1.0 {
                g.clone()
            } else {
                g.affine(f64::from(coef), 0.0).map_err(|e| candle(&e))?
            };
            let run = || -> candle_core::Result<(Tensor, Tensor, Tensor)> {
                let p = slot.var.as_tensor();
                let p = if slot.decay && c.weight_decay != 0.0 {
                    p.affine(1.0 - lr * c.weight_decay, 0.0)?
                } else {
                    p.clone()
                };
                // lerp(m, g, w) = m + w·(g − m)
                let m = (&slot.m + ((g - &slot.m)? * (1.0 - c.beta1))?)?;
                let v = ((&slot.v * c.beta2)? + (g.sqr()? * (1.0 - c.beta2))?)?;
                let denom = ((v.sqrt()? / bias2_sqrt)? + c.eps)?;
                let p = (p - ((&m / denom)? * step_size)?)?;
                Ok((p, m, v))
            };
            let (p, m, v) = run().map_err(|e| candle(&e))?;
            slot.var.set(&p).map_err(|e| candle(&e))?;
            slot.m = m;
            slot.v = v;
        }
        Ok(())
    }
}

/// One `AdamW` update of a parameter, fused: the moments in place, then the parameter in
/// place, every element through the f32 operations of the tensor path in its order.
struct Fused {
    coef: f32,
    keep1: f32,
    beta2: f32,
    keep2: f32,
    inv_bias2: f32,
    eps: f32,
    decay: Option<f32>,
    step_size: f32,
}

/// `m ← m + (g·coef − m)·(1 − β₁)`.
struct FirstMoment<'a>(&'a Fused);
/// `v ← v·β₂ + (g·coef)²·(1 − β₂)`.
struct SecondMoment<'a>(&'a Fused);
/// `p ← p·(1 − lr·wd)` (decaying parameters), then `p ← p − (m / (√v·(1/√(1−β₂ᵗ)) + ε))·step`.
struct Parameter<'a>(&'a Fused);

impl candle_core::InplaceOp2 for FirstMoment<'_> {
    fn name(&self) -> &'static str {
        "adamw-m"
    }
    fn cpu_fwd(
        &self,
        s1: &mut CpuStorage,
        l1: &Layout,
        s2: &CpuStorage,
        l2: &Layout,
    ) -> candle_core::Result<()> {
        let f = self.0;
        let g = contiguous_f32(s2, l2, "adamw")?;
        par_simd(
            contiguous_mut(s1, l1, "adamw")?,
            CHUNK,
            #[inline(always)]
            |start, m| {
                for (m, &g) in m.iter_mut().zip(&g[start..]) {
                    let g = g * f.coef; // exact when coef is 1
                    *m += (g - *m) * f.keep1;
                }
            },
        );
        Ok(())
    }
}

impl candle_core::InplaceOp2 for SecondMoment<'_> {
    fn name(&self) -> &'static str {
        "adamw-v"
    }
    fn cpu_fwd(
        &self,
        s1: &mut CpuStorage,
        l1: &Layout,
        s2: &CpuStorage,
        l2: &Layout,
    ) -> candle_core::Result<()> {
        let f = self.0;
        let g = contiguous_f32(s2, l2, "adamw")?;
        par_simd(
            contiguous_mut(s1, l1, "adamw")?,
            CHUNK,
            #[inline(always)]
            |start, v| {
                for (v, &g) in v.iter_mut().zip(&g[start..]) {
                    let g = g * f.coef; // exact when coef is 1
                    *v = *v * f.beta2 + g * g * f.keep2;
                }
            },
        );
        Ok(())
    }
}

impl candle_core::InplaceOp3 for Parameter<'_> {
    fn name(&self) -> &'static str {
        "adamw-p"
    }
    fn cpu_fwd(
        &self,
        s1: &mut CpuStorage,
        l1: &Layout,
        s2: &CpuStorage,
        l2: &Layout,
        s3: &CpuStorage,
        l3: &Layout,
    ) -> candle_core::Result<()> {
        let f = self.0;
        let (m, v) = (
            contiguous_f32(s2, l2, "adamw")?,
            contiguous_f32(s3, l3, "adamw")?,
        );
        par_simd(
            contiguous_mut(s1, l1, "adamw")?,
            CHUNK,
            #[inline(always)]
            |start, p| {
                for ((p, &m), &v) in p.iter_mut().zip(&m[start..]).zip(&v[start..]) {
                    if let Some(d) = f.decay {
                        *p *= d;
                    }
                    let denom = v.sqrt() * f.inv_bias2 + f.eps;
                    *p -= m / denom * f.step_size;
                }
            },
        );
        Ok(())
    }
}

impl Fused {
    /// Updates `slot` with `g` in place when every tensor is a contiguous f32 CPU tensor of
    /// the same length; `false` (nothing done) otherwise.
    fn apply(&self, slot: &mut Slot, g: &Tensor) -> Result<bool> {
        let p = slot.var.as_tensor();
        let host = |t: &Tensor| {
            t.device().is_cpu()
                && t.dtype() == DType::F32
                && t.is_contiguous()
                && t.elem_count() == p.elem_count()
        };
        if ![p, &slot.m, &slot.v, g].into_iter().all(host) {
            return Ok(false);
        }
        let run = || -> candle_core::Result<()> {
            slot.m.inplace_op2(g, &FirstMoment(self))?;
            slot.v.inplace_op2(g, &SecondMoment(self))?;
            p.inplace_op3(&slot.m, &slot.v, &Parameter(self))
        };
        run().map_err(|e| candle(&e))?;
        Ok(true)
    }
}

#[cfg(test)]
mod tests {
    use std::path::Path;

    use candle_core::{Device, Tensor, Var};

    use super::{AdamW, AdamWConfig, LinearSchedule, clip_grad_norm, decays};

    fn fixture() -> serde_json::Value {
        let path =
            Path::new(env!("CARGO_MANIFEST_DIR")).join("../../tests/fixtures/train/adamw.json");
        serde_json::from_str(&std::fs::read_to_string(path).unwrap()).unwrap()
    }

    fn floats(v: &serde_json::Value) -> Vec<f32> {
        v.as_array()
            .unwrap()
            .iter()
            .map(|x| x.as_f64().unwrap() as f32)
            .collect()
    }

    #[test]
    fn decay_follows_transformers_names() {
        assert!(decays("encoder.layer.0.attention.self.query.weight"));
        assert!(decays("embeddings.word_embeddings.weight"));
        assert!(!decays("encoder.layer.0.attention.self.query.bias"));
        assert!(!decays("embeddings.LayerNorm.weight"));
        assert!(!decays("lm_head.layer_norm.weight"));
    }

    #[test]
    fn the_schedule_warms_up_then_decays_to_zero() {
        let s = LinearSchedule {
            warmup_steps: 2,
            total_steps: 6,
        };
        let f: Vec<f64> = (0..8).map(|k| s.factor(k)).collect();
        assert_eq!(f, [0.0, 0.5, 1.0, 0.75, 0.5, 0.25, 0.0, 0.0]);
    }

    /// Four steps with clipping, warm-up and weight decay: the parameters after each equal
    /// torch's (`scripts/reference/adamw_steps.py`) to 1e-5 relative.
    #[test]
    fn steps_match_torch_adamw_with_clipping_and_the_schedule() {
        let f = fixture();
        let dev = Device::Cpu;
        let shapes: Vec<Vec<usize>> = f["shapes"]
            .as_array()
            .unwrap()
            .iter()
            .map(|s| {
                s.as_array()
                    .unwrap()
                    .iter()
                    .map(|d| d.as_u64().unwrap() as usize)
                    .collect()
            })
            .collect();
        let names: Vec<String> = f["names"]
            .as_array()
            .unwrap()
            .iter()
            .map(|n| n.as_str().unwrap().to_owned())
            .collect();
        let vars: Vec<Var> = f["initial"]
            .as_array()
            .unwrap()
            .iter()
            .zip(&shapes)
            .map(|(v, s)| Var::from_vec(floats(v), s.as_slice(), &dev).unwrap())
            .collect();
        let schedule = LinearSchedule {
            warmup_steps: f["warmup_steps"].as_u64().unwrap(),
            total_steps: f["total_steps"].as_u64().unwrap(),
        };
        let base_lr = f["lr"].as_f64().unwrap();
        let mut opt = AdamW::new(
            names.into_iter().zip(vars.iter().cloned()).collect(),
            AdamWConfig::new(base_lr, f["weight_decay"].as_f64().unwrap()),
        )
        .unwrap();
        let max_norm = f["max_grad_norm"].as_f64().unwrap();
        for (k, (grads, after)) in f["grads"]
            .as_array()
            .unwrap()
            .iter()
            .zip(f["after"].as_array().unwrap())
            .enumerate()
        {
            let mut g: Vec<Option<Tensor>> = grads
                .as_array()
                .unwrap()
                .iter()
                .zip(&shapes)
                .map(|(g, s)| Some(Tensor::from_vec(floats(g), s.as_slice(), &dev).unwrap()))
                .collect();
            let norm = clip_grad_norm(&mut g, max_norm).unwrap();
            let torch_norm = f["grad_norm"][k].as_f64().unwrap();
            assert!(
                (norm - torch_norm).abs() <= 1e-5 * torch_norm,
                "step {k}: {norm} vs {torch_norm}"
            );
            let lr = base_lr * schedule.factor(k as u64);
            assert!(
                (lr - f["lr_used"][k].as_f64().unwrap()).abs() < 1e-12,
                "step {k}"
            );
            opt.step(&g, lr).unwrap();
            for (i, (var, want)) in vars.iter().zip(after.as_array().unwrap()).enumerate() {
                let got: Vec<f32> = var.as_tensor().flatten_all().unwrap().to_vec1().unwrap();
                for (a, b) in got.iter().zip(floats(want)) {
                    assert!(
                        (a - b).abs() <= 1e-5 * b.abs().max(1e-3),
                        "step {k}, parameter {i}: {a} vs torch {b}"
                    );
                }
            }
        }
        assert_eq!(opt.steps(), 4);
    }
}
