//! `crossmerge eval` on hostile or inconsistent checkpoints and data (issue 10): heads that do
//! not fit their labels, settings that must be refused, messages that say what happened, gold
//! trees the CoNLL 2018 scorer refuses, unbounded inputs. Tiny models built from the parity
//! fixture's BERT (`tests/fixtures/parity/bert-parser`, its own `WordPiece` tokenizer).

use std::fmt::Write as _;
use std::path::{Path, PathBuf};

use crossmerge::Dtype;

use crate::common::{cm, read_safetensors, write_safetensors};

fn fixture() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/parity/bert-parser")
}

/// The fixture's encoder (and parser) with `extra` tensors added (seeded values) and
/// `config` keys replaced; `drop` removes tensors by prefix. Registered as `name`.
fn model(
    dir: &Path,
    reg: &Path,
    name: &str,
    extra: &[(&str, Vec<u64>)],
    drop: &[&str],
    config: &serde_json::Value,
) {
    let out = dir.join(name);
    std::fs::create_dir_all(&out).unwrap();
    std::fs::copy(fixture().join("tokenizer.json"), out.join("tokenizer.json")).unwrap();
    let mut cfg: serde_json::Value =
        serde_json::from_slice(&std::fs::read(fixture().join("config.json")).unwrap()).unwrap();
    for (k, v) in config.as_object().unwrap() {
        if v.is_null() {
            cfg.as_object_mut().unwrap().remove(k);
        } else {
            cfg[k] = v.clone();
        }
    }
    std::fs::write(out.join("config.json"), serde_json::to_vec(&cfg).unwrap()).unwrap();
    let mut tensors: Vec<(String, Dtype, Vec<u64>, Vec<u8>)> =
        read_safetensors(&fixture().join("model.safetensors"))
            .into_iter()
            .filter(|(n, _)| !drop.iter().any(|d| n.starts_with(d)))
            .map(|(n, (d, s, b))| (n, Dtype::from_name(&d).unwrap(), s, b))
            .collect();
    for (k, (n, shape)) in extra.iter().enumerate() {
        let count = shape.iter().product::<u64>() as usize;
        let bytes = (0..count)
            .flat_map(|i| (((i * 7 + k * 13) % 17) as f32 * 0.01 - 0.08).to_le_bytes())
            .collect();
        tensors.push(((*n).to_owned(), Dtype::F32, shape.clone(), bytes));
    }
    let refs: Vec<(&str, Dtype, Vec<u64>, Vec<u8>)> = tensors
        .iter()
        .map(|(n, d, s, b)| (n.as_str(), *d, s.clone(), b.clone()))
        .collect();
    write_safetensors(&out.join("model.safetensors"), &refs);
    cm(
        reg,
        &[
            "register",
            out.to_str().unwrap(),
            "--name",
            name,
            "--kind",
            "base",
        ],
    )
    .assert()
    .success();
}

fn labels(names: &[&str]) -> serde_json::Value {
    let id2label: serde_json::Map<String, serde_json::Value> = names
        .iter()
        .enumerate()
        .map(|(i, n)| (i.to_string(), (*n).into()))
        .collect();
    serde_json::Value::Object(id2label)
}

/// A CoNLL-U file of `sentences` (words with UPOS X, heads forming a chain onto word 1).
fn conllu(path: &Path, sentences: &[Vec<&str>]) {
    let mut text = String::new();
    for (k, s) in sentences.iter().enumerate() {
        let _ = writeln!(text, "# sent_id = s{}", k + 1);
        for (i, w) in s.iter().enumerate() {
            let head = u8::from(i != 0);
            let rel = if i == 0 { "root" } else { "obj" };
            let _ = writeln!(text, "{}\t{w}\t_\tX\t_\t_\t{head}\t{rel}\t_\t_", i + 1);
        }
        text.push('\n');
    }
    std::fs::write(path, text).unwrap();
}

