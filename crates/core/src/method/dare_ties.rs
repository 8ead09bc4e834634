//! `dare_ties`: DARE's random drop and rescale, then TIES' sign election and disjoint mean
//! (Yu et al. 2024); see [`crate::tensor::merge::dare`] and [`crate::tensor::merge::ties`].

use super::{Combine, MergeMethod, Mergekit, Parameters, Sparsify};
use super::Options;
use crate::tensor::merge::Weighted;

pub struct DareTies;

impl MergeMethod for DareTies {
    fn name(&self) -> &'static str {
        "dare_ties"
    }
    fn parameters(&self) -> Parameters {
        Parameters {
            density: true,
            normalize: Some(true),
            ..Parameters::default()
        }
    }
    fn sparsify(&self) -> Sparsify {
        Sparsify::Random
    }
    fn combine(&self, inputs: &[Weighted<'_>], _: Option<&[f32]>, how: &Combine, out: &mut [f32]) {
        super::elect_and_merge(inputs, how.normalize, out);
    }
    fn canonical(&self, options: &Options, json: &mut serde_json::Value) {
        super::dare_linear::rescale_norm(options, json);
    }
    fn mergekit(&self) -> Option<Mergekit> {
        Some(Mergekit {
            normalize: false,
            gamma: None,
            refuses_rescale: None,
        })
    }
}
