//! `breadcrumbs`: drop the `gamma` fraction of largest outliers and keep the next `density` by
//! magnitude, then sum (Davari & Belilovsky 2024); see [`crate::tensor::merge::breadcrumbs`].

use super::{Combine, MergeMethod, Mergekit, Parameters, Sparsify};
use crate::tensor::merge::Weighted;

pub struct Breadcrumbs;

impl MergeMethod for Breadcrumbs {
    fn name(&self) -> &'static str {
        "breadcrumbs"
    }
    fn parameters(&self) -> Parameters {
        Parameters {
            density: true,
            gamma: true,
            ..Parameters::default()
        }
    }
    fn sparsify(&self) -> Sparsify {
        Sparsify::Band
    }
    fn combine(&self, inputs: &[Weighted<'_>], _: Option<&[f32]>, how: &Combine, out: &mut [f32]) {
        super::weighted_sum(inputs, how.normalize, out);
    }
    fn mergekit(&self) -> Option<Mergekit> {
        Some(Mergekit {
            normalize: false,
            gamma: Some(0.01),
            refuses_rescale: None,
        })
    }
}
