//! `magnitude_prune`: keep the `density` fraction of largest magnitude of each task vector,
//! then sum; see [`crate::tensor::merge::magnitude_prune`].

use super::{Combine, MergeMethod, Mergekit, Parameters, Sparsify};
use crate::tensor::merge::Weighted;

pub struct MagnitudePrune;

impl MergeMethod for MagnitudePrune {
    fn name(&self) -> &'static str {
        "magnitude_prune"
    }
    fn parameters(&self) -> Parameters {
        Parameters {
            density: true,
            ..Parameters::default()
        }
    }
    fn sparsify(&self) -> Sparsify {
        Sparsify::TopK
    }
    fn combine(&self, inputs: &[Weighted<'_>], _: Option<&[f32]>, how: &Combine, out: &mut [f32]) {
        super::weighted_sum(inputs, how.normalize, out);
    }
    /// mergekit 0.1.5 has no `magnitude_prune`.
    fn mergekit(&self) -> Option<Mergekit> {
        None
    }
}
