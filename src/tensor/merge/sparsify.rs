//! Sparsification: magnitude masks, breadcrumbs masks and DARE's seeded random drop.

use super::select::{rank_range_mask, top_k};

/// How many of `n` elements a `density` keeps: `round(density · n)`, clamped to [0, n].
pub fn kept(n: usize, density: f32) -> usize {
    ((f64::from(density.clamp(0.0, 1.0)) * n as f64).round() as usize).min(n)
}

/// The top `density` fraction of `values` by magnitude.
pub fn magnitude_mask(values: &[f32], density: f32) -> Vec<bool> {
    top_k(values, kept(values.len(), density))
}

/// Model breadcrumbs: drop the top `gamma` fraction by magnitude, keep the next `density`.
pub fn breadcrumbs_mask(values: &[f32], density: f32, gamma: f32) -> Vec<bool> {
    let n = values.len();
    let lo = kept(n, gamma);
    rank_range_mask(values, lo, lo + kept(n, density))
}

/// DARE: keeps each element with probability `density` and rescales the kept ones by
/// `1/density` (the paper's rescale, mergekit's default), writing into `out`. The draw for
/// element e is a pure function of (`seed`, `stream`, e): splitmix64 of the three, compared
/// with `density` as a 53-bit uniform. `stream` separates inputs and tensors (callers pass a
/// hash of the tensor name and the input index), so the same seed gives the same bits on any
/// thread count. `density` 0 drops everything.
pub fn dare(values: &[f32], density: f32, seed: u64, stream: u64, out: &mut [f32]) {
    let d = f64::from(density.clamp(0.0, 1.0));
    for (e, (o, v)) in out.iter_mut().zip(values).enumerate() {
        let keep = d > 0.0 && uniform(seed, stream, e as u64) < d;
        *o = if keep {
            (f64::from(*v) / d) as f32
        } else {
            0.0
        };
    }
}

fn uniform(seed: u64, stream: u64, index: u64) -> f64 {
    let mut z = seed
        ^ stream.wrapping_mul(0x9E37_79B9_7F4A_7C15)
        ^ index.wrapping_mul(0xD1B5_4A32_D192_ED03);
    z = z.wrapping_add(0x9E37_79B9_7F4A_7C15);
    z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
    z ^= z >> 31;
    (z >> 11) as f64 / (1u64 << 53) as f64
}
