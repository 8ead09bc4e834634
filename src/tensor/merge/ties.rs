//! `ties`: TIES merging — trim, elect sign, disjoint merge.
//!
//! Paper: Yadav et al. 2023, "TIES merging: resolving interference when merging models"
//! (`NeurIPS`).
//!
//! Numeric variant:
//! - *Trim*: each τᵢ keeps its `round(density · n)` entries of largest magnitude, found by
//!   O(n) selection (`select_nth_unstable` on a tensor in memory, an exact two-pass radix
//!   select on a streamed one, see `select`), never a sort. Entries tied at the threshold are
//!   kept lowest index first, so the mask is a pure function of the values.
//! - *Elect*: the sign of `Σ wᵢτᵢ` over the trimmed vectors (mergekit's `sum` consensus; the
//!   paper's "total mass" election with weights 1).
//! - *Disjoint merge*: the weighted sum of the entries agreeing with the elected sign, divided
//!   by the sum of their weights ([`TiesNormalize::WeightSum`], mergekit's default
//!   `normalize: true`), or left undivided ([`TiesNormalize::None`]). Where the elected sum is
//!   exactly 0 the result is 0.
//!
//! All sums in f64, rounded once. Deterministic: no randomness.

use super::{Weighted, check_lengths, magnitude_mask};

/// How TIES turns the agreeing entries into one value.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Default)]
pub enum TiesNormalize {
    /// Divide by the sum of the weights of the entries that agree with the elected sign
    /// (mergekit's default, the paper's disjoint mean when all weights are 1).
    #[default]
    WeightSum,
    /// Keep the weighted sum of the agreeing entries, undivided (mergekit `normalize: false`).
    None,
}

/// TIES-merging's sign election and disjoint merge over already trimmed task vectors.
///
/// The elected sign of an element is the sign of `Σ wᵢτᵢ`; when that sum is exactly 0 no
/// entry agrees and the result is 0. Entries that are 0 never agree. An element where the
/// agreeing weights sum to 0 (negative weights can do that) is left unnormalised.
pub fn ties_merge(trimmed: &[Weighted<'_>], normalize: TiesNormalize, out: &mut [f32]) {
    let n = check_lengths(trimmed);
    for (e, o) in out[..n].iter_mut().enumerate() {
        let total: f64 = trimmed
            .iter()
            .map(|i| f64::from(i.weight) * f64::from(i.values[e]))
            .sum();
        if total == 0.0 {
            *o = 0.0;
            continue;
        }
        let positive = total > 0.0;
        let (mut sum, mut weights) = (0f64, 0f64);
        for i in trimmed {
            let v = f64::from(i.values[e]);
            let wv = f64::from(i.weight) * v;
            if v != 0.0 && (wv > 0.0) == positive {
                sum += wv;
                weights += f64::from(i.weight);
            }
        }
        *o = match normalize {
            TiesNormalize::WeightSum if weights != 0.0 => (sum / weights) as f32,
            _ => sum as f32,
        };
    }
}

/// TIES-merging: each τᵢ trimmed to its top `density` fraction by magnitude, then
/// [`ties_merge`].
pub fn ties(inputs: &[Weighted<'_>], density: f32, normalize: TiesNormalize, out: &mut [f32]) {
    let n = check_lengths(inputs);
    let trimmed: Vec<Vec<f32>> = inputs
        .iter()
        .map(|i| {
            let mask = magnitude_mask(i.values, density);
            i.values
                .iter()
                .zip(&mask)
                .map(|(v, &m)| if m { *v } else { 0.0 })
                .collect()
        })
        .collect();
    let views: Vec<Weighted<'_>> = trimmed
        .iter()
        .zip(inputs)
        .map(|(t, i)| Weighted {
            values: t,
            weight: i.weight,
        })
        .collect();
    ties_merge(&views, normalize, &mut out[..n]);
}
