#![allow(clippy::float_cmp)] // the study's numbers must equal the one-by-one runs' exactly
#![allow(clippy::many_single_char_names)] // t: the setup, r: results, x: a transfer, p: a point, s: a string
//! `crossmerge study` on the toy language and a tiny BERT: the study trains its task and
//! language models, derives, merges and evaluates; every number of its results is checked
//! against `derive`, `merge`, `eval` and `compare` run one by one; runs killed at random
//! moments finish with the same results.json and redo nothing; dry runs read no tensor; bad
//! study files are refused before anything runs.

use std::collections::{BTreeMap, BTreeSet};
use std::fmt::Write as _;
use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::time::Duration;

use serde_json::Value;

use crate::common::{bin, cm, snapshot};
use crate::toy::{Rng, words, write_data, write_model};

const LANGUAGES: [&str; 4] = ["en", "es", "de", "fr"];

/// The toy data, the tiny base registered as `tiny`, an NER model trained by `train`, and a
/// study file that trains everything else.
pub(crate) struct Setup {
    _dir: tempfile::TempDir,
    pub(crate) root: PathBuf,
    pub(crate) reg: PathBuf,
}

fn study_file() -> String {
    let mut s = String::from(
        r#"name = "toy"
description = "The toy language, one seed per 'language'."
base = "tiny"
lambdas = [0.0, 0.5, 1.0]

[evaluation]
max_length = 32
batch_size = 8

[tasks.pos]
train = "train/pos.toml"
[tasks.pos.data.es]
validation = "toy-es.conllu[0:8]"
test = "toy-es.conllu[8:]"
[tasks.pos.data.de]
validation = "toy-de.conllu[:8]"
test = "toy-de.conllu[8:16]"
[tasks.pos.data.fr]
validation = "toy-fr.conllu[0:8]"
test = "toy-fr.conllu[8:16]"

[tasks.ner]
model = "ner-en"
[tasks.ner.baselines]
de = "ner-de"
[tasks.ner.data.es]
validation = "toy-es.iob2[0:8]"
test = "toy-es.iob2[8:]"
[tasks.ner.data.de]
validation = "toy-de.iob2[0:8]"
test = "toy-de.iob2[8:]"
"#,
    );
    for l in LANGUAGES {
        let _ = write!(s, "\n[languages.{l}]\ntrain = \"train/mlm-{l}.toml\"\n");
        if l == "es" || l == "de" {
            let _ = write!(
                s,
                "text = \"toy-{l}.txt[0:8]\"\nbefore = {{ train = \"train/head.toml\" }}\n"
            );
        }
    }
    s
}

impl Setup {
    pub(crate) fn new() -> Self {
        let dir = tempfile::tempdir().unwrap();
        let root = dir.path().to_path_buf();
        write_data(&root, "train", 48, 1);
        for (k, l) in LANGUAGES.iter().enumerate() {
            write_data(&root, l, 16, 10 + k as u64);
        }
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
        cm(
            &reg,
            &[
                "train",
                "tiny",
                "--task",
                "ner",
                "--data",
                root.join("toy-train.iob2").to_str().unwrap(),
                "--name",
                "ner-en",
                "--language",
                "en",
                "--epochs",
                "2",
                "--lr",
                "1e-3",
                "--batch-size",
                "8",
                "--seed",
                "3",
            ],
        )
        .assert()
        .success();
        // A model "trained in the language" (German's toy data), a baseline beside the transfer.
        cm(
            &reg,
            &[
                "train",
                "tiny",
                "--task",
                "ner",
                "--data",
                root.join("toy-de.iob2").to_str().unwrap(),
                "--name",
                "ner-de",
                "--language",
                "de",
                "--epochs",
                "2",
                "--lr",
                "1e-3",
                "--batch-size",
                "8",
                "--seed",
                "4",
            ],
        )
        .assert()
        .success();
        std::fs::create_dir_all(root.join("train")).unwrap();
        std::fs::write(
            root.join("train/pos.toml"),
            "task = \"pos\"\ndata = \"../toy-train.conllu\"\nname = \"pos-en\"\nlanguage = \"en\"\n\
             epochs = 2\nlr = 1e-3\nbatch_size = 8\nseed = 1\n",
        )
        .unwrap();
        for (k, l) in LANGUAGES.iter().enumerate() {
            std::fs::write(
                root.join(format!("train/mlm-{l}.toml")),
                format!(
                    "task = \"mlm\"\ndata = \"../toy-{l}.txt\"\nname = \"lm-{l}\"\n\
                     max_steps = 4\nlr = 1e-3\nbatch_size = 4\nseed = {}\n",
                    20 + k
                ),
            )
            .unwrap();
        }
        // The model before language fine-tuning: an MLM head on the frozen base.
        std::fs::write(
            root.join("train/head.toml"),
            "task = \"mlm\"\ndata = \"../toy-train.txt\"\nname = \"lm-head\"\nlanguage = \"en\"\n\
             freeze = \"encoder\"\nmax_steps = 4\nlr = 1e-3\nbatch_size = 4\nseed = 5\n",
        )
        .unwrap();
        std::fs::write(root.join("study.toml"), study_file()).unwrap();
        Self {
            _dir: dir,
            root,
            reg,
        }
    }

