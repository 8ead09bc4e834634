//! The study file (TOML, `schemas/study.schema.json`): what a study names, read and checked
//! against itself; relative paths are relative to the file's folder.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

use crate::error::{Error, Result};
use crate::eval::run::Task;
use crate::evaluate::Range;

/// A study file as written. Unknown keys are errors.
#[derive(Clone, Debug, Deserialize, Serialize, JsonSchema)]
#[serde(deny_unknown_fields)]
#[schemars(title = "crossmerge study")]
pub struct StudyFile {
    /// The study's name: its output folder (`output/NAME` by default) and the prefix of the
    /// vectors and merged checkpoints it registers.
    pub name: String,
    /// Free text, printed at the top of the output's README.md.
    pub description: Option<String>,
    /// The base checkpoint every vector is relative to (name, name@version or id prefix).
    pub base: String,
    /// The λ grid (default 0.0, 0.1, …, 1.0): `θ = θ_task + λ·(θ_language − θ_base)`.
    pub lambdas: Option<Vec<f64>>,
    /// The merge: any recipe key but `name`, `base`, `inputs` and `heads` (default
    /// `method = "task_arithmetic"`), e.g. `method = "ties"`, `density = 0.2`.
    #[schemars(with = "Option<BTreeMap<String, serde_json::Value>>")]
    pub merge: Option<toml::Table>,
    /// Globs of tensors left out of every vector (e.g. `*.embeddings.*`).
    #[serde(default)]
    pub exclude: Vec<String>,
    /// How evaluations run (the same for every one).
    #[serde(default)]
    pub evaluation: EvaluationFile,
    /// Per task (pos, ner, nli, dp): the English task model and the data per language.
    pub tasks: BTreeMap<String, TaskFile>,
    /// Per language (BCP-47): its language model, and text for perplexity.
    pub languages: BTreeMap<String, LanguageFile>,
    /// Cosine similarities of the language vectors.
    #[serde(default)]
    pub compare: CompareFile,
}

/// A checkpoint the study uses: registered, or trained by the study from `base`.
#[derive(Clone, Debug, Deserialize, Serialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct ModelFile {
    /// A registered checkpoint (name, name@version or id prefix).
    pub model: Option<String>,
    /// A train settings file (`schemas/train.schema.json`; its `name` names the model): the
    /// study trains it unless a checkpoint of that name is registered.
    pub train: Option<PathBuf>,
    /// What `train` starts from (default: the study's `base`), e.g. a masked-LM head trained
    /// on the frozen base, so that a language model fine-tunes a head that already works.
    pub from: Option<String>,
}

#[derive(Clone, Debug, Deserialize, Serialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct TaskFile {
    #[serde(flatten)]
    pub model: ModelFile,
    /// The metric λ is selected on and reported (default: `upos_accuracy`, `entity_f1`,
    /// `accuracy`, `las`).
    pub metric: Option<String>,
    /// Gold label → model label (a file as `eval --label-map` reads), for every evaluation
    /// of this task.
    pub label_map: Option<PathBuf>,
    /// Per language: validation and test data, each `FILE` or `FILE[START:END]` (sentences,
    /// 0-based, end excluded).
    pub data: BTreeMap<String, DataFile>,
    /// Per language: a model trained in that language, scored on its test data beside the
    /// transfer (registered checkpoints).
    #[serde(default)]
    pub baselines: BTreeMap<String, String>,
}

#[derive(Clone, Debug, Deserialize, Serialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct DataFile {
    pub validation: String,
    pub test: String,
}

#[derive(Clone, Debug, Deserialize, Serialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct LanguageFile {
    #[serde(flatten)]
    pub model: ModelFile,
    /// Held-out text (a paragraph a line, optionally `[START:END]`): masked-LM perplexity of
    /// `before` and of the language model on it.
    pub text: Option<String>,
    /// The model before language fine-tuning, with a masked-LM head (default: the base).
    pub before: Option<ModelFile>,
}

#[derive(Clone, Debug, Default, Deserialize, Serialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct EvaluationFile {
    /// cpu | cuda | cuda:N (`--device` overrides it).
    pub device: Option<String>,
    /// Subwords per sequence (default 512).
    pub max_length: Option<usize>,
    /// Sentences per forward pass (default 32).
    pub batch_size: Option<usize>,
    /// Seed of the masked-LM masking (default 42).
    pub seed: Option<u64>,
    /// Also report pseudo-perplexity (every token masked in turn; slow).
    pub pseudo_perplexity: Option<bool>,
}

#[derive(Clone, Debug, Default, Deserialize, Serialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct CompareFile {
    /// The language whose vector the others are compared with (default `en` when the study
    /// has it, else none is compared).
    pub reference: Option<String>,
}

/// The JSON Schema of a study file, as committed in `schemas/study.schema.json`.
pub fn json_schema() -> String {
    let schema = schemars::schema_for!(StudyFile);
    serde_json::to_string_pretty(&schema).expect("a schema serialises") + "\n"
}

