//! The study (`crossmerge study`): for each task T and language X,
//! `θ = θ_T + λ·(θ_lm,X − θ_base)` over a λ grid, λ selected on X's validation data (ties → the
//! smaller λ) and scored on X's test data against the task model alone; masked-LM perplexity
//! before and after language fine-tuning; the cosine of each language vector with the
//! reference's, overall and by layer.
//!
//! A study is a list of units (train, derive, merge, evaluate, compare) walked in dependency
//! order. Every unit but `compare` is memoised in the registry (a model by its name, a vector
//! by its definition, a merge by its recipe hash, an evaluation by its id), so a study that is
//! killed and run again does only what is left, and a dry run walks the same list without
//! running anything (it reads manifests and data files, never a tensor).
//!
//! Executors: this module runs a study's units in this process ([`run`]); [`slurm`] hands
//! them to Slurm, using the walk's two other modes: [`ready`] collects the units whose inputs
//! are all registered, and [`run_unit`] runs one of them, by key, on a compute node.

pub mod file;
pub mod output;
pub mod slurm;

use std::collections::{BTreeMap, BTreeSet};
use std::path::Path;

use serde::Serialize;

use crate::catalog::{CheckpointRow, VectorRow};
use crate::error::{Error, Result};
use crate::eval::run::Task;
use crate::eval::{conllu, ner, nli};
use crate::evaluate::{EvalOptions, Evaluate, Range};
use crate::registry::MergeOptions;
use crate::train::{Train, TrainPlan, TrainSettings};
use crate::{CompareOptions, DeriveOptions, GroupBy, NoProgress, Registry, VectorKind};
pub use file::Study;
use file::{Data, Source};
use output::{
    Cosine, ModelRef, Perplexity, PerplexityPair, Results, Score, SweepPoint, TaskResults, Transfer,
};

/// The kinds of unit, in dependency order.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Serialize, serde::Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum UnitKind {
    Train,
    Derive,
    Merge,
    Eval,
    Compare,
}

impl UnitKind {
    pub const ALL: [UnitKind; 5] = [
        UnitKind::Train,
        UnitKind::Derive,
        UnitKind::Merge,
        UnitKind::Eval,
        UnitKind::Compare,
    ];

    pub fn name(self) -> &'static str {
        match self {
            UnitKind::Train => "train",
            UnitKind::Derive => "derive",
            UnitKind::Merge => "merge",
            UnitKind::Eval => "eval",
            UnitKind::Compare => "compare",
        }
    }
}

/// One unit and whether it was done before this run.
#[derive(Clone, Debug, Serialize)]
pub struct Unit {
    pub kind: UnitKind,
    pub label: String,
    /// Found in the registry when the run began (or, in a dry run, now).
    pub done: bool,
    /// With [`StudyOptions::sizes`], an evaluation's examples, or the sequences a training
    /// run steps through (steps × batch size × accumulation).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub examples: Option<u64>,
    /// With [`StudyOptions::sizes`], the parameters of the model a train or eval unit makes
    /// or reads (the base's when it does not exist yet).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub parameters: Option<u64>,
}

/// Every unit of a study, in order.
#[derive(Clone, Debug, Default, Serialize)]
pub struct Plan {
    pub units: Vec<Unit>,
}

impl Plan {
    /// (total, done) units of `kind`.
    pub fn count(&self, kind: UnitKind) -> (usize, usize) {
        let of: Vec<&Unit> = self.units.iter().filter(|u| u.kind == kind).collect();
        (of.len(), of.iter().filter(|u| u.done).count())
    }
}

/// A unit that is not done and whose inputs all are: what an executor runs next.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct Ready {
    pub kind: UnitKind,
    /// What identifies the unit across walks: `train:NAME`, `derive:NAME`, `merge:SWEEP`,
    /// `eval:ID`.
    pub key: String,
    pub label: String,
}

/// What a walk does with the units that are not done.
#[derive(Clone, Debug, PartialEq, Eq)]
enum Mode {
    /// Runs them.
    Run,
    /// Runs nothing; collects those whose inputs are all there ([`ready`]).
    Collect,
    /// Runs the one unit with this key ([`run_unit`]).
    Only(String),
}

/// What a study reports as it goes (from several threads at once with `jobs` > 1).
pub trait StudyProgress: Sync {
    /// A unit that was not done starts (or, for a sweep's merges, is reached).
    fn unit(&self, kind: UnitKind, label: &str);
}

/// Reports nothing.
pub struct Silent;

impl StudyProgress for Silent {
    fn unit(&self, _: UnitKind, _: &str) {}
}

