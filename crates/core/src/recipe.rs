//! Recipes: how vectors and checkpoints compose into merged models. Pure data, no I/O.
//!
//! A recipe is a TOML file (or a mergekit YAML file, see [`mergekit`]) parsed into
//! [`RecipeFile`] with unknown keys rejected, then checked into a [`Recipe`]: a known method,
//! the parameters that method needs and no others, sweeps expanded into [`Point`]s. Every
//! error names the file and line and gives a hint. Checking a recipe against the registry's
//! manifests (names, shapes, dtypes, heads) is [`plan`]'s job, still before any weight is read.
//!
//! `schemas/recipe.schema.json` is generated from [`RecipeFile`] by [`json_schema`].

pub mod mergekit;
pub mod plan;

use std::fmt::Write as _;
use std::path::{Path, PathBuf};

use schemars::JsonSchema;
use serde::{Deserialize, Serialize};
use toml::Spanned;

use crate::error::{Error, Result};
use crate::tensor::Dtype;

pub use crate::method::{Method, RescaleNorm};

// ---------------------------------------------------------------------------------------------
// The file as written.

/// A recipe file (TOML). Unknown keys are errors.
#[derive(Debug, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
#[schemars(title = "crossmerge recipe")]
pub struct RecipeFile {
    /// Name of the merged checkpoint (sweep points get `NAME/axis=value` names).
    #[schemars(with = "String")]
    pub name: Spanned<String>,
    /// Free text kept with the recipe.
    pub description: Option<String>,
    /// The merge method: one of the names in `enum` (the registered methods).
    #[schemars(with = "String")]
    pub method: Spanned<String>,
    /// The base checkpoint (name, name@version or id prefix); task vectors are relative to it.
    #[schemars(with = "Option<String>")]
    pub base: Option<Spanned<String>>,
    /// Scale of the merged update: `base + λ·Δ` (task-vector methods; default 1).
    #[schemars(with = "Option<Number>")]
    pub lambda: Option<Spanned<Number>>,
    /// Fraction of each task vector kept (ties, dare_*, breadcrumbs, `magnitude_prune`).
    #[schemars(with = "Option<Number>")]
    pub density: Option<Spanned<Number>>,
    /// Fraction of largest-magnitude outliers dropped (breadcrumbs).
    #[schemars(with = "Option<Number>")]
    pub gamma: Option<Spanned<Number>>,
    /// Interpolation factor (slerp): 0 is the base, 1 the input.
    #[schemars(with = "Option<Number>")]
    pub t: Option<Spanned<Number>>,
    /// ties/`dare_ties`: divide by the agreeing weights (default true); linear: divide by the
    /// sum of the weights (default true); `task_arithmetic`, `dare_linear`, breadcrumbs,
    /// `magnitude_prune`: divide the combined change by the sum of the weights, as mergekit
    /// does (default false).
    pub normalize: Option<bool>,
    /// dare_*: rescale kept entries (default true).
    pub rescale: Option<bool>,
    /// dare_*, with `rescale`: `density` divides the kept entries by the density (the paper's
    /// rule, default); `l1` scales each masked tensor back to its L1 norm (mergekit 0.1.5's).
    pub rescale_norm: Option<RescaleNorm>,
    #[serde(default)]
    pub inputs: Vec<InputFile>,
    pub heads: Option<HeadsFile>,
    /// Per-tensor overrides; for each key the first rule whose glob matches wins.
    #[serde(default)]
    pub parameters: Vec<OverrideFile>,
    pub output: Option<OutputFile>,
}

/// A number, or a sweep over numbers (one merged checkpoint per value).
#[derive(Clone, Debug, Deserialize, JsonSchema)]
#[serde(untagged)]
pub enum Number {
    Value(f64),
    Sweep(SweepFile),
}

#[derive(Clone, Debug, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct SweepFile {
    pub sweep: Vec<f64>,
}

