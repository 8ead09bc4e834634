//! `ties`: TIES merging — trim, elect sign, disjoint merge.
//!
//! Paper: Yadav et al. 2023, "TIES merging: resolving interference when merging models"
//! (`NeurIPS`).
//!
//! Numeric variant:
//! - *Trim*: each τᵢ keeps its `round(density · n)` entries of largest magnitude (mergekit
//!   0.1.5 keeps `int(density · n)`, truncating: the two differ by one entry when the
//!   fraction is ≥ ½; mergekit also never keeps 0 entries, where crossmerge may), found by
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
//! mergekit's `rescale: true` on ties (each trimmed vector scaled back to its L1 norm) is not
//! implemented; an imported YAML asking for it is refused. All sums in f64, rounded once.
//! Deterministic: no randomness.

use super::{Weighted, check_lengths, magnitude_mask};

/// Elements per column block (three f64 blocks stay in L1).
const B: usize = 1024;

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
    let k = trimmed.len();
    // Column by column (input by input) over blocks, so the inner loops vectorise; the sums
    // run in input order, as a per-element loop would. An entry agrees with the elected sign
    // exactly when `wᵢτᵢ · Σ wτ > 0` (both non-zero, one sign; no f64 underflow from f32s).
    let (mut total, mut sum, mut weights) = ([0f64; B], [0f64; B], [0f64; B]);
    let mut products = vec![0f64; k * B];
    for start in (0..n).step_by(B) {
        let len = B.min(n - start);
        let (total, sum, weights) = (&mut total[..len], &mut sum[..len], &mut weights[..len]);
        total.fill(-0.0);
        sum.fill(0.0);
        weights.fill(0.0);
        for (i, input) in trimmed.iter().enumerate() {
            let w = f64::from(input.weight);
            let wv = &mut products[i * B..i * B + len];
            for ((p, t), v) in wv
                .iter_mut()
                .zip(total.iter_mut())
                .zip(&input.values[start..start + len])
            {
                *p = w * f64::from(*v);
                *t += *p;
            }
        }
        for (i, input) in trimmed.iter().enumerate() {
            let w = f64::from(input.weight);
            let wv = &products[i * B..i * B + len];
            for (((s, ws), t), p) in sum
                .iter_mut()
                .zip(weights.iter_mut())
                .zip(total.iter())
                .zip(wv)
            {
                let agree = *p * *t > 0.0;
                *s += if agree { *p } else { 0.0 };
                *ws += if agree { w } else { 0.0 };
            }
        }
        for (((o, t), s), ws) in out[start..start + len]
            .iter_mut()
            .zip(total.iter())
            .zip(sum.iter())
            .zip(weights.iter())
        {
            *o = if *t == 0.0 {
                0.0
            } else {
                match normalize {
                    TiesNormalize::WeightSum if *ws != 0.0 => (s / ws) as f32,
                    _ => *s as f32,
                }
            };
        }
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
