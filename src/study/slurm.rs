//! The Slurm executor (`crossmerge study FILE --executor slurm`).
//!
//! The driver walks the study, collects the units whose inputs are all in the registry (a
//! *wave*), and hands them to Slurm as one `sbatch --array` per kind of unit; each array task
//! runs `crossmerge study run-unit` for one unit. Workers never open the catalog (`SQLite` on a
//! shared filesystem is unsafe): each works on a private copy of the wave's catalog snapshot,
//! writes the objects it makes into its unit's folder and ends with one result file, renamed
//! into place. The driver, the only writer of the catalog, ingests the results, walks again,
//! and submits the next wave until nothing is missing; then it runs the comparison and writes
//! the output as the local executor does.
//!
//! Everything lives under `REGISTRY/slurm/STUDY/`: `wave-NNN/` (the catalog snapshot, one unit
//! list and one sbatch script per kind), `units/<key hash>/` (a unit's staged objects,
//! training state and `result.json`), `logs/` (one log per array task) and `jobs.json` (the
//! arrays in flight). A driver killed and run again first waits for the arrays its
//! predecessor left running, ingests what they made, and goes on from there: no finished
//! unit runs again. A task that fails or is cancelled leaves no result and its unit is
//! submitted again in the next wave, up to `retries` more times.

use std::collections::{BTreeMap, HashMap};
use std::fmt::Write as _;
use std::fs;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

use serde::{Deserialize, Serialize};

use super::Study;
use super::{Plan, Ready, StudyOptions, UnitKind};
use crate::Registry;
use crate::error::{Error, Result};
use crate::registry::{IngestReport, UnitResult};
use crate::store::remote::{RemoteConfig, RemoteStore};

/// How the driver uses Slurm.
#[derive(Clone, Debug)]
#[non_exhaustive]
pub struct SlurmOptions {
    /// `#SBATCH` options of every array (`--partition=gpu`, `--time=02:00:00`, …).
    pub sbatch_args: Vec<String>,
    /// `#SBATCH` options of the arrays of units that use the device (train, eval), e.g.
    /// `--gres=gpu:1`.
    pub gpu_sbatch_args: Vec<String>,
    /// Tasks of one array running at once (`--array=…%N`).
    pub max_parallel: Option<u32>,
    /// Times a failed unit is submitted again before the driver gives up.
    pub retries: u32,
    /// How often the driver asks Slurm about its arrays.
    pub poll: Duration,
    /// The crossmerge the compute nodes run.
    pub worker: PathBuf,
    /// The study file as the workers open it (from the driver's working directory, which the
    /// tasks start in).
    pub study_file: PathBuf,
    /// A remote of the registry (S3) through which workers read objects and hand back what
    /// they made, for nodes that do not mount the registry's folder.
    pub remote: Option<String>,
}

impl SlurmOptions {
    pub fn new(worker: PathBuf, study_file: PathBuf) -> Self {
        Self {
            sbatch_args: Vec::new(),
            gpu_sbatch_args: Vec::new(),
            max_parallel: None,
            retries: 2,
            poll: Duration::from_secs(15),
            worker,
            study_file,
            remote: None,
        }
    }
}

/// The remote a Slurm run stages through, opened.
struct Staging {
    name: String,
    config: RemoteConfig,
    store: RemoteStore,
}

impl Staging {
    fn open(reg: &Registry, slurm: &SlurmOptions) -> Result<Option<Self>> {
        let Some(name) = &slurm.remote else {
            return Ok(None);
        };
        let config = reg.remote(name)?;
        Ok(Some(Self {
            name: name.clone(),
            store: RemoteStore::open(&config)?,
            config,
        }))
    }
}

/// The remote key of a study's Slurm folder (`slurm/STUDY`), as the local one.
fn remote_run(study: &Study) -> String {
    format!("slurm/{}", study.name)
}

/// One array a driver submitted.
#[derive(Clone, Debug, Serialize, Deserialize)]
struct Submitted {
    job: String,
    wave: u32,
    kind: UnitKind,
    keys: Vec<String>,
}

/// What a Slurm run did.
#[derive(Clone, Debug, Default, Serialize)]
pub struct SlurmReport {
    pub waves: u32,
    pub arrays: Vec<String>,
    pub tasks: usize,
    pub retried: usize,
    pub ingested: IngestReport,
}

/// A unit's folder name: a hash of its key (keys hold `/` and `=`).
fn unit_hash(key: &str) -> String {
    blake3::hash(key.as_bytes()).to_hex()[..16].to_owned()
}

/// The folder of the unit `key` in the run folder `run`.
pub fn unit_dir(run: &Path, key: &str) -> PathBuf {
    run.join("units").join(unit_hash(key))
}

/// `REGISTRY/slurm/STUDY`: the waves, units and logs of `study`'s Slurm runs.
pub fn run_dir(root: &Path, study: &Study) -> PathBuf {
    root.join("slurm").join(&study.name)
}

fn io_err<'a>(what: &'static str, path: &'a Path) -> impl FnOnce(std::io::Error) -> Error + 'a {
    move |e| Error::io(what, path, e)
}