/// Runs a failing command: one error line and one hint line, exit 1. Returns both.
fn fails(reg: &Path, args: &[&str]) -> (String, String) {
    let out = cm(reg, args).assert().code(1);
    let stderr = String::from_utf8(out.get_output().stderr.clone()).unwrap();
    let lines: Vec<&str> = stderr.lines().collect();
    assert_eq!(lines.len(), 2, "{args:?}: want error + hint:\n{stderr}");
    assert!(
        lines[0].starts_with("error: ") && lines[1].starts_with("hint: "),
        "{stderr}"
    );
    (lines[0].to_owned(), lines[1].to_owned())
}

const TAGGER_LABELS: [&str; 5] = ["X", "NOUN", "VERB", "DET", "ADJ"];

#[test]
fn heads_must_fit_their_label_maps() {
    let tmp = tempfile::tempdir().unwrap();
    let (t, reg) = (tmp.path(), tmp.path().join("reg"));
    let data = t.join("d.conllu");
    conllu(&data, &[vec!["The", "cats", "sat"]]);
    let cls = |n: u64| {
        vec![
            ("classifier.weight", vec![n, 32]),
            ("classifier.bias", vec![n]),
        ]
    };
    // More outputs than labels: was an index-out-of-bounds panic (exit 101).
    model(
        t,
        &reg,
        "wide",
        &cls(6),
        &[],
        &serde_json::json!({ "id2label": labels(&TAGGER_LABELS) }),
    );
    let (err, _) = fails(
        &reg,
        &[
            "eval",
            "wide",
            "--task",
            "pos",
            "--data",
            data.to_str().unwrap(),
        ],
    );
    assert!(
        err.contains("6 outputs") && err.contains("5 labels"),
        "{err}"
    );
    // A sparse id2label would shift every label after the gap.
    model(
        t,
        &reg,
        "sparse",
        &cls(2),
        &[],
        &serde_json::json!({ "id2label": { "0": "X", "2": "NOUN" } }),
    );
    let (err, _) = fails(
        &reg,
        &[
            "eval",
            "sparse",
            "--task",
            "pos",
            "--data",
            data.to_str().unwrap(),
        ],
    );
    assert!(err.contains("no id 1"), "{err}");
    // The parser's relations too.
    model(
        t,
        &reg,
        "parser",
        &[],
        &[],
        &serde_json::json!({ "id2label": labels(&["root", "obj"]) }),
    );
    let (err, _) = fails(
        &reg,
        &[
            "eval",
            "parser",
            "--task",
            "dp",
            "--data",
            data.to_str().unwrap(),
        ],
    );
    assert!(
        err.contains("5 outputs") && err.contains("2 labels"),
        "{err}"
    );
}