/// How to run a study.
#[derive(Clone, Debug, Default)]
#[non_exhaustive]
pub struct StudyOptions {
    /// Plan and report what is done; run nothing, read no tensor.
    pub dry_run: bool,
    /// Replaces the study file's evaluation and training device.
    pub device: Option<String>,
    /// The command line, written into the generated files.
    pub command: String,
    /// Evaluations run at once (0 and 1: one at a time, in the walk's order). Training,
    /// derivations and merges run one at a time whatever this says, each on every core.
    pub jobs: usize,
    /// Size every train and eval unit of the plan (examples, parameters), for estimates.
    pub sizes: bool,
}

/// What a study run (or dry run) found and made.
#[derive(Debug)]
pub struct Outcome {
    pub plan: Plan,
    /// `None` in a dry run.
    pub results: Option<Results>,
}

/// The reference of a vector: `name@version`.
fn vref(v: &VectorRow) -> String {
    v.reference()
}

/// Runs `study` (or walks it, in a dry run).
///
/// With `jobs` > 1 the walk runs training, derivations and merges as it meets them but only
/// collects the evaluations that are not stored; they then run `jobs` at a time, each worker
/// on its own handle of the registry (every evaluation is recorded in its own transaction),
/// and the walk starts again. The second walk finds the sweeps scored and asks for the test
/// evaluations at the selected λ; the last walk finds everything stored and assembles the
/// results, which are those of a walk with one job.
pub fn run(
    reg: &mut Registry,
    study: &Study,
    opts: &StudyOptions,
    progress: &dyn StudyProgress,
) -> Result<Outcome> {
    let jobs = if opts.dry_run { 1 } else { opts.jobs.max(1) };
    let mut w = Walk::new(reg, study, opts, progress, Mode::Run);
    w.jobs = jobs;
    w.check()?;
    let mut first: Option<Plan> = None;
    loop {
        let results = w.walk(&opts.command)?;
        let plan = std::mem::take(&mut w.plan);
        let plan = first.get_or_insert(plan).clone();
        let pending = std::mem::take(&mut w.pending);
        if pending.is_empty() {
            return Ok(Outcome { plan, results });
        }
        evaluate_all(w.reg.root(), &pending, jobs, progress)?;
    }
}

/// The units of `study` that are not done and whose inputs all are (nothing when the study is
/// complete but for its comparison, which reads vectors and stores nothing), with the plan.
pub fn ready(reg: &mut Registry, study: &Study, opts: &StudyOptions) -> Result<(Vec<Ready>, Plan)> {
    let mut w = Walk::new(reg, study, opts, &Silent, Mode::Collect);
    w.exec = false;
    w.check()?;
    w.walk(&opts.command)?;
    Ok((std::mem::take(&mut w.ready), std::mem::take(&mut w.plan)))
}

/// Runs the one unit of `study` whose key is `key` ([`Ready::key`]), and nothing else; an
/// error when the study has no such unit or its inputs are not all there.
pub fn run_unit(
    reg: &mut Registry,
    study: &Study,
    key: &str,
    opts: &StudyOptions,
    progress: &dyn StudyProgress,
) -> Result<()> {
    let mut w = Walk::new(reg, study, opts, progress, Mode::Only(key.to_owned()));
    w.check()?;
    w.walk(&opts.command)?;
    if w.ran {
        return Ok(());
    }
    Err(Error::invalid(
        format!(
            "study `{}` has no unit `{key}` that is ready to run",
            study.name
        ),
        "the unit is done already, its inputs are not registered yet, or the study file changed since it was planned; run the study's driver again",
    ))
}

/// An evaluation a walk with several jobs found missing.
struct Pending {
    id: String,
    reference: String,
    opts: EvalOptions,
    label: String,
}

/// Runs `pending` on `jobs` threads, each with its own handle of the registry at `root`; the
/// first failure stops the workers taking more (what finished is recorded, and a rerun
/// reuses it) and is returned.
fn evaluate_all(
    root: &Path,
    pending: &[Pending],
    jobs: usize,
    progress: &dyn StudyProgress,
) -> Result<()> {
    use std::sync::Mutex;
    use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};

    let next = AtomicUsize::new(0);
    let failed = AtomicBool::new(false);
    let first_error: Mutex<Option<(usize, Error)>> = Mutex::new(None);
    let fail = |i: usize, e: Error| {
        failed.store(true, Ordering::SeqCst);
        let mut slot = first_error.lock().expect("no worker panics holding it");
        // The earliest evaluation in the walk's order that failed, whichever thread saw it.
        if slot.as_ref().is_none_or(|(j, _)| i < *j) {
            *slot = Some((i, e));
        }
    };
    std::thread::scope(|scope| {
        for _ in 0..jobs.min(pending.len()) {
            scope.spawn(|| {
                let mut reg = match Registry::open(root) {
                    Ok(r) => r,
                    Err(e) => return fail(0, e),
                };
                while !failed.load(Ordering::SeqCst) {
                    let i = next.fetch_add(1, Ordering::SeqCst);
                    let Some(p) = pending.get(i) else { return };
                    progress.unit(UnitKind::Eval, &p.label);
                    if let Err(e) = reg.evaluate(&p.reference, &p.opts, &NoProgress) {
                        return fail(i, e);
                    }
                }
            });
        }
    });
    match first_error
        .into_inner()
        .expect("no worker panics holding it")
    {
        Some((_, e)) => Err(e),
        None => Ok(()),
    }
}