/// Runs every unit of `study` that is not done on Slurm, wave after wave, and ingests what
/// they made. Afterwards the registry holds everything a local run would have made; the
/// caller runs the study locally to compare and write the output (nothing else is left).
pub fn drive(
    reg: &mut Registry,
    study: &Study,
    opts: &StudyOptions,
    slurm: &SlurmOptions,
    say: &dyn Fn(&str),
) -> Result<SlurmReport> {
    let run = run_dir(reg.root(), study);
    // Slurm answers before anything is written.
    let queued = queued(study)?;
    for d in ["units", "logs"] {
        fs::create_dir_all(run.join(d)).map_err(io_err("creating", &run))?;
    }
    let staging = Staging::open(reg, slurm)?;
    let mut report = SlurmReport::default();
    // Arrays a driver killed before this one left behind (recorded, or only queued under this
    // study's job names): wait for them, take what they made.
    let mut left = read_jobs(&run)?;
    for job in queued {
        if !left.iter().any(|s| s.job == job) {
            left.push(Submitted {
                job,
                wave: 0,
                kind: UnitKind::Eval,
                keys: Vec::new(),
            });
        }
    }
    if !left.is_empty() {
        say(&format!(
            "waiting for {} array(s) an earlier driver submitted: {}",
            left.len(),
            left.iter()
                .map(|s| s.job.as_str())
                .collect::<Vec<_>>()
                .join(", ")
        ));
        wait(&left, slurm.poll)?;
    }
    if let Some(st) = &staging {
        fetch_results(reg, st, study, &run)?;
    }
    ingest_all(reg, &run, &mut report.ingested, say)?;
    write_jobs(&run, &[])?;
    let mut failures: HashMap<String, u32> = HashMap::new();
    let mut wave = next_wave(&run)?;
    loop {
        let (ready, _) = super::ready(reg, study, opts)?;
        if ready.is_empty() {
            return Ok(report);
        }
        let dir = run.join(format!("wave-{wave:03}"));
        if let Some(st) = &staging {
            push_inputs(reg, st, study, say)?;
        }
        let submitted = submit_wave(
            reg,
            study,
            opts,
            slurm,
            staging.as_ref(),
            &dir,
            wave,
            &ready,
        )?;
        write_jobs(&run, &submitted)?;
        say(&format!(
            "wave {wave}: {}",
            submitted
                .iter()
                .map(|s| format!("{} {} (array {})", s.keys.len(), s.kind.name(), s.job))
                .collect::<Vec<_>>()
                .join(", ")
        ));
        report.waves += 1;
        report.tasks += ready.len();
        report
            .arrays
            .extend(submitted.iter().map(|s| s.job.clone()));
        wait(&submitted, slurm.poll)?;
        if let Some(st) = &staging {
            fetch_results(reg, st, study, &run)?;
        }
        ingest_all(reg, &run, &mut report.ingested, say)?;
        write_jobs(&run, &[])?;
        // No task reads the wave's snapshot any more (its lists and scripts stay, a record).
        let _ = fs::remove_file(dir.join("catalog.sqlite3"));
        // What left no result failed (exited non-zero, was cancelled, its node died).
        let mut given_up = Vec::new();
        for s in &submitted {
            for (i, key) in s.keys.iter().enumerate() {
                if unit_dir(&run, key).join("result.json").is_file() {
                    continue;
                }
                let n = failures.entry(key.clone()).or_insert(0);
                *n += 1;
                let log = run
                    .join("logs")
                    .join(format!("{}-{}_{i}.log", s.kind.name(), s.job));
                if *n > slurm.retries {
                    given_up.push(format!("{key} (log: {})", log.display()));
                } else {
                    report.retried += 1;
                    say(&format!(
                        "unit {key} failed (try {n}; log: {}); it runs again",
                        log.display()
                    ));
                }
            }
        }
        if !given_up.is_empty() {
            return Err(Error::invalid(
                format!(
                    "{} unit(s) failed {} times: {}",
                    given_up.len(),
                    slurm.retries + 1,
                    given_up.join("; ")
                ),
                "read the logs; fix the cause and run the study again (finished units are kept)",
            ));
        }
        wave += 1;
    }
}

/// The number the next wave gets (after those of earlier drivers).
fn next_wave(run: &Path) -> Result<u32> {
    let mut n = 0;
    for e in fs::read_dir(run).map_err(io_err("reading", run))? {
        let e = e.map_err(io_err("reading", run))?;
        if let Some(w) = e
            .file_name()
            .to_str()
            .and_then(|s| s.strip_prefix("wave-"))
            .and_then(|s| s.parse::<u32>().ok())
        {
            n = n.max(w);
        }
    }
    Ok(n + 1)
}

/// The job name of the arrays of `kind` of `study`.
fn job_name(study: &Study, kind: UnitKind) -> String {
    format!(
        "crossmerge-{}-{}",
        study.name.replace('/', "-"),
        kind.name()
    )
}

