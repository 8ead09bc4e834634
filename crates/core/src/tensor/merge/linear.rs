//! `linear`: a weighted average of models.
//!
//! Paper: Wortsman et al. 2022, "Model soups: averaging weights of multiple fine-tuned models
//! improves accuracy without increasing inference time" (ICML).
//!
//! Numeric variant: `Σ wᵢθᵢ / Σ wᵢ`, the products and sums in f64, rounded once to f32. This is
//! mergekit's `linear` with `normalize: true` (its default); with `normalize = false` the
//! weighted sum `Σ wᵢθᵢ` is returned undivided, as mergekit then does. When the weights sum to
//! exactly 0 the sum is returned undivided too (mergekit would divide by zero).
//! Deterministic: no randomness, a fixed summation order (input order).

use super::{Weighted, check_lengths};

/// Weighted average of models: `Σ wᵢθᵢ / Σ wᵢ`, or the weighted sum when `!normalize` (see
/// the module docs).
pub fn linear(inputs: &[Weighted<'_>], normalize: bool, out: &mut [f32]) {
    let n = check_lengths(inputs);
    let total: f64 = inputs.iter().map(|i| f64::from(i.weight)).sum();
    let norm = if total == 0.0 || !normalize {
        1.0
    } else {
        total
    };
    for (e, o) in out[..n].iter_mut().enumerate() {
        let s: f64 = inputs
            .iter()
            .map(|i| f64::from(i.weight) * f64::from(i.values[e]))
            .sum();
        *o = (s / norm) as f32;
    }
}