struct Walk<'a> {
    reg: &'a mut Registry,
    study: &'a Study,
    /// Not a dry run (with [`Mode::Only`], only the one unit runs).
    exec: bool,
    mode: Mode,
    /// [`Mode::Collect`]: the units found ready.
    ready: Vec<Ready>,
    /// [`Mode::Only`]: whether the unit ran.
    ran: bool,
    /// Size train and eval units ([`StudyOptions::sizes`]); examples per data part.
    sizes: Option<BTreeMap<String, u64>>,
    device: String,
    plan: Plan,
    progress: &'a dyn StudyProgress,
    /// Evaluations at once; with more than one, a walk collects them in `pending`.
    jobs: usize,
    pending: Vec<Pending>,
}

impl<'a> Walk<'a> {
    fn new(
        reg: &'a mut Registry,
        study: &'a Study,
        opts: &StudyOptions,
        progress: &'a dyn StudyProgress,
        mode: Mode,
    ) -> Self {
        Walk {
            reg,
            study,
            exec: !opts.dry_run,
            mode,
            ready: Vec::new(),
            ran: false,
            sizes: opts.sizes.then(BTreeMap::new),
            device: opts.device.clone().unwrap_or_else(|| study.device.clone()),
            plan: Plan::default(),
            progress,
            jobs: 1,
            pending: Vec::new(),
        }
    }

    /// Whether the unit `key` (not done, its inputs there) runs in this walk; in a collecting
    /// walk it is collected instead.
    fn runs(&mut self, kind: UnitKind, key: &str, label: &str) -> bool {
        match &self.mode {
            Mode::Run => self.exec,
            Mode::Collect => {
                if !self.ready.iter().any(|r| r.key == key) {
                    self.ready.push(Ready {
                        kind,
                        key: key.to_owned(),
                        label: label.to_owned(),
                    });
                }
                false
            }
            Mode::Only(k) if k == key && self.exec => {
                self.ran = true;
                true
            }
            Mode::Only(_) => false,
        }
    }

    /// The examples of the used part of `data` (when sizing; counted once per part).
    fn examples(&mut self, task: Task, data: &Data) -> Result<Option<u64>> {
        let Some(cache) = &mut self.sizes else {
            return Ok(None);
        };
        let label = data.label();
        if let Some(n) = cache.get(&label) {
            return Ok(Some(*n));
        }
        let n = count_examples(task, data)? as u64;
        cache.insert(label, n);
        Ok(Some(n))
    }

    /// Sizes the unit `label` of `kind` (when sizing): its examples, and the parameters of
    /// `model` (the base's when it does not exist yet).
    fn size(
        &mut self,
        kind: UnitKind,
        label: &str,
        examples: Option<u64>,
        model: Option<&CheckpointRow>,
    ) -> Result<()> {
        if self.sizes.is_none() {
            return Ok(());
        }
        let parameters = match model {
            Some(m) => m.parameters,
            None => self.reg.resolve(&self.study.base)?.parameters,
        };
        if let Some(u) = self
            .plan
            .units
            .iter_mut()
            .rev()
            .find(|u| u.kind == kind && u.label == label)
        {
            u.examples = examples;
            u.parameters = Some(parameters);
        }
        Ok(())
    }

    fn unit(&mut self, kind: UnitKind, label: String, done: bool) {
        // A model several entries name (one `before` for many languages) is one unit.
        if self
            .plan
            .units
            .iter()
            .any(|u| u.kind == kind && u.label == label)
        {
            return;
        }
        // With several jobs an evaluation is reported as a worker starts it, and the compare
        // runs on the last walk only (when nothing is pending).
        let reported_later = self.jobs > 1
            && (kind == UnitKind::Eval || (kind == UnitKind::Compare && !self.pending.is_empty()));
        if !done && self.exec && !reported_later {
            self.progress.unit(kind, &label);
        }
        self.plan.units.push(Unit {
            kind,
            label,
            done,
            examples: None,
            parameters: None,
        });
    }

