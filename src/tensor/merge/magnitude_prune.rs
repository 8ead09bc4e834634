//! `magnitude_prune`: keep the largest entries of each task vector, then add.
//!
//! Method: magnitude pruning of task vectors as in mergekit's `magnitude_prune` (the trim step
//! of TIES without its sign election; Yadav et al. 2023 use it as an ablation).
//!
//! Numeric variant: each τᵢ keeps its `round(density · n)` entries of largest magnitude (ties
//! at the threshold lowest index first, O(n) selection); the masked vectors are summed with
//! their weights in f64. Deterministic: no randomness.

use super::select::{kept, top_k};
use super::{Weighted, sparse_sum};

/// The top `density` fraction of `values` by magnitude.
pub fn magnitude_mask(values: &[f32], density: f32) -> Vec<bool> {
    top_k(values, kept(values.len(), density))
}

/// Magnitude pruning: each τᵢ keeps its top `density` fraction by magnitude, then task
/// arithmetic.
pub fn magnitude_prune(inputs: &[Weighted<'_>], density: f32, out: &mut [f32]) {
    sparse_sum(inputs, out, |v| magnitude_mask(v, density));
}