/// A data file and the part of it used.
#[derive(Clone, Debug, Serialize)]
pub struct Data {
    pub path: PathBuf,
    pub range: Option<Range>,
}

impl Data {
    /// `FILE` or `FILE[START:END]`, relative to `dir`.
    fn parse(text: &str, dir: &Path, study: &Path) -> Result<Self> {
        let (file, range) = match text.rfind('[') {
            Some(i) if text.ends_with(']') => (&text[..i], Some(Range::parse(&text[i..]))),
            _ => (text, None),
        };
        let range = range.transpose().map_err(|e| {
            at(
                study,
                format!("data `{text}`: {e}"),
                e.hint().unwrap_or_default(),
            )
        })?;
        let path = dir.join(file);
        if !path.is_file() {
            return Err(at(
                study,
                format!("data file `{}` does not exist", path.display()),
                "paths in a study file are relative to its folder",
            ));
        }
        Ok(Self { path, range })
    }

    pub fn label(&self) -> String {
        let name = self
            .path
            .file_name()
            .map_or_else(String::new, |n| n.to_string_lossy().into_owned());
        match self.range {
            Some(r) => format!("{name}{r}"),
            None => name,
        }
    }
}

/// Where a model comes from.
#[derive(Clone, Debug, Serialize)]
pub enum Source {
    Registered(String),
    Trained {
        settings: PathBuf,
        name: String,
        /// `None`: the study's base.
        from: Option<String>,
    },
}

impl Source {
    /// The reference the study uses for it once it exists.
    pub fn reference(&self) -> &str {
        match self {
            Self::Registered(r) => r,
            Self::Trained { name, .. } => name,
        }
    }
}

#[derive(Clone, Debug, Serialize)]
pub struct StudyTask {
    pub task: Task,
    pub metric: String,
    pub model: Source,
    pub label_map: Option<PathBuf>,
    /// (language, validation, test), by language.
    pub data: Vec<(String, Data, Data)>,
    pub baselines: BTreeMap<String, String>,
}

#[derive(Clone, Debug, Serialize)]
pub struct StudyLanguage {
    pub language: String,
    pub model: Source,
    pub text: Option<Data>,
    /// `None`: the base.
    pub before: Option<Source>,
}

/// A study file, checked: every task and language known, paths resolved, ranges parsed.
#[derive(Clone, Debug, Serialize)]
pub struct Study {
    pub path: PathBuf,
    /// The file's bytes (kept with the output).
    pub text: String,
    pub name: String,
    pub description: Option<String>,
    pub base: String,
    pub lambdas: Vec<f64>,
    #[serde(skip)]
    pub merge: toml::Table,
    pub exclude: Vec<String>,
    pub device: String,
    pub max_length: usize,
    pub batch_size: usize,
    pub seed: u64,
    pub pseudo_perplexity: bool,
    pub tasks: Vec<StudyTask>,
    pub languages: Vec<StudyLanguage>,
    pub reference: Option<String>,
}

fn at(path: &Path, problem: impl Into<String>, hint: impl Into<String>) -> Error {
    Error::bad_input(path, problem.into(), hint.into())
}

impl Study {
    pub fn read(path: &Path) -> Result<Self> {
        let text = std::fs::read_to_string(path).map_err(|e| Error::io("reading", path, e))?;
        let file: StudyFile = toml::from_str(&text).map_err(|e| {
            let line = e
                .span()
                .map(|s| text[..s.start].matches('\n').count() + 1)
                .map(|l| format!("line {l}: "))
                .unwrap_or_default();
            at(
                path,
                format!("{line}{}", e.message().trim()),
                "a study file has the keys of schemas/study.schema.json (name, base, tasks, languages, …); see recipes/study-*.toml",
            )
        })?;
        Self::check(path, text, file)
    }

