//! `crossmerge study --executor slurm` on a real single-node Slurm (munged, slurmctld and
//! slurmd from Debian's packages, started on localhost by `scripts/slurm/local-cluster.sh`):
//! the toy study's results equal the local executor's; a task cancelled with `scancel` and
//! one that exits non-zero run again; a driver killed mid-study and run again finishes
//! without running any finished unit again; the registry verifies clean with every unit's
//! result there once. Skipped with a message where Slurm cannot be started.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use serde_json::Value;

use crate::common::{bin, cm, skipped, snapshot};
use crate::study::{Setup, evaluation_ids};

/// A running single-node cluster; stopped when dropped.
struct Cluster {
    dir: PathBuf,
    conf: PathBuf,
}

impl Cluster {
    fn start(name: &str) -> Option<Self> {
        let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("scripts/slurm/local-cluster.sh");
        // A short path of its own (Slurm's sockets have a length limit).
        let dir = std::env::temp_dir().join(format!("cm-slurm-{}-{name}", std::process::id()));
        let out = Command::new("bash")
            .arg(&script)
            .arg("start")
            .arg(&dir)
            .output()
            .unwrap();
        // Exit 3: Slurm or root is missing (skip); any other failure is the test's.
        assert!(
            out.status.success() || out.status.code() == Some(3),
            "the single-node Slurm did not start: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        if !out.status.success() {
            skipped(
                "slurm executor",
                &format!(
                    "no single-node Slurm here ({}); `apt-get install slurm-wlm munge` as root",
                    String::from_utf8_lossy(&out.stderr).trim()
                ),
            );
            let _ = Command::new("bash")
                .arg(&script)
                .arg("stop")
                .arg(&dir)
                .output();
            return None;
        }
        Some(Self {
            conf: dir.join("slurm.conf"),
            dir,
        })
    }
}

impl Drop for Cluster {
    fn drop(&mut self) {
        let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("scripts/slurm/local-cluster.sh");
        let _ = Command::new("bash")
            .arg(&script)
            .arg("stop")
            .arg(&self.dir)
            .output();
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

/// Runs the real crossmerge, but the first evaluation it is given exits 7 before starting,
/// and the first try of `lm-fr`'s training waits to be cancelled. Every try is logged.
const WORKER: &str = r#"#!/bin/bash
args=("$@")
while [ $# -gt 0 ]; do
    case "$1" in
        --wave) wave=$2; shift ;;
        --list) list=$2; shift ;;
        --index) index=$2; shift ;;
    esac
    shift
done
key=$(sed -n "$((index + 1))p" "$wave/$list")
echo "$key" >> "$FAULTS/tries.log"
case "$key" in
    eval:*)
        if mkdir "$FAULTS/failed-once" 2>/dev/null; then
            echo "$key" > "$FAULTS/failed-once/key"
            echo "injected failure" >&2
            exit 7
        fi ;;
    train:lm-fr)
        if mkdir "$FAULTS/slow-once" 2>/dev/null; then
            echo "${SLURM_ARRAY_JOB_ID}_${SLURM_ARRAY_TASK_ID}" > "$FAULTS/slow-task.partial"
            mv "$FAULTS/slow-task.partial" "$FAULTS/slow-task"
            sleep 120
        fi ;;
esac
exec "$CROSSMERGE_REAL" "${args[@]}"
"#;

fn driver(t: &Setup, cluster: &Cluster, faults: &Path, log: &Path) -> Command {
    let mut c = Command::new(env!("CARGO_BIN_EXE_crossmerge"));
    c.current_dir(&t.root)
        .args([
            "study",
            "study.toml",
            "--registry",
            "reg",
            "--out",
            "out",
            "--executor",
            "slurm",
            "--poll",
            "1",
            "--retries",
            "2",
            "--sbatch-arg=--time=00:20:00",
            "--gpu-sbatch-arg=--mem=2G",
            "--worker",
        ])
        .arg(faults.join("worker.sh"))
        .env("SLURM_CONF", &cluster.conf)
        .env("CROSSMERGE_REAL", env!("CARGO_BIN_EXE_crossmerge"))
        .env("FAULTS", faults)
        .stdout(Stdio::null())
        .stderr(std::fs::File::create(log).unwrap());
    c
}