/// Ids of the jobs queued or running under this study's job names.
fn queued(study: &Study) -> Result<Vec<String>> {
    let names: Vec<String> = UnitKind::ALL.iter().map(|k| job_name(study, *k)).collect();
    let out = squeue(&["-h", "-o", "%A", "-n", &names.join(",")])?;
    if !out.status.success() {
        return Err(squeue_failed("", &out));
    }
    let mut ids: Vec<String> = String::from_utf8_lossy(&out.stdout)
        .split_whitespace()
        .map(str::to_owned)
        .collect();
    ids.sort();
    ids.dedup();
    Ok(ids)
}

/// Whether units of `kind` use the training and evaluation device (and so the GPU options).
fn uses_device(kind: UnitKind) -> bool {
    matches!(kind, UnitKind::Train | UnitKind::Eval)
}

/// A shell word.
fn quote(s: &str) -> String {
    if !s.is_empty()
        && s.chars()
            .all(|c| c.is_ascii_alphanumeric() || "/._-:=@%+,".contains(c))
    {
        return s.to_owned();
    }
    format!("'{}'", s.replace('\'', r"'\''"))
}

/// The sbatch script of one array: `n` tasks of `kind`, listed in `KIND.units` of the wave
/// folder `dir` (or, staging through a remote, of its copy there).
#[allow(clippy::too_many_arguments)] // the script's every input
fn script(
    reg_root: &Path,
    study: &Study,
    opts: &StudyOptions,
    slurm: &SlurmOptions,
    staging: Option<&Staging>,
    dir: &Path,
    kind: UnitKind,
    n: usize,
) -> Result<String> {
    let cwd = std::env::current_dir().map_err(io_err("reading", Path::new(".")))?;
    let run = run_dir(reg_root, study);
    let path = |p: &Path| quote(&p.to_string_lossy());
    let mut s = String::from("#!/bin/bash\n");
    let _ = writeln!(s, "#SBATCH --job-name={}", quote(&job_name(study, kind)));
    let _ = writeln!(
        s,
        "#SBATCH --output={}",
        path(&run.join("logs").join(format!("{}-%A_%a.log", kind.name())))
    );
    let _ = writeln!(s, "#SBATCH --chdir={}", path(&cwd));
    let limit = slurm
        .max_parallel
        .map(|m| format!("%{m}"))
        .unwrap_or_default();
    let _ = writeln!(s, "#SBATCH --array=0-{}{limit}", n.saturating_sub(1));
    let extra: Vec<&String> = if uses_device(kind) {
        slurm
            .sbatch_args
            .iter()
            .chain(&slurm.gpu_sbatch_args)
            .collect()
    } else {
        slurm.sbatch_args.iter().collect()
    };
    for a in extra {
        let _ = writeln!(s, "#SBATCH {a}");
    }
    s.push_str("set -eu\n");
    let _ = write!(
        s,
        "exec {} study run-unit {}",
        path(&slurm.worker),
        path(&slurm.study_file)
    );
    match staging {
        None => {
            let _ = write!(s, " --registry {} --wave {}", path(reg_root), path(dir));
        }
        Some(st) => {
            let _ = write!(s, " --remote-url {}", quote(&st.config.url));
            if let Some(e) = &st.config.endpoint {
                let _ = write!(s, " --endpoint {}", quote(e));
            }
            if st.config.allow_http {
                s.push_str(" --allow-http");
            }
            let wave = dir.file_name().map(|f| f.to_string_lossy().into_owned());
            let _ = write!(
                s,
                " --wave {}",
                quote(&format!(
                    "{}/{}",
                    remote_run(study),
                    wave.unwrap_or_default()
                ))
            );
        }
    }
    let _ = write!(
        s,
        " --list {}.units --index \"$SLURM_ARRAY_TASK_ID\"",
        kind.name()
    );
    if let Some(d) = &opts.device
        && uses_device(kind)
    {
        let _ = write!(s, " --device {}", quote(d));
    }
    s.push('\n');
    Ok(s)
}

/// Writes the wave's folder (catalog snapshot, unit lists, scripts) and submits its arrays.
#[allow(clippy::too_many_arguments)] // a wave's every input
fn submit_wave(
    reg: &Registry,
    study: &Study,
    opts: &StudyOptions,
    slurm: &SlurmOptions,
    staging: Option<&Staging>,
    dir: &Path,
    wave: u32,
    ready: &[Ready],
) -> Result<Vec<Submitted>> {
    if dir.exists() {
        fs::remove_dir_all(dir).map_err(io_err("removing", dir))?;
    }
    fs::create_dir_all(dir).map_err(io_err("creating", dir))?;
    let mut out = Vec::new();
    let arrays = write_wave(reg, study, opts, slurm, staging, dir, ready)?;
    if let Some(st) = staging {
        // The wave's snapshot and lists, where the workers read them.
        let name = dir.file_name().map(|f| f.to_string_lossy().into_owned());
        let key = format!("{}/{}", remote_run(study), name.unwrap_or_default());
        let files = std::iter::once("catalog.sqlite3".to_owned())
            .chain(arrays.iter().map(|a| format!("{}.units", a.kind.name())));
        for base in files {
            let file = dir.join(&base);
            let bytes = fs::read(&file).map_err(io_err("reading", &file))?;
            st.store.put(&format!("{key}/{base}"), bytes)?;
        }
    }
    for a in arrays {
        out.push(Submitted {
            job: sbatch(&a.script)?,
            wave,
            kind: a.kind,
            keys: a.keys,
        });
    }
    Ok(out)
}

