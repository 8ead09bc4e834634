//! Import of mergekit YAML configurations (`models`, `base_model`, `merge_method`,
//! `parameters` with weight/density/…, `dtype`) for the methods crossmerge implements.
//!
//! Model names are registry references (`name`, `name@version`, an id prefix), not Hugging
//! Face paths. The merged checkpoint is named after the file's stem (`--name` overrides it).
//! What differs from mergekit, on purpose:
//! - mergekit's DARE draws from torch's generator and its YAML has no seed; an imported DARE
//!   recipe uses seed 0 (deterministic, but other bits than mergekit's for the same config).
//! - Defaults are mergekit 0.1.5's per method (`normalize` true for ties and linear only;
//!   `rescale` true for DARE, with its L1 rule; density 1; gamma 0.01), not the TOML ones.
//! - `rescale: true` on ties (mergekit rescales trimmed tensors to their L1 norm) and
//!   `magnitude_prune` (not a mergekit method) are refused.
//! - `int8_mask` (a mergekit memory option) is accepted and has no effect.
//! - Keys crossmerge does not implement (`slices`, `tokenizer_source`, per-layer gradients as
//!   weight lists, other methods) are errors, never silently ignored.

use std::path::Path;

use serde::Deserialize;

use super::{Errors, Input, InputSource, Lines, Located, Method, Output, Param, Recipe};
use crate::error::Result;
use crate::tensor::Dtype;

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct MkFile {
    models: Vec<MkModel>,
    base_model: Option<String>,
    merge_method: String,
    parameters: Option<MkParams>,
    dtype: Option<String>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct MkModel {
    model: String,
    parameters: Option<MkModelParams>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct MkModelParams {
    weight: Option<f64>,
    density: Option<f64>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct MkParams {
    weight: Option<f64>,
    density: Option<f64>,
    gamma: Option<f64>,
    lambda: Option<f64>,
    t: Option<f64>,
    normalize: Option<bool>,
    rescale: Option<bool>,
    int8_mask: Option<bool>,
}

/// The first line mentioning `needle` as a value (`key: needle`), for errors.
fn line_of_value(text: &str, needle: &str) -> Option<usize> {
    text.lines()
        .position(|l| {
            l.split_once(':')
                .is_some_and(|(_, v)| v.trim().trim_matches(['"', '\'']) == needle)
        })
        .map(|i| i + 1)
}

fn line_of_key(text: &str, key: &str) -> Option<usize> {
    text.lines()
        .position(|l| {
            l.trim_start()
                .trim_start_matches("- ")
                .strip_prefix(key)
                .is_some_and(|r| r.starts_with(':'))
        })
        .map(|i| i + 1)
}

/// Parses mergekit YAML text (`path` names it in errors and gives the merged model its name).
pub fn parse(path: &Path, text: &str) -> Result<Recipe> {
    let errors = Errors { path };
    let file: MkFile = serde_norway::from_str(text).map_err(|e| {
        let line = e.location().map(|l| l.line());
        let message = e.to_string();
        let message = message
            .split(" at line ")
            .next()
            .unwrap_or(&message)
            .to_owned();
        let hint = if message.contains("unknown field") {
            "crossmerge imports `models`, `base_model`, `merge_method`, `parameters` (weight, density, gamma, lambda, t, normalize, rescale) and `dtype`; write a TOML recipe for anything else"
        } else {
            "fix the YAML at that line"
        };
        errors.at(line, format!("mergekit config: {message}"), hint)
    })?;
    let method_line = line_of_key(text, "merge_method");
    let method = Method::from_name(&file.merge_method).ok_or_else(|| {
        errors.at(
            method_line,
            format!("merge method `{}` is not supported", file.merge_method),
            format!(
                "{}crossmerge implements {}",
                super::did_you_mean(&file.merge_method, Method::all().map(Method::name)),
                Method::all()
                    .map(Method::name)
                    .collect::<Vec<_>>()
                    .join(", ")
            ),
        )
    })?;
    let params = file.parameters.as_ref();
    let located = |v: &str| Located {
        value: v.to_owned(),
        line: line_of_value(text, v),
    };
    let name = method.name();
    let Some(defaults) = method.get().mergekit() else {
        return Err(errors.at(
            method_line,
            format!("mergekit 0.1.5 has no `{name}`"),
            format!("write a TOML recipe for crossmerge's `{name}` (schemas/recipe.schema.json)"),
        ));
    };
    // A method that needs a base only for vectors (linear) averages the listed models.
    let models_only = method.get().parameters().base == crate::method::BaseUse::ForVectors;
    let base = if models_only {
        None
    } else {
        file.base_model.as_deref().map(located)
    };
    if models_only && file.base_model.is_some() {
        return Err(errors.at(
            line_of_key(text, "base_model"),
            format!("`{name}` does not use `base_model`"),
            format!("remove `base_model` ({name} averages the listed models)"),
        ));
    }
    if let Some(why) = defaults.refuses_rescale
        && params.is_some_and(|p| p.rescale == Some(true))
    {
        return Err(errors.at(
            line_of_key(text, "rescale").or(method_line),
            why,
            format!("remove `rescale` (mergekit's default for {name} is false)"),
        ));
    }
    if let Some(d) = params.and_then(|p| p.density) {
        super::check_fraction(
            &errors,
            d,
            line_of_key(text, "density").or(method_line),
            "density",
        )?;
    }
    let mut inputs = Vec::new();
    for m in &file.models {
        // mergekit lists the base among the models for some methods; it is not an input.
        if base.as_ref().is_some_and(|b| b.value == m.model) {
            continue;
        }
        let p = m.parameters.as_ref();
        if let Some(d) = p.and_then(|p| p.density) {
            super::check_fraction(&errors, d, line_of_value(text, &m.model), "density")?;
        }
        inputs.push(Input {
            source: InputSource::Checkpoint(located(&m.model)),
            weight: Param::Fixed(
                p.and_then(|p| p.weight)
                    .or(params.and_then(|p| p.weight))
                    .unwrap_or(1.0),
            ),
            density: p.and_then(|p| p.density),
            label: m.model.rsplit('/').next().unwrap_or(&m.model).to_owned(),
        });
    }
    let dtype = match file.dtype.as_deref() {
        None => None,
        Some("float32" | "f32") => Some(Dtype::F32),
        Some("float16" | "f16") => Some(Dtype::F16),
        Some("bfloat16" | "bf16") => Some(Dtype::Bf16),
        Some(other) => {
            return Err(errors.at(
                line_of_key(text, "dtype"),
                format!("dtype `{other}` is not supported"),
                "use float32, float16 or bfloat16",
            ));
        }
    };
    let name = path
        .file_stem()
        .and_then(|s| s.to_str())
        .unwrap_or("merged")
        .to_owned();
    // A key that is set always gets a line (its own, else that of `parameters:`), so a check
    // that rejects it cannot miss it: flow-style mappings (`parameters: {normalize: true}`)
    // put keys where `line_of_key` does not look.
    let params_line = line_of_key(text, "parameters").or(method_line);
    let key_line = |set: bool, key: &str| {
        if set {
            line_of_key(text, key).or(params_line)
        } else {
            None
        }
    };
    let lines = Lines {
        method: method_line,
        lambda: key_line(params.is_some_and(|p| p.lambda.is_some()), "lambda"),
        density: key_line(params.is_some_and(|p| p.density.is_some()), "density"),
        gamma: key_line(params.is_some_and(|p| p.gamma.is_some()), "gamma"),
        t: key_line(params.is_some_and(|p| p.t.is_some()), "t"),
        normalize: key_line(params.is_some_and(|p| p.normalize.is_some()), "normalize"),
        // mergekit reads `rescale` only where it sparsifies; elsewhere it changes nothing (ties
        // with `rescale: true` is refused above).
        rescale: key_line(
            params.is_some_and(|p| p.rescale.is_some()) && method.is_random(),
            "rescale",
        ),
        seed: None,
    };
    let _ = params.and_then(|p| p.int8_mask);
    let recipe = Recipe {
        path: path.to_path_buf(),
        name: Located {
            value: name,
            line: None,
        },
        description: Some(format!("imported from mergekit config {}", path.display())),
        method,
        base,
        lambda: Param::Fixed(params.and_then(|p| p.lambda).unwrap_or(1.0)),
        // mergekit's tensor-parameter defaults: density 1 (keep everything), gamma 0.01.
        density: params
            .and_then(|p| p.density)
            .or(method.uses_density().then_some(1.0))
            .map(Param::Fixed),
        gamma: params
            .and_then(|p| p.gamma)
            .or(defaults.gamma)
            .map(Param::Fixed),
        t: params.and_then(|p| p.t).map(Param::Fixed),
        normalize: params
            .and_then(|p| p.normalize)
            .unwrap_or(defaults.normalize),
        rescale: params
            .and_then(|p| p.rescale)
            .unwrap_or_else(|| method.is_random()),
        // mergekit rescales a DARE-masked tensor to its L1 norm, not by 1/density.
        rescale_norm: super::RescaleNorm::L1,
        inputs,
        heads: None,
        overrides: Vec::new(),
        output: Output {
            dtype,
            seed: method.is_random().then_some(0),
            language: None,
            task: None,
        },
    };
    recipe.check(&lines)?;
    Ok(recipe)
}