fn wait_for(what: &str, timeout: Duration, mut done: impl FnMut() -> bool) {
    let start = Instant::now();
    while !done() {
        assert!(start.elapsed() < timeout, "timed out waiting for {what}");
        std::thread::sleep(Duration::from_millis(200));
    }
}

#[test]
fn a_study_on_slurm_equals_the_local_one_through_cancelled_failed_tasks_and_a_killed_driver() {
    let Some(cluster) = Cluster::start("faults") else {
        return;
    };
    let local = Setup::new();
    local.study(&[]).assert().success();

    let t = Setup::new();
    let faults = t.root.join("faults");
    std::fs::create_dir_all(&faults).unwrap();
    std::fs::write(faults.join("worker.sh"), WORKER).unwrap();
    Command::new("chmod")
        .arg("+x")
        .arg(faults.join("worker.sh"))
        .status()
        .unwrap();
    let log1 = t.root.join("driver-1.log");
    let mut first = driver(&t, &cluster, &faults, &log1).spawn().unwrap();
    // The slow first try of lm-fr's training is cancelled as Slurm would on a preemption.
    wait_for("the slow task", Duration::from_secs(180), || {
        faults.join("slow-task").is_file()
    });
    let task = std::fs::read_to_string(faults.join("slow-task")).unwrap();
    let ok = Command::new("scancel")
        .arg(task.trim())
        .env("SLURM_CONF", &cluster.conf)
        .status()
        .unwrap();
    assert!(ok.success());
    // The driver is killed once a later wave's arrays are submitted (they keep running).
    let run = t.reg.join("slurm/toy");
    wait_for("wave 3's arrays", Duration::from_secs(300), || {
        std::fs::read_to_string(run.join("jobs.json")).is_ok_and(|j| j.contains("\"wave\": 3"))
            || first.try_wait().unwrap().is_some()
    });
    assert!(
        first.try_wait().unwrap().is_none(),
        "the driver finished before it could be killed: {}",
        std::fs::read_to_string(&log1).unwrap()
    );
    first.kill().unwrap();
    first.wait().unwrap();
    cm(&t.reg, &["verify"]).assert().success();

    let log2 = t.root.join("driver-2.log");
    let status = driver(&t, &cluster, &faults, &log2).status().unwrap();
    let said = format!(
        "first driver:\n{}\nsecond driver:\n{}",
        std::fs::read_to_string(&log1).unwrap(),
        std::fs::read_to_string(&log2).unwrap()
    );
    assert!(status.success(), "{said}");

    // The local executor's results, to the number and id (all but the command line).
    let without_command = |mut v: Value| {
        v.as_object_mut().unwrap().remove("command").unwrap();
        v
    };
    assert_eq!(
        without_command(t.results()),
        without_command(local.results()),
        "{said}"
    );
    // Each unit ran once but the two that failed (each twice).
    let tries = std::fs::read_to_string(faults.join("tries.log")).unwrap();
    let mut count: BTreeMap<&str, usize> = BTreeMap::new();
    for k in tries.lines() {
        *count.entry(k).or_default() += 1;
    }
    let failed = std::fs::read_to_string(faults.join("failed-once/key")).unwrap();
    for (k, n) in &count {
        let expected = if *k == "train:lm-fr" || *k == failed.trim() {
            2
        } else {
            1
        };
        assert_eq!(*n, expected, "unit {k} ran {n} times\n{said}");
    }
    assert!(said.contains("failed (try 1"), "{said}");
    assert!(said.contains("waiting for"), "{said}");
    // Everything is there once, and nothing but the driver wrote the catalog.
    cm(&t.reg, &["verify"]).assert().success();
    for c in t.json(&["list", "--json"]).as_array().unwrap() {
        assert_eq!(c["version"], 1, "{} was made twice", c["name"]);
    }
    let evals = t.json(&["report", "evals", "--json"]);
    let ids: Vec<&str> = evals
        .as_array()
        .unwrap()
        .iter()
        .map(|e| e["id"].as_str().unwrap())
        .collect();
    let distinct: std::collections::BTreeSet<&&str> = ids.iter().collect();
    assert_eq!(ids.len(), distinct.len(), "an evaluation was stored twice");
    assert_eq!(distinct.len(), evaluation_ids(&t.results()).len());
    // A rerun finds everything done and submits nothing.
    let out = bin()
        .current_dir(&t.root)
        .args([
            "study",
            "study.toml",
            "--registry",
            "reg",
            "--out",
            "out",
            "--executor",
            "slurm",
            "--poll",
            "1",
        ])
        .env("SLURM_CONF", &cluster.conf)
        .output()
        .unwrap();
    assert!(out.status.success());
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(stderr.contains("0 wave(s)"), "{stderr}");
}