/// One array of a wave folder.
struct Array {
    kind: UnitKind,
    keys: Vec<String>,
    script: PathBuf,
    text: String,
}

/// Writes a wave's folder `dir` (it exists): the catalog snapshot, and per kind of unit its
/// list (`KIND.units`) and sbatch script (`KIND.sbatch`).
fn write_wave(
    reg: &Registry,
    study: &Study,
    opts: &StudyOptions,
    slurm: &SlurmOptions,
    staging: Option<&Staging>,
    dir: &Path,
    ready: &[Ready],
) -> Result<Vec<Array>> {
    let snapshot = dir.join("catalog.sqlite3");
    if snapshot.exists() {
        fs::remove_file(&snapshot).map_err(io_err("removing", &snapshot))?;
    }
    reg.snapshot_catalog(&snapshot)?;
    let mut by_kind: BTreeMap<UnitKind, Vec<String>> = BTreeMap::new();
    for r in ready {
        by_kind.entry(r.kind).or_default().push(r.key.clone());
    }
    let mut out = Vec::new();
    for (kind, keys) in by_kind {
        let list = dir.join(format!("{}.units", kind.name()));
        fs::write(&list, keys.join("\n") + "\n").map_err(io_err("writing", &list))?;
        let text = script(
            reg.root(),
            study,
            opts,
            slurm,
            staging,
            dir,
            kind,
            keys.len(),
        )?;
        let file = dir.join(format!("{}.sbatch", kind.name()));
        fs::write(&file, &text).map_err(io_err("writing", &file))?;
        out.push(Array {
            kind,
            keys,
            script: file,
            text,
        });
    }
    Ok(out)
}

/// `squeue ARGS`, run.
fn squeue(args: &[&str]) -> Result<std::process::Output> {
    Command::new("squeue")
        .args(args)
        .output()
        .map_err(|e| slurm_missing("squeue", &e))
}

fn squeue_failed(what: &str, out: &std::process::Output) -> Error {
    Error::invalid(
        format!(
            "squeue failed{what}: {}",
            String::from_utf8_lossy(&out.stderr).trim()
        ),
        "check that slurmctld answers (`squeue` by hand), then run the study again",
    )
}

fn slurm_missing(tool: &str, e: &std::io::Error) -> Error {
    Error::invalid(
        format!("cannot run Slurm's `{tool}`: {e}"),
        "run the driver where Slurm's client tools are on PATH (a login node), or use --executor local",
    )
}

fn sbatch(script: &Path) -> Result<String> {
    let out = Command::new("sbatch")
        .arg("--parsable")
        .arg(script)
        .output()
        .map_err(|e| slurm_missing("sbatch", &e))?;
    if !out.status.success() {
        return Err(Error::invalid(
            format!(
                "sbatch refused {}: {}",
                script.display(),
                String::from_utf8_lossy(&out.stderr).trim()
            ),
            "check the --sbatch-arg and --gpu-sbatch-arg options against your cluster's partitions and limits",
        ));
    }
    let text = String::from_utf8_lossy(&out.stdout);
    let job = text.trim().split(';').next().unwrap_or("").to_owned();
    if job.is_empty() || !job.chars().all(|c| c.is_ascii_digit()) {
        return Err(Error::invalid(
            format!("sbatch answered `{}`, not a job id", text.trim()),
            "check that `sbatch --parsable` works on this machine",
        ));
    }
    Ok(job)
}

/// Waits until no task of `jobs` is pending or running (squeue lists none).
fn wait(jobs: &[Submitted], poll: Duration) -> Result<()> {
    let mut left: Vec<&str> = jobs.iter().map(|s| s.job.as_str()).collect();
    while !left.is_empty() {
        let mut still = Vec::new();
        for job in left {
            let out = squeue(&["-h", "-o", "%T", "-j", job])?;
            // A job Slurm no longer knows ("Invalid job id") has finished long ago.
            if out.status.success() {
                if !String::from_utf8_lossy(&out.stdout).trim().is_empty() {
                    still.push(job);
                }
            } else if !String::from_utf8_lossy(&out.stderr).contains("Invalid job id") {
                return Err(squeue_failed(&format!(" on job {job}"), &out));
            }
        }
        left = still;
        if !left.is_empty() {
            std::thread::sleep(poll);
        }
    }
    Ok(())
}

fn jobs_file(run: &Path) -> PathBuf {
    run.join("jobs.json")
}

fn read_jobs(run: &Path) -> Result<Vec<Submitted>> {
    let path = jobs_file(run);
    match fs::read(&path) {
        Ok(b) => serde_json::from_slice(&b).map_err(|e| {
            Error::bad_input(
                &path,
                format!("does not parse: {e}"),
                "remove it once no array of this study is queued (`squeue --me`)",
            )
        }),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(Vec::new()),
        Err(e) => Err(Error::io("reading", &path, e)),
    }
}

