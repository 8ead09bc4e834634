//! `dare_linear`: drop each entry of a task vector with probability `1 − density`, rescale,
//! then sum (Yu et al. 2024); see [`crate::tensor::merge::dare`].

use super::{Combine, MergeMethod, Mergekit, Parameters, Sparsify};
use super::{Options, RescaleNorm};
use crate::tensor::merge::Weighted;

pub struct DareLinear;

impl MergeMethod for DareLinear {
    fn name(&self) -> &'static str {
        "dare_linear"
    }
    fn parameters(&self) -> Parameters {
        Parameters {
            density: true,
            ..Parameters::default()
        }
    }
    fn sparsify(&self) -> Sparsify {
        Sparsify::Random
    }
    fn combine(&self, inputs: &[Weighted<'_>], _: Option<&[f32]>, how: &Combine, out: &mut [f32]) {
        super::weighted_sum(inputs, how.normalize, out);
    }
    fn canonical(&self, options: &Options, json: &mut serde_json::Value) {
        rescale_norm(options, json);
    }
    fn mergekit(&self) -> Option<Mergekit> {
        Some(Mergekit {
            normalize: false,
            gamma: None,
            refuses_rescale: None,
        })
    }
}

/// `rescale_norm` only where it is not the default, so recipes written before the option keep
/// their hash.
pub(super) fn rescale_norm(options: &Options, json: &mut serde_json::Value) {
    if options.rescale_norm != RescaleNorm::Density {
        json["rescale_norm"] = serde_json::json!("l1");
    }
}
