//! `slerp`: spherical interpolation of the base and one model, each tensor one vector
//! (Shoemake 1985); see [`crate::tensor::merge::slerp`] for the numeric variant.

use super::{Combine, MergeMethod, Mergekit, Operands, Parameters};
use crate::tensor::merge::{Weighted, slerp_coefficients};

pub struct Slerp;

impl MergeMethod for Slerp {
    fn name(&self) -> &'static str {
        "slerp"
    }
    fn operands(&self) -> Operands {
        Operands::Models
    }
    fn parameters(&self) -> Parameters {
        Parameters {
            t: true,
            normalize: None,
            inputs: Some(1),
            ..Parameters::default()
        }
    }
    fn needs_norms(&self) -> bool {
        true
    }
    fn combine(&self, inputs: &[Weighted<'_>], base: Option<&[f32]>, how: &Combine, out: &mut [f32]) {
        let (nb, nt, dot) = how.norms;
        let (ca, cb) = slerp_coefficients(nb.sqrt(), nt.sqrt(), dot, how.t.unwrap_or(0.0) as f32);
        let (base, model) = (base.expect("slerp has a base"), inputs[0].values);
        for ((o, x), y) in out.iter_mut().zip(base).zip(model) {
            *o = (ca * f64::from(*x) + cb * f64::from(*y)) as f32;
        }
    }
    fn mergekit(&self) -> Option<Mergekit> {
        Some(Mergekit {
            normalize: false,
            gamma: None,
            refuses_rescale: None,
        })
    }
}