fn write_jobs(run: &Path, jobs: &[Submitted]) -> Result<()> {
    let path = jobs_file(run);
    let tmp = run.join("jobs.json.partial");
    let bytes = serde_json::to_vec_pretty(jobs).expect("jobs serialize");
    crossmerge_store::atomic::write_file(&path, &tmp, &bytes).map_err(io_err("writing", &path))
}

/// Ingests every unit result not ingested yet: trains first (a later unit names what they
/// made), then derivations, merges, evaluations; within a kind, oldest first.
fn ingest_all(
    reg: &mut Registry,
    run: &Path,
    total: &mut IngestReport,
    say: &dyn Fn(&str),
) -> Result<()> {
    let units = run.join("units");
    let mut found = Vec::new();
    for e in fs::read_dir(&units).map_err(io_err("reading", &units))? {
        let dir = e.map_err(io_err("reading", &units))?.path();
        let result = dir.join("result.json");
        if !result.is_file() || dir.join("ingested").is_file() {
            continue;
        }
        let bytes = fs::read(&result).map_err(io_err("reading", &result))?;
        let r: UnitResult = serde_json::from_slice(&bytes).map_err(|e| {
            Error::bad_input(
                &result,
                format!("does not parse: {e}"),
                "remove the unit's folder and run the study again (the unit runs again)",
            )
        })?;
        let order = UnitKind::ALL
            .iter()
            .position(|k| r.unit.starts_with(&format!("{}:", k.name())))
            .unwrap_or(UnitKind::ALL.len());
        let when = fs::metadata(&result)
            .and_then(|m| m.modified())
            .map_err(io_err("reading", &result))?;
        found.push((order, when, dir, r));
    }
    found.sort_by_key(|f| (f.0, f.1));
    for (_, _, dir, r) in found {
        let got = reg.ingest_unit(&r, &dir)?;
        if !got.checkpoints.is_empty() || !got.vectors.is_empty() {
            say(&format!(
                "ingested {}: {}",
                r.unit,
                got.checkpoints
                    .iter()
                    .chain(&got.vectors)
                    .cloned()
                    .collect::<Vec<_>>()
                    .join(", ")
            ));
        }
        total.objects += got.objects;
        total.bytes += got.bytes;
        total.checkpoints.extend(got.checkpoints);
        total.vectors.extend(got.vectors);
        total.evaluations += got.evaluations;
        let marker = dir.join("ingested");
        fs::write(&marker, b"").map_err(io_err("writing", &marker))?;
        // What was moved into the store is gone from here; training state is not needed now.
        for d in ["objects", "tmp", "training"] {
            let _ = fs::remove_dir_all(dir.join(d));
        }
    }
    Ok(())
}

/// Pushes to the staging remote every checkpoint of the study this registry has (the base,
/// registered and trained models, baselines, merged points): what the next wave's workers
/// read. Only what the remote lacks is sent.
fn push_inputs(reg: &Registry, st: &Staging, study: &Study, say: &dyn Fn(&str)) -> Result<()> {
    let mut names: Vec<String> = vec![study.base.clone()];
    for t in &study.tasks {
        names.push(t.model.reference().to_owned());
        names.extend(t.baselines.values().cloned());
    }
    for l in &study.languages {
        names.push(l.model.reference().to_owned());
        if let Some(b) = &l.before {
            names.push(b.reference().to_owned());
        }
    }
    let prefix = format!("{}/", study.name);
    let mut refs: Vec<String> = names
        .iter()
        .filter_map(|n| reg.resolve(n).ok())
        .map(|r| r.reference())
        .collect();
    refs.extend(
        reg.list(&crate::CheckpointFilter::default())?
            .into_iter()
            .filter(|c| c.name.starts_with(&prefix))
            .map(|c| c.reference()),
    );
    refs.sort();
    refs.dedup();
    let r = reg.push(&st.name, &refs, &crate::NoProgress)?;
    if r.objects_sent > 0 {
        say(&format!(
            "pushed {} object(s), {:.1} MB, to remote `{}` for the workers",
            r.objects_sent,
            r.bytes_sent as f64 / 1e6,
            st.name
        ));
    }
    Ok(())
}

/// Brings the results workers left on the staging remote into their unit folders here.
fn fetch_results(reg: &Registry, st: &Staging, study: &Study, run: &Path) -> Result<()> {
    let units = format!("{}/units", remote_run(study));
    for (key, _) in st.store.list(&units)? {
        let Some(hash) = key.strip_suffix("/result.json") else {
            continue;
        };
        let stage = run.join("units").join(hash);
        if stage.join("ingested").is_file() {
            continue;
        }
        crate::registry::download_unit(reg, &st.store, &format!("{units}/{key}"), &stage)?;
    }
    Ok(())
}