/// One input: a registered vector, or a checkpoint (its difference from `base` is implied).
#[derive(Debug, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct InputFile {
    #[schemars(with = "Option<String>")]
    pub vector: Option<Spanned<String>>,
    #[schemars(with = "Option<String>")]
    pub checkpoint: Option<Spanned<String>>,
    /// Weight of this input (default 1), or a sweep.
    #[schemars(with = "Option<Number>")]
    pub weight: Option<Spanned<Number>>,
    /// This input's density (overrides the recipe's).
    pub density: Option<f64>,
    /// Short name used in sweep point names (default: the reference's last path segment).
    pub label: Option<String>,
}

#[derive(Debug, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct HeadsFile {
    /// Parameters absent from the base (task heads) are copied from this checkpoint; its
    /// config.json and tokenizer files become the merged model's.
    #[schemars(with = "String")]
    pub from: Spanned<String>,
}

#[derive(Debug, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct OverrideFile {
    /// Glob(s) over tensor names, e.g. `*.embeddings.*` or `*.layer.1[01].*`.
    #[serde(rename = "match")]
    #[schemars(with = "Globs")]
    pub pattern: Spanned<Globs>,
    /// Scale of the change on matching tensors: 0 keeps the base's tensor, 1 changes nothing.
    pub weight: Option<f64>,
    pub density: Option<f64>,
    pub gamma: Option<f64>,
    pub t: Option<f64>,
}

#[derive(Clone, Debug, Deserialize, JsonSchema)]
#[serde(untagged)]
pub enum Globs {
    One(String),
    Many(Vec<String>),
}

#[derive(Debug, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct OutputFile {
    /// f32 | f16 | bf16 (default: each tensor keeps the base's dtype).
    #[schemars(with = "Option<String>")]
    pub dtype: Option<Spanned<String>>,
    /// Seed of the stochastic methods (dare_*): same seed, same bits.
    pub seed: Option<u64>,
    /// Language of the merged model (BCP-47), recorded in the catalog.
    pub language: Option<String>,
    /// Task of the merged model (default: the heads checkpoint's task).
    pub task: Option<String>,
}

/// The JSON Schema of [`RecipeFile`], as committed in `schemas/recipe.schema.json`.
pub fn json_schema() -> String {
    let mut schema = schemars::schema_for!(RecipeFile);
    // The method names come from the registered methods, so a new method appears here.
    if let Some(method) = schema
        .as_object_mut()
        .and_then(|o| o.get_mut("properties"))
        .and_then(|p| p.get_mut("method"))
        .and_then(|m| m.as_object_mut())
    {
        let names: Vec<&str> = Method::all().map(Method::name).collect();
        method.insert("enum".to_owned(), serde_json::json!(names));
    }
    let mut s = serde_json::to_string_pretty(&schema).expect("a schema serialises");
    s.push('\n');
    s
}

// ---------------------------------------------------------------------------------------------
// The checked recipe.

/// A value with the line it came from (when known).
#[derive(Clone, Debug, PartialEq)]
pub struct Located<T> {
    pub value: T,
    pub line: Option<usize>,
}

/// A fixed value or the values of a sweep axis.
#[derive(Clone, Debug, PartialEq)]
pub enum Param {
    Fixed(f64),
    Sweep(Vec<f64>),
}

/// Where an input's task vector comes from.
#[derive(Clone, Debug, PartialEq)]
pub enum InputSource {
    /// A registered vector (`from − minus`).
    Vector(Located<String>),
    /// A checkpoint; its task vector is `checkpoint − base` (its model, for linear and slerp).
    Checkpoint(Located<String>),
}

impl InputSource {
    pub fn reference(&self) -> &Located<String> {
        match self {
            InputSource::Vector(r) | InputSource::Checkpoint(r) => r,
        }
    }
}

#[derive(Clone, Debug)]
pub struct Input {
    pub source: InputSource,
    pub weight: Param,
    pub density: Option<f64>,
    pub label: String,
}

/// Per-tensor parameters set by a glob rule.
#[derive(Clone, Debug)]
pub struct Override {
    pub patterns: Vec<String>,
    pub matcher: globset::GlobSet,
    pub line: Option<usize>,
    pub weight: Option<f64>,
    pub density: Option<f64>,
    pub gamma: Option<f64>,
    pub t: Option<f64>,
}

