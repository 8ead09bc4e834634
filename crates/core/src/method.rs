//! Merge methods: one file each, registered once, iterated by the engine and the recipe checks.
//!
//! A method says which recipe parameters it takes ([`Parameters`]), what it combines (task
//! vectors `τᵢ = θᵢ − θ_base`, or the models themselves), how each input is sparsified before
//! combining ([`Sparsify`]: the engine runs the streaming top-k and the seeded drop, so a
//! method only names them), how one block of inputs is combined ([`MergeMethod::combine`]),
//! what it adds to a merge's canonical hash beyond the common keys, and how mergekit's YAML
//! spells and defaults it. The paper-citing reference implementations in
//! [`crate::tensor::merge`] stay as the test oracles the engine is checked against.
//!
//! # Adding a method
//!
//! One new file and one registration line. The file, `src/method/my_method.rs`:
//!
//! ```ignore
//! use super::{Combine, MergeMethod};
//! use crate::tensor::merge::Weighted;
//!
//! /// `my_method`: what it does, its paper and numeric variant.
//! pub struct MyMethod;
//!
//! impl MergeMethod for MyMethod {
//!     fn name(&self) -> &'static str {
//!         "my_method"
//!     }
//!     fn combine(&self, inputs: &[Weighted<'_>], _base: Option<&[f32]>, how: &Combine, out: &mut [f32]) {
//!         super::weighted_sum(inputs, how.normalize, out);
//!     }
//! }
//! ```
//!
//! and the line `my_method::MyMethod,` in the `methods!` list at the end of this file. Recipes
//! then accept `method = "my_method"`, the engine runs it, and `recipe.schema.json`'s list of
//! names follows.

use serde::Serialize;

use crate::tensor::merge::{self, TiesNormalize, Weighted};

/// What a method combines.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Operands {
    /// Task vectors; the result is `θ_base + λ·scale·Δ`.
    TaskVectors,
    /// Models; the result is `θ_base + scale·(θ_merged − θ_base)` (`scale` 1: the merge).
    Models,
}

/// How each input is sparsified before the method combines it (the engine does it, streaming).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Sparsify {
    /// Every entry is kept.
    None,
    /// Keep the `density` fraction of largest magnitude (exact top-k, ties by position).
    TopK,
    /// Drop the `gamma` fraction of largest magnitude, keep the next `density` (breadcrumbs).
    Band,
    /// Drop each entry with probability `1 − density` from the recipe's seed, rescaled by
    /// `1/density` or to the tensor's L1 norm (`rescale`, `rescale_norm`).
    Random,
}

/// Whether a method needs a `base` checkpoint.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum BaseUse {
    Always,
    /// Only when an input is a vector (a vector is relative to a base): `linear` of models.
    ForVectors,
}

/// The recipe parameters a method takes; any other is an error naming it.
#[derive(Clone, Copy, Debug)]
pub struct Parameters {
    pub base: BaseUse,
    /// `density` (required: recipe-wide or on every input).
    pub density: bool,
    /// `gamma` (required), with the example its hint gives.
    pub gamma: bool,
    /// `t` (required).
    pub t: bool,
    /// Whether `normalize` applies, and its default when a TOML recipe does not say.
    pub normalize: Option<bool>,
    /// The exact number of inputs, where the method fixes it.
    pub inputs: Option<usize>,
}

impl Default for Parameters {
    fn default() -> Self {
        Self {
            base: BaseUse::Always,
            density: false,
            gamma: false,
            t: false,
            normalize: Some(false),
            inputs: None,
        }
    }
}

/// How mergekit 0.1.5's YAML imports the method (its `merge_methods/registry.py`).
#[derive(Clone, Copy, Debug)]
pub struct Mergekit {
    /// mergekit's `normalize` default for the method.
    pub normalize: bool,
    /// mergekit's `gamma` default, where the method takes one.
    pub gamma: Option<f64>,
    /// Why `rescale: true` cannot be imported, where it cannot.
    pub refuses_rescale: Option<&'static str>,
}

/// How DARE scales the entries it keeps.
#[derive(
    Clone, Copy, Debug, Default, PartialEq, Eq, serde::Deserialize, Serialize, schemars::JsonSchema,
)]
#[serde(rename_all = "lowercase")]
pub enum RescaleNorm {
    /// Divide by the density: unbiased per entry (Yu et al. 2024).
    #[default]
    Density,
    /// Scale each masked tensor so its L1 norm equals the unmasked one's (mergekit 0.1.5).
    L1,
}

/// A recipe's method options, as a method's canonical hash sees them.
#[derive(Clone, Debug)]
pub struct Options {
    pub normalize: bool,
    pub rescale: bool,
    pub rescale_norm: RescaleNorm,
}

/// What the engine hands [`MergeMethod::combine`] besides the inputs.
#[derive(Clone, Copy, Debug)]
pub struct Combine {
    pub normalize: bool,
    /// The point's `t`, for methods that take one.
    pub t: Option<f64>,
    /// `(‖base‖², ‖input₀‖², base·input₀)` over the whole tensor, for methods whose
    /// [`MergeMethod::needs_norms`] is true.
    pub norms: (f64, f64, f64),
}

