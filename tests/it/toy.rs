//! A toy language (determiners, nouns, verbs, names; two sentence shapes) written as
//! CoNLL-U, IOB2, NLI TSV and text, and a tiny BERT with its word-level tokenizer: the
//! models and data the training and study tests build in-process.
#![allow(clippy::many_single_char_names)] // h, i, l, p: a model's dimensions

use std::fmt::Write as _;
use std::path::{Path, PathBuf};

use crossmerge::Dtype;
use serde_json::{Value, json};

use crate::common::write_safetensors;

pub const DETS: [&str; 3] = ["the", "a", "this"];
pub const NOUNS: [&str; 6] = ["dog", "cat", "house", "river", "tree", "car"];
pub const VERBS: [&str; 4] = ["sees", "likes", "finds", "moves"];
pub const NAMES: [&str; 4] = ["alice", "bob", "paris", "rome"];

pub fn words() -> Vec<&'static str> {
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
pub struct Rng(pub u64);

impl Rng {
    pub fn next(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^ (z >> 31)
    }
    pub fn pick<'a>(&mut self, from: &[&'a str]) -> &'a str {
        from[(self.next() % from.len() as u64) as usize]
    }
    pub fn normal(&mut self) -> f32 {
        let u1 = ((self.next() >> 11) as f64 / (1u64 << 53) as f64).max(1e-12);
        let u2 = (self.next() >> 11) as f64 / (1u64 << 53) as f64;
        ((-2.0 * u1.ln()).sqrt() * (std::f64::consts::TAU * u2).cos()) as f32
    }
}

/// A sentence: (form, UPOS, head, relation, NER tag) per word.
pub fn sentence(rng: &mut Rng) -> Vec<(String, &'static str, usize, &'static str, &'static str)> {
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
pub fn write_data(dir: &Path, split: &str, n: usize, seed: u64) {
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
pub fn tokenizer() -> Value {
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
pub fn write_model(dir: &Path, vocab_size: usize) -> PathBuf {
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