#[test]
fn settings_and_messages_say_what_happens() {
    let tmp = tempfile::tempdir().unwrap();
    let (t, reg) = (tmp.path(), tmp.path().join("reg"));
    let cls = |n: u64| {
        vec![
            ("classifier.weight", vec![n, 32]),
            ("classifier.bias", vec![n]),
        ]
    };
    // A parser config with a key this build does not know breaks dp only.
    let odd_parser = serde_json::json!({
        "id2label": labels(&TAGGER_LABELS),
        "crossmerge_parser": { "word": "first", "activation": "leaky_relu", "future": 1 }
    });
    model(t, &reg, "tagger", &cls(5), &[], &odd_parser);
    let data = t.join("d.conllu");
    conllu(
        &data,
        &[vec!["The", "cats", "sat"], vec!["We", "saw", "birds"]],
    );
    let d = data.to_str().unwrap();
    cm(&reg, &["eval", "tagger", "--task", "pos", "--data", d])
        .assert()
        .success();
    let (err, hint) = fails(&reg, &["eval", "tagger", "--task", "dp", "--data", d]);
    assert!(
        err.contains("crossmerge_parser") && err.contains("future"),
        "{err}"
    );
    assert!(hint.contains("schemas/parser.md"), "{hint}");

    // --max-length below 8 (0 and 1 used to switch truncation off) is refused.
    for m in ["0", "1", "4", "7"] {
        let (err, _) = fails(
            &reg,
            &[
                "eval",
                "tagger",
                "--task",
                "pos",
                "--data",
                d,
                "--max-length",
                m,
            ],
        );
        assert!(
            err.contains(&format!("--max-length {m} is below 8")),
            "{err}"
        );
    }
    // Cut words are scored as wrong for POS; an empty form is not "cut".
    let long = t.join("long.conllu");
    let words: Vec<&str> = std::iter::repeat_n("cats", 20).collect();
    conllu(&long, &[words, vec!["The", "\u{a0}", "sat"]]);
    let out = cm(
        &reg,
        &[
            "eval",
            "tagger",
            "--task",
            "pos",
            "--data",
            long.to_str().unwrap(),
            "--max-length",
            "8",
        ],
    )
    .assert()
    .success();
    let stderr = String::from_utf8(out.get_output().stderr.clone()).unwrap();
    // "cats" is two subwords: 3 of the 20 words fit in 8 tokens.
    assert!(
        stderr.contains("17 words cut by --max-length 8 (scored as wrong)"),
        "{stderr}"
    );
    assert!(
        stderr.contains("1 words are empty or whitespace"),
        "{stderr}"
    );

    // NER: cut tokens are tagged O, and the message says so.
    model(
        t,
        &reg,
        "ner",
        &cls(3),
        &[],
        &serde_json::json!({ "id2label": labels(&["O", "B-PER", "I-PER"]) }),
    );
    let iob = t.join("d.iob2");
    let mut text = String::new();
    for _ in 0..20 {
        text.push_str("cats\tB-PER\n");
    }
    std::fs::write(&iob, text + "\n").unwrap();
    let out = cm(
        &reg,
        &[
            "eval",
            "ner",
            "--task",
            "ner",
            "--data",
            iob.to_str().unwrap(),
            "--max-length",
            "8",
        ],
    )
    .assert()
    .success();
    let stderr = String::from_utf8(out.get_output().stderr.clone()).unwrap();
    assert!(stderr.contains("tagged `O`"), "{stderr}");
    assert!(!stderr.contains("scored as wrong"), "{stderr}");
    // Which seqeval mode every NER row used is stored.
    cm(
        &reg,
        &[
            "eval",
            "ner",
            "--task",
            "ner",
            "--data",
            iob.to_str().unwrap(),
            "--ner-mode",
            "strict",
        ],
    )
    .assert()
    .success();
    let rows = cm(&reg, &["report", "evals", "--json"]).assert().success();
    let rows: serde_json::Value = serde_json::from_slice(&rows.get_output().stdout).unwrap();
    let modes: Vec<&str> = rows
        .as_array()
        .unwrap()
        .iter()
        .filter(|r| r["task"] == "ner")
        .map(|r| r["settings"]["ner_mode"].as_str().unwrap())
        .collect();
    assert_eq!(modes, ["default", "strict"]);

    // POS gold tags the model lacks: the hint speaks of UPOS tags, not of O.
    let other = t.join("other.conllu");
    std::fs::write(&other, "1\tcats\t_\tPROPN\t_\t_\t0\troot\t_\t_\n\n").unwrap();
    let (err, hint) = fails(
        &reg,
        &[
            "eval",
            "tagger",
            "--task",
            "pos",
            "--data",
            other.to_str().unwrap(),
        ],
    );
    assert!(err.contains("PROPN"), "{err}");
    assert!(hint.contains("UPOS") && !hint.contains(" O "), "{hint}");
}