    /// Everything that can be checked before a unit runs: references resolve, data files
    /// parse, ranges fit them, and their labels are the task model's.
    fn check(&self) -> Result<()> {
        let s = self.study;
        self.reg.resolve(&s.base)?;
        let resolve = |src: &Source| -> Result<()> {
            if let Source::Registered(r) = src {
                self.reg.resolve(r)?;
            }
            Ok(())
        };
        for l in &s.languages {
            resolve(&l.model)?;
            if let Some(b) = &l.before {
                resolve(b)?;
            }
            if let Some(t) = &l.text {
                count_examples(Task::Mlm, t)?;
                let before = match &l.before {
                    Some(Source::Registered(r)) => Some(r.as_str()),
                    Some(Source::Trained { .. }) => None,
                    None => Some(s.base.as_str()),
                };
                if let Some(r) = before {
                    self.has_mlm_head(r, &l.language)?;
                }
            }
        }
        for t in &s.tasks {
            resolve(&t.model)?;
            for b in t.baselines.values() {
                self.reg.resolve(b)?;
            }
            let labels = self.model_labels(t.task, &t.model)?;
            for (_, val, test) in &t.data {
                for d in [val, test] {
                    // One read of each file: its range checked, its gold labels collected.
                    let gold = labels_of(t.task, d)?;
                    if let Some(model_labels) = &labels {
                        check_labels(t.task, d, gold, model_labels, t.label_map.as_deref())?;
                    }
                }
            }
        }
        Ok(())
    }

    /// Refuses a perplexity "before" model without a masked-LM head.
    fn has_mlm_head(&self, reference: &str, language: &str) -> Result<()> {
        let row = self.reg.resolve(reference)?;
        let manifest = self.reg.manifest(&row)?;
        let head = manifest
            .tensors
            .iter()
            .any(|t| t.name.contains("cls.predictions.") || t.name.starts_with("lm_head."));
        if head {
            return Ok(());
        }
        Err(Error::bad_input(
            &self.study.path,
            format!(
                "[languages.{language}]: perplexity before language fine-tuning needs a masked-LM head, and `{}` has none",
                row.reference()
            ),
            "name the model before fine-tuning with `before` (e.g. an MLM head trained with the encoder frozen: train settings with task = \"mlm\", freeze = \"encoder\")",
        ))
    }

    /// The labels a task model scores: config.json's when registered, else the training
    /// data's (or its label file's); `None` when it cannot be known before training.
    fn model_labels(&self, task: Task, src: &Source) -> Result<Option<BTreeSet<String>>> {
        match src {
            Source::Registered(r) => {
                let row = self.reg.resolve(r)?;
                let manifest = self.reg.manifest(&row)?;
                let config = crate::evaluate::file_of(self.reg, &manifest, &row, "config.json")?;
                let config = crate::eval::model::Config::parse(&config)?;
                Ok(Some(config.labels().into_iter().collect()))
            }
            Source::Trained { settings, name, .. } => {
                if self.reg.resolve(name).is_ok() {
                    return self.model_labels(task, &Source::Registered(name.clone()));
                }
                let s = TrainSettings::read(settings)?;
                if let Some(file) = &s.labels {
                    let text =
                        std::fs::read_to_string(file).map_err(|e| Error::io("reading", file, e))?;
                    return Ok(Some(
                        text.lines()
                            .map(str::trim)
                            .filter(|l| !l.is_empty())
                            .map(str::to_owned)
                            .collect(),
                    ));
                }
                match &s.data {
                    Some(data) => labels_of(
                        task,
                        &Data {
                            path: data.clone(),
                            range: None,
                        },
                    )
                    .map(Some),
                    None => Ok(None),
                }
            }
        }
    }

    /// The model of `src`: trained first when the study trains it and it is not registered.
    fn model(
        &mut self,
        src: &Source,
        task: Task,
        language: Option<&str>,
    ) -> Result<Option<CheckpointRow>> {
        match src {
            Source::Registered(r) => self.reg.resolve(r).map(Some),
            Source::Trained {
                settings,
                name,
                from,
            } => {
                let found = self.reg.resolve(name).ok();
                self.unit(UnitKind::Train, name.clone(), found.is_some());
                if self.sizes.is_some() && found.is_none() {
                    let sequences = train_sequences(settings, task, language)?;
                    self.size(UnitKind::Train, name, Some(sequences), None)?;
                }
                if found.is_some() {
                    return Ok(found);
                }
                let source = from.clone().unwrap_or_else(|| self.study.base.clone());
                let key = format!("train:{name}");
                if self.reg.resolve(&source).is_err() || !self.runs(UnitKind::Train, &key, name) {
                    return Ok(None);
                }
                let mut s = TrainSettings::read(settings)?;
                if s.task.is_none() {
                    s.task = Some(task.name().to_owned());
                }
                if s.language.is_none() {
                    s.language = language.map(str::to_owned);
                }
                if s.device.is_none() {
                    s.device = Some(self.device.clone());
                }
                let plan = TrainPlan::try_from(&s)?;
                if plan.task != task {
                    return Err(Error::bad_input(
                        settings,
                        format!(
                            "trains task `{}` where the study needs `{}`",
                            plan.task.name(),
                            task.name()
                        ),
                        "set `task` in the settings file to the study's task (mlm for a language model)",
                    ));
                }
                self.reg.train(&source, &plan, true, &crate::train::Quiet)?;
                self.reg.resolve(name).map(Some)
            }
        }
    }

