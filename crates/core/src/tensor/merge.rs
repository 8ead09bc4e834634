//! Merge methods on flat f32 tensors: pure math, no I/O. Each method works on one tensor at a
//! time (the engine streams a model tensor by tensor) and is deterministic: the same inputs,
//! options and seed give the same bits. Each method lives in its own file, which cites its
//! paper and states its numeric variant.
//!
//! Inputs are *task vectors* `τᵢ = θᵢ − θ_base` with a weight each; the methods return the
//! merged update `Δ`, and the merged tensor is `θ_base + λ·Δ`. [`linear`] and [`slerp`] work on
//! the models themselves. Sums run in f64 and round once to f32.
//!
//! | method | paper | here |
//! | --- | --- | --- |
//! | [`linear`] | Wortsman et al. 2022, model soups | `Σ wᵢθᵢ / Σ wᵢ` (mergekit `normalize: true`) |
//! | [`task_arithmetic`] | Ilharco et al. 2023 | `Σ wᵢτᵢ` |
//! | [`ties`] | Yadav et al. 2023 | trim to `density` by magnitude, elect sign by `Σ wᵢτᵢ`, disjoint weighted mean |
//! | [`dare`] | Yu et al. 2024 | drop with probability `1 − density`, rescale by `1/density` |
//! | [`breadcrumbs`] | Davari & Belilovsky 2024 | drop the top `gamma` and keep the next `density` by magnitude |
//! | [`magnitude_prune`] | (mergekit's `magnitude_prune`) | keep the top `density` by magnitude |
//! | [`slerp`] | Shoemake 1985 | spherical interpolation of two tensors, linear when nearly parallel |

mod breadcrumbs;
mod dare;
mod linear;
mod magnitude_prune;
pub mod select;
mod slerp;
mod task_arithmetic;
mod ties;

pub use self::breadcrumbs::{breadcrumbs, breadcrumbs_mask};
pub use self::dare::{dare, dare_at, dare_in_place, dare_l1_sums, l1_factor, stream_of};
pub use self::linear::linear;
pub use self::magnitude_prune::{magnitude_mask, magnitude_prune};
pub use self::slerp::{slerp, slerp_coefficients};
pub use self::task_arithmetic::task_arithmetic;
pub use self::ties::{TiesNormalize, ties, ties_merge};

/// One input of a merge: a task vector (or a model, for [`linear`]) and its weight.
#[derive(Clone, Copy, Debug)]
pub struct Weighted<'a> {
    pub values: &'a [f32],
    pub weight: f32,
}

pub(crate) fn check_lengths(inputs: &[Weighted<'_>]) -> usize {
    let n = inputs.first().map_or(0, |i| i.values.len());
    assert!(
        inputs.iter().all(|i| i.values.len() == n),
        "inputs of one tensor have one length"
    );
    n
}

/// Σ wᵢτᵢ over the entries each input's mask keeps.
pub(crate) fn sparse_sum(
    inputs: &[Weighted<'_>],
    out: &mut [f32],
    mask: impl Fn(&[f32]) -> Vec<bool>,
) {
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

#[cfg(test)]
mod tests;
