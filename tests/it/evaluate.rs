//! `crossmerge eval` end to end on the real data in ../shared: MiniLM with a POS head on
//! `UD_English-PUD`, an NER head on UNER English PUD, an MLM head on the `LibreOffice` help text.
//! The heads are random-init (seeded) here, so the numbers measure nothing about MiniLM; they
//! are still computed honestly, stored, and identical when run twice.

use std::path::{Path, PathBuf};

use crossmerge::eval::run::Task;
use crossmerge::evaluate::{EvalOptions, Evaluate};
use crossmerge::{CheckpointKind, Dtype, Error, NoProgress, RegisterOptions, Registry};
use tempfile::TempDir;

use crate::common::{cm, minilm, read_safetensors, write_safetensors};

/// Seeded N(0, 0.02)-ish values.
fn random(n: usize, seed: u64) -> Vec<u8> {
    let mut s = seed;
    (0..n)
        .flat_map(|_| {
            s = s
                .wrapping_mul(6_364_136_223_846_793_005)
                .wrapping_add(1_442_695_040_888_963_407);
            let u = ((s >> 40) as f32 / (1u64 << 24) as f32) - 0.5;
            (u * 0.07).to_le_bytes()
        })
        .collect()
}

/// MiniLM plus head tensors, with `config` keys added; registered as `name`.
fn with_head(
    shared: &Path,
    dir: &Path,
    reg: &mut Registry,
    name: &str,
    head: &[(&str, Vec<u64>)],
    config: &serde_json::Value,
) {
    let src = minilm(shared);
    let out = dir.join(name);
    std::fs::create_dir_all(&out).unwrap();
    for f in [
        "tokenizer.json",
        "vocab.txt",
        "special_tokens_map.json",
        "tokenizer_config.json",
    ] {
        std::fs::copy(src.join(f), out.join(f)).unwrap();
    }
    let mut cfg: serde_json::Value =
        serde_json::from_slice(&std::fs::read(src.join("config.json")).unwrap()).unwrap();
    for (k, v) in config.as_object().unwrap() {
        cfg[k] = v.clone();
    }
    std::fs::write(
        out.join("config.json"),
        serde_json::to_vec_pretty(&cfg).unwrap(),
    )
    .unwrap();
    let base = read_safetensors(&src.join("model.safetensors"));
    let mut tensors: Vec<(String, Dtype, Vec<u64>, Vec<u8>)> = base
        .into_iter()
        .map(|(n, (d, s, b))| (n, Dtype::from_name(&d).unwrap(), s, b))
        .collect();
    for (k, (n, shape)) in head.iter().enumerate() {
        let count = shape.iter().product::<u64>() as usize;
        tensors.push((
            (*n).to_owned(),
            Dtype::F32,
            shape.clone(),
            random(count, 7 + k as u64),
        ));
    }
    let refs: Vec<(&str, Dtype, Vec<u64>, Vec<u8>)> = tensors
        .iter()
        .map(|(n, d, s, b)| (n.as_str(), *d, s.clone(), b.clone()))
        .collect();
    write_safetensors(&out.join("model.safetensors"), &refs);
    let task = name.rsplit('-').next().unwrap();
    reg.register(
        &out,
        &RegisterOptions::new(name, CheckpointKind::Task)
            .task(task)
            .base("minilm"),
        &NoProgress,
    )
    .unwrap();
}

fn labels(names: &[&str]) -> serde_json::Value {
    serde_json::Value::Object(
        names
            .iter()
            .enumerate()
            .map(|(i, l)| (i.to_string(), serde_json::Value::String((*l).to_owned())))
            .collect(),
    )
}

/// The first `n` sentences (blank-line blocks) of a file.
fn head_of(src: &Path, n: usize, dst: &Path) -> PathBuf {
    let text = std::fs::read_to_string(src).unwrap();
    let blocks: Vec<&str> = text.split("\n\n").take(n).collect();
    std::fs::write(dst, blocks.join("\n\n") + "\n\n").unwrap();
    dst.to_path_buf()
}

const UPOS: [&str; 17] = [
    "ADJ", "ADP", "ADV", "AUX", "CCONJ", "DET", "INTJ", "NOUN", "NUM", "PART", "PRON", "PROPN",
    "PUNCT", "SCONJ", "SYM", "VERB", "X",
];