    /// The vector `model − base` named `name`, derived unless it is.
    fn vector(
        &mut self,
        kind: VectorKind,
        name: &str,
        model: Option<&CheckpointRow>,
        base: &CheckpointRow,
    ) -> Result<Option<VectorRow>> {
        let found = model.and_then(|m| {
            self.reg.resolve_vector(name).ok().filter(|v| {
                v.from_rowid == m.rowid
                    && v.minus_rowid == base.rowid
                    && v.exclude == self.exclude()
            })
        });
        self.unit(UnitKind::Derive, name.to_owned(), found.is_some());
        if found.is_some() {
            return Ok(found);
        }
        let Some(model) = model else { return Ok(None) };
        if !self.runs(UnitKind::Derive, &format!("derive:{name}"), name) {
            return Ok(None);
        }
        let mut opts = DeriveOptions::new(kind, name, model.reference()).minus(base.reference());
        for g in &self.study.exclude {
            opts = opts.exclude(g.clone());
        }
        let d = self.reg.derive(&opts, &NoProgress)?;
        Ok(Some(d.vector))
    }

    fn exclude(&self) -> Vec<String> {
        let mut e = self.study.exclude.clone();
        e.sort();
        e.dedup();
        e
    }

    /// The λ sweep of task vector `tv` plus language vector `lv`: one checkpoint per λ.
    fn sweep(
        &mut self,
        task: Task,
        language: &str,
        base: &CheckpointRow,
        heads: Option<&CheckpointRow>,
        tv: Option<&VectorRow>,
        lv: Option<&VectorRow>,
    ) -> Result<Vec<Option<CheckpointRow>>> {
        let s = self.study;
        let name = format!("{}/{}+{language}", s.name, task.name());
        let labels = |w: &mut Self, done: &[bool]| {
            for (l, d) in s.lambdas.iter().zip(done) {
                w.unit(UnitKind::Merge, format!("{name}/lambda={l}"), *d);
            }
        };
        let (Some(tv), Some(lv), Some(heads)) = (tv, lv, heads) else {
            labels(self, &vec![false; s.lambdas.len()]);
            return Ok(vec![None; s.lambdas.len()]);
        };
        let mut recipe = s.merge.clone();
        let mut table = toml::Table::new();
        table.insert("name".into(), name.clone().into());
        table.insert("base".into(), base.reference().into());
        let mut t_in = toml::Table::new();
        t_in.insert("vector".into(), vref(tv).into());
        t_in.insert("label".into(), "task".into());
        let mut l_in = toml::Table::new();
        l_in.insert("vector".into(), vref(lv).into());
        l_in.insert("label".into(), "lambda".into());
        let mut sweep = toml::Table::new();
        sweep.insert(
            "sweep".into(),
            toml::Value::Array(s.lambdas.iter().map(|&l| l.into()).collect()),
        );
        l_in.insert("weight".into(), sweep.into());
        table.insert(
            "inputs".into(),
            toml::Value::Array(vec![t_in.into(), l_in.into()]),
        );
        let mut h = toml::Table::new();
        h.insert("from".into(), heads.reference().into());
        table.insert("heads".into(), h.into());
        let out = recipe
            .entry("output")
            .or_insert_with(|| toml::Table::new().into());
        if let Some(o) = out.as_table_mut() {
            o.insert("language".into(), language.into());
            o.insert("task".into(), task.name().into());
        }
        recipe.extend(table);
        let text = toml::to_string(&recipe).expect("a table serialises");
        let parsed = crate::recipe::parse(&s.path, &text)?;
        if parsed.point_count() != Some(s.lambdas.len() as u64) {
            return Err(Error::bad_input(
                &s.path,
                "[merge] sweeps a parameter; the study sweeps λ only",
                "give [merge] fixed values (one study per density, say)",
            ));
        }
        let dry = self.reg.merge(
            &parsed,
            &text,
            &MergeOptions::default().dry_run(true),
            &NoProgress,
        )?;
        let mut done = Vec::new();
        for p in &dry {
            let found = self
                .reg
                .catalog()
                .merges_by_hash(&p.recipe_hash)?
                .into_iter()
                .find(|(_, c)| c.name == p.name)
                .map(|(_, c)| c);
            done.push(found);
        }
        labels(self, &done.iter().map(Option::is_some).collect::<Vec<_>>());
        if done.iter().all(Option::is_some)
            || !self.runs(UnitKind::Merge, &format!("merge:{name}"), &name)
        {
            return Ok(done);
        }
        let points = self
            .reg
            .merge(&parsed, &text, &MergeOptions::default(), &NoProgress)?;
        Ok(points.into_iter().map(|p| p.checkpoint).collect())
    }