    /// `crossmerge --quiet study study.toml --registry reg --out out ARGS`, run in the
    /// setup's folder so that the command (written into the results) is the same in every
    /// setup.
    pub(crate) fn study(&self, args: &[&str]) -> assert_cmd::Command {
        let mut c = bin();
        c.current_dir(&self.root)
            .args([
                "--quiet",
                "study",
                "study.toml",
                "--registry",
                "reg",
                "--out",
                "out",
            ])
            .args(args);
        c
    }

    pub(crate) fn results(&self) -> Value {
        serde_json::from_slice(&std::fs::read(self.root.join("out/results.json")).unwrap()).unwrap()
    }

    pub(crate) fn json(&self, args: &[&str]) -> Value {
        let out = cm(&self.reg, args).output().unwrap();
        assert!(
            out.status.success(),
            "{args:?}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        serde_json::from_slice(&out.stdout).unwrap()
    }

    fn file(&self, name: &str) -> String {
        self.root.join(name).display().to_string()
    }

    /// `eval` of one checkpoint on `data` (`FILE[START:END]`) as one number.
    fn eval(&self, checkpoint: &str, task: &str, data: &str, metric: &str, extra: &[&str]) -> f64 {
        let (file, range) = data.split_once('[').unwrap_or((data, ""));
        let mut args = vec![
            "eval",
            checkpoint,
            "--task",
            task,
            "--max-length",
            "32",
            "--batch-size",
            "3",
            "--json",
        ];
        let path = self.file(file);
        args.extend(["--data", &path]);
        let range = range.trim_end_matches(']');
        if !range.is_empty() {
            args.extend(["--range", range]);
        }
        args.extend_from_slice(extra);
        let r = self.json(&args);
        r["metrics"][metric].as_f64().unwrap()
    }
}

fn f(v: &Value) -> f64 {
    v.as_f64().unwrap()
}

fn s(v: &Value) -> &str {
    v.as_str().unwrap()
}

#[test]
fn a_study_runs_end_to_end_and_every_number_equals_the_one_by_one_runs() {
    let t = Setup::new();
    let out = t.study(&[]).output().unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let r = t.results();
    assert_eq!(r["study"], "toy");
    assert!(s(&r["command"]).starts_with("crossmerge --quiet study study.toml"));
    assert_eq!(r["crossmerge_version"], env!("CARGO_PKG_VERSION"));
    let readme = std::fs::read_to_string(t.root.join("out/README.md")).unwrap();
    assert!(
        readme.contains(s(&r["command"])),
        "the README names its command"
    );

    // The vectors, derived again by hand, have the same definitions.
    for l in LANGUAGES {
        let v = t.json(&[
            "derive",
            "language",
            "--from",
            &format!("lm-{l}"),
            "--name",
            &format!("check/{l}"),
            "--json",
        ]);
        let study = t.json(&["show", &format!("toy/language/{l}"), "--json"]);
        assert_eq!(
            v["vector"]["definition"], study["vector"]["definition"],
            "{l}"
        );
    }

    let mut checked = 0;
    for task in r["tasks"].as_array().unwrap() {
        let name = s(&task["task"]);
        let metric = s(&task["metric"]);
        let model = s(&task["model"]["checkpoint"]);
        let transfers = task["transfers"].as_array().unwrap();
        assert_eq!(transfers.len(), if name == "pos" { 3 } else { 2 });
        for x in transfers {
            let lang = s(&x["language"]);
            // The same merge by hand: the same bits.
            let recipe = t.root.join(format!("check-{name}-{lang}.toml"));
            std::fs::write(
                &recipe,
                format!(
                    "name = \"check/{name}+{lang}\"\nmethod = \"task_arithmetic\"\nbase = \"tiny\"\n\
                     [[inputs]]\nvector = \"{}\"\n[[inputs]]\nvector = \"{}\"\nlabel = \"lambda\"\n\
                     weight = {{ sweep = [0.0, 0.5, 1.0] }}\n[heads]\nfrom = \"{model}\"\n",
                    s(&task["vector"]["vector"]),
                    s(&x["language_vector"]["vector"]),
                ),
            )
            .unwrap();
            let points = t.json(&["merge", recipe.to_str().unwrap(), "--json"]);
            let sweep = x["sweep"].as_array().unwrap();
            let (val, test) = (s(&x["validation_data"]), s(&x["test_data"]));
            let mut best = (f64::NEG_INFINITY, 0.0, String::new());
            for (p, point) in sweep.iter().zip(points.as_array().unwrap()) {
                assert_eq!(
                    p["checkpoint"]["manifest_id"], point["checkpoint"]["manifest_id"],
                    "{name} {lang} λ={}",
                    p["lambda"]
                );
                let mine = s(&point["checkpoint"]["name"]).to_owned() + "@1";
                let v = t.eval(&mine, name, val, metric, &[]);
                assert_eq!(
                    f(&p["validation"]["value"]),
                    v,
                    "{name} {lang} λ={}",
                    p["lambda"]
                );
                // Ties go to the smaller λ: only a strictly higher score moves the choice.
                if v > best.0 {
                    best = (v, f(&p["lambda"]), mine);
                }
                checked += 1;
            }
            assert_eq!(f(&x["best_lambda"]), best.1, "{name} {lang}");
            let at_best = t.eval(&best.2, name, test, metric, &[]);
            assert_eq!(f(&x["test"]["value"]), at_best, "{name} {lang}");
            let zero = t.eval(model, name, test, metric, &[]);
            assert_eq!(f(&x["zero_shot"]["value"]), zero, "{name} {lang}");
            assert_eq!(f(&x["gain"]), at_best - zero);
            if name == "ner" && lang == "de" {
                let trained = t.eval("ner-de", name, test, metric, &[]);
                assert_eq!(f(&x["trained_baseline"][1]["value"]), trained);
                assert_eq!(s(&x["trained_baseline"][0]["checkpoint"]), "ner-de@1");
            } else {
                assert!(x["trained_baseline"].is_null());
            }
            let row = format!(
                "| {lang} | {zero:.4} | {} | {at_best:.4} | {:+.4} |",
                best.1,
                at_best - zero
            );
            assert!(readme.contains(&row), "README lacks `{row}`:\n{readme}");
        }
    }
    assert_eq!(checked, 15);

    // Perplexity before (the MLM head on the frozen base) and after language fine-tuning.
    for p in r["perplexity"].as_array().unwrap() {
        let lang = s(&p["language"]);
        for side in ["before", "after"] {
            let m = s(&p[side]["model"]["checkpoint"]);
            let v = t.eval(m, "mlm", &format!("toy-{lang}.txt[0:8]"), "perplexity", &[]);
            assert_eq!(f(&p[side]["perplexity"]["value"]), v, "{lang} {side}");
        }
    }

    // Cosine with English's vector, overall and by layer, as `compare` gives it.
    let refs: Vec<String> = ["es", "de", "fr"]
        .iter()
        .map(|l| format!("toy/language/{l}"))
        .collect();
    for (by, key) in [("model", "overall"), ("layer", "by_layer")] {
        let mut args = vec!["compare"];
        args.extend(refs.iter().map(String::as_str));
        args.extend(["--reference", "toy/language/en", "--by", by, "--json"]);
        let c = t.json(&args);
        let vectors: Vec<&str> = c["vectors"].as_array().unwrap().iter().map(s).collect();
        let r_idx = vectors
            .iter()
            .position(|v| v.starts_with("toy/language/en"))
            .unwrap();
        for (lang, values) in r["cosine"][key]
            .as_array()
            .unwrap()
            .iter()
            .map(|e| (s(&e[0]), &e[1]))
        {
            let i = vectors
                .iter()
                .position(|v| v.starts_with(&format!("toy/language/{lang}@")))
                .unwrap();
            let expect: Vec<f64> = c["groups"]
                .as_array()
                .unwrap()
                .iter()
                .map(|g| f(&g["cosine"][i][r_idx]))
                .collect();
            let got: Vec<f64> = match values {
                Value::Array(a) => a.iter().map(f).collect(),
                v => vec![f(v)],
            };
            assert_eq!(got, expect, "{lang} by {by}");
        }
    }
    let correlations = r["correlations"].as_array().unwrap();
    let pos = correlations.iter().find(|c| c["task"] == "pos").unwrap();
    assert_eq!(pos["points"].as_array().unwrap().len(), 3);
    assert!(pos["spearman"].is_f64() || pos["spearman"].is_null());

    // Every number in results.csv; the plots decode, and the SVGs name what they show.
    let csv = std::fs::read_to_string(t.root.join("out/results.csv")).unwrap();
    assert_eq!(csv.lines().filter(|l| l.starts_with("sweep,")).count(), 15);
    assert_eq!(csv.lines().filter(|l| l.starts_with("best,")).count(), 5);
    for (stem, labels) in [
        ("lambda-pos", vec!["es", "de", "fr", "upos_accuracy"]),
        ("lambda-ner", vec!["es", "de", "entity_f1"]),
        (
            "cosine-layers",
            vec!["es", "de", "fr", "layer.0", "layer.1"],
        ),
        ("gain-vs-cosine", vec!["pos", "ner", "Spearman"]),
    ] {
        let img = image::open(t.root.join(format!("out/{stem}.png"))).unwrap();
        assert!(img.width() > 200 && img.height() > 200, "{stem}");
        let svg = std::fs::read_to_string(t.root.join(format!("out/{stem}.svg"))).unwrap();
        let doc = roxmltree::Document::parse(&svg).unwrap();
        let text: String = doc
            .descendants()
            .filter(roxmltree::Node::is_text)
            .map(|n| n.text().unwrap().to_owned() + " ")
            .collect();
        for l in labels {
            assert!(text.contains(l), "{stem}.svg lacks `{l}`: {text}");
        }
    }

    // Every evaluation id traces to data hashes and checkpoints of this registry.
    let listed: BTreeSet<String> = t
        .json(&["list", "--json"])
        .as_array()
        .unwrap()
        .iter()
        .map(|c| s(&c["manifest_id"]).to_owned())
        .collect();
    let hashes: BTreeMap<String, String> = std::fs::read_dir(&t.root)
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| p.is_file())
        .map(|p| {
            (
                blake3::hash(&std::fs::read(&p).unwrap())
                    .to_hex()
                    .to_string(),
                p.display().to_string(),
            )
        })
        .collect();
    let ids = evaluation_ids(&r);
    // 30 evaluation units; the same evaluation can serve twice (the λ = 0 merge can be the
    // task model bit for bit, and is then the same checkpoint on the same data).
    let rows = t.json(&["report", "evals", "--json"]);
    let study_rows: BTreeSet<String> = rows
        .as_array()
        .unwrap()
        .iter()
        .filter(|e| !s(&e["checkpoint"]).starts_with("check/"))
        .filter(|e| e["split"] != Value::Null)
        .map(|e| s(&e["id"]).to_owned())
        .collect();
    assert_eq!(
        ids, study_rows,
        "results.json names every evaluation the study stored"
    );
    assert!(ids.len() <= 30 && ids.len() >= 20, "{}", ids.len());
    for id in &ids {
        let tr = t.json(&["trace", id, "--json"]);
        assert_eq!(s(&tr["evaluation"]["id"]), id);
        assert!(
            hashes.contains_key(s(&tr["evaluation"]["dataset_hash"])),
            "{id}"
        );
        let mut manifests = Vec::new();
        let mut data = Vec::new();
        walk(&tr["checkpoint"], &mut manifests, &mut data);
        for m in &manifests {
            assert!(
                listed.contains(m),
                "{id} traces to {m}, not in the registry"
            );
        }
        for h in &data {
            assert!(
                hashes.contains_key(h),
                "{id} traces to data {h} that is not the toy data"
            );
        }
        assert!(manifests.len() >= 2, "{id}: {manifests:?}");
    }
    // A sweep point's trace reaches the trained language model's text.
    let x = &r["tasks"][0]["transfers"][0];
    let p = &x["sweep"][1]["validation"]["evaluation"];
    let text = cm(&t.reg, &["trace", s(p)]).output().unwrap();
    let text = String::from_utf8(text.stdout).unwrap();
    assert!(text.contains("merged by task_arithmetic"), "{text}");
    assert!(
        text.contains(&format!("toy-{}.txt", s(&x["language"]))),
        "{text}"
    );

