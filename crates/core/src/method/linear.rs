//! `linear`: a weighted average of models (Wortsman et al. 2022, model soups); see
//! [`crate::tensor::merge::linear`] for the numeric variant.

use super::{BaseUse, Combine, MergeMethod, Mergekit, Operands, Parameters};
use crate::tensor::merge::{self, Weighted};

pub struct Linear;

impl MergeMethod for Linear {
    fn name(&self) -> &'static str {
        "linear"
    }
    fn operands(&self) -> Operands {
        Operands::Models
    }
    fn parameters(&self) -> Parameters {
        Parameters {
            base: BaseUse::ForVectors,
            normalize: Some(true),
            ..Parameters::default()
        }
    }
    fn combine(&self, inputs: &[Weighted<'_>], _: Option<&[f32]>, how: &Combine, out: &mut [f32]) {
        merge::linear(inputs, how.normalize, out);
    }
    fn mergekit(&self) -> Option<Mergekit> {
        Some(Mergekit {
            normalize: true,
            gamma: None,
            refuses_rescale: None,
        })
    }
}