/// A worker that reaches the registry only through `remote`: runs the unit at `index` of the
/// wave's `list` (both under the remote key `wave`), fetching the objects it reads, and
/// uploads what it made and its result. Returns the unit's key.
pub fn work_remote(
    remote: &RemoteConfig,
    study: &Study,
    wave: &str,
    list: &str,
    index: usize,
    opts: &StudyOptions,
) -> Result<String> {
    let store = RemoteStore::open(remote)?;
    let list_key = format!("{wave}/{list}");
    let text = store.get(&list_key)?.ok_or_else(|| {
        Error::invalid(
            format!("remote `{}` has no {list_key}", remote.url),
            "run-unit runs as a task of the arrays the driver submits; run the study's driver instead",
        )
    })?;
    let key = unit_key(&String::from_utf8_lossy(&text), index, Path::new(&list_key))?;
    let result_key = format!(
        "{}/units/{}/result.json",
        remote_run(study),
        unit_hash(&key)
    );
    if store
        .list(&format!("{}/units/{}", remote_run(study), unit_hash(&key)))?
        .iter()
        .any(|(k, _)| k == "result.json")
    {
        return Ok(key);
    }
    let scratch = Scratch::new()?;
    let catalog = scratch.0.join("catalog.sqlite3");
    let mut file = fs::File::create(&catalog).map_err(io_err("creating", &catalog))?;
    let snapshot = format!("{wave}/catalog.sqlite3");
    if store.get_into(&snapshot, &mut file)?.is_none() {
        return Err(Error::invalid(
            format!("remote `{}` has no {snapshot}", remote.url),
            "run the study's driver again (it writes each wave's snapshot)",
        ));
    }
    drop(file);
    let mut reg = Registry::open_staged_remote(remote, &scratch.0, &catalog)?;
    let marks = reg.marks()?;
    super::run_unit(&mut reg, study, &key, opts, &super::Silent)?;
    let r = reg.unit_result(&key, &marks)?;
    crate::registry::upload_unit(&store, &scratch.0.join("stage"), &r, &result_key)?;
    Ok(key)
}

/// The key at line `index` of a unit list.
fn unit_key(text: &str, index: usize, list: &Path) -> Result<String> {
    text.lines()
        .nth(index)
        .filter(|k| !k.is_empty())
        .map(str::to_owned)
        .ok_or_else(|| {
            Error::bad_input(
                list,
                format!("has no unit at index {index}"),
                "run-unit runs as a task of the arrays the driver submits; run the study's driver instead",
            )
        })
}

/// A worker: runs the unit at `index` of the wave's `list` (its `run-unit` command).
/// A unit whose result exists already does nothing. Returns the unit's key.
pub fn work(
    root: &Path,
    study: &Study,
    wave: &Path,
    list: &str,
    index: usize,
    opts: &StudyOptions,
) -> Result<String> {
    let list_path = wave.join(list);
    let text = fs::read_to_string(&list_path).map_err(io_err("reading", &list_path))?;
    let key = unit_key(&text, index, &list_path)?;
    let stage = unit_dir(&run_dir(root, study), &key);
    let result = stage.join("result.json");
    if result.is_file() {
        return Ok(key);
    }
    fs::create_dir_all(&stage).map_err(io_err("creating", &stage))?;
    fs::write(stage.join("key"), &key).map_err(io_err("writing", &stage))?;
    // The catalog copy lives on this machine's disk, never on the shared filesystem.
    let scratch = Scratch::new()?;
    let catalog = scratch.0.join("catalog.sqlite3");
    let snapshot = wave.join("catalog.sqlite3");
    fs::copy(&snapshot, &catalog).map_err(io_err("copying", &snapshot))?;
    let made = (|| {
        let mut reg = Registry::open_staged(root, &stage, &catalog)?;
        let marks = reg.marks()?;
        super::run_unit(&mut reg, study, &key, opts, &super::Silent)?;
        reg.unit_result(&key, &marks)
    })();
    let r = match made {
        Ok(r) => r,
        Err(e) => {
            // A unit that failed before making anything leaves no folder; one with staged
            // objects or training state keeps it for its next try.
            if !stage.join("training").exists()
                && crate::registry::staged_objects(&stage).is_empty()
            {
                let _ = fs::remove_dir_all(&stage);
            }
            return Err(e);
        }
    };
    let bytes = serde_json::to_vec_pretty(&r).expect("a unit result serializes");
    let tmp = stage.join(format!("result.json.{}", std::process::id()));
    crossmerge_store::atomic::write_file(&result, &tmp, &bytes)
        .map_err(io_err("writing", &result))?;
    Ok(key)
}