    // Another merge method: TIES from [merge], the same bits as the recipe by hand.
    let ties = "name = \"toy-ties\"\nbase = \"tiny\"\nlambdas = [0.0, 1.0]\n\
        [merge]\nmethod = \"ties\"\ndensity = 0.5\n\
        [tasks.pos]\ntrain = \"train/pos.toml\"\n\
        [tasks.pos.data.es]\nvalidation = \"toy-es.conllu[0:8]\"\ntest = \"toy-es.conllu[8:]\"\n\
        [languages.es]\ntrain = \"train/mlm-es.toml\"\n";
    std::fs::write(t.root.join("ties.toml"), ties).unwrap();
    let mut c = bin();
    c.current_dir(&t.root).args([
        "--quiet",
        "study",
        "ties.toml",
        "--registry",
        "reg",
        "--out",
        "out-ties",
    ]);
    c.assert().success();
    let rt: Value =
        serde_json::from_slice(&std::fs::read(t.root.join("out-ties/results.json")).unwrap())
            .unwrap();
    assert_eq!(rt["merge"]["method"], "ties");
    let x = &rt["tasks"][0]["transfers"][0];
    let recipe = t.root.join("check-ties.toml");
    std::fs::write(
        &recipe,
        format!(
            "name = \"check/ties\"\nmethod = \"ties\"\ndensity = 0.5\nbase = \"tiny\"\n\
             [[inputs]]\nvector = \"{}\"\n[[inputs]]\nvector = \"{}\"\nlabel = \"lambda\"\n\
             weight = {{ sweep = [0.0, 1.0] }}\n[heads]\nfrom = \"pos-en\"\n",
            s(&rt["tasks"][0]["vector"]["vector"]),
            s(&x["language_vector"]["vector"]),
        ),
    )
    .unwrap();
    let points = t.json(&["merge", recipe.to_str().unwrap(), "--json"]);
    for (p, point) in x["sweep"]
        .as_array()
        .unwrap()
        .iter()
        .zip(points.as_array().unwrap())
    {
        assert_eq!(
            p["checkpoint"]["manifest_id"],
            point["checkpoint"]["manifest_id"]
        );
    }