#[derive(Clone, Debug, Default)]
pub struct Output {
    pub dtype: Option<Dtype>,
    pub seed: Option<u64>,
    pub language: Option<String>,
    pub task: Option<String>,
}

/// A recipe checked on its own (not yet against the registry).
#[derive(Clone, Debug)]
pub struct Recipe {
    pub path: PathBuf,
    pub name: Located<String>,
    pub description: Option<String>,
    pub method: Method,
    pub base: Option<Located<String>>,
    pub lambda: Param,
    pub density: Option<Param>,
    pub gamma: Option<Param>,
    pub t: Option<Param>,
    pub normalize: bool,
    pub rescale: bool,
    /// How DARE rescales when `rescale` (see [`RescaleNorm`]).
    pub rescale_norm: RescaleNorm,
    pub inputs: Vec<Input>,
    pub heads: Option<Located<String>>,
    pub overrides: Vec<Override>,
    pub output: Output,
}

/// One point of a recipe's sweep grid (the only point when nothing sweeps): every parameter
/// fixed.
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct Point {
    /// The output checkpoint's name.
    pub name: String,
    /// The swept axes and their values here, e.g. `[("es", 0.3)]`.
    pub axes: Vec<(String, f64)>,
    pub lambda: f64,
    pub density: Option<f64>,
    pub gamma: Option<f64>,
    pub t: Option<f64>,
    /// Per input, in recipe order.
    pub weights: Vec<f64>,
}

/// The line of byte offset `at` in `text` (1-based).
fn line_of(text: &str, at: usize) -> usize {
    text[..at.min(text.len())].matches('\n').count() + 1
}

/// Levenshtein distance, for "did you mean" hints.
fn distance(a: &str, b: &str) -> usize {
    let b: Vec<char> = b.chars().collect();
    let mut row: Vec<usize> = (0..=b.len()).collect();
    for (i, ca) in a.chars().enumerate() {
        let mut prev = row[0];
        row[0] = i + 1;
        for (j, cb) in b.iter().enumerate() {
            let cur = row[j + 1];
            row[j + 1] = (prev + usize::from(ca != *cb)).min(row[j] + 1).min(cur + 1);
            prev = cur;
        }
    }
    row[b.len()]
}

/// `did you mean `x`? ` for the closest candidate within 3 edits, else empty.
pub(crate) fn did_you_mean<'a>(
    word: &str,
    candidates: impl IntoIterator<Item = &'a str>,
) -> String {
    candidates
        .into_iter()
        .map(|c| (distance(word, c), c))
        .filter(|(d, _)| *d <= 3)
        .min()
        .map(|(_, c)| format!("did you mean `{c}`? "))
        .unwrap_or_default()
}

/// Builds recipe errors for one file.
#[derive(Clone, Debug)]
pub struct Errors<'a> {
    pub path: &'a Path,
}

impl Errors<'_> {
    pub fn at(
        &self,
        line: Option<usize>,
        problem: impl Into<String>,
        hint: impl Into<String>,
    ) -> Error {
        Error::Recipe {
            path: self.path.to_path_buf(),
            line,
            problem: problem.into(),
            hint: hint.into(),
        }
    }
}

/// Largest recipe file read.
pub const MAX_RECIPE_BYTES: u64 = 16 << 20;

/// Reads a recipe file's text: a regular file of at most [`MAX_RECIPE_BYTES`], UTF-8.
pub fn read_text(path: &Path) -> Result<String> {
    use std::io::Read;
    let meta = std::fs::metadata(path).map_err(|e| Error::io("reading", path, e))?;
    if !meta.is_file() || meta.len() > MAX_RECIPE_BYTES {
        return Err(Error::bad_input(
            path,
            if meta.is_file() {
                format!(
                    "is {} bytes, over the {MAX_RECIPE_BYTES}-byte limit for a recipe",
                    meta.len()
                )
            } else {
                "is not a regular file".to_owned()
            },
            "a recipe is a TOML (or mergekit YAML) text file",
        ));
    }
    let mut bytes = Vec::new();
    std::fs::File::open(path)
        .and_then(|f| f.take(MAX_RECIPE_BYTES).read_to_end(&mut bytes))
        .map_err(|e| Error::io("reading", path, e))?;
    String::from_utf8(bytes).map_err(|_| {
        Error::bad_input(
            path,
            "is not UTF-8 text",
            "a recipe is a TOML (or mergekit YAML) text file",
        )
    })
}