#[test]
fn without_slurm_or_with_a_bad_unit_the_commands_say_so_and_change_nothing() {
    let t = Setup::new();
    let before = snapshot(&t.reg);
    // No Slurm client tools on PATH.
    let empty = t.root.join("empty-path");
    std::fs::create_dir_all(&empty).unwrap();
    let out = bin()
        .current_dir(&t.root)
        .args([
            "study",
            "study.toml",
            "--registry",
            "reg",
            "--executor",
            "slurm",
        ])
        .env("PATH", &empty)
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(1));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("squeue") && err.contains("hint:"), "{err}");
    assert_eq!(
        snapshot(&t.reg),
        before,
        "a failed driver changed the registry"
    );
    assert!(!t.reg.join("slurm").exists());
    // Slurm's options without the Slurm executor, and --emit without --dry-run, are refused.
    let out = bin()
        .current_dir(&t.root)
        .args(["study", "study.toml", "--registry", "reg", "--remote", "s3"])
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(1));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("--remote is for the Slurm executor") && err.contains("hint:"),
        "{err}"
    );
    let out = bin()
        .current_dir(&t.root)
        .args([
            "study",
            "study.toml",
            "--registry",
            "reg",
            "--executor",
            "slurm",
        ])
        .args(["--emit", "emitted"])
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(1));
    // A unit index past the wave's list, a list that is not there, a folder that is no wave.
    let wave = t.root.join("wave");
    std::fs::create_dir_all(&wave).unwrap();
    std::fs::write(wave.join("eval.units"), "eval:abc\n").unwrap();
    for (list, index, says) in [
        ("eval.units", "3", "has no unit at index 3"),
        ("train.units", "0", "train.units"),
    ] {
        let out = bin()
            .current_dir(&t.root)
            .args(["study", "run-unit", "study.toml", "--registry", "reg"])
            .args([
                "--wave",
                wave.to_str().unwrap(),
                "--list",
                list,
                "--index",
                index,
            ])
            .output()
            .unwrap();
        assert_eq!(out.status.code(), Some(1));
        let err = String::from_utf8_lossy(&out.stderr);
        assert!(err.contains(says) && err.contains("hint:"), "{err}");
        assert_eq!(err.trim().lines().count(), 2, "{err}");
    }
    // A key the study does not have (the wave's snapshot is the registry's catalog).
    cm(&t.reg, &["verify"]).assert().success();
    std::fs::copy(t.reg.join("catalog.sqlite3"), wave.join("catalog.sqlite3")).unwrap();
    let out = bin()
        .current_dir(&t.root)
        .args(["study", "run-unit", "study.toml", "--registry", "reg"])
        .args([
            "--wave",
            wave.to_str().unwrap(),
            "--list",
            "eval.units",
            "--index",
            "0",
        ])
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(1));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("no unit `eval:abc`"), "{err}");
    assert_eq!(snapshot(&t.reg), before, "a worker changed the registry");
}