    // Run again: everything is found, nothing is redone, the same results.
    let before = std::fs::read(t.root.join("out/results.json")).unwrap();
    let plan = dry_plan(&t);
    let not_done: Vec<&Value> = plan.iter().filter(|u| u["done"] == false).collect();
    assert!(
        not_done.iter().all(|u| u["kind"] == "compare"),
        "after a run only `compare` (not memoised) is left: {not_done:?}"
    );
    t.study(&[]).assert().success();
    assert_eq!(
        std::fs::read(t.root.join("out/results.json")).unwrap(),
        before
    );
}

#[test]
fn several_jobs_give_the_results_of_one_and_run_each_evaluation_once() {
    let one = Setup::new();
    one.study(&[]).assert().success();
    let t = Setup::new();
    // Not --quiet: stderr has a line per unit as it starts (stderr is not a terminal).
    let out = bin()
        .current_dir(&t.root)
        .args([
            "study",
            "study.toml",
            "--registry",
            "reg",
            "--out",
            "out",
            "--jobs",
            "3",
        ])
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    // Everything but the command line that made it is the same.
    let without_command = |mut v: Value| {
        v.as_object_mut().unwrap().remove("command").unwrap();
        v
    };
    assert_eq!(without_command(t.results()), without_command(one.results()));
    // Each evaluation ran once and was reported once as it started (the plan's summary
    // lines, "eval  30 (0 done)", are not units).
    let stderr = String::from_utf8_lossy(&out.stderr);
    let units = |kind: &str| {
        stderr
            .lines()
            .filter(|l| l.trim_start().starts_with(kind) && !l.ends_with(" done)"))
            .filter(|l| !l.contains(" done) (recomputed"))
            .count()
    };
    let reported = units("eval ");
    let rows = t.json(&["report", "evals", "--json"]);
    let ids: BTreeSet<&str> = rows
        .as_array()
        .unwrap()
        .iter()
        .map(|e| s(&e["id"]))
        .collect();
    assert_eq!(
        ids.len(),
        rows.as_array().unwrap().len(),
        "an evaluation ran twice"
    );
    assert_eq!(reported, ids.len(), "{stderr}");
    assert_eq!(ids.len(), evaluation_ids(&t.results()).len());
    assert_eq!(units("compare "), 1, "{stderr}");
    cm(&t.reg, &["verify"]).assert().success();
    // --quiet says nothing per unit.
    let quiet = t.study(&["--jobs", "3"]).output().unwrap();
    assert!(quiet.status.success());
    assert!(
        !String::from_utf8_lossy(&quiet.stderr).contains("compare language vectors"),
        "{}",
        String::from_utf8_lossy(&quiet.stderr)
    );
}