#[test]
fn minilm_evaluates_pos_ner_and_mlm_on_real_data() {
    let shared = crate::common::require_shared!();
    let tmp = TempDir::new().unwrap();
    let reg_dir = tmp.path().join("reg");
    let mut reg = Registry::create(&reg_dir).unwrap();
    reg.register(
        &minilm(&shared),
        &RegisterOptions::new("minilm", CheckpointKind::Base),
        &NoProgress,
    )
    .unwrap();
    with_head(
        &shared,
        tmp.path(),
        &mut reg,
        "minilm-pos",
        &[
            ("classifier.weight", vec![17, 384]),
            ("classifier.bias", vec![17]),
        ],
        &serde_json::json!({"architectures": ["BertForTokenClassification"], "id2label": labels(&UPOS)}),
    );
    let ner_labels = ["O", "B-PER", "I-PER", "B-ORG", "I-ORG", "B-LOC", "I-LOC"];
    with_head(
        &shared,
        tmp.path(),
        &mut reg,
        "minilm-ner",
        &[
            ("classifier.weight", vec![7, 384]),
            ("classifier.bias", vec![7]),
        ],
        &serde_json::json!({"architectures": ["BertForTokenClassification"], "id2label": labels(&ner_labels)}),
    );
    with_head(
        &shared,
        tmp.path(),
        &mut reg,
        "minilm-mlm",
        &[
            ("cls.predictions.transform.dense.weight", vec![384, 384]),
            ("cls.predictions.transform.dense.bias", vec![384]),
            ("cls.predictions.transform.LayerNorm.weight", vec![384]),
            ("cls.predictions.transform.LayerNorm.bias", vec![384]),
            ("cls.predictions.bias", vec![30522]),
        ],
        &serde_json::json!({"architectures": ["BertForMaskedLM"]}),
    );
    let deprels = [
        "acl",
        "advcl",
        "advmod",
        "amod",
        "appos",
        "aux",
        "case",
        "cc",
        "ccomp",
        "clf",
        "compound",
        "conj",
        "cop",
        "csubj",
        "dep",
        "det",
        "discourse",
        "dislocated",
        "expl",
        "fixed",
        "flat",
        "goeswith",
        "iobj",
        "list",
        "mark",
        "nmod",
        "nsubj",
        "nummod",
        "obj",
        "obl",
        "orphan",
        "parataxis",
        "punct",
        "reparandum",
        "root",
        "vocative",
        "xcomp",
    ];
    with_head(
        &shared,
        tmp.path(),
        &mut reg,
        "minilm-dp",
        &[
            ("parser.root", vec![384]),
            ("parser.arc_dep.weight", vec![64, 384]),
            ("parser.arc_dep.bias", vec![64]),
            ("parser.arc_head.weight", vec![64, 384]),
            ("parser.arc_head.bias", vec![64]),
            ("parser.rel_dep.weight", vec![32, 384]),
            ("parser.rel_dep.bias", vec![32]),
            ("parser.rel_head.weight", vec![32, 384]),
            ("parser.rel_head.bias", vec![32]),
            ("parser.arc_attn.weight", vec![65, 64]),
            ("parser.rel_attn.weight", vec![37, 33, 33]),
        ],
        &serde_json::json!({"id2label": labels(&deprels), "crossmerge_parser": {"word": "first"}}),
    );
    let pos_data = head_of(
        &shared.join("data/ud/UD_English-PUD/en_pud-ud-test.conllu"),
        120,
        &tmp.path().join("en_pud-ud-test.conllu"),
    );
    let ner_data = head_of(
        &shared.join("data/uner/UNER_English-PUD/en_pud-ud-test.iob2"),
        120,
        &tmp.path().join("en_pud-ner-test.iob2"),
    );
    let text: Vec<String> =
        std::fs::read_to_string(shared.join("data/text/libreoffice-help/lo_help.en.txt"))
            .unwrap()
            .lines()
            .filter(|l| !l.trim().is_empty())
            .take(60)
            .map(str::to_owned)
            .collect();
    let text_data = tmp.path().join("en.txt");
    std::fs::write(&text_data, text.join("\n")).unwrap();

    let mut run = |reference: &str, task: Task, data: &Path| {
        let mut o = EvalOptions::new(task, data);
        o.language = Some("en".into());
        o.max_length = 128;
        reg.evaluate(reference, &o, &NoProgress).unwrap()
    };
    let pos = run("minilm-pos", Task::Pos, &pos_data);
    let acc = pos.outcome.metrics["upos_accuracy"];
    assert!((0.0..=1.0).contains(&acc));
    assert_eq!(pos.outcome.examples, 120);
    assert_eq!(pos.split.as_deref(), Some("test"));
    let ner = run("minilm-ner", Task::Ner, &ner_data);
    for m in [
        "entity_precision",
        "entity_recall",
        "entity_f1",
        "token_accuracy",
    ] {
        assert!(ner.outcome.metrics[m].is_finite(), "{m}");
    }
    let dp = run("minilm-dp", Task::Dp, &pos_data);
    let (uas, las) = (dp.outcome.metrics["uas"], dp.outcome.metrics["las"]);
    assert!(
        (0.0..=1.0).contains(&uas) && las <= uas,
        "UAS {uas}, LAS {las}"
    );
    assert_eq!(
        run("minilm-dp", Task::Dp, &pos_data).outcome.metrics,
        dp.outcome.metrics
    );
    let mlm = run("minilm-mlm", Task::Mlm, &text_data);
    let ppl = mlm.outcome.metrics["perplexity"];
    assert!(ppl.is_finite() && ppl > 1.0, "perplexity {ppl}");
    assert!(mlm.outcome.metrics["masked_tokens"] > 0.0);
    // Twice: identical numbers.
    assert_eq!(
        run("minilm-pos", Task::Pos, &pos_data).outcome.metrics,
        pos.outcome.metrics
    );
    assert_eq!(
        run("minilm-mlm", Task::Mlm, &text_data).outcome.metrics,
        mlm.outcome.metrics
    );
    eprintln!(
        "random-init heads: UPOS {acc:.4}, entity F1 {:.4}, UAS {uas:.4}, LAS {las:.4}, MLM perplexity {ppl:.1}",
        ner.outcome.metrics["entity_f1"]
    );

    let rows = reg.evaluations(None, None, None).unwrap();
    assert_eq!(rows.len(), 7);
    assert_eq!(
        reg.evaluations(Some("minilm-pos"), Some("pos"), Some("en"))
            .unwrap()
            .len(),
        2
    );
    drop(reg);
    let out = cm(&reg_dir, &["report", "evals", "--task", "ner", "--json"])
        .assert()
        .success()
        .get_output()
        .stdout
        .clone();
    let json: serde_json::Value = serde_json::from_slice(&out).unwrap();
    assert_eq!(json.as_array().unwrap().len(), 1);
    assert_eq!(json[0]["checkpoint"], "minilm-ner@1");

    // Bad input: one line and a hint each.
    let mut reg = Registry::create(&reg_dir).unwrap();
    let no_head = reg
        .evaluate(
            "minilm",
            &EvalOptions::new(Task::Pos, &pos_data),
            &NoProgress,
        )
        .unwrap_err();
    assert!(no_head.to_string().contains("has no pos head"), "{no_head}");
    assert!(no_head.hint().is_some());
    let wrong_labels = reg
        .evaluate(
            "minilm-ner",
            &EvalOptions::new(Task::Pos, &pos_data),
            &NoProgress,
        )
        .unwrap_err();
    let Error::Invalid { message, .. } = &wrong_labels else {
        panic!("{wrong_labels}")
    };
    assert!(
        message.contains("ADJ") && message.contains("not in the model's label map"),
        "{message}"
    );
    // A tokenizer whose vocabulary does not fit the embeddings.
    with_head(
        &shared,
        tmp.path(),
        &mut reg,
        "minilm-small-pos",
        &[
            ("classifier.weight", vec![17, 384]),
            ("classifier.bias", vec![17]),
        ],
        &serde_json::json!({"vocab_size": 1000, "id2label": labels(&UPOS)}),
    );
    let e = reg
        .evaluate(
            "minilm-small-pos",
            &EvalOptions::new(Task::Pos, &pos_data),
            &NoProgress,
        )
        .unwrap_err();
    assert!(
        e.to_string()
            .contains("does not fit the model's embeddings (1000)"),
        "{e}"
    );
    assert!(e.hint().is_some());
    let mut cuda = EvalOptions::new(Task::Pos, &pos_data);
    cuda.device = "cuda".into();
    if !cfg!(feature = "cuda") {
        let e = reg.evaluate("minilm-pos", &cuda, &NoProgress).unwrap_err();
        assert!(e.to_string().contains("without CUDA"), "{e}");
    }
    let out = cm(
        &reg_dir,
        &[
            "eval",
            "minilm-pos",
            "--task",
            "parse",
            "--data",
            pos_data.to_str().unwrap(),
        ],
    )
    .assert()
    .code(1)
    .get_output()
    .stderr
    .clone();
    let err = String::from_utf8_lossy(&out);
    assert!(
        err.contains("unknown task `parse`") && err.contains("hint:"),
        "{err}"
    );
}