/// Reads and checks a recipe file: TOML, or mergekit YAML by extension (`.yml`/`.yaml`).
pub fn load(path: &Path) -> Result<Recipe> {
    parse_any(path, &read_text(path)?)
}

/// Parses recipe text as its path's extension says: mergekit YAML for `.yml`/`.yaml`, else
/// TOML.
pub fn parse_any(path: &Path, text: &str) -> Result<Recipe> {
    let ext = path.extension().and_then(|e| e.to_str()).unwrap_or("");
    match ext {
        "yml" | "yaml" => mergekit::parse(path, text),
        _ => parse(path, text),
    }
}

/// Parses and checks TOML recipe text (`path` names it in errors).
pub fn parse(path: &Path, text: &str) -> Result<Recipe> {
    let errors = Errors { path };
    let file: RecipeFile = toml::from_str(text).map_err(|e| {
        let line = e.span().map(|s| line_of(text, s.start));
        let message = e.message().trim().replace('\n', " ");
        let hint = if message.contains("unknown field") {
            "remove or correct the key; schemas/recipe.schema.json lists every key a recipe may have"
        } else if message.contains("untagged enum Number") {
            "write a number, or a sweep such as `{ sweep = [0.0, 0.5, 1.0] }`"
        } else {
            "fix the TOML at that line; recipes/ has examples"
        };
        let message = message.replace("data did not match any variant of untagged enum Number", "expected a number or `{ sweep = [...] }`");
        errors.at(line, message, hint)
    })?;
    from_file(path, text, &file)
}

fn located(text: &str, s: &Spanned<String>) -> Located<String> {
    Located {
        value: s.get_ref().clone(),
        line: Some(line_of(text, s.span().start)),
    }
}

fn param(text: &str, n: &Spanned<Number>) -> (Param, Option<usize>) {
    let line = Some(line_of(text, n.span().start));
    match n.get_ref() {
        Number::Value(v) => (Param::Fixed(*v), line),
        Number::Sweep(s) => (Param::Sweep(s.sweep.clone()), line),
    }
}