/// Every evaluation id in a results.json.
pub(crate) fn evaluation_ids(r: &Value) -> BTreeSet<String> {
    fn collect(v: &Value, ids: &mut BTreeSet<String>) {
        match v {
            Value::Object(m) => {
                for (k, x) in m {
                    if k == "evaluation" {
                        ids.insert(x.as_str().unwrap().to_owned());
                    } else {
                        collect(x, ids);
                    }
                }
            }
            Value::Array(a) => a.iter().for_each(|x| collect(x, ids)),
            _ => {}
        }
    }
    let mut ids = BTreeSet::new();
    collect(r, &mut ids);
    ids
}

/// Manifest ids and training data hashes of a trace's checkpoint tree.
fn walk(node: &Value, manifests: &mut Vec<String>, data: &mut Vec<String>) {
    match node {
        Value::Object(m) => {
            if let Some(Value::String(id)) = m.get("manifest_id") {
                manifests.push(id.clone());
            }
            if let (Some(Value::String(h)), Some(Value::String(_))) = (m.get("hash"), m.get("role"))
            {
                data.push(h.clone());
            }
            m.values().for_each(|v| walk(v, manifests, data));
        }
        Value::Array(a) => a.iter().for_each(|v| walk(v, manifests, data)),
        _ => {}
    }
}