#[test]
fn a_slurm_dry_run_prints_waves_arrays_and_costs_and_emits_the_first_wave() {
    let t = Setup::new();
    let before = snapshot(&t.reg);
    let out = bin()
        .current_dir(&t.root)
        .args(["study", "study.toml", "--registry", "reg", "--dry-run"])
        .args(["--executor", "slurm", "--emit", "emitted"])
        .args([
            "--sbatch-arg=--time=01:00:00",
            "--gpu-sbatch-arg=--gres=gpu:1",
        ])
        .output()
        .unwrap();
    let (stdout, stderr) = (
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr),
    );
    assert!(out.status.success(), "{stderr}");
    // Six models train from the base first, then vectors, sweeps, evaluations, the report.
    for line in [
        "1. train   array of 6",
        "2. derive  array of 6",
        "3. merge   array of 5    λ sweeps, 15 merged checkpoints",
        "4. eval",
        "5. eval",
        "6. compare driver",
    ] {
        assert!(stdout.contains(line), "no `{line}` in\n{stdout}");
    }
    // The two trainings of the setup price the training units; no evaluation is stored yet.
    assert!(stdout.contains("priced by cpu runs"), "{stdout}");
    let train_mlm = stdout
        .lines()
        .find(|l| l.trim_start().starts_with("train mlm"))
        .unwrap_or_else(|| panic!("{stdout}"));
    assert!(
        train_mlm.contains(" s ") && train_mlm.contains("run(s) of other tasks"),
        "{train_mlm}"
    );
    let eval_pos = stdout
        .lines()
        .find(|l| l.trim_start().starts_with("eval  pos"))
        .unwrap_or_else(|| panic!("{stdout}"));
    assert!(eval_pos.contains("not measured"), "{eval_pos}");
    // The first wave's folder, as the driver would submit it; the scripts are shown.
    let emitted = t.root.join("emitted");
    let train = std::fs::read_to_string(emitted.join("train.sbatch")).unwrap();
    assert!(train.contains("#SBATCH --array=0-5\n"), "{train}");
    assert!(
        train.contains("#SBATCH --time=01:00:00\n#SBATCH --gres=gpu:1\n"),
        "{train}"
    );
    assert!(
        train.contains("study run-unit study.toml --registry "),
        "{train}"
    );
    assert!(stderr.contains(&train), "{stderr}");
    assert_eq!(
        std::fs::read_to_string(emitted.join("train.units"))
            .unwrap()
            .lines()
            .count(),
        6
    );
    assert!(emitted.join("catalog.sqlite3").is_file());
    // Derivations run on CPUs: no GPU option.
    if let Ok(derive) = std::fs::read_to_string(emitted.join("derive.sbatch")) {
        assert!(!derive.contains("gres"), "{derive}");
    }
    assert_eq!(snapshot(&t.reg), before, "a dry run changed the registry");
    assert!(!t.reg.join("slurm").exists());
    // The same as JSON.
    let out = bin()
        .current_dir(&t.root)
        .args([
            "study",
            "study.toml",
            "--registry",
            "reg",
            "--dry-run",
            "--json",
        ])
        .args(["--executor", "slurm"])
        .output()
        .unwrap();
    assert!(out.status.success());
    let v: Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(v["waves"][0]["kind"], "train");
    assert_eq!(v["waves"][0]["units"], 6);
    assert!(v["estimate"]["rows"].as_array().unwrap().len() >= 3);
}