    fn eval_options(
        &self,
        task: Task,
        data: &Data,
        language: &str,
        split: &str,
        label_map: Option<&Path>,
    ) -> EvalOptions {
        let mut o = EvalOptions::new(task, data.path.clone());
        o.language = Some(language.to_owned());
        o.split = Some(split.to_owned());
        o.device.clone_from(&self.device);
        o.batch_size = self.study.batch_size;
        o.max_length = self.study.max_length;
        o.seed = self.study.seed;
        o.label_map = label_map.map(Path::to_path_buf);
        o.range = data.range;
        o.reuse = true;
        o
    }

    /// Evaluates `model` (when it exists; `name` says what it will be) and returns `metric`.
    fn score(
        &mut self,
        model: Option<&CheckpointRow>,
        name: &str,
        opts: &EvalOptions,
        metric: &str,
    ) -> Result<Option<Score>> {
        let scoring = if opts.pseudo_perplexity {
            " (pseudo)"
        } else {
            ""
        };
        let label = |m: &str| {
            format!(
                "{m} {}{scoring} on {}",
                opts.task.name(),
                Data {
                    path: opts.data.clone(),
                    range: opts.range
                }
                .label()
            )
        };
        let data = Data {
            path: opts.data.clone(),
            range: opts.range,
        };
        let Some(model) = model else {
            self.unit(UnitKind::Eval, label(name), false);
            let examples = self.examples(opts.task, &data)?;
            self.size(UnitKind::Eval, &label(name), examples, None)?;
            return Ok(None);
        };
        let reference = model.reference();
        let id = self.reg.evaluation_id(&reference, opts)?;
        let stored = self.reg.catalog().evaluation_by_id(&id)?.is_some();
        self.unit(UnitKind::Eval, label(&reference), stored);
        let examples = self.examples(opts.task, &data)?;
        self.size(UnitKind::Eval, &label(&reference), examples, Some(model))?;
        if !stored && !self.runs(UnitKind::Eval, &format!("eval:{id}"), &label(&reference)) {
            return Ok(None);
        }
        if !stored && self.jobs > 1 {
            if !self.pending.iter().any(|p| p.id == id) {
                self.pending.push(Pending {
                    id,
                    reference,
                    opts: opts.clone(),
                    label: label(&model.reference()),
                });
            }
            return Ok(None);
        }
        let r = self.reg.evaluate(&reference, opts, &NoProgress)?;
        let value = *r.outcome.metrics.get(metric).ok_or_else(|| {
            Error::invalid(
                format!(
                    "the {} evaluation has no metric `{metric}` (it has {})",
                    opts.task.name(),
                    r.outcome
                        .metrics
                        .keys()
                        .cloned()
                        .collect::<Vec<_>>()
                        .join(", ")
                ),
                "set the task's `metric` in the study file to one of these",
            )
        })?;
        Ok(Some(Score {
            value,
            evaluation: r.id,
            examples: r.outcome.examples,
        }))
    }