fn dry_plan(t: &Setup) -> Vec<Value> {
    let out = t.study(&["--dry-run", "--json"]).output().unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let v: Value = serde_json::from_slice(&out.stdout).unwrap();
    v["units"].as_array().unwrap().clone()
}

#[test]
fn studies_killed_at_random_moments_finish_with_the_same_results_and_redo_nothing() {
    let reference = Setup::new();
    reference.study(&[]).assert().success();
    let expected = std::fs::read(reference.root.join("out/results.json")).unwrap();

    let t = Setup::new();
    let total = dry_plan(&t).len();
    let mut rng = Rng(2026);
    let mut kills = 0;
    for _ in 0..40 {
        let mut child = std::process::Command::new(env!("CARGO_BIN_EXE_crossmerge"))
            .current_dir(&t.root)
            .args([
                "--quiet",
                "study",
                "study.toml",
                "--registry",
                "reg",
                "--out",
                "out",
            ])
            // Every other run evaluates three at a time.
            .args(if kills % 2 == 1 {
                &["--jobs", "3"][..]
            } else {
                &[]
            })
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .unwrap();
        let wait = Duration::from_millis(15 + rng.next() % 150);
        std::thread::sleep(wait);
        if child.try_wait().unwrap().is_some() {
            break;
        }
        child.kill().unwrap();
        child.wait().unwrap();
        kills += 1;
        // A killed study leaves a valid registry.
        cm(&t.reg, &["verify"]).assert().success();
    }
    assert!(
        kills >= 5,
        "only {kills} kills landed before the study finished"
    );
    t.study(&[]).assert().success();
    assert_eq!(
        String::from_utf8(std::fs::read(t.root.join("out/results.json")).unwrap()).unwrap(),
        String::from_utf8(expected).unwrap()
    );
    // Nothing was done twice: one version of every model and merge, one row per evaluation.
    let plan = dry_plan(&t);
    assert_eq!(plan.len(), total);
    let list = t.json(&["list", "--json"]);
    for c in list.as_array().unwrap() {
        assert_eq!(c["version"], 1, "{} was made twice", c["name"]);
    }
    let evals = t.json(&["report", "evals", "--json"]);
    let ids: Vec<&str> = evals
        .as_array()
        .unwrap()
        .iter()
        .map(|e| s(&e["id"]))
        .collect();
    let distinct: BTreeSet<&&str> = ids.iter().collect();
    assert_eq!(ids.len(), distinct.len(), "an evaluation ran twice");
    let results: Value =
        serde_json::from_slice(&std::fs::read(t.root.join("out/results.json")).unwrap()).unwrap();
    assert_eq!(distinct.len(), evaluation_ids(&results).len());
    cm(&t.reg, &["verify"]).assert().success();
}

