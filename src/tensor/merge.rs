//! Merge methods on flat f32 tensors: pure math, no I/O. Each method works on one tensor at a
//! time (the engine streams a model tensor by tensor) and is deterministic: the same inputs,
//! options and seed give the same bits.
//!
//! Inputs are *task vectors* `τᵢ = θᵢ − θ_base` with a weight each; the methods return the
//! merged update `Δ`, and the merged tensor is `θ_base + Δ`. [`linear`] and [`slerp`] work on
//! the models themselves. Sums run in f64 and round once to f32.
//!
//! | method | paper | here |
//! | --- | --- | --- |
//! | [`linear`] | Wortsman et al. 2022, model soups | `Σ wᵢθᵢ / Σ wᵢ` (mergekit `normalize: true`) |
//! | [`task_arithmetic`] | Ilharco et al. 2023 | `Σ wᵢτᵢ` |
//! | [`ties`] | Yadav et al. 2023 | trim to `density` by magnitude, elect sign by `Σ wᵢτᵢ`, disjoint weighted mean |
//! | [`dare`] | Yu et al. 2024 | drop with probability `1 − density`, rescale by `1/density` |
//! | [`breadcrumbs`] | Davari & Belilovsky 2024 | drop the top `gamma` and keep the next `density` by magnitude |
//! | [`magnitude_prune`] | (mergekit's `magnitude`) | keep the top `density` by magnitude |
//! | [`slerp`] | Shoemake 1985 | spherical interpolation of two tensors, linear when nearly parallel |

mod select;
mod sparsify;

pub use self::sparsify::{breadcrumbs_mask, dare, magnitude_mask};

/// One input of a merge: a task vector (or a model, for [`linear`]) and its weight.
#[derive(Clone, Copy, Debug)]
pub struct Weighted<'a> {
    pub values: &'a [f32],
    pub weight: f32,
}

fn check_lengths(inputs: &[Weighted<'_>]) -> usize {
    let n = inputs.first().map_or(0, |i| i.values.len());
    assert!(
        inputs.iter().all(|i| i.values.len() == n),
        "inputs of one tensor have one length"
    );
    n
}

/// Weighted average of models: `Σ wᵢθᵢ / Σ wᵢ`. With weights summing to 0 the sum is returned
/// unnormalised (as mergekit does), so negative weights stay meaningful.
pub fn linear(inputs: &[Weighted<'_>], out: &mut [f32]) {
    let n = check_lengths(inputs);
    let total: f64 = inputs.iter().map(|i| f64::from(i.weight)).sum();
    let norm = if total == 0.0 { 1.0 } else { total };
    for (e, o) in out[..n].iter_mut().enumerate() {
        let s: f64 = inputs
            .iter()
            .map(|i| f64::from(i.weight) * f64::from(i.values[e]))
            .sum();
        *o = (s / norm) as f32;
    }
}

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

/// Magnitude pruning: each τᵢ keeps its top `density` fraction by magnitude, then task
/// arithmetic.
pub fn magnitude_prune(inputs: &[Weighted<'_>], density: f32, out: &mut [f32]) {
    sparse_sum(inputs, out, |v| magnitude_mask(v, density));
}

/// Model breadcrumbs: each τᵢ drops its top `gamma` fraction by magnitude (outliers) and keeps
/// the next `density` fraction, then task arithmetic.
pub fn breadcrumbs(inputs: &[Weighted<'_>], density: f32, gamma: f32, out: &mut [f32]) {
    sparse_sum(inputs, out, |v| breadcrumbs_mask(v, density, gamma));
}

fn sparse_sum(inputs: &[Weighted<'_>], out: &mut [f32], mask: impl Fn(&[f32]) -> Vec<bool>) {
    let n = check_lengths(inputs);
    let masks: Vec<Vec<bool>> = inputs.iter().map(|i| mask(i.values)).collect();
    for (e, o) in out[..n].iter_mut().enumerate() {
        *o = inputs
            .iter()
            .zip(&masks)
            .filter(|(_, m)| m[e])
            .map(|(i, _)| f64::from(i.weight) * f64::from(i.values[e]))
            .sum::<f64>() as f32;
    }
}

/// Spherical interpolation between two tensors at `t` (0 gives `a`, 1 gives `b`), treating
/// each as one vector. When they are nearly parallel (|cos| > 1 − 1e-6) or either is zero it
/// falls back to linear interpolation, as mergekit does.
pub fn slerp(a: &[f32], b: &[f32], t: f32, out: &mut [f32]) {
    assert_eq!(a.len(), b.len(), "slerp needs two tensors of one length");
    let t = f64::from(t);
    let norm = |v: &[f32]| v.iter().map(|x| f64::from(*x).powi(2)).sum::<f64>().sqrt();
    let (na, nb) = (norm(a), norm(b));
    let lerp = |out: &mut [f32]| {
        for ((o, x), y) in out.iter_mut().zip(a).zip(b) {
            *o = ((1.0 - t) * f64::from(*x) + t * f64::from(*y)) as f32;
        }
    };
    if na == 0.0 || nb == 0.0 {
        return lerp(out);
    }
    let dot: f64 = a
        .iter()
        .zip(b)
        .map(|(x, y)| f64::from(*x) * f64::from(*y))
        .sum::<f64>()
        / (na * nb);
    if dot.abs() > 1.0 - 1e-6 {
        return lerp(out);
    }
    let omega = dot.clamp(-1.0, 1.0).acos();
    let s = omega.sin();
    let (ca, cb) = (((1.0 - t) * omega).sin() / s, (t * omega).sin() / s);
    for ((o, x), y) in out.iter_mut().zip(a).zip(b) {
        *o = (ca * f64::from(*x) + cb * f64::from(*y)) as f32;
    }
}

#[cfg(test)]
mod tests;
