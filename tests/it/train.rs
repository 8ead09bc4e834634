#![allow(clippy::many_single_char_names)] // h, i, l, p: a model's dimensions; s, r, t, e: setup, report, training, evaluation
//! `crossmerge train` on a tiny BERT built here (its own word-level tokenizer) and a toy
//! language generated here: each task trains, registers with its lineage and run, and
//! evaluates; the same seed gives the same bits; runs killed at random moments and resumed
//! end with the bits of an uninterrupted run; bad input is refused with nothing registered.

use std::fmt::Write as _;
use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::time::Duration;

use crossmerge::Dtype;
use serde_json::{Value, json};

use crate::common::{cm, write_safetensors};

const DETS: [&str; 3] = ["the", "a", "this"];
const NOUNS: [&str; 6] = ["dog", "cat", "house", "river", "tree", "car"];
const VERBS: [&str; 4] = ["sees", "likes", "finds", "moves"];
const NAMES: [&str; 4] = ["alice", "bob", "paris", "rome"];

fn words() -> Vec<&'static str> {
    let mut w: Vec<&str> = DETS
        .iter()
        .chain(&NOUNS)
        .chain(&VERBS)
        .chain(&NAMES)
        .copied()
        .collect();
    w.extend(["and", "in", "."]);
    w
}

/// A small deterministic generator (splitmix64).
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^ (z >> 31)
    }
    fn pick<'a>(&mut self, from: &[&'a str]) -> &'a str {
        from[(self.next() % from.len() as u64) as usize]
    }
    fn normal(&mut self) -> f32 {
        let u1 = ((self.next() >> 11) as f64 / (1u64 << 53) as f64).max(1e-12);
        let u2 = (self.next() >> 11) as f64 / (1u64 << 53) as f64;
        ((-2.0 * u1.ln()).sqrt() * (std::f64::consts::TAU * u2).cos()) as f32
    }
}

/// A sentence: (form, UPOS, head, relation, NER tag) per word.
fn sentence(rng: &mut Rng) -> Vec<(String, &'static str, usize, &'static str, &'static str)> {
    // DET NOUN VERB DET NOUN . | NAME VERB DET NOUN in NAME .
    if rng.next().is_multiple_of(2) {
        vec![
            (rng.pick(&DETS).to_owned(), "DET", 2, "det", "O"),
            (rng.pick(&NOUNS).to_owned(), "NOUN", 3, "nsubj", "O"),
            (rng.pick(&VERBS).to_owned(), "VERB", 0, "root", "O"),
            (rng.pick(&DETS).to_owned(), "DET", 5, "det", "O"),
            (rng.pick(&NOUNS).to_owned(), "NOUN", 3, "obj", "O"),
            (".".to_owned(), "PUNCT", 3, "punct", "O"),
        ]
    } else {
        let (person, place) = if rng.next().is_multiple_of(2) {
            ("alice", "paris")
        } else {
            ("bob", "rome")
        };
        vec![
            (person.to_owned(), "PROPN", 2, "nsubj", "B-PER"),
            (rng.pick(&VERBS).to_owned(), "VERB", 0, "root", "O"),
            (rng.pick(&DETS).to_owned(), "DET", 4, "det", "O"),
            (rng.pick(&NOUNS).to_owned(), "NOUN", 2, "obj", "O"),
            ("in".to_owned(), "ADP", 6, "case", "O"),
            (place.to_owned(), "PROPN", 4, "nmod", "B-LOC"),
            (".".to_owned(), "PUNCT", 2, "punct", "O"),
        ]
    }
}

/// Writes the toy data of `n` sentences in every format, seeded.
fn write_data(dir: &Path, split: &str, n: usize, seed: u64) {
    let mut rng = Rng(seed);
    let (mut conllu, mut iob, mut text, mut nli) = (
        String::new(),
        String::new(),
        String::new(),
        String::from("premise\thypothesis\tlabel\n"),
    );
    for k in 0..n {
        let s = sentence(&mut rng);
        let _ = writeln!(conllu, "# sent_id = {split}-{k}");
        for (i, (form, upos, head, rel, tag)) in s.iter().enumerate() {
            let _ = writeln!(
                conllu,
                "{}\t{form}\t{form}\t{upos}\t_\t_\t{head}\t{rel}\t_\t_",
                i + 1
            );
            let _ = writeln!(iob, "{form}\t{tag}");
        }
        conllu.push('\n');
        iob.push('\n');
        let line: Vec<&str> = s.iter().map(|w| w.0.as_str()).collect();
        text.push_str(&line.join(" "));
        text.push('\n');
        // Entailment when the hypothesis repeats the premise's subject, else contradiction.
        let other = sentence(&mut rng);
        let (hyp, label) = if rng.next().is_multiple_of(2) {
            (line.join(" "), "entailment")
        } else {
            (
                other
                    .iter()
                    .map(|w| w.0.as_str())
                    .collect::<Vec<_>>()
                    .join(" "),
                "contradiction",
            )
        };
        let _ = writeln!(nli, "{}\t{hyp}\t{label}", line.join(" "));
    }
    std::fs::write(dir.join(format!("toy-{split}.conllu")), conllu).unwrap();
    std::fs::write(dir.join(format!("toy-{split}.iob2")), iob).unwrap();
    std::fs::write(dir.join(format!("toy-{split}.txt")), text).unwrap();
    std::fs::write(dir.join(format!("toy-{split}.tsv")), nli).unwrap();
}