    #[allow(clippy::too_many_lines)] // the study's units, in order
    fn walk(&mut self, command: &str) -> Result<Option<Results>> {
        let s = self.study;
        let base = self.reg.resolve(&s.base)?;
        // Models.
        let mut task_models = Vec::new();
        for t in &s.tasks {
            task_models.push(self.model(&t.model, t.task, Some("en"))?);
        }
        // The models before language fine-tuning first: a language model may start from one.
        let mut befores = BTreeMap::new();
        for l in &s.languages {
            let b = match &l.before {
                Some(src) => self.model(src, Task::Mlm, Some(&l.language))?,
                None => Some(base.clone()),
            };
            befores.insert(l.language.clone(), b);
        }
        let mut lang_models = BTreeMap::new();
        for l in &s.languages {
            let m = self.model(&l.model, Task::Mlm, Some(&l.language))?;
            lang_models.insert(l.language.clone(), m);
        }
        // Vectors.
        let mut lang_vectors = BTreeMap::new();
        for l in &s.languages {
            let name = format!("{}/language/{}", s.name, l.language);
            let v = self.vector(
                VectorKind::Language,
                &name,
                lang_models[&l.language].as_ref(),
                &base,
            )?;
            lang_vectors.insert(l.language.clone(), v);
        }
        let mut task_vectors = Vec::new();
        for (t, m) in s.tasks.iter().zip(&task_models) {
            let name = format!("{}/task/{}", s.name, t.task.name());
            task_vectors.push(self.vector(VectorKind::Task, &name, m.as_ref(), &base)?);
        }
        // Merges, then evaluations, per task and language.
        let mut tasks = Vec::new();
        for ((t, model), tv) in s.tasks.iter().zip(&task_models).zip(&task_vectors) {
            let mut transfers = Vec::new();
            for (lang, val, test) in &t.data {
                let points = self.sweep(
                    t.task,
                    lang,
                    &base,
                    model.as_ref(),
                    tv.as_ref(),
                    lang_vectors[lang].as_ref(),
                )?;
                let lm = t.label_map.as_deref();
                let test_opts = self.eval_options(t.task, test, lang, "test", lm);
                let val_opts = self.eval_options(t.task, val, lang, "validation", lm);
                let zero_shot =
                    self.score(model.as_ref(), t.model.reference(), &test_opts, &t.metric)?;
                let mut sweep = Vec::new();
                for (l, p) in s.lambdas.iter().zip(&points) {
                    let point = format!("{}/{}+{lang}/lambda={l}", s.name, t.task.name());
                    let v = self.score(p.as_ref(), &point, &val_opts, &t.metric)?;
                    sweep.push((*l, p.clone(), v));
                }
                // Selection: the highest validation score, the smaller λ on ties.
                let best = if sweep.iter().all(|(_, _, v)| v.is_some()) {
                    let mut best = 0;
                    for (i, (_, _, v)) in sweep.iter().enumerate() {
                        let v = v.as_ref().expect("all scored").value;
                        if v > sweep[best].2.as_ref().expect("all scored").value {
                            best = i;
                        }
                    }
                    Some(best)
                } else {
                    None
                };
                let best_name = format!("{}/{}+{lang} at the best λ", s.name, t.task.name());
                let at_best = match best {
                    Some(b) => {
                        self.score(sweep[b].1.as_ref(), &best_name, &test_opts, &t.metric)?
                    }
                    None => self.score(None, &best_name, &test_opts, &t.metric)?,
                };
                let mut trained = None;
                if let Some(b) = t.baselines.get(lang) {
                    let row = self.reg.resolve(b)?;
                    trained = self
                        .score(Some(&row), b, &test_opts, &t.metric)?
                        .map(|sc| (ModelRef::of(&row), sc));
                }
                if let (Some(b), Some(test_score), Some(zero)) = (best, at_best, zero_shot) {
                    let zero_value = zero.value;
                    transfers.push(Transfer {
                        language: lang.clone(),
                        language_vector: lang_vectors[lang].as_ref().map(output::VectorRef::of),
                        validation_data: val.label(),
                        test_data: test.label(),
                        zero_shot: zero,
                        sweep: sweep
                            .into_iter()
                            .map(|(lambda, p, v)| SweepPoint {
                                lambda,
                                checkpoint: p.as_ref().map(ModelRef::of),
                                validation: v.expect("all scored"),
                            })
                            .collect(),
                        best_lambda: s.lambdas[b],
                        gain: test_score.value - zero_value,
                        test: test_score,
                        trained_baseline: trained,
                    });
                }
            }
            tasks.push(TaskResults {
                task: t.task.name().to_owned(),
                metric: t.metric.clone(),
                model: model.as_ref().map(ModelRef::of),
                vector: tv.as_ref().map(output::VectorRef::of),
                transfers,
            });
        }
        // Perplexity before and after language fine-tuning.
        let mut perplexity = Vec::new();
        for l in &s.languages {
            let Some(text) = &l.text else { continue };
            let pair = |w: &mut Self,
                        m: Option<&CheckpointRow>,
                        name: &str|
             -> Result<Option<PerplexityPair>> {
                let mut o = w.eval_options(Task::Mlm, text, &l.language, "text", None);
                let ppl = w.score(m, name, &o, "perplexity")?;
                let pseudo = if w.study.pseudo_perplexity {
                    o.pseudo_perplexity = true;
                    w.score(m, name, &o, "pseudo_perplexity")?
                } else {
                    None
                };
                Ok(match (m, ppl) {
                    (Some(m), Some(p)) => Some(PerplexityPair {
                        model: ModelRef::of(m),
                        perplexity: p,
                        pseudo_perplexity: pseudo,
                    }),
                    _ => None,
                })
            };
            let before_name = l.before.as_ref().map_or(s.base.as_str(), Source::reference);
            let before = pair(self, befores[&l.language].as_ref(), before_name)?;
            let after = pair(self, lang_models[&l.language].as_ref(), l.model.reference())?;
            if let (Some(before), Some(after)) = (before, after) {
                perplexity.push(Perplexity {
                    language: l.language.clone(),
                    text: text.label(),
                    before,
                    after,
                });
            }
        }
        // Cosine of every language vector with the reference's.
        let cosine = match &s.reference {
            Some(r) if s.languages.len() > 1 => {
                self.unit(
                    UnitKind::Compare,
                    format!("language vectors with {r}'s"),
                    false,
                );
                if self.exec && self.mode == Mode::Run && self.pending.is_empty() {
                    let c = self.compare(r, &lang_vectors)?;
                    Some(c)
                } else {
                    None
                }
            }
            _ => None,
        };
        if !self.exec || self.mode != Mode::Run {
            return Ok(None);
        }
        Ok(Some(output::assemble(
            s,
            command,
            ModelRef::of(&base),
            tasks,
            perplexity,
            cosine,
        )))
    }

