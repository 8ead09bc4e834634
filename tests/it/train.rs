#![allow(clippy::many_single_char_names)] // h, i, l, p: a model's dimensions; s, r, t, e: setup, report, training, evaluation
//! `crossmerge train` on a tiny BERT built here (its own word-level tokenizer) and a toy
//! language generated here: each task trains, registers with its lineage and run, and
//! evaluates; the same seed gives the same bits; runs killed at random moments and resumed
//! end with the bits of an uninterrupted run; bad input is refused with nothing registered.

use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::time::Duration;

use serde_json::{Value, json};

use crate::common::cm;
use crate::toy::{Rng, words, write_data, write_model};

/// A registry with the tiny base registered as `tiny`, and the toy data.
struct Setup {
    _dir: tempfile::TempDir,
    root: PathBuf,
    reg: PathBuf,
}

impl Setup {
    fn new() -> Self {
        let dir = tempfile::tempdir().unwrap();
        let root = dir.path().to_path_buf();
        write_data(&root, "train", 48, 1);
        write_data(&root, "dev", 16, 2);
        let model = write_model(&root, 5 + words().len());
        let reg = root.join("reg");
        cm(
            &reg,
            &[
                "register",
                model.to_str().unwrap(),
                "--name",
                "tiny",
                "--kind",
                "base",
            ],
        )
        .assert()
        .success();
        Self {
            _dir: dir,
            root,
            reg,
        }
    }

    fn file(&self, name: &str) -> String {
        self.root.join(name).display().to_string()
    }

    fn train(&self, args: &[&str]) -> assert_cmd::Command {
        let mut all = vec!["train", "tiny"];
        all.extend_from_slice(args);
        cm(&self.reg, &all)
    }

    fn show(&self, name: &str) -> Value {
        let out = cm(&self.reg, &["show", name, "--json"]).output().unwrap();
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
        serde_json::from_slice(&out.stdout).unwrap()
    }

    fn names(&self) -> Vec<String> {
        let out = cm(&self.reg, &["list", "--json"]).output().unwrap();
        let v: Value = serde_json::from_slice(&out.stdout).unwrap();
        v.as_array()
            .unwrap()
            .iter()
            .map(|c| c["name"].as_str().unwrap().to_owned())
            .collect()
    }
}

fn json_of(cmd: &mut assert_cmd::Command) -> Value {
    let out = cmd.output().unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    serde_json::from_slice(&out.stdout).unwrap()
}