/// The waves a Slurm run of `plan` submits, as far as they are known before anything runs:
/// `(kind, units, what)` in order. Trains that start from a model the study trains come one
/// wave later; the test evaluations at the selected λ follow the sweeps' evaluations.
pub fn projected_waves(plan: &Plan, ready: &[Ready]) -> Vec<(UnitKind, usize, String)> {
    let todo = |k: UnitKind| plan.units.iter().filter(move |u| u.kind == k && !u.done);
    let mut out = Vec::new();
    let trains = todo(UnitKind::Train).count();
    let first = ready.iter().filter(|r| r.kind == UnitKind::Train).count();
    if first > 0 {
        out.push((
            UnitKind::Train,
            first,
            "models trained from registered ones".to_owned(),
        ));
    }
    if trains > first {
        out.push((
            UnitKind::Train,
            trains - first,
            "models trained from models the study trains".to_owned(),
        ));
    }
    let derives = todo(UnitKind::Derive).count();
    if derives > 0 {
        out.push((
            UnitKind::Derive,
            derives,
            "task and language vectors".to_owned(),
        ));
    }
    let mut sweeps: Vec<&str> = todo(UnitKind::Merge)
        .map(|u| {
            u.label
                .rsplit_once("/lambda=")
                .map_or(u.label.as_str(), |(s, _)| s)
        })
        .collect();
    sweeps.dedup();
    let points = todo(UnitKind::Merge).count();
    if !sweeps.is_empty() {
        out.push((
            UnitKind::Merge,
            sweeps.len(),
            format!("λ sweeps, {points} merged checkpoints"),
        ));
    }
    let (best, rest): (Vec<_>, Vec<_>) =
        todo(UnitKind::Eval).partition(|u| u.label.contains("at the best λ"));
    if !rest.is_empty() {
        out.push((
            UnitKind::Eval,
            rest.len(),
            "validation sweeps, zero-shot, baselines, perplexity".to_owned(),
        ));
    }
    if !best.is_empty() {
        out.push((
            UnitKind::Eval,
            best.len(),
            "test scores at the selected λ".to_owned(),
        ));
    }
    if plan.count(UnitKind::Compare).0 > 0 {
        out.push((
            UnitKind::Compare,
            1,
            "cosines and output, on the driver".to_owned(),
        ));
    }
    out
}

/// A folder of this machine's temporary space, removed when dropped.
struct Scratch(PathBuf);

impl Scratch {
    fn new() -> Result<Self> {
        let nanos = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| d.subsec_nanos());
        let dir =
            std::env::temp_dir().join(format!("crossmerge-unit-{}-{nanos}", std::process::id()));
        fs::create_dir_all(&dir).map_err(io_err("creating", &dir))?;
        Ok(Self(dir))
    }
}

impl Drop for Scratch {
    fn drop(&mut self) {
        let _ = fs::remove_dir_all(&self.0);
    }
}