    fn compare(
        &self,
        reference: &str,
        vectors: &BTreeMap<String, Option<VectorRow>>,
    ) -> Result<Cosine> {
        let langs: Vec<&String> = vectors.keys().collect();
        let refs: Vec<String> = langs
            .iter()
            .map(|l| vref(vectors[*l].as_ref().expect("derived before compare")))
            .collect();
        let r = langs
            .iter()
            .position(|l| *l == reference)
            .expect("a study language");
        let by_model = self.reg.compare(
            &refs,
            &CompareOptions::default()
                .reference(refs[r].clone())
                .by(GroupBy::Model),
            &NoProgress,
        )?;
        let by_layer = self.reg.compare(
            &refs,
            &CompareOptions::default()
                .reference(refs[r].clone())
                .by(GroupBy::Layer),
            &NoProgress,
        )?;
        Ok(Cosine::of(reference, &langs, &by_model, &by_layer))
    }
}

/// The sequences a training run of `settings` steps through: steps × batch × accumulation.
fn train_sequences(settings: &Path, task: Task, language: Option<&str>) -> Result<u64> {
    let mut s = TrainSettings::read(settings)?;
    if s.task.is_none() {
        s.task = Some(task.name().to_owned());
    }
    if s.language.is_none() {
        s.language = language.map(str::to_owned);
    }
    let plan = TrainPlan::try_from(&s)?;
    let per_step = (plan.options.batch_size * plan.options.grad_accum).max(1) as u64;
    let steps = if let Some(n) = plan.options.max_steps {
        n
    } else {
        let n = count_examples(
            plan.task,
            &Data {
                path: plan.data.clone(),
                range: plan.data_range,
            },
        )? as u64;
        plan.options.epochs * n.div_ceil(per_step)
    };
    Ok(steps * per_step)
}

/// Examples in the part of `data` a study uses; an error when the range does not fit.
fn count_examples(task: Task, data: &Data) -> Result<usize> {
    let n = match task {
        Task::Pos | Task::Dp => conllu::read(&data.path)?.len(),
        Task::Ner => ner::read(&data.path)?.len(),
        Task::Nli => nli::read(&data.path)?.len(),
        Task::Mlm => crate::eval::text::read(&data.path)?.len(),
    };
    Ok(data
        .range
        .map_or(Ok(0..n), |r| r.bounds(n, &data.path))?
        .len())
}

/// The gold labels of the used part of `data`, as the model would have to name them (an
/// error when the range does not fit the file).
fn labels_of(task: Task, data: &Data) -> Result<BTreeSet<String>> {
    let keep = |items| Range::keep(data.range, items, &data.path);
    Ok(match task {
        Task::Pos => keep(conllu::read(&data.path)?)?
            .iter()
            .flat_map(|s| &s.words)
            .map(|w| w.upos.clone())
            .collect(),
        Task::Dp => keep(conllu::read(&data.path)?)?
            .iter()
            .flat_map(|s| &s.words)
            .map(|w| w.deprel.clone())
            .collect(),
        Task::Ner => Range::keep(data.range, ner::read(&data.path)?, &data.path)?
            .into_iter()
            .flat_map(|s| s.tags)
            .collect(),
        Task::Nli => Range::keep(data.range, nli::read(&data.path)?, &data.path)?
            .into_iter()
            .map(|e| e.label)
            .collect(),
        Task::Mlm => BTreeSet::new(),
    })
}

/// Refuses data whose gold labels (after the label map) the model does not score.
fn check_labels(
    task: Task,
    data: &Data,
    gold: BTreeSet<String>,
    model: &BTreeSet<String>,
    label_map: Option<&Path>,
) -> Result<()> {
    let map = label_map
        .map(crate::eval::label_map::LabelMap::read)
        .transpose()?
        .unwrap_or_default();
    let key = |l: &str| -> String {
        match task {
            Task::Dp => conllu::universal(l).to_owned(),
            Task::Ner => l.split_once('-').map_or(l, |(_, t)| t).to_owned(),
            _ => l.to_owned(),
        }
    };
    let known: BTreeSet<String> = model.iter().map(|l| key(l)).collect();
    let missing: Vec<String> = gold
        .into_iter()
        .map(|l| {
            if task == Task::Dp {
                map.apply_relation(&l)
            } else {
                map.apply(&l)
            }
        })
        .filter(|l| !(task == Task::Ner && l == "O"))
        .filter(|l| !known.contains(&key(l)))
        .collect::<BTreeSet<_>>()
        .into_iter()
        .collect();
    if missing.is_empty() {
        return Ok(());
    }
    Err(Error::bad_input(
        &data.path,
        format!(
            "labels the {} model does not have: {}",
            task.name(),
            missing.join(", ")
        ),
        "map them to the model's labels with the task's `label_map`, or use data in the model's label set",
    ))
}
