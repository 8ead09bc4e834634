//! Dropout for training, as transformers places it (embeddings output, attention
//! probabilities, each sub-layer's output before its residual, before a classifier) with its
//! rates from config.json. Masks are drawn per call site in forward order and are pure
//! functions of (key, site, element) ([`crate::rng`]): the same bits on any thread count and
//! after a resume, the key being a function of (seed, optimizer step, micro-batch).

use std::sync::atomic::{AtomicU64, Ordering};

use candle_core::Tensor;
use rayon::prelude::*;

use crate::kernels::grad::MaskOp;
use crate::rng::mix;

/// The dropout of one forward pass.
#[derive(Debug)]
pub struct Dropout {
    /// `hidden_dropout_prob`: embeddings and sub-layer outputs.
    pub hidden: f64,
    /// `attention_probs_dropout_prob`.
    pub attention: f64,
    /// `classifier_dropout` (or `hidden_dropout_prob` when config.json has none).
    pub classifier: f64,
    key: u64,
    site: AtomicU64,
}

impl Dropout {
    pub fn new(hidden: f64, attention: f64, classifier: f64, key: u64) -> Self {
        Self {
            hidden,
            attention,
            classifier,
            key,
            site: AtomicU64::new(0),
        }
    }

    /// Zeroes each element with probability `p` and scales the rest by 1/(1 − p), as
    /// `torch.nn.Dropout` in training mode. On the CPU the mask is never stored: it is a pure
    /// function of (key, call site, element), so the backward pass draws it again
    /// ([`MaskOp`]); elsewhere a mask tensor is multiplied in.
    pub fn apply(&self, x: &Tensor, p: f64) -> candle_core::Result<Tensor> {
        let Some(op) = self.site(p) else {
            return Ok(x.clone());
        };
        if x.device().is_cpu() && x.dtype() == candle_core::DType::F32 {
            return x.contiguous()?.apply_op1(op);
        }
        let n = x.elem_count();
        let keep = op.scale();
        let mask: Vec<f32> = (0..n)
            .into_par_iter()
            .with_min_len(1 << 14)
            .map(|i| if op.kept(i) { keep } else { 0.0 })
            .collect();
        let mask = Tensor::from_vec(mask, x.shape(), x.device())?.to_dtype(x.dtype())?;
        x.mul(&mask)
    }

    /// The mask of the next call site at rate `p` (`None` when `p` is 0), for a kernel that
    /// applies it itself (the fused self-attention); it takes the site's place in the forward
    /// order as [`Dropout::apply`] would.
    pub fn site(&self, p: f64) -> Option<MaskOp> {
        if p <= 0.0 {
            return None;
        }
        let site = self.site.fetch_add(1, Ordering::Relaxed);
        Some(MaskOp::new(mix(self.key ^ mix(site.wrapping_add(1))), p))
    }
}

#[cfg(test)]
mod tests {
    use candle_core::{Device, Tensor};

    use super::Dropout;

    #[test]
    #[allow(clippy::many_single_char_names)] // x, a, b, v, d, y, g: the test's values
    fn drops_at_the_rate_scales_the_rest_and_repeats_from_the_key() {
        let x = Tensor::ones(100_000, candle_core::DType::F32, &Device::Cpu).unwrap();
        let run = |key| {
            let d = Dropout::new(0.1, 0.1, 0.1, key);
            let a: Vec<f32> = d.apply(&x, 0.1).unwrap().to_vec1().unwrap();
            let b: Vec<f32> = d.apply(&x, 0.1).unwrap().to_vec1().unwrap();
            (a, b)
        };
        let (a, b) = run(7);
        let zeros = a.iter().filter(|&&v| v == 0.0).count();
        // The gradient goes through the same mask.
        let v = candle_core::Var::from_tensor(&x).unwrap();
        let d = Dropout::new(0.1, 0.1, 0.1, 7);
        let y = d.apply(v.as_tensor(), 0.1).unwrap();
        let g: Vec<f32> = y
            .sum_all()
            .unwrap()
            .backward()
            .unwrap()
            .get(v.as_tensor())
            .unwrap()
            .to_vec1()
            .unwrap();
        assert_eq!(g, a, "the gradient of a sum is the mask itself");
        // 10% ± 5σ (σ ≈ 95 of 100k).
        assert!((9_500..10_500).contains(&zeros), "{zeros} dropped");
        assert!(a.iter().all(|&v| v == 0.0 || (v - 1.0 / 0.9).abs() < 1e-6));
        assert_ne!(a, b, "each call site draws its own mask");
        assert_eq!(run(7), (a, b), "the same key gives the same masks");
        assert_ne!(run(8).0, run(7).0);
    }
}