/// Measured rates by (device class, task).
type Rates = BTreeMap<(&'static str, String), Vec<f64>>;

/// What the units a Slurm run submits would cost, from what this registry measured.
#[derive(Clone, Debug, Serialize)]
pub struct Estimate {
    /// The device the train and eval units run on.
    pub device: String,
    /// The class of device (cuda or cpu) whose measured runs price them: the device's, unless
    /// the cost registry has none of it.
    pub priced_on: String,
    pub rows: Vec<EstimateRow>,
    /// Device hours of the units with a measured cost.
    pub hours: f64,
}

#[derive(Clone, Debug, Serialize)]
pub struct EstimateRow {
    pub kind: UnitKind,
    pub task: String,
    pub units: usize,
    /// `None`: nothing of the kind was measured on this device class.
    pub hours: Option<f64>,
    /// How the cost was measured.
    pub basis: String,
}

impl Estimate {
    pub fn text(&self) -> String {
        let mut s = format!(
            "estimated hours of the train and eval units (on {}), priced by {} runs of the cost registry{}; derivations and merges run on CPUs:\n",
            self.device,
            self.priced_on,
            if self.device.starts_with(&self.priced_on) {
                String::new()
            } else {
                format!(" (it has no {} run)", self.device)
            }
        );
        for r in &self.rows {
            let hours = r.hours.map_or_else(|| "not measured".to_owned(), duration);
            let _ = writeln!(
                s,
                "  {:<6}{:<5}{:>6} units {hours:>14}  {}",
                r.kind.name(),
                r.task,
                r.units,
                r.basis
            );
        }
        let _ = writeln!(s, "  total {}", duration(self.hours));
        s
    }
}

/// Hours as hours, minutes or seconds, whichever reads best.
fn duration(hours: f64) -> String {
    if hours >= 1.0 {
        format!("{hours:.2} h")
    } else if hours * 60.0 >= 1.0 {
        format!("{:.1} min", hours * 60.0)
    } else {
        format!("{:.1} s", hours * 3600.0)
    }
}

/// The median of `v` (empty: `None`).
fn median(mut v: Vec<f64>) -> Option<f64> {
    if v.is_empty() {
        return None;
    }
    v.sort_by(f64::total_cmp);
    let n = v.len();
    Some(if n % 2 == 1 {
        v[n / 2]
    } else {
        f64::midpoint(v[n / 2 - 1], v[n / 2])
    })
}

/// Device hours of `plan`'s train and eval units that are not done (a plan made with
/// [`StudyOptions::sizes`]), priced by what the registry `costs` measured on the same class
/// of device (cuda or cpu): evaluations by seconds per example and parameter, trainings by
/// seconds per sequence (step × batch × accumulation) and parameter, each the median over
/// the stored rows of the same task (of all tasks when the task has none).
pub fn estimate(
    costs: &Registry,
    study: &Study,
    opts: &StudyOptions,
    plan: &Plan,
) -> Result<Estimate> {
    let device = opts.device.clone().unwrap_or_else(|| study.device.clone());
    let class = |d: &str| if d.starts_with("cuda") { "cuda" } else { "cpu" };
    let mut params: HashMap<String, u64> = HashMap::new();
    let mut parameters = |reference: &str| -> Result<u64> {
        if let Some(p) = params.get(reference) {
            return Ok(*p);
        }
        let p = costs.resolve(reference)?.parameters;
        params.insert(reference.to_owned(), p);
        Ok(p)
    };
    // Seconds per example and parameter of evaluation, and per sequence and parameter of
    // training, by device class and task.
    let mut eval_rates: Rates = BTreeMap::new();
    for e in costs.catalog().evaluations(None, None)? {
        if e.examples == 0 {
            continue;
        }
        let p = parameters(&e.checkpoint)? as f64;
        eval_rates
            .entry((class(&e.device), e.task.clone()))
            .or_default()
            .push(e.duration_s / (e.examples as f64 * p));
    }
    let mut train_rates: Rates = BTreeMap::new();
    for t in costs.catalog().trainings(None)? {
        if t.run.steps == 0 {
            continue;
        }
        let setting = |k: &str| t.run.settings.get(k).and_then(serde_json::Value::as_u64);
        let per_step = setting("batch_size").unwrap_or(1) * setting("grad_accum").unwrap_or(1);
        let p = parameters(&t.checkpoint)? as f64;
        train_rates
            .entry((class(&t.run.device), t.run.task.clone()))
            .or_default()
            .push(t.run.duration_s / ((t.run.steps * per_step.max(1)) as f64 * p));
    }
    // The study's device class, or the other when the cost registry measured nothing on it.
    let mut want = class(&device);
    let measured = |c: &str| {
        eval_rates
            .keys()
            .chain(train_rates.keys())
            .any(|(k, _)| *k == c)
    };
    if !measured(want) {
        let other = if want == "cuda" { "cpu" } else { "cuda" };
        if measured(other) {
            want = other;
        }
    }
    let keep = |rates: Rates| -> BTreeMap<String, Vec<f64>> {
        rates
            .into_iter()
            .filter(|((c, _), _)| *c == want)
            .map(|((_, t), v)| (t, v))
            .collect()
    };
    let eval_rates = keep(eval_rates);
    let train_rates = keep(train_rates);
    let rate = |rates: &BTreeMap<String, Vec<f64>>, task: &str| -> Option<(f64, String)> {
        if let Some(v) = rates.get(task) {
            return median(v.clone()).map(|m| (m, format!("median of {} {task} run(s)", v.len())));
        }
        let all: Vec<f64> = rates.values().flatten().copied().collect();
        let n = all.len();
        median(all).map(|m| (m, format!("median of {n} run(s) of other tasks")))
    };
    // The task of a unit: its label's (`… TASK on DATA` for evaluations; training settings
    // are named by the study's models).
    let task_of = |u: &super::Unit| -> String {
        match u.kind {
            UnitKind::Eval => u
                .label
                .rsplit_once(" on ")
                .map(|(head, _)| head)
                .and_then(|h| h.split_whitespace().find(|w| TASKS.contains(w)))
                .unwrap_or("?")
                .to_owned(),
            _ => study
                .tasks
                .iter()
                .find(|t| t.model.reference() == u.label)
                .map_or_else(|| "mlm".to_owned(), |t| t.task.name().to_owned()),
        }
    };
    let mut groups: BTreeMap<(UnitKind, String), (usize, f64, f64)> = BTreeMap::new();
    for u in plan.units.iter().filter(|u| !u.done) {
        if !uses_device(u.kind) {
            continue;
        }
        let task = task_of(u);
        let work = u.examples.unwrap_or(0) as f64 * u.parameters.unwrap_or(0) as f64;
        let g = groups.entry((u.kind, task)).or_insert((0, 0.0, 0.0));
        g.0 += 1;
        g.1 += work;
    }
    let mut rows = Vec::new();
    let mut hours = 0.0;
    for ((kind, task), (units, work, _)) in groups {
        let rates = if kind == UnitKind::Eval {
            &eval_rates
        } else {
            &train_rates
        };
        let (h, basis) = match rate(rates, &task) {
            Some((r, basis)) => {
                let h = r * work / 3600.0;
                hours += h;
                (Some(h), basis)
            }
            None => (
                None,
                format!("no {} {want} run stored in the cost registry", kind.name()),
            ),
        };
        rows.push(EstimateRow {
            kind,
            task,
            units,
            hours: h,
            basis,
        });
    }
    Ok(Estimate {
        device,
        priced_on: want.to_owned(),
        rows,
        hours,
    })
}

const TASKS: [&str; 5] = ["pos", "ner", "nli", "dp", "mlm"];

/// Writes the folder of the first wave (`ready`) to `dir` (it exists) as the driver would
/// (catalog snapshot, unit lists, sbatch scripts) without submitting it: (script, text) of
/// each array.
pub fn emit(
    reg: &Registry,
    study: &Study,
    opts: &StudyOptions,
    slurm: &SlurmOptions,
    dir: &Path,
    ready: &[Ready],
) -> Result<Vec<(PathBuf, String)>> {
    let staging = Staging::open(reg, slurm)?;
    Ok(
        write_wave(reg, study, opts, slurm, staging.as_ref(), dir, ready)?
            .into_iter()
            .map(|a| (a.script, a.text))
            .collect(),
    )
}
