//! `ties`: trim each task vector to `density` by magnitude, elect a sign per entry by `Σ wᵢτᵢ`,
//! and take the weighted mean of the agreeing entries (Yadav et al. 2023); see
//! [`crate::tensor::merge::ties`].

use super::{Combine, MergeMethod, Mergekit, Parameters, Sparsify};
use crate::tensor::merge::Weighted;

pub struct Ties;

impl MergeMethod for Ties {
    fn name(&self) -> &'static str {
        "ties"
    }
    fn parameters(&self) -> Parameters {
        Parameters {
            density: true,
            normalize: Some(true),
            ..Parameters::default()
        }
    }
    fn sparsify(&self) -> Sparsify {
        Sparsify::TopK
    }
    fn combine(&self, inputs: &[Weighted<'_>], _: Option<&[f32]>, how: &Combine, out: &mut [f32]) {
        super::elect_and_merge(inputs, how.normalize, out);
    }
    fn mergekit(&self) -> Option<Mergekit> {
        Some(Mergekit {
            normalize: true,
            gamma: None,
            refuses_rescale: Some(
                "`rescale: true` on `ties` rescales each trimmed tensor to its L1 norm in mergekit, which crossmerge does not implement",
            ),
        })
    }
}