/// A staged registry (a worker's): a fine-tune registered over the registry's base, a vector
/// and an evaluation, written into `stage` against a copy of the catalog.
fn stage_unit(
    dir: &Path,
    reg: &Path,
    model: &Path,
    name: &str,
) -> (crossmerge::registry::UnitResult, PathBuf) {
    use crossmerge::catalog::NewEvaluation;
    use crossmerge::{
        CheckpointKind, DeriveOptions, NoProgress, RegisterOptions, Registry, VectorKind,
    };

    let main = Registry::open(reg).unwrap();
    let snapshot = dir.join(format!("{name}.sqlite3"));
    main.snapshot_catalog(&snapshot).unwrap();
    drop(main);
    let stage = dir.join(format!("stage-{name}"));
    let mut w = Registry::open_staged(reg, &stage, &snapshot).unwrap();
    let marks = w.marks().unwrap();
    w.register(
        model,
        &RegisterOptions::new(name, CheckpointKind::Task)
            .base("base")
            .task("ner")
            .language("en"),
        &NoProgress,
    )
    .unwrap();
    w.derive(
        &DeriveOptions::new(VectorKind::Task, format!("{name}-vector"), name).minus("base"),
        &NoProgress,
    )
    .unwrap();
    let checkpoint = w.resolve(name).unwrap().rowid;
    w.record_evaluation(&NewEvaluation {
        key: blake3::hash(name.as_bytes()).to_hex().to_string(),
        checkpoint,
        task: "ner".into(),
        language: Some("en".into()),
        dataset_hash: "0".repeat(64),
        dataset_path: "data.iob2".into(),
        split: Some("test".into()),
        metrics: [("f1".to_owned(), 0.5)].into_iter().collect(),
        examples: 10,
        truncated: 0,
        device: "cpu".into(),
        duration_s: 1.0,
        settings: serde_json::json!({}),
    })
    .unwrap();
    (
        w.unit_result(&format!("unit:{name}"), &marks).unwrap(),
        stage,
    )
}

#[test]
fn a_unit_result_is_ingested_once_and_a_damaged_one_changes_nothing() {
    use crossmerge::{CheckpointKind, ExportOptions, NoProgress, RegisterOptions, Registry};

    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path();
    let family = crate::common::tiny_family(&dir.join("family"), 2, Some(3));
    let reg = dir.join("reg");
    let mut main = Registry::create(&reg).unwrap();
    main.register(
        &family[0],
        &RegisterOptions::new("base", CheckpointKind::Base),
        &NoProgress,
    )
    .unwrap();
    drop(main);
    let before = snapshot(&reg);
    let (result, stage) = stage_unit(dir, &reg, &family[1], "ft-1");
    // The worker wrote nothing into the registry: its objects are staged, its rows private.
    assert_eq!(snapshot(&reg), before);
    assert!(!crossmerge::registry::staged_objects(&stage).is_empty());
    assert_eq!(result.checkpoints.len(), 1);
    assert_eq!(result.vectors.len(), 1);
    assert_eq!(result.evaluations.len(), 1);

    let mut main = Registry::open(&reg).unwrap();
    let got = main.ingest_unit(&result, &stage).unwrap();
    assert_eq!(got.checkpoints, ["ft-1@1"]);
    assert_eq!(got.vectors, ["ft-1-vector@1"]);
    assert_eq!(got.evaluations, 1);
    assert!(got.objects > 0);
    // Ingested again (a driver killed before it marked the unit): nothing new.
    let again = main.ingest_unit(&result, &stage).unwrap();
    assert!(again.checkpoints.is_empty() && again.vectors.is_empty());
    assert_eq!((again.objects, again.evaluations), (0, 0));
    assert!(main.verify(&NoProgress).unwrap().is_clean());
    let out = dir.join("export");
    main.export("ft-1", &out, &ExportOptions::default(), &NoProgress)
        .unwrap();
    assert_eq!(
        crate::common::read_model_tensors(&out),
        crate::common::read_model_tensors(&family[1])
    );
    assert_eq!(main.evaluations(Some("ft-1"), None, None).unwrap().len(), 1);
    drop(main);

    // A result whose staged objects are gone, or damaged, or of another format: refused
    // before anything is written.
    let (result, stage) = stage_unit(dir, &reg, &family[2], "ft-2");
    let before = snapshot(&reg);
    // A bit of the biggest staged object (a tensor) flips: only its hash tells.
    let first = crate::common::files_under(&stage.join("objects"))
        .into_iter()
        .max_by_key(|p| std::fs::metadata(p).unwrap().len())
        .unwrap();
    let mut bytes = std::fs::read(&first).unwrap();
    let at = bytes.len() / 2;
    bytes[at] ^= 1;
    std::fs::write(&first, &bytes).unwrap();
    let mut main = Registry::open(&reg).unwrap();
    let err = main.ingest_unit(&result, &stage).unwrap_err().to_string();
    assert!(err.contains("does not match its id"), "{err}");
    std::fs::remove_file(&first).unwrap();
    let err = main.ingest_unit(&result, &stage).unwrap_err().to_string();
    assert!(err.contains("is damaged"), "{err}");
    let mut other = result.clone();
    other.format = "crossmerge.unit-result.v0".into();
    let err = main.ingest_unit(&other, &stage).unwrap_err().to_string();
    assert!(err.contains("format"), "{err}");
    drop(main);
    assert_eq!(
        snapshot(&reg),
        before,
        "a refused result changed the registry"
    );
    crate::common::assert_verify_clean(&reg);
}