/// A word-level tokenizer.json over the toy vocabulary, BERT's special tokens and template.
fn tokenizer() -> Value {
    let specials = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]"];
    let mut vocab = serde_json::Map::new();
    for (i, t) in specials.iter().chain(words().iter()).enumerate() {
        vocab.insert((*t).to_owned(), json!(i));
    }
    let added: Vec<Value> = specials
        .iter()
        .enumerate()
        .map(|(i, t)| {
            json!({"id": i, "content": t, "single_word": false, "lstrip": false,
                   "rstrip": false, "normalized": false, "special": true})
        })
        .collect();
    json!({
        "version": "1.0",
        "truncation": null,
        "padding": null,
        "added_tokens": added,
        "normalizer": null,
        "pre_tokenizer": {"type": "WhitespaceSplit"},
        "post_processor": {
            "type": "TemplateProcessing",
            "single": [
                {"SpecialToken": {"id": "[CLS]", "type_id": 0}},
                {"Sequence": {"id": "A", "type_id": 0}},
                {"SpecialToken": {"id": "[SEP]", "type_id": 0}}
            ],
            "pair": [
                {"SpecialToken": {"id": "[CLS]", "type_id": 0}},
                {"Sequence": {"id": "A", "type_id": 0}},
                {"SpecialToken": {"id": "[SEP]", "type_id": 0}},
                {"Sequence": {"id": "B", "type_id": 1}},
                {"SpecialToken": {"id": "[SEP]", "type_id": 1}}
            ],
            "special_tokens": {
                "[CLS]": {"id": "[CLS]", "ids": [2], "tokens": ["[CLS]"]},
                "[SEP]": {"id": "[SEP]", "ids": [3], "tokens": ["[SEP]"]}
            }
        },
        "decoder": null,
        "model": {"type": "WordLevel", "vocab": vocab, "unk_token": "[UNK]"}
    })
}

/// A tiny BERT (2 layers, hidden 16) with random weights, no head, its tokenizer.json.
fn write_model(dir: &Path, vocab_size: usize) -> PathBuf {
    let m = dir.join("tiny-bert");
    std::fs::create_dir_all(&m).unwrap();
    let (h, i, l, p) = (16u64, 32u64, 2, 64u64);
    let config = json!({
        "architectures": ["BertModel"], "model_type": "bert", "vocab_size": vocab_size,
        "hidden_size": h, "num_hidden_layers": l, "num_attention_heads": 2,
        "intermediate_size": i, "max_position_embeddings": p, "type_vocab_size": 2,
        "hidden_act": "gelu", "hidden_dropout_prob": 0.1, "attention_probs_dropout_prob": 0.1,
        "layer_norm_eps": 1e-12, "initializer_range": 0.02, "pad_token_id": 0,
    });
    std::fs::write(
        m.join("config.json"),
        serde_json::to_vec_pretty(&config).unwrap(),
    )
    .unwrap();
    std::fs::write(m.join("tokenizer.json"), tokenizer().to_string()).unwrap();
    let mut rng = Rng(7);
    let mut shapes: Vec<(String, Vec<u64>)> = vec![
        (
            "embeddings.word_embeddings.weight".into(),
            vec![vocab_size as u64, h],
        ),
        ("embeddings.position_embeddings.weight".into(), vec![p, h]),
        ("embeddings.token_type_embeddings.weight".into(), vec![2, h]),
        ("embeddings.LayerNorm.weight".into(), vec![h]),
        ("embeddings.LayerNorm.bias".into(), vec![h]),
    ];
    for k in 0..l {
        let pre = format!("encoder.layer.{k}");
        for n in ["query", "key", "value"] {
            shapes.push((format!("{pre}.attention.self.{n}.weight"), vec![h, h]));
            shapes.push((format!("{pre}.attention.self.{n}.bias"), vec![h]));
        }
        for (n, s) in [
            ("attention.output.dense.weight", vec![h, h]),
            ("attention.output.dense.bias", vec![h]),
            ("attention.output.LayerNorm.weight", vec![h]),
            ("attention.output.LayerNorm.bias", vec![h]),
            ("intermediate.dense.weight", vec![i, h]),
            ("intermediate.dense.bias", vec![i]),
            ("output.dense.weight", vec![h, i]),
            ("output.dense.bias", vec![h]),
            ("output.LayerNorm.weight", vec![h]),
            ("output.LayerNorm.bias", vec![h]),
        ] {
            shapes.push((format!("{pre}.{n}"), s));
        }
    }
    let tensors: Vec<(String, Vec<u64>, Vec<u8>)> = shapes
        .into_iter()
        .map(|(name, shape)| {
            let n: u64 = shape.iter().product();
            let values: Vec<f32> = (0..n)
                .map(|_| {
                    if name.ends_with("LayerNorm.weight") {
                        1.0
                    } else if name.ends_with("bias") {
                        0.0
                    } else {
                        rng.normal() * 0.1
                    }
                })
                .collect();
            let bytes = values.iter().flat_map(|v| v.to_le_bytes()).collect();
            (name, shape, bytes)
        })
        .collect();
    let refs: Vec<(&str, Dtype, Vec<u64>, Vec<u8>)> = tensors
        .iter()
        .map(|(n, s, b)| (n.as_str(), Dtype::F32, s.clone(), b.clone()))
        .collect();
    write_safetensors(&m.join("model.safetensors"), &refs);
    m
}

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
/// mismatched keys, and transformers' predictions score exactly what `crossmerge eval` scores.
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
        ("mlm", "txt", None, "BertForMaskedLM"),
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
            let e = json_of(&mut cm(
                &s.reg,
                &["eval", &name, "--task", task, "--data", &dev, "--json"],
            ));
            let (ours, theirs) = (
                e["metrics"][metric].as_f64().unwrap(),
                r[metric].as_f64().unwrap(),
            );
            assert!(
                (ours - theirs).abs() < 1e-9,
                "{task}: crossmerge {ours} vs transformers {theirs}"
            );
        }
    }
}