#[test]
fn dry_runs_read_no_tensor_and_bad_study_files_are_refused_before_anything_runs() {
    let t = Setup::new();
    // A dry run of a fresh study: every unit listed, none done, nothing written.
    let before = snapshot(&t.reg);
    let plan = dry_plan(&t);
    assert!(plan.iter().all(|u| u["done"] == false));
    let kinds: BTreeMap<String, usize> = plan.iter().fold(BTreeMap::new(), |mut m, u| {
        *m.entry(s(&u["kind"]).to_owned()).or_default() += 1;
        m
    });
    assert_eq!(
        kinds["train"], 6,
        "pos-en, lm-{{en,es,de,fr}} and lm-head (named twice, one unit)"
    );
    assert_eq!(kinds["derive"], 6);
    assert_eq!(kinds["merge"], 15);
    assert_eq!(kinds["eval"], 30, "29 and the trained baseline");
    assert_eq!(kinds["compare"], 1);
    assert_eq!(snapshot(&t.reg), before, "a dry run changes nothing");
    assert!(!t.root.join("out").exists());

    // After a run, a dry run finds everything done even with every tensor object destroyed:
    // it reads manifests and data, never a tensor.
    t.study(&[]).assert().success();
    let conn = rusqlite::Connection::open(t.reg.join("catalog.sqlite3")).unwrap();
    let mut stmt = conn
        .prepare("SELECT DISTINCT object_id FROM manifest_refs WHERE name NOT LIKE '%.json' AND name NOT LIKE '%.txt'")
        .unwrap();
    let tensors: Vec<String> = stmt
        .query_map([], |r| r.get(0))
        .unwrap()
        .map(Result::unwrap)
        .collect();
    assert!(tensors.len() > 50);
    let mut destroyed = 0;
    for file in crate::common::files_under(&t.reg.join("objects")) {
        let name = file.file_name().unwrap().to_string_lossy().into_owned();
        if tensors.contains(&name) {
            std::fs::write(&file, b"destroyed").unwrap();
            destroyed += 1;
        }
    }
    assert!(destroyed > 50, "{destroyed}");
    let plan = dry_plan(&t);
    assert!(
        plan.iter()
            .filter(|u| u["kind"] != "compare")
            .all(|u| u["done"] == true)
    );

    // Bad study files: one line and a hint, before anything runs.
    let t = Setup::new();
    std::fs::write(
        t.root.join("toy-org.iob2"),
        std::fs::read_to_string(t.root.join("toy-es.iob2"))
            .unwrap()
            .replacen("B-PER", "B-ORG", 1),
    )
    .unwrap();
    let good = study_file();
    let cases: Vec<(String, &str)> = vec![
        (
            good.replace("model = \"ner-en\"", "model = \"ner-nope\""),
            "ner-nope",
        ),
        (
            good.replace("toy-de.conllu[:8]", "toy-xx.conllu[:8]"),
            "does not exist",
        ),
        (good.replace("toy-es.iob2[0:8]", "toy-org.iob2[0:8]"), "ORG"),
        (
            good.replace("toy-es.conllu[0:8]", "toy-es.conllu[8:4]"),
            "not a sentence range",
        ),
        (
            good.replace("toy-es.conllu[0:8]", "toy-es.conllu[100:200]"),
            "starts past",
        ),
        (
            good.replace("lambdas = [0.0, 0.5, 1.0]", "lambdas = [0.5, 0.0]"),
            "increasing",
        ),
        (
            good.replace("[tasks.ner]", "[tasks.ner]\nepochs = 3"),
            "unknown field",
        ),
        (
            good.replace(
                "[tasks.ner]",
                "[tasks.srl]\nmodel = \"x\"\ndata = {}\n[tasks.ner]",
            ),
            "unknown task",
        ),
        (
            good.replace("[tasks.ner.data.de]", "[tasks.ner.data.it]"),
            "not in [languages]",
        ),
        (
            format!("{good}\n[merge]\nmethod = \"ties\"\nbase = \"x\"\n"),
            "sets `base`",
        ),
    ];
    let before = snapshot(&t.reg);
    for (text, expect) in cases {
        std::fs::write(t.root.join("study.toml"), &text).unwrap();
        let out = t.study(&[]).output().unwrap();
        assert_eq!(out.status.code(), Some(1), "{expect}");
        let err = String::from_utf8(out.stderr).unwrap();
        let lines: Vec<&str> = err.lines().collect();
        assert_eq!(lines.len(), 2, "{expect}: {err}");
        assert!(
            lines[0].starts_with("error: ") && lines[0].contains(expect),
            "{expect}: {err}"
        );
        assert!(lines[1].starts_with("hint: "), "{err}");
        assert_eq!(snapshot(&t.reg), before, "{expect}: the registry changed");
        assert!(!t.root.join("out").exists());
    }
}