#[test]
fn every_task_trains_registers_its_lineage_and_run_and_evaluates() {
    let s = Setup::new();
    let cases = [
        ("pos", "conllu", "upos_accuracy"),
        ("ner", "iob2", "entity_f1"),
        ("nli", "tsv", "accuracy"),
        ("dp", "conllu", "las"),
        ("mlm", "txt", "perplexity"),
    ];
    for (task, ext, metric) in cases {
        let name = format!("tiny-{task}");
        let mut args = vec![
            "--task".to_owned(),
            task.to_owned(),
            "--data".to_owned(),
            s.file(&format!("toy-train.{ext}")),
            "--dev".to_owned(),
            s.file(&format!("toy-dev.{ext}")),
            "--name".to_owned(),
            name.clone(),
            "--epochs".to_owned(),
            "3".to_owned(),
            "--lr".to_owned(),
            "3e-3".to_owned(),
            "--json".to_owned(),
        ];
        if task == "mlm" {
            args.extend(["--language".to_owned(), "en".to_owned()]);
        }
        let refs: Vec<&str> = args.iter().map(String::as_str).collect();
        let r = json_of(&mut s.train(&refs));
        assert_eq!(r["steps"], 18, "{task}: 48 examples / 8 a batch × 3 epochs");
        assert_eq!(r["kept"], "best_dev", "{task}");
        for key in ["tokens_per_s", "steady_tokens_per_s"] {
            let v = r[key].as_f64().unwrap_or(f64::NAN);
            assert!(v.is_finite() && v > 0.0, "{task}: {key} in {r}");
        }
        assert!(r["dev_metrics"][metric].is_number(), "{task}: {r}");
        let d = s.show(&name);
        let c = &d["checkpoint"];
        assert_eq!(c["kind"], if task == "mlm" { "language" } else { "task" });
        assert_eq!(c["base"], "tiny@1", "{task}: lineage to the base");
        let t = &d["training"];
        assert_eq!(t["source"], "tiny@1");
        assert_eq!(t["task"], task);
        assert_eq!(t["steps"], 18);
        assert_eq!(t["losses"].as_array().unwrap().len(), 18);
        assert_eq!(
            t["dev"].as_array().unwrap().len(),
            3,
            "{task}: one dev score an epoch"
        );
        assert_eq!(t["data"][0]["role"], "train");
        assert_eq!(t["data"][0]["hash"].as_str().unwrap().len(), 64);
        assert_eq!(t["settings"]["options"]["lr"], 3e-3);
        // The trained model evaluates, and a task vector derives from it directly.
        let out = cm(
            &s.reg,
            &[
                "eval",
                &name,
                "--task",
                task,
                "--data",
                &s.file(&format!("toy-dev.{ext}")),
                "--json",
            ],
        )
        .output()
        .unwrap();
        assert!(
            out.status.success(),
            "{task}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        let e: Value = serde_json::from_slice(&out.stdout).unwrap();
        let kept = &r["dev_metrics"][metric];
        assert_eq!(
            &e["metrics"][metric], kept,
            "{task}: eval agrees with the kept dev score"
        );
        let kind = if task == "mlm" { "language" } else { "task" };
        cm(
            &s.reg,
            &[
                "derive",
                kind,
                "--from",
                &name,
                "--name",
                &format!("{name}-vector"),
            ],
        )
        .assert()
        .success();
    }
    // Learning happened: the tagger's dev accuracy is far above chance on this toy grammar.
    let pos = s.show("tiny-pos");
    let dev = pos["training"]["dev"].as_array().unwrap();
    let last = dev.last().unwrap()["metrics"]["upos_accuracy"]
        .as_f64()
        .unwrap();
    assert!(last > 0.6, "UPOS accuracy {last}");
    cm(&s.reg, &["verify"]).assert().success();
}

fn pos_args(s: &Setup, name: &str, extra: &[&str]) -> Vec<String> {
    let mut v: Vec<String> = [
        "--task",
        "pos",
        "--data",
        &s.file("toy-train.conllu"),
        "--name",
        name,
        "--batch-size",
        "4",
        "--lr",
        "1e-3",
        "--warmup-ratio",
        "0.1",
        "--weight-decay",
        "0.01",
    ]
    .iter()
    .map(|x| (*x).to_owned())
    .collect();
    v.extend(extra.iter().map(|x| (*x).to_owned()));
    if !extra.contains(&"--epochs") {
        v.extend(["--epochs".to_owned(), "3".to_owned()]);
    }
    v
}

fn manifest_of(s: &Setup, name: &str) -> String {
    s.show(name)["checkpoint"]["manifest_id"]
        .as_str()
        .unwrap()
        .to_owned()
}

#[test]
fn the_same_seed_gives_the_same_bits_and_another_seed_others() {
    let a = Setup::new();
    let b = Setup::new();
    for s in [&a, &b] {
        let args = pos_args(s, "run", &[]);
        let refs: Vec<&str> = args.iter().map(String::as_str).collect();
        s.train(&refs).assert().success();
    }
    assert_eq!(manifest_of(&a, "run"), manifest_of(&b, "run"));
    let args = pos_args(&a, "other", &["--seed", "7"]);
    let refs: Vec<&str> = args.iter().map(String::as_str).collect();
    a.train(&refs).assert().success();
    assert_ne!(manifest_of(&a, "run"), manifest_of(&a, "other"));
}

#[test]
fn runs_killed_at_random_moments_resume_to_the_bits_of_an_uninterrupted_run() {
    let whole = Setup::new();
    // With dev data, so the best step's saved weights are part of what a resume restores.
    let dev = whole.file("toy-dev.conllu");
    let args = pos_args(
        &whole,
        "run",
        &["--save-every", "1", "--epochs", "60", "--dev", &dev],
    );
    let refs: Vec<&str> = args.iter().map(String::as_str).collect();
    whole.train(&refs).assert().success();
    let want = manifest_of(&whole, "run");

    let killed = Setup::new();
    let dev = killed.file("toy-dev.conllu");
    let args = pos_args(
        &killed,
        "run",
        &[
            "--save-every",
            "1",
            "--epochs",
            "60",
            "--resume",
            "--dev",
            &dev,
        ],
    );
    let mut rng = Rng(99);
    let mut kills = 0;
    for attempt in 0..12 {
        let mut cmd = std::process::Command::new(env!("CARGO_BIN_EXE_crossmerge"));
        cmd.arg("--registry")
            .arg(&killed.reg)
            .args(["--quiet", "train", "tiny"])
            .args(&args)
            .stdout(Stdio::null())
            .stderr(Stdio::null());
        let mut child = cmd.spawn().unwrap();
        if attempt < 8 {
            // SIGKILL at a random moment of the run (about 3 s uninterrupted).
            std::thread::sleep(Duration::from_millis(50 + rng.next() % 300));
            if child.try_wait().unwrap().is_none() {
                child.kill().unwrap();
                child.wait().unwrap();
                kills += 1;
                assert_eq!(killed.names(), ["tiny"], "a killed run left a checkpoint");
                continue;
            }
        }
        assert!(child.wait().unwrap().success());
        if killed.names().contains(&"run".to_owned()) {
            break;
        }
    }
    assert!(kills >= 5, "only {kills} kills landed");
    assert_eq!(
        manifest_of(&killed, "run"),
        want,
        "after {kills} kills and resumes the bits differ from an uninterrupted run"
    );
    let t = killed.show("run")["training"].clone();
    assert_eq!(
        t["losses"].as_array().unwrap().len(),
        t["steps"].as_u64().unwrap() as usize
    );
    cm(&killed.reg, &["verify"]).assert().success();
    assert!(
        !killed.reg.join("training").exists()
            || std::fs::read_dir(killed.reg.join("training"))
                .unwrap()
                .next()
                .is_none(),
        "the state folder goes once the run is registered"
    );
}

#[test]
fn settings_come_from_a_toml_file_and_flags_override_them() {
    let s = Setup::new();
    let settings = s.root.join("pos.toml");
    std::fs::write(
        &settings,
        "task = \"pos\"\ndata = \"toy-train.conllu\"\nname = \"from-file\"\nepochs = 1\nlr = 1e-3\n",
    )
    .unwrap();
    let r = json_of(&mut s.train(&["--settings", settings.to_str().unwrap(), "--json"]));
    assert_eq!(r["steps"], 6);
    let r = json_of(&mut s.train(&[
        "--settings",
        settings.to_str().unwrap(),
        "--max-steps",
        "2",
        "--name",
        "flagged",
        "--json",
    ]));
    assert_eq!(r["steps"], 2);
    assert_eq!(r["checkpoint"], "flagged@1");
    std::fs::write(&settings, "task = \"pos\"\nlearning_rate = 1\n").unwrap();
    let out = s
        .train(&["--settings", settings.to_str().unwrap()])
        .output()
        .unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        !out.status.success() && err.contains("learning_rate") && err.contains("hint:"),
        "{err}"
    );
}