fn from_file(path: &Path, text: &str, f: &RecipeFile) -> Result<Recipe> {
    let errors = Errors { path };
    let method_line = Some(line_of(text, f.method.span().start));
    let method = Method::from_name(f.method.get_ref()).ok_or_else(|| {
        errors.at(
            method_line,
            format!("unknown method `{}`", f.method.get_ref()),
            format!(
                "{}methods are {}",
                did_you_mean(f.method.get_ref(), Method::all().map(Method::name)),
                Method::all()
                    .map(Method::name)
                    .collect::<Vec<_>>()
                    .join(", ")
            ),
        )
    })?;
    let mut inputs = Vec::new();
    for (i, input) in f.inputs.iter().enumerate() {
        let source = match (&input.vector, &input.checkpoint) {
            (Some(v), None) => InputSource::Vector(located(text, v)),
            (None, Some(c)) => InputSource::Checkpoint(located(text, c)),
            (v, c) => {
                let line = v
                    .as_ref()
                    .or(c.as_ref())
                    .map(|s| line_of(text, s.span().start));
                return Err(errors.at(
                    line.or(method_line),
                    format!(
                        "input {} needs exactly one of `vector` and `checkpoint`",
                        i + 1
                    ),
                    "write `vector = \"NAME\"` (a derived vector) or `checkpoint = \"NAME\"`",
                ));
            }
        };
        let (weight, weight_line) = input
            .weight
            .as_ref()
            .map_or((Param::Fixed(1.0), None), |w| param(text, w));
        let label = match &input.label {
            Some(l) => {
                let ok = (1..=64).contains(&l.len())
                    && l.starts_with(|c: char| c.is_ascii_alphanumeric())
                    && l.chars()
                        .all(|c| c.is_ascii_alphanumeric() || "._+-".contains(c));
                if !ok {
                    return Err(errors.at(
                        source.reference().line,
                        format!("input {} has label `{}`, which cannot be part of a checkpoint name", i + 1, l.escape_debug()),
                        "labels are 1 to 64 letters, digits, `.`, `_`, `+`, `-`, starting with a letter or digit",
                    ));
                }
                l.clone()
            }
            None => source
                .reference()
                .value
                .rsplit('/')
                .next()
                .unwrap_or("input")
                .to_owned(),
        };
        check_param(&errors, &weight, weight_line, "weight", None)?;
        if let Some(d) = input.density {
            check_fraction(&errors, d, source.reference().line, "density")?;
        }
        inputs.push(Input {
            source,
            weight,
            density: input.density,
            label,
        });
    }
    let opt = |n: &Option<Spanned<Number>>| n.as_ref().map(|n| param(text, n));
    let lambda = opt(&f.lambda);
    let density = opt(&f.density);
    let gamma = opt(&f.gamma);
    let t = opt(&f.t);
    let mut overrides = Vec::new();
    for o in &f.parameters {
        let line = Some(line_of(text, o.pattern.span().start));
        let patterns = match o.pattern.get_ref() {
            Globs::One(p) => vec![p.clone()],
            Globs::Many(ps) => ps.clone(),
        };
        let mut builder = globset::GlobSetBuilder::new();
        for p in &patterns {
            let glob = globset::GlobBuilder::new(p)
                .literal_separator(false)
                .build()
                .map_err(|e| {
                    errors.at(
                        line,
                        format!("`{p}` is not a valid glob: {}", e.kind()),
                        "use `*` for any run of characters, `?` for one, `[..]` for a class",
                    )
                })?;
            builder.add(glob);
        }
        let matcher = builder.build().map_err(|e| {
            errors.at(
                line,
                format!("bad globs: {e}"),
                "check the `match` patterns",
            )
        })?;
        for (v, key) in [(o.density, "density"), (o.gamma, "gamma"), (o.t, "t")] {
            if let Some(v) = v {
                check_fraction(&errors, v, line, key)?;
            }
        }
        if let Some(w) = o.weight
            && !w.is_finite()
        {
            return Err(errors.at(
                line,
                "`weight` must be a finite number",
                "e.g. `weight = 0.0`",
            ));
        }
        overrides.push(Override {
            patterns,
            matcher,
            line,
            weight: o.weight,
            density: o.density,
            gamma: o.gamma,
            t: o.t,
        });
    }
    let mut output = Output::default();
    if let Some(o) = &f.output {
        if let Some(d) = &o.dtype {
            let line = Some(line_of(text, d.span().start));
            output.dtype = match d.get_ref().to_ascii_lowercase().as_str() {
                "f32" | "float32" => Some(Dtype::F32),
                "f16" | "float16" => Some(Dtype::F16),
                "bf16" | "bfloat16" => Some(Dtype::Bf16),
                other => {
                    return Err(errors.at(
                        line,
                        format!("unsupported output dtype `{other}`"),
                        "use f32, f16 or bf16 (or leave it out to keep the base's dtypes)",
                    ));
                }
            };
        }
        output.seed = o.seed;
        output.language.clone_from(&o.language);
        output.task.clone_from(&o.task);
    }
    let recipe = Recipe {
        path: path.to_path_buf(),
        name: located(text, &f.name),
        description: f.description.clone(),
        method,
        base: f.base.as_ref().map(|b| located(text, b)),
        lambda: lambda
            .as_ref()
            .map_or(Param::Fixed(1.0), |(p, _)| p.clone()),
        density: density.as_ref().map(|(p, _)| p.clone()),
        gamma: gamma.as_ref().map(|(p, _)| p.clone()),
        t: t.as_ref().map(|(p, _)| p.clone()),
        normalize: f.normalize.unwrap_or(method.default_normalize()),
        rescale: f.rescale.unwrap_or(true),
        rescale_norm: f.rescale_norm.unwrap_or_default(),
        inputs,
        heads: f.heads.as_ref().map(|h| located(text, &h.from)),
        overrides,
        output,
    };
    let lines = Lines {
        method: method_line,
        lambda: lambda.and_then(|(_, l)| l),
        density: density.and_then(|(_, l)| l),
        gamma: gamma.and_then(|(_, l)| l),
        t: t.and_then(|(_, l)| l),
        normalize: f
            .normalize
            .and_then(|_| find_key_line(text, "normalize").or(method_line)),
        rescale: f
            .rescale
            .map(|_| ())
            .or(f.rescale_norm.map(|_| ()))
            .and_then(|()| find_key_line(text, "rescale").or(method_line)),
        seed: f
            .output
            .as_ref()
            .and_then(|o| o.seed)
            .and_then(|_| find_key_line(text, "seed").or(method_line)),
    };
    recipe.check(&lines)?;
    Ok(recipe)
}