#[test]
fn missing_heads_are_named_as_transformers_names_them() {
    let tmp = tempfile::tempdir().unwrap();
    let (t, reg) = (tmp.path(), tmp.path().join("reg"));
    let nli = [
        ("classifier.weight", vec![3, 32]),
        ("classifier.bias", vec![3]),
    ];
    model(
        t,
        &reg,
        "nli",
        &nli,
        &["pooler.", "bert.pooler."],
        &serde_json::json!({ "id2label": labels(&["entailment", "neutral", "contradiction"]) }),
    );
    let data = t.join("d.tsv");
    std::fs::write(
        &data,
        "premise\thypothesis\tlabel\nThe cats\tsat\tneutral\n",
    )
    .unwrap();
    let (err, _) = fails(
        &reg,
        &[
            "eval",
            "nli",
            "--task",
            "nli",
            "--data",
            data.to_str().unwrap(),
        ],
    );
    assert!(err.contains("`bert.pooler.dense.weight`"), "{err}");
    // No masked-LM head: said from the manifest, with a masked-LM hint.
    let text = t.join("t.txt");
    std::fs::write(&text, "The cats sat\n").unwrap();
    let (err, hint) = fails(
        &reg,
        &[
            "eval",
            "nli",
            "--task",
            "mlm",
            "--data",
            text.to_str().unwrap(),
        ],
    );
    assert!(err.contains("has no mlm head"), "{err}");
    assert!(
        hint.contains("masked-LM") && !hint.contains("parser.md"),
        "{hint}"
    );
}

#[test]
fn data_must_be_a_bounded_regular_file_and_gold_trees_valid() {
    let tmp = tempfile::tempdir().unwrap();
    let (t, reg) = (tmp.path(), tmp.path().join("reg"));
    model(t, &reg, "parser", &[], &[], &serde_json::json!({}));
    let (err, _) = fails(
        &reg,
        &["eval", "parser", "--task", "dp", "--data", "/dev/zero"],
    );
    assert!(err.contains("not a regular file"), "{err}");
    let (err, _) = fails(
        &reg,
        &[
            "eval",
            "parser",
            "--task",
            "dp",
            "--data",
            t.to_str().unwrap(),
        ],
    );
    assert!(err.contains("not a regular file"), "{err}");
    for (name, body, expect) in [
        (
            "cycle",
            "1\tThe\t_\tX\t_\t_\t2\tobj\t_\t_\n2\tcats\t_\tX\t_\t_\t1\tobj\t_\t_\n3\tsat\t_\tX\t_\t_\t0\troot\t_\t_\n",
            "cycle",
        ),
        (
            "roots",
            "1\tThe\t_\tX\t_\t_\t0\troot\t_\t_\n2\tcats\t_\tX\t_\t_\t0\troot\t_\t_\n",
            "2 words have head 0",
        ),
    ] {
        let p = t.join(format!("{name}.conllu"));
        std::fs::write(&p, format!("# sent_id = bad-{name}\n{body}\n")).unwrap();
        let (err, _) = fails(
            &reg,
            &[
                "eval",
                "parser",
                "--task",
                "dp",
                "--data",
                p.to_str().unwrap(),
            ],
        );
        assert!(
            err.contains(&format!("`bad-{name}`")) && err.contains(expect),
            "{err}"
        );
    }
    // A 3,000-word sentence parses in the memory (and time) of --max-length's words: its
    // parser scores are 9² per label, not 3,001² (and its tree search O(9³), not O(3,001³)).
    let long = t.join("long.conllu");
    let words: Vec<&str> = std::iter::repeat_n("cats", 3000).collect();
    conllu(&long, &[words]);
    let out = cm(
        &reg,
        &[
            "eval",
            "parser",
            "--task",
            "dp",
            "--data",
            long.to_str().unwrap(),
            "--max-length",
            "18",
        ],
    )
    .env("CROSSMERGE_REPORT_PEAK_RSS", "1")
    .timeout(std::time::Duration::from_secs(120))
    .assert()
    .success();
    let stderr = String::from_utf8(out.get_output().stderr.clone()).unwrap();
    assert!(
        stderr.contains("2992 words cut by --max-length 18"),
        "{stderr}"
    );
    let kib: u64 = stderr
        .lines()
        .find_map(|l| l.strip_prefix("peak_rss_kib: "))
        .unwrap()
        .trim()
        .parse()
        .unwrap();
    assert!(kib < 400 * 1024, "peak RSS {kib} KiB");
}