/// Refuses to run a unit that names a registry folder: workers staged through S3 must not.
const S3_WORKER: &str = r#"#!/bin/bash
case " $* " in
    *" --registry "*) echo "a staged worker was given a registry: $*" >&2; exit 9 ;;
esac
case " $* " in
    *" --remote-url s3://"*) ;;
    *) echo "no --remote-url: $*" >&2; exit 9 ;;
esac
exec "$CROSSMERGE_REAL" "$@"
"#;

#[test]
fn a_study_on_slurm_staged_through_s3_equals_the_local_one() {
    let Some(cluster) = Cluster::start("s3") else {
        return;
    };
    let Some(moto) = crate::remote::Moto::start() else {
        skipped(
            "slurm::a_study_on_slurm_staged_through_s3_equals_the_local_one",
            "moto_server (pip install \"moto[server]\") is not installed beside $CROSSMERGE_PYTHON or on PATH",
        );
        return;
    };
    let local = Setup::new();
    local.study(&[]).assert().success();
    let t = Setup::new();
    crate::remote::add_s3(&t.reg, "s3://crossmerge-test/lab", &moto.endpoint());
    let worker = t.root.join("s3-worker.sh");
    std::fs::write(&worker, S3_WORKER).unwrap();
    Command::new("chmod")
        .arg("+x")
        .arg(&worker)
        .status()
        .unwrap();
    let mut c = Command::new(env!("CARGO_BIN_EXE_crossmerge"));
    c.current_dir(&t.root)
        .args(["study", "study.toml", "--registry", "reg", "--out", "out"])
        .args([
            "--executor",
            "slurm",
            "--poll",
            "1",
            "--remote",
            "s3",
            "--worker",
        ])
        .arg(&worker)
        .env("SLURM_CONF", &cluster.conf)
        .env("CROSSMERGE_REAL", env!("CARGO_BIN_EXE_crossmerge"));
    for (k, v) in crate::remote::TEST_KEYS {
        c.env(k, v);
    }
    let out = c.output().unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "{stderr}");
    assert!(stderr.contains("pushed "), "{stderr}");
    let without_command = |mut v: Value| {
        v.as_object_mut().unwrap().remove("command").unwrap();
        v
    };
    assert_eq!(
        without_command(t.results()),
        without_command(local.results()),
        "{stderr}"
    );
    cm(&t.reg, &["verify"]).assert().success();
    for c in t.json(&["list", "--json"]).as_array().unwrap() {
        assert_eq!(c["version"], 1, "{} was made twice", c["name"]);
    }
    // Every script named the remote, none the registry.
    for e in std::fs::read_dir(t.reg.join("slurm/toy")).unwrap() {
        let wave = e.unwrap().path();
        if !wave
            .file_name()
            .unwrap()
            .to_string_lossy()
            .starts_with("wave-")
        {
            continue;
        }
        for f in std::fs::read_dir(&wave).unwrap() {
            let f = f.unwrap().path();
            if f.extension().is_some_and(|x| x == "sbatch") {
                let text = std::fs::read_to_string(&f).unwrap();
                assert!(
                    text.contains("--remote-url s3://crossmerge-test/lab"),
                    "{text}"
                );
                assert!(!text.contains("--registry"), "{text}");
            }
        }
    }
}
