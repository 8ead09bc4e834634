//! `task_arithmetic`: adding weighted task vectors to a base.
//!
//! Paper: Ilharco et al. 2023, "Editing models with task arithmetic" (ICLR).
//!
//! Numeric variant: the merged update is `Δ = Σ wᵢτᵢ` with `τᵢ = θᵢ − θ_base` (each τᵢ as
//! defined by the registry's vectors, in f32); products and sums in f64, rounded once. The
//! engine adds `λ·Δ` to the base in f64 and rounds once to the output dtype. mergekit's
//! `task_arithmetic` does the same sum in the working dtype (f32 by default) with the
//! optional `normalize` dividing by `Σ wᵢ`; here `linear` covers the normalised form.
//! Deterministic: no randomness, a fixed summation order.

use super::{Weighted, check_lengths};

/// Task arithmetic: `Δ = Σ wᵢτᵢ` (λ is folded into the weights).
pub fn task_arithmetic(inputs: &[Weighted<'_>], out: &mut [f32]) {
    let n = check_lengths(inputs);
    for (e, o) in out[..n].iter_mut().enumerate() {
        *o = inputs
            .iter()
            .map(|i| f64::from(i.weight) * f64::from(i.values[e]))
            .sum::<f64>() as f32;
    }
}
