//! `breadcrumbs`: model breadcrumbs.
//!
//! Paper: Davari & Belilovsky 2024, "Model breadcrumbs: scaling multi-task model merging with
//! sparse masks" (ECCV).
//!
//! Numeric variant: each τᵢ drops its `round(gamma · n)` entries of largest magnitude (the
//! outliers) and keeps the next `round(density · n)`; the masked vectors are summed with their
//! weights (task arithmetic). Ranks order by |v| descending, then index ascending, found by
//! O(n) selection; both counts round as `round(fraction · n)`, and `density` is exactly the
//! kept fraction (after the outliers). mergekit 0.1.5 truncates both counts (`int(fraction ·
//! n)`) and, when `density + gamma > 1`, removes fewer outliers; crossmerge rounds and refuses
//! nothing. Deterministic: no randomness.

use super::select::{kept, rank_range_mask};
use super::{Weighted, sparse_sum};

/// Model breadcrumbs: drop the top `gamma` fraction by magnitude, keep the next `density`.
pub fn breadcrumbs_mask(values: &[f32], density: f32, gamma: f32) -> Vec<bool> {
    let n = values.len();
    let lo = kept(n, gamma);
    rank_range_mask(values, lo, lo + kept(n, density))
}

/// Model breadcrumbs: each τᵢ drops its top `gamma` fraction by magnitude (outliers) and keeps
/// the next `density` fraction, then task arithmetic.
pub fn breadcrumbs(inputs: &[Weighted<'_>], density: f32, gamma: f32, out: &mut [f32]) {
    sparse_sum(inputs, out, |v| breadcrumbs_mask(v, density, gamma));
}