/// The first line whose key is `key` (for values toml gives no span for).
fn find_key_line(text: &str, key: &str) -> Option<usize> {
    text.lines()
        .position(|l| {
            let l = l.trim_start();
            l.strip_prefix(key)
                .is_some_and(|rest| rest.trim_start().starts_with(['=', ':']))
        })
        .map(|i| i + 1)
}

/// Lines of the recipe-level keys, for errors.
#[derive(Clone, Copy, Debug, Default)]
pub(crate) struct Lines {
    pub method: Option<usize>,
    pub lambda: Option<usize>,
    pub density: Option<usize>,
    pub gamma: Option<usize>,
    pub t: Option<usize>,
    pub normalize: Option<usize>,
    pub rescale: Option<usize>,
    pub seed: Option<usize>,
}

pub(crate) fn check_fraction(
    errors: &Errors<'_>,
    v: f64,
    line: Option<usize>,
    key: &str,
) -> Result<()> {
    if (0.0..=1.0).contains(&v) {
        Ok(())
    } else {
        Err(errors.at(
            line,
            format!("`{key}` is {v}, outside [0, 1]"),
            format!("`{key}` is a fraction, e.g. `{key} = 0.2`"),
        ))
    }
}

fn check_param(
    errors: &Errors<'_>,
    p: &Param,
    line: Option<usize>,
    key: &str,
    fraction: Option<()>,
) -> Result<()> {
    let values = match p {
        Param::Fixed(v) => std::slice::from_ref(v),
        Param::Sweep(vs) if vs.is_empty() => {
            return Err(errors.at(
                line,
                format!("the sweep of `{key}` is empty"),
                "list at least one value, e.g. `{ sweep = [0.0, 0.5, 1.0] }`",
            ));
        }
        Param::Sweep(vs) => vs.as_slice(),
    };
    for v in values {
        if !v.is_finite() {
            return Err(errors.at(
                line,
                format!("`{key}` must be a finite number"),
                format!("e.g. `{key} = 0.5`"),
            ));
        }
        if fraction.is_some() {
            check_fraction(errors, *v, line, key)?;
        }
    }
    Ok(())
}

impl Recipe {
    /// The options the method's canonical hash sees.
    pub fn method_options(&self) -> crate::method::Options {
        crate::method::Options {
            normalize: self.normalize,
            rescale: self.rescale,
            rescale_norm: self.rescale_norm,
        }
    }

