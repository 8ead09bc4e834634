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

/// Elements per column block (three f64 blocks stay in L1).
const B: usize = 1024;

/// Task arithmetic: `Δ = Σ wᵢτᵢ` (λ is folded into the weights).
pub fn task_arithmetic(inputs: &[Weighted<'_>], out: &mut [f32]) {
    let n = check_lengths(inputs);
    // Input by input over blocks (vectorised), summing in input order from -0.0 as a
    // per-element `Iterator::sum` would.
    let mut acc = [0f64; B];
    for start in (0..n).step_by(B) {
        let len = B.min(n - start);
        let acc = &mut acc[..len];
        acc.fill(-0.0);
        for i in inputs {
            let w = f64::from(i.weight);
            for (a, v) in acc.iter_mut().zip(&i.values[start..start + len]) {
                *a += w * f64::from(*v);
            }
        }
        for (o, a) in out[start..start + len].iter_mut().zip(acc.iter()) {
            *o = *a as f32;
        }
    }
}
