//! `magnitude_prune`: keep the largest entries of each task vector, then add.
//!
//! Method: magnitude pruning of task vectors (the trim step of TIES without its sign election;
//! Yadav et al. 2023 use it as an ablation). mergekit 0.1.5 has no method of this name (its
//! nearest is `ties` with the sign election): a crossmerge-only method, refused in imported
//! mergekit YAML.
//!
//! Numeric variant: each τᵢ keeps its `round(density · n)` entries of largest magnitude
//! (mergekit's trims keep `int(density · n)`; ties
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