/// A merge method. See the module docs for how to add one.
pub trait MergeMethod: Send + Sync + 'static {
    /// The name recipes and mergekit configs use, and the canonical hash records.
    fn name(&self) -> &'static str;

    fn operands(&self) -> Operands {
        Operands::TaskVectors
    }

    fn parameters(&self) -> Parameters {
        Parameters::default()
    }

    fn sparsify(&self) -> Sparsify {
        Sparsify::None
    }

    /// Whether [`Combine::norms`] must be measured over the whole tensor first (an extra
    /// streaming pass when the tensor is larger than a window).
    fn needs_norms(&self) -> bool {
        false
    }

    /// Whether the combined change is exactly `Σ wᵢτᵢ` (no normalisation applied), so a lone
    /// input of effective weight 1 can be copied instead of recomputed (bit-exact at λ = 1).
    fn is_weighted_sum(&self, normalize: bool) -> bool {
        let _ = normalize;
        false
    }

    /// Combines one block of (sparsified) inputs into `out` (the change `Δ` for task-vector
    /// methods, the model for model methods). `base` is the block of the base, where there
    /// is one. `out` has the inputs' length.
    fn combine(
        &self,
        inputs: &[Weighted<'_>],
        base: Option<&[f32]>,
        how: &Combine,
        out: &mut [f32],
    );

    /// Keys the method adds to a merge's canonical JSON (FORMAT.md §8) beyond the common ones
    /// (method, inputs, base, λ, density, gamma, t, normalize, rescale, seed, dtype).
    fn canonical(&self, options: &Options, json: &mut serde_json::Value) {
        let _ = (options, json);
    }

    /// How mergekit's YAML imports it; `None`: mergekit has no such method.
    fn mergekit(&self) -> Option<Mergekit>;
}

/// A registered merge method: compares, prints and serialises as its name.
#[derive(Clone, Copy)]
pub struct Method(&'static dyn MergeMethod);

impl Method {
    /// Every registered method, in registration order.
    pub fn all() -> impl Iterator<Item = Method> {
        ALL.iter().map(|m| Method(*m))
    }

    pub fn from_name(name: &str) -> Option<Self> {
        Self::all().find(|m| m.name() == name)
    }

    pub fn name(self) -> &'static str {
        self.0.name()
    }

    /// The method's behaviour.
    pub fn get(self) -> &'static dyn MergeMethod {
        self.0
    }

    /// Whether the method trims or drops entries by `density`.
    pub fn uses_density(self) -> bool {
        self.0.parameters().density
    }

    /// `normalize` when a TOML recipe does not say (crossmerge's documented defaults).
    pub fn default_normalize(self) -> bool {
        self.0.parameters().normalize.unwrap_or(false)
    }

    /// Whether `normalize` means anything for the method.
    pub fn uses_normalize(self) -> bool {
        self.0.parameters().normalize.is_some()
    }

    /// Whether the method drops entries at random (takes `seed`, `rescale`, `rescale_norm`).
    pub fn is_random(self) -> bool {
        self.0.sparsify() == Sparsify::Random
    }

    /// Whether the method works on task vectors (`base + λ·Δ`) rather than on models.
    pub fn uses_lambda(self) -> bool {
        self.0.operands() == Operands::TaskVectors
    }
}

impl PartialEq for Method {
    fn eq(&self, other: &Self) -> bool {
        self.name() == other.name()
    }
}
impl Eq for Method {}

impl std::fmt::Debug for Method {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.name())
    }
}

impl std::fmt::Display for Method {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.name())
    }
}

impl Serialize for Method {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(self.name())
    }
}

/// `Σ wᵢτᵢ` in f64, divided by `Σ wᵢ` when `normalize` (left undivided when |Σ wᵢ| < 1e-8, as
/// mergekit does): the combine step of task arithmetic and the methods that only sparsify
/// before it.
pub fn weighted_sum(inputs: &[Weighted<'_>], normalize: bool, out: &mut [f32]) {
    merge::task_arithmetic(inputs, out);
    if normalize {
        let total: f64 = inputs.iter().map(|i| f64::from(i.weight)).sum();
        if total.abs() >= 1e-8 {
            for o in out.iter_mut() {
                *o = (f64::from(*o) / total) as f32;
            }
        }
    }
}

/// TIES' sign election and disjoint mean (ties, `dare_ties`).
pub fn elect_and_merge(inputs: &[Weighted<'_>], normalize: bool, out: &mut [f32]) {
    let norm = if normalize {
        TiesNormalize::WeightSum
    } else {
        TiesNormalize::None
    };
    merge::ties_merge(inputs, norm, out);
}

macro_rules! methods {
    ($($file:ident :: $method:ident,)*) => {
        $(mod $file;)*
        static ALL: &[&dyn MergeMethod] = &[$(&$file::$method),*];
    };
}

methods! {
    linear::Linear,
    task_arithmetic::TaskArithmetic,
    ties::Ties,
    dare_linear::DareLinear,
    dare_ties::DareTies,
    breadcrumbs::Breadcrumbs,
    magnitude_prune::MagnitudePrune,
    slerp::Slerp,
}

#[cfg(test)]
mod tests {
    use super::Method;

    #[test]
    fn registered_names_are_unique_and_found() {
        let names: Vec<&str> = Method::all().map(Method::name).collect();
        let mut sorted = names.clone();
        sorted.sort_unstable();
        sorted.dedup();
        assert_eq!(sorted.len(), names.len(), "{names:?}");
        for n in names {
            assert_eq!(Method::from_name(n).map(Method::name), Some(n));
        }
    }
}