#[test]
fn the_train_schema_is_current() {
    let path = Path::new(env!("CARGO_MANIFEST_DIR")).join("schemas/train.schema.json");
    let fresh = crossmerge::train::json_schema();
    if std::env::var_os("CROSSMERGE_BLESS").is_some() {
        std::fs::write(&path, &fresh).unwrap();
    }
    assert_eq!(
        std::fs::read_to_string(&path).unwrap_or_default(),
        fresh,
        "schemas/train.schema.json is stale: run `CROSSMERGE_BLESS=1 cargo test --test it train_schema` and commit it"
    );
}

#[test]
fn bad_input_gets_one_line_and_a_hint_and_registers_nothing() {
    let s = Setup::new();
    std::fs::write(s.root.join("empty.conllu"), "").unwrap();
    std::fs::write(s.root.join("bad.conllu"), "1\tdog\n\n").unwrap();
    std::fs::write(
        s.root.join("nohead.conllu"),
        "1\tthe\tthe\tDET\t_\t_\t_\t_\t_\t_\n2\tdog\tdog\tNOUN\t_\t_\t_\t_\t_\t_\n\n",
    )
    .unwrap();
    // A dev file with a tag the training data lacks.
    let dev = std::fs::read_to_string(s.root.join("toy-dev.conllu"))
        .unwrap()
        .replacen("\tDET\t", "\tINTJ\t", 1);
    std::fs::write(s.root.join("odd-dev.conllu"), dev).unwrap();
    let cases: Vec<(Vec<String>, &str)> = vec![
        (
            vec![
                "--task".into(),
                "pos".into(),
                "--data".into(),
                s.file("empty.conllu"),
            ],
            "no sentences",
        ),
        (
            vec![
                "--task".into(),
                "pos".into(),
                "--data".into(),
                s.file("toy-train.conllu"),
                "--data-range".into(),
                "500:".into(),
            ],
            "starts past",
        ),
        (
            vec![
                "--task".into(),
                "mlm".into(),
                "--language".into(),
                "en".into(),
                "--data".into(),
                s.file("toy-train.txt"),
                "--data-range".into(),
                "9:3".into(),
            ],
            "not a sentence range",
        ),
        (
            vec![
                "--task".into(),
                "pos".into(),
                "--data".into(),
                s.file("bad.conllu"),
            ],
            "line 1",
        ),
        (
            vec![
                "--task".into(),
                "pos".into(),
                "--data".into(),
                s.file("toy-train.conllu"),
                "--dev".into(),
                s.file("odd-dev.conllu"),
            ],
            "INTJ",
        ),
        (
            vec![
                "--task".into(),
                "dp".into(),
                "--data".into(),
                s.file("nohead.conllu"),
            ],
            "HEAD",
        ),
        (
            vec![
                "--task".into(),
                "pos".into(),
                "--data".into(),
                s.file("toy-train.conllu"),
                // A step this large overflows the weights (the tiny model's LayerNorms keep
                // 1e6 finite; a real encoder's loss goes NaN there too).
                "--lr".into(),
                "1e30".into(),
            ],
            "at step",
        ),
        (
            vec![
                "--task".into(),
                "srl".into(),
                "--data".into(),
                s.file("toy-train.conllu"),
            ],
            "unknown task",
        ),
    ];
    for (mut args, needle) in cases {
        args.extend(["--name".into(), "bad".into()]);
        let refs: Vec<&str> = args.iter().map(String::as_str).collect();
        let out = s.train(&refs).output().unwrap();
        let err = String::from_utf8_lossy(&out.stderr);
        assert!(!out.status.success(), "{args:?} succeeded");
        assert!(err.contains(needle), "{args:?}: {err}");
        assert!(err.contains("hint:"), "{args:?}: {err}");
        assert_eq!(
            err.trim().lines().count(),
            2,
            "{args:?}: one line and its hint: {err}"
        );
        assert_eq!(s.names(), ["tiny"], "{args:?} registered something");
    }
    // A checkpoint whose tokenizer does not fit its embeddings.
    let small = write_model(&s.root.join("small"), 8);
    cm(
        &s.reg,
        &[
            "register",
            small.to_str().unwrap(),
            "--name",
            "small",
            "--kind",
            "base",
        ],
    )
    .assert()
    .success();
    let out = cm(
        &s.reg,
        &[
            "train",
            "small",
            "--task",
            "pos",
            "--data",
            &s.file("toy-train.conllu"),
            "--name",
            "bad",
        ],
    )
    .output()
    .unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        !out.status.success() && err.contains("tokenizer") && err.contains("hint:"),
        "{err}"
    );
    assert_eq!(s.names(), ["small", "tiny"]);
}