#[test]
fn the_study_schema_is_current() {
    let path = Path::new(env!("CARGO_MANIFEST_DIR")).join("schemas/study.schema.json");
    let fresh = crossmerge::study::file::json_schema();
    if std::env::var_os("CROSSMERGE_BLESS").is_some() {
        std::fs::write(&path, &fresh).unwrap();
    }
    assert_eq!(
        std::fs::read_to_string(&path).unwrap_or_default(),
        fresh,
        "schemas/study.schema.json is stale: run the tests with CROSSMERGE_BLESS=1"
    );
}

/// The example studies in recipes/ plan against ../shared's model and data: every path, range
/// and label checks out, and the plan has the units the README describes (nothing is run).
#[test]
fn the_example_studies_plan_against_the_shared_data() {
    let shared = crate::common::require_shared!();
    let tmp = tempfile::tempdir().unwrap();
    let reg = tmp.path().join("reg");
    let e5 = shared.join("models/multilingual-e5-small");
    cm(
        &reg,
        &[
            "register",
            e5.to_str().unwrap(),
            "--name",
            "e5-small",
            "--kind",
            "base",
        ],
    )
    .assert()
    .success();
    let recipes = Path::new(env!("CARGO_MANIFEST_DIR")).join("recipes");
    let mut studies = 0;
    for entry in std::fs::read_dir(&recipes).unwrap() {
        let file = entry.unwrap().path().join("study.toml");
        if !file.is_file() {
            continue;
        }
        studies += 1;
        let out = cm(
            &reg,
            &["study", file.to_str().unwrap(), "--dry-run", "--json"],
        )
        .output()
        .unwrap();
        assert!(
            out.status.success(),
            "{}: {}",
            file.display(),
            String::from_utf8_lossy(&out.stderr)
        );
        let plan: Value = serde_json::from_slice(&out.stdout).unwrap();
        let units = plan["units"].as_array().unwrap();
        for kind in ["train", "derive", "merge", "eval", "compare"] {
            assert!(
                units.iter().any(|u| u["kind"] == kind),
                "{}: no {kind} unit",
                file.display()
            );
        }
    }
    assert!(studies >= 1);
}