/// `--label-map FILE`: a head whose labels are named differently from the data's evaluates
/// once its names are mapped, with exactly the numbers of the same head under the data's
/// names; the map is stored with the row; a map onto labels the model lacks is refused.
#[test]
fn label_map_renames_gold_labels_on_real_data() {
    let shared = crate::common::require_shared!();
    let tmp = TempDir::new().unwrap();
    let reg_dir = tmp.path().join("reg");
    let mut reg = Registry::create(&reg_dir).unwrap();
    reg.register(
        &minilm(&shared),
        &RegisterOptions::new("minilm", CheckpointKind::Base),
        &NoProgress,
    )
    .unwrap();
    let head = [
        ("classifier.weight", vec![7, 384]),
        ("classifier.bias", vec![7]),
    ];
    let short = ["O", "B-PER", "I-PER", "B-ORG", "I-ORG", "B-LOC", "I-LOC"];
    let long = [
        "O",
        "B-PERSON",
        "I-PERSON",
        "B-ORGANIZATION",
        "I-ORGANIZATION",
        "B-LOCATION",
        "I-LOCATION",
    ];
    for (name, names) in [("minilm-ner", &short), ("minilm-long-ner", &long)] {
        with_head(
            &shared,
            tmp.path(),
            &mut reg,
            name,
            &head,
            &serde_json::json!({"id2label": labels(names)}),
        );
    }
    let data = head_of(
        &shared.join("data/uner/UNER_English-PUD/en_pud-ud-test.iob2"),
        40,
        &tmp.path().join("en_pud-ner-test.iob2"),
    );
    let plain = reg
        .evaluate(
            "minilm-ner",
            &EvalOptions::new(Task::Ner, &data),
            &NoProgress,
        )
        .unwrap();
    let e = reg
        .evaluate(
            "minilm-long-ner",
            &EvalOptions::new(Task::Ner, &data),
            &NoProgress,
        )
        .unwrap_err();
    assert!(e.to_string().contains("B-PER"), "{e}");
    assert!(e.hint().unwrap().contains("--label-map"), "{e}");
    drop(reg);

    let map = tmp.path().join("uner-to-long.json");
    let pairs: serde_json::Map<String, serde_json::Value> = short
        .iter()
        .zip(&long)
        .skip(1)
        .map(|(s, l)| ((*s).to_owned(), serde_json::Value::from(*l)))
        .collect();
    std::fs::write(&map, serde_json::to_vec(&pairs).unwrap()).unwrap();
    let out = cm(
        &reg_dir,
        &[
            "eval",
            "minilm-long-ner",
            "--task",
            "ner",
            "--data",
            data.to_str().unwrap(),
            "--label-map",
            map.to_str().unwrap(),
            "--json",
        ],
    )
    .assert()
    .success()
    .get_output()
    .stdout
    .clone();
    let mapped: serde_json::Value = serde_json::from_slice(&out).unwrap();
    for (k, v) in &plain.outcome.metrics {
        assert_eq!(mapped["metrics"][k].as_f64(), Some(*v), "{k}");
    }
    assert_eq!(mapped["settings"]["label_map"]["B-PER"], "B-PERSON");
    let rows = Registry::create(&reg_dir)
        .unwrap()
        .evaluations(Some("minilm-long-ner"), None, None)
        .unwrap();
    assert_eq!(rows.len(), 1);
    assert_eq!(rows[0].settings["label_map"]["I-LOC"], "I-LOCATION");

    // A map onto a label the model lacks: one line, a hint, nothing stored.
    let bad = tmp.path().join("bad.tsv");
    std::fs::write(&bad, "B-PER\tB-PERSON\nB-MISC\tB-MISCELLANEOUS\n").unwrap();
    let out = cm(
        &reg_dir,
        &[
            "eval",
            "minilm-long-ner",
            "--task",
            "ner",
            "--data",
            data.to_str().unwrap(),
            "--label-map",
            bad.to_str().unwrap(),
        ],
    )
    .assert()
    .code(1)
    .get_output()
    .stderr
    .clone();
    let err = String::from_utf8_lossy(&out);
    assert!(
        err.contains("B-MISCELLANEOUS") && err.contains("hint:"),
        "{err}"
    );
    assert_eq!(
        Registry::create(&reg_dir)
            .unwrap()
            .evaluations(None, None, None)
            .unwrap()
            .len(),
        2
    );
}