/// The exports of trained models load in transformers with no missing, unexpected or
/// mismatched keys, and transformers' predictions score exactly what `crossmerge eval` scores
/// (the masked-LM model: its pseudo-perplexity, to f32 round-off).
#[test]
fn exports_load_in_transformers_and_predict_the_same() {
    let python = crate::common::python();
    let probe = std::process::Command::new(&python)
        .args(["-c", "import torch, transformers, seqeval"])
        .output();
    if !probe.is_ok_and(|o| o.status.success()) {
        crate::common::skipped(
            "the transformers load of trained exports",
            &format!("torch, transformers and seqeval are not all installed for {python}"),
        );
        return;
    }
    let s = Setup::new();
    let script =
        Path::new(env!("CARGO_MANIFEST_DIR")).join("scripts/reference/check_trained_export.py");
    for (task, ext, metric, arch) in [
        (
            "pos",
            "conllu",
            Some("upos_accuracy"),
            "BertForTokenClassification",
        ),
        (
            "ner",
            "iob2",
            Some("entity_f1"),
            "BertForTokenClassification",
        ),
        (
            "nli",
            "tsv",
            Some("accuracy"),
            "BertForSequenceClassification",
        ),
        ("mlm", "txt", Some("pseudo_perplexity"), "BertForMaskedLM"),
    ] {
        let name = format!("x-{task}");
        s.train(&[
            "--task",
            task,
            "--data",
            &s.file(&format!("toy-train.{ext}")),
            "--name",
            &name,
            "--epochs",
            "2",
            "--lr",
            "3e-3",
            "--language",
            "en",
        ])
        .assert()
        .success();
        let out = s.root.join(format!("export-{task}"));
        cm(&s.reg, &["export", &name, "--out", out.to_str().unwrap()])
            .assert()
            .success();
        let dev = s.file(&format!("toy-dev.{ext}"));
        let o = std::process::Command::new(&python)
            .arg(&script)
            .args([out.to_str().unwrap(), task, &dev])
            .output()
            .unwrap();
        assert!(
            o.status.success(),
            "{task}: {}",
            String::from_utf8_lossy(&o.stderr)
        );
        let r: Value = serde_json::from_slice(&o.stdout).unwrap();
        assert_eq!(r["architecture"], arch, "{task}: {r}");
        for k in ["missing", "unexpected", "mismatched"] {
            assert_eq!(r[k], json!([]), "{task}: {k} keys: {r}");
        }
        if let Some(metric) = metric {
            let mut args = vec!["eval", &name, "--task", task, "--data", &dev, "--json"];
            // Predicted labels must agree exactly; a perplexity to f32 round-off.
            let tolerance = if task == "mlm" {
                args.push("--pseudo-perplexity");
                1e-5
            } else {
                1e-9
            };
            let e = json_of(&mut cm(&s.reg, &args));
            let (ours, theirs) = (
                e["metrics"][metric].as_f64().unwrap(),
                r[metric].as_f64().unwrap(),
            );
            assert!(
                (ours - theirs).abs() <= tolerance * theirs.abs().max(1.0),
                "{task}: crossmerge {ours} vs transformers {theirs}"
            );
        }
    }
}
