//! `task_arithmetic`: `Σ wᵢτᵢ` (Ilharco et al. 2023); see
//! [`crate::tensor::merge::task_arithmetic`].

use super::{Combine, MergeMethod, Mergekit};
use crate::tensor::merge::Weighted;

pub struct TaskArithmetic;

impl MergeMethod for TaskArithmetic {
    fn name(&self) -> &'static str {
        "task_arithmetic"
    }
    fn is_weighted_sum(&self, normalize: bool) -> bool {
        !normalize
    }
    fn combine(&self, inputs: &[Weighted<'_>], _: Option<&[f32]>, how: &Combine, out: &mut [f32]) {
        super::weighted_sum(inputs, how.normalize, out);
    }
    fn mergekit(&self) -> Option<Mergekit> {
        Some(Mergekit {
            normalize: false,
            gamma: None,
            refuses_rescale: None,
        })
    }
}