    fn errors(&self) -> Errors<'_> {
        Errors { path: &self.path }
    }

    /// Checks what the method needs and allows.
    pub(crate) fn check(&self, lines: &Lines) -> Result<()> {
        let errors = self.errors();
        let m = self.method.name();
        crate::catalog::check_name("checkpoint", &self.name.value)
            .map_err(|e| errors.at(self.name.line, e.to_string(), e.hint().unwrap_or_default()))?;
        if self.inputs.is_empty() {
            return Err(errors.at(
                lines.method,
                "the recipe has no inputs",
                "add `[[inputs]]` tables with `vector = \"NAME\"` or `checkpoint = \"NAME\"`",
            ));
        }
        let params = self.method.get().parameters();
        let needs_base = params.base == crate::method::BaseUse::Always
            || self
                .inputs
                .iter()
                .any(|i| matches!(i.source, InputSource::Vector(_)));
        if needs_base && self.base.is_none() {
            return Err(errors.at(
                lines.method,
                format!("`{m}` needs a `base`"),
                "add `base = \"NAME\"`: the checkpoint the task vectors are relative to",
            ));
        }
        check_param(&errors, &self.lambda, lines.lambda, "lambda", None)?;
        let not_for = |key: &str, line: Option<usize>| {
            errors.at(
                line,
                format!("`{key}` does not apply to `{m}`"),
                format!("remove `{key}`, or pick a method that uses it"),
            )
        };
        if !self.method.uses_lambda() && lines.lambda.is_some() {
            return Err(not_for("lambda", lines.lambda));
        }
        if self.method.uses_density() {
            match &self.density {
                Some(d) => check_param(&errors, d, lines.density, "density", Some(()))?,
                None if self.inputs.iter().all(|i| i.density.is_some()) => {}
                None => {
                    return Err(errors.at(
                        lines.method,
                        format!("`{m}` needs a `density`"),
                        "add e.g. `density = 0.2` (the fraction of each task vector kept)",
                    ));
                }
            }
        } else {
            if self.density.is_some() {
                return Err(not_for("density", lines.density));
            }
            if let Some(i) = self.inputs.iter().find(|i| i.density.is_some()) {
                return Err(not_for("density", i.source.reference().line));
            }
        }
        match (&self.gamma, params.gamma) {
            (Some(g), true) => {
                check_param(&errors, g, lines.gamma, "gamma", Some(()))?;
            }
            (None, true) => {
                return Err(errors.at(
                    lines.method,
                    format!("`{m}` needs a `gamma`"),
                    "add e.g. `gamma = 0.01` (the fraction of largest outliers dropped)",
                ));
            }
            (Some(_), false) => return Err(not_for("gamma", lines.gamma)),
            (None, false) => {}
        }
        match (&self.t, params.t) {
            (Some(t), true) => check_param(&errors, t, lines.t, "t", Some(()))?,
            (None, true) => {
                return Err(errors.at(
                    lines.method,
                    format!("`{m}` needs `t`"),
                    "add e.g. `t = 0.5` (0 is the base, 1 the input)",
                ));
            }
            (Some(_), false) => return Err(not_for("t", lines.t)),
            (None, false) => {}
        }
        if let Some(n) = params.inputs
            && self.inputs.len() != n
        {
            return Err(errors.at(
                lines.method,
                format!(
                    "`{m}` combines the base and {n} input{}; the recipe has {}",
                    if n == 1 { "" } else { "s" },
                    self.inputs.len()
                ),
                format!(
                    "keep {n} `[[inputs]]` table{}",
                    if n == 1 { "" } else { "s" }
                ),
            ));
        }
        if !self.method.uses_normalize() && lines.normalize.is_some() {
            return Err(not_for("normalize", lines.normalize));
        }
        if !self.method.is_random() && lines.rescale.is_some() {
            return Err(not_for("rescale", lines.rescale));
        }
        if self.method.is_random() && self.output.seed.is_none() {
            return Err(errors.at(
                lines.method,
                format!("`{m}` drops entries at random and needs a seed"),
                "add `[output]` with `seed = 42`: the same seed gives the same bits",
            ));
        }
        if !self.method.is_random() && lines.seed.is_some() {
            return Err(not_for("seed", lines.seed));
        }
        for o in &self.overrides {
            for (set, key) in [
                (
                    o.density.is_some() && !self.method.uses_density(),
                    "density",
                ),
                (o.gamma.is_some() && !params.gamma, "gamma"),
                (o.t.is_some() && !params.t, "t"),
            ] {
                if set {
                    return Err(not_for(key, o.line));
                }
            }
        }
        let mut labels: Vec<&str> = self.inputs.iter().map(|i| i.label.as_str()).collect();
        labels.sort_unstable();
        if let Some(w) = labels.windows(2).find(|w| w[0] == w[1])
            && self
                .inputs
                .iter()
                .any(|i| matches!(i.weight, Param::Sweep(_)))
        {
            return Err(errors.at(
                lines.method,
                format!(
                    "two inputs are labelled `{}`, so sweep points would share names",
                    w[0]
                ),
                "give the inputs distinct `label = \"...\"`",
            ));
        }
        Ok(())
    }

    /// How many points the sweep grid has, without building it; `None` past `u64::MAX`.
    pub fn point_count(&self) -> Option<u64> {
        let sweep_len = |p: &Param| match p {
            Param::Sweep(v) => v.len() as u64,
            Param::Fixed(_) => 1,
        };
        let mut n: u64 = 1;
        for len in self.inputs.iter().map(|i| sweep_len(&i.weight)).chain(
            [
                Some(&self.lambda),
                self.density.as_ref(),
                self.gamma.as_ref(),
                self.t.as_ref(),
            ]
            .into_iter()
            .flatten()
            .map(sweep_len),
        ) {
            n = n.checked_mul(len)?;
        }
        Some(n)
    }

    /// The sweep grid: one [`Point`] per combination of swept values (axes in recipe order:
    /// input weights, then lambda, density, gamma, t), or one point when nothing sweeps.
    pub fn points(&self) -> Vec<Point> {
        struct Axis {
            label: String,
            values: Vec<f64>,
        }
        let mut axes: Vec<Axis> = Vec::new();
        let sweep_of = |p: &Param| match p {
            Param::Sweep(v) => Some(v.clone()),
            Param::Fixed(_) => None,
        };
        for i in &self.inputs {
            if let Some(values) = sweep_of(&i.weight) {
                axes.push(Axis {
                    label: i.label.clone(),
                    values,
                });
            }
        }
        for (p, label) in [
            (Some(&self.lambda), "lambda"),
            (self.density.as_ref(), "density"),
            (self.gamma.as_ref(), "gamma"),
            (self.t.as_ref(), "t"),
        ] {
            if let Some(values) = p.and_then(sweep_of) {
                axes.push(Axis {
                    label: label.to_owned(),
                    values,
                });
            }
        }
        let total: usize = axes.iter().map(|a| a.values.len()).product();
        let mut points = Vec::with_capacity(total);
        for mut index in 0..total {
            // Last axis varies fastest.
            let mut chosen = vec![0f64; axes.len()];
            for (a, axis) in axes.iter().enumerate().rev() {
                chosen[a] = axis.values[index % axis.values.len()];
                index /= axis.values.len();
            }
            let value_of = |label: &str, p: &Param| -> f64 {
                match p {
                    Param::Fixed(v) => *v,
                    Param::Sweep(_) => {
                        let a = axes.iter().position(|a| a.label == label).expect("an axis");
                        chosen[a]
                    }
                }
            };
            let weights = self
                .inputs
                .iter()
                .map(|i| value_of(&i.label, &i.weight))
                .collect();
            let named: Vec<(String, f64)> = axes
                .iter()
                .zip(&chosen)
                .map(|(a, v)| (a.label.clone(), *v))
                .collect();
            let mut name = self.name.value.clone();
            if !named.is_empty() {
                name.push('/');
                for (k, (label, v)) in named.iter().enumerate() {
                    if k > 0 {
                        name.push('_');
                    }
                    let _ = write!(name, "{label}={v}");
                }
            }
            points.push(Point {
                name,
                axes: named,
                lambda: value_of("lambda", &self.lambda),
                density: self.density.as_ref().map(|p| value_of("density", p)),
                gamma: self.gamma.as_ref().map(|p| value_of("gamma", p)),
                t: self.t.as_ref().map(|p| value_of("t", p)),
                weights,
            });
        }
        points
    }

    /// The override value of `key` for `tensor`: the first rule that matches and sets it.
    pub fn override_for(&self, tensor: &str, key: fn(&Override) -> Option<f64>) -> Option<f64> {
        self.overrides
            .iter()
            .filter(|o| o.matcher.is_match(tensor))
            .find_map(key)
    }
}

#[cfg(test)]
mod tests;