    #[allow(clippy::too_many_lines)] // one check after another, in the file's order
    fn check(path: &Path, text: String, f: StudyFile) -> Result<Self> {
        let dir = path.parent().unwrap_or(Path::new("."));
        crate::catalog::check_name("study name", &f.name).map_err(|e| {
            at(
                path,
                e.to_string(),
                "name the study with letters, digits, `.`, `_`, `-`",
            )
        })?;
        let lambdas = f
            .lambdas
            .unwrap_or_else(|| (0..=10).map(|i| f64::from(i) / 10.0).collect());
        if lambdas.is_empty() || lambdas.iter().any(|l| !l.is_finite()) {
            return Err(at(
                path,
                "`lambdas` must be a non-empty list of finite numbers",
                "e.g. lambdas = [0.0, 0.25, 0.5, 0.75, 1.0]",
            ));
        }
        let mut sorted = lambdas.clone();
        sorted.sort_by(f64::total_cmp);
        sorted.dedup();
        if sorted.len() != lambdas.len() || sorted != lambdas {
            return Err(at(
                path,
                "`lambdas` must be increasing, each value once",
                "list the grid in increasing order, e.g. [0.0, 0.5, 1.0]",
            ));
        }
        let mut merge = f.merge.unwrap_or_default();
        for key in ["name", "base", "inputs", "heads", "description"] {
            if merge.contains_key(key) {
                return Err(at(
                    path,
                    format!("[merge] sets `{key}`, which the study sets itself"),
                    "[merge] takes the method and its parameters (method, density, normalize, …)",
                ));
            }
        }
        merge
            .entry("method")
            .or_insert_with(|| toml::Value::String("task_arithmetic".to_owned()));
        let model = |m: &ModelFile, what: &str| -> Result<Source> {
            if m.from.is_some() && m.train.is_none() {
                return Err(at(
                    path,
                    format!("{what} names `from` without `train`"),
                    "`from` says what a trained model starts from; give `train` with it",
                ));
            }
            match (&m.model, &m.train) {
                (Some(r), None) => Ok(Source::Registered(r.clone())),
                (None, Some(t)) => {
                    let settings = dir.join(t);
                    let s = crate::train::TrainSettings::read(&settings)?;
                    let name = s.name.ok_or_else(|| {
                        at(
                            &settings,
                            "a train settings file used by a study names its model (`name`)",
                            "add name = \"…\" to the settings file",
                        )
                    })?;
                    Ok(Source::Trained {
                        settings,
                        name,
                        from: m.from.clone(),
                    })
                }
                _ => Err(at(
                    path,
                    format!(
                        "{what} needs exactly one of `model` (registered) or `train` (a settings file)"
                    ),
                    "e.g. model = \"pos-en\", or train = \"train/pos-en.toml\"",
                )),
            }
        };
        let mut languages = Vec::new();
        for (lang, l) in &f.languages {
            crate::catalog::check_name("language", lang).map_err(|e| {
                at(
                    path,
                    e.to_string(),
                    "languages are BCP-47 codes such as es, de",
                )
            })?;
            languages.push(StudyLanguage {
                language: lang.clone(),
                model: model(&l.model, &format!("[languages.{lang}]"))?,
                text: l
                    .text
                    .as_deref()
                    .map(|t| Data::parse(t, dir, path))
                    .transpose()?,
                before: l
                    .before
                    .as_ref()
                    .map(|b| model(b, &format!("[languages.{lang}.before]")))
                    .transpose()?,
            });
        }
        let mut tasks = Vec::new();
        for (name, t) in &f.tasks {
            let task = Task::parse(name)
                .filter(|t| *t != Task::Mlm)
                .ok_or_else(|| {
                    at(
                        path,
                        format!("unknown task `{name}`"),
                        "a study's tasks are pos, ner, nli and dp",
                    )
                })?;
            if t.data.is_empty() {
                return Err(at(
                    path,
                    format!("[tasks.{name}] has no data"),
                    "give [tasks.TASK.data.LANG] with validation and test files",
                ));
            }
            let mut data = Vec::new();
            for (lang, d) in &t.data {
                if !f.languages.contains_key(lang) {
                    return Err(at(
                        path,
                        format!("[tasks.{name}.data.{lang}]: `{lang}` is not in [languages]"),
                        "every language with task data needs its language model under [languages.LANG]",
                    ));
                }
                data.push((
                    lang.clone(),
                    Data::parse(&d.validation, dir, path)?,
                    Data::parse(&d.test, dir, path)?,
                ));
            }
            for lang in t.baselines.keys() {
                if !t.data.contains_key(lang) {
                    return Err(at(
                        path,
                        format!("[tasks.{name}.baselines]: `{lang}` has no data"),
                        "a baseline is scored on its language's test data: add [tasks.TASK.data.LANG]",
                    ));
                }
            }
            tasks.push(StudyTask {
                task,
                metric: t
                    .metric
                    .clone()
                    .unwrap_or_else(|| crate::train::selection(task).0.to_owned()),
                model: model(&t.model, &format!("[tasks.{name}]"))?,
                label_map: t.label_map.as_ref().map(|p| dir.join(p)),
                data,
                baselines: t.baselines.clone(),
            });
        }
        let reference = match f.compare.reference {
            Some(r) if !f.languages.contains_key(&r) => {
                return Err(at(
                    path,
                    format!("[compare] reference `{r}` is not in [languages]"),
                    "the reference is one of the study's languages (its vector is compared with the others)",
                ));
            }
            Some(r) => Some(r),
            None => f.languages.contains_key("en").then(|| "en".to_owned()),
        };
        let e = f.evaluation;
        Ok(Self {
            path: path.to_path_buf(),
            text,
            name: f.name,
            description: f.description,
            base: f.base,
            lambdas,
            merge,
            exclude: f.exclude,
            device: e.device.unwrap_or_else(|| "cpu".to_owned()),
            max_length: e.max_length.unwrap_or(512),
            batch_size: e.batch_size.unwrap_or(32),
            seed: e.seed.unwrap_or(42),
            pseudo_perplexity: e.pseudo_perplexity.unwrap_or(false),
            tasks,
            languages,
            reference,
        })
    }

    pub fn language(&self, lang: &str) -> &StudyLanguage {
        self.languages
            .iter()
            .find(|l| l.language == lang)
            .expect("checked: every task language is a study language")
    }
}
