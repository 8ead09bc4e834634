//! New task heads and the config.json of a trained model, as transformers makes them: label
//! ids from the sorted label set, `id2label`/`label2id` and the `*For…` architecture in
//! config.json (so transformers loads an export with the right head class), and head weights
//! initialised as `_init_weights` does: linear weights normal(0, `initializer_range`), biases
//! zero, LayerNorm weights one. The draws are seeded ([`crate::rng`]).

use serde_json::{Value, json};

use crate::model::HeadKind;
use crate::rng::{mix, unit};

/// A label set with stable ids: sorted, each label once.
pub fn label_set<'a>(labels: impl IntoIterator<Item = &'a str>) -> Vec<String> {
    let mut v: Vec<String> = labels.into_iter().map(str::to_owned).collect();
    v.sort();
    v.dedup();
    v
}

/// The transformers class of a head on this `model_type`.
pub fn architecture(model_type: &str, kind: HeadKind) -> String {
    let family = match model_type {
        "bert" => "Bert",
        "roberta" => "Roberta",
        _ => "XLMRoberta",
    };
    let head = match kind {
        HeadKind::MaskedLm => "ForMaskedLM",
        HeadKind::Token => "ForTokenClassification",
        HeadKind::Sequence => "ForSequenceClassification",
    };
    format!("{family}{head}")
}

/// The trained model's config.json: the base's, with the head's architecture and, for
/// classification heads, `id2label`/`label2id` (ids as strings in `id2label`, as transformers
/// writes them).
pub fn config_for(base: &Value, kind: HeadKind, labels: &[String]) -> Value {
    let mut c = base.clone();
    let model_type = c["model_type"].as_str().unwrap_or("bert").to_owned();
    c["architectures"] = json!([architecture(&model_type, kind)]);
    if kind != HeadKind::MaskedLm {
        let id2label: serde_json::Map<String, Value> = labels
            .iter()
            .enumerate()
            .map(|(i, l)| (i.to_string(), json!(l)))
            .collect();
        let label2id: serde_json::Map<String, Value> = labels
            .iter()
            .enumerate()
            .map(|(i, l)| (l.clone(), json!(i)))
            .collect();
        c["id2label"] = Value::Object(id2label);
        c["label2id"] = Value::Object(label2id);
    }
    c
}

/// A tensor of a new head: its name, shape and values.
#[derive(Clone, Debug, PartialEq)]
pub struct HeadTensor {
    pub name: String,
    pub shape: Vec<usize>,
    pub values: Vec<f32>,
}

/// A new head of `kind` for a model with `config` (config.json) and `labels` labels, seeded.
/// Masked-LM heads leave the decoder tied to the word embeddings (only its bias is new).
pub fn new_head(config: &Value, kind: HeadKind, labels: usize, seed: u64) -> Vec<HeadTensor> {
    let h = config["hidden_size"].as_u64().unwrap_or(768) as usize;
    let vocab = config["vocab_size"].as_u64().unwrap_or(0) as usize;
    let std = config["initializer_range"].as_f64().unwrap_or(0.02);
    let roberta = config["model_type"].as_str().unwrap_or("bert") != "bert";
    let mut k = 0u64;
    let mut normal = |shape: Vec<usize>, name: &str| {
        k += 1;
        let n: usize = shape.iter().product();
        let values = normal_values(mix(seed ^ mix(k)), n, std);
        HeadTensor {
            name: name.to_owned(),
            shape,
            values,
        }
    };
    let filled = |shape: Vec<usize>, name: &str, v: f32| HeadTensor {
        name: name.to_owned(),
        values: vec![v; shape.iter().product()],
        shape,
    };
    match (kind, roberta) {
        (HeadKind::Token, _) => vec![
            normal(vec![labels, h], "classifier.weight"),
            filled(vec![labels], "classifier.bias", 0.0),
        ],
        (HeadKind::Sequence, false) => vec![
            normal(vec![h, h], "bert.pooler.dense.weight"),
            filled(vec![h], "bert.pooler.dense.bias", 0.0),
            normal(vec![labels, h], "classifier.weight"),
            filled(vec![labels], "classifier.bias", 0.0),
        ],
        (HeadKind::Sequence, true) => vec![
            normal(vec![h, h], "classifier.dense.weight"),
            filled(vec![h], "classifier.dense.bias", 0.0),
            normal(vec![labels, h], "classifier.out_proj.weight"),
            filled(vec![labels], "classifier.out_proj.bias", 0.0),
        ],
        (HeadKind::MaskedLm, false) => vec![
            normal(vec![h, h], "cls.predictions.transform.dense.weight"),
            filled(vec![h], "cls.predictions.transform.dense.bias", 0.0),
            filled(vec![h], "cls.predictions.transform.LayerNorm.weight", 1.0),
            filled(vec![h], "cls.predictions.transform.LayerNorm.bias", 0.0),
            filled(vec![vocab], "cls.predictions.bias", 0.0),
        ],
        (HeadKind::MaskedLm, true) => vec![
            normal(vec![h, h], "lm_head.dense.weight"),
            filled(vec![h], "lm_head.dense.bias", 0.0),
            filled(vec![h], "lm_head.layer_norm.weight", 1.0),
            filled(vec![h], "lm_head.layer_norm.bias", 0.0),
            filled(vec![vocab], "lm_head.bias", 0.0),
        ],
    }
}

/// Arc and relation MLP sizes of a new parser head (Dozat & Manning 2017's 500 and 100).
pub const PARSER_ARC: usize = 500;
pub const PARSER_RELATION: usize = 100;

/// A new biaffine parser head (schemas/parser.md) for `relations` labels, seeded: the `[ROOT]`
/// vector, MLP weights and both biaffine tensors normal(0, `initializer_range`), MLP biases
/// zero. (Biaffine tensors at zero, as some parsers start, would give the MLPs no gradient on
/// the first step.)
pub fn new_parser(config: &Value, relations: usize, seed: u64) -> Vec<HeadTensor> {
    let h = config["hidden_size"].as_u64().unwrap_or(768) as usize;
    let std = config["initializer_range"].as_f64().unwrap_or(0.02);
    let (a, r) = (PARSER_ARC, PARSER_RELATION);
    let mut out = Vec::new();
    let shapes: Vec<(&str, Vec<usize>, bool)> = vec![
        ("parser.root", vec![h], true),
        ("parser.arc_dep.weight", vec![a, h], true),
        ("parser.arc_dep.bias", vec![a], false),
        ("parser.arc_head.weight", vec![a, h], true),
        ("parser.arc_head.bias", vec![a], false),
        ("parser.rel_dep.weight", vec![r, h], true),
        ("parser.rel_dep.bias", vec![r], false),
        ("parser.rel_head.weight", vec![r, h], true),
        ("parser.rel_head.bias", vec![r], false),
        ("parser.arc_attn.weight", vec![a + 1, a], true),
        (
            "parser.rel_attn.weight",
            vec![relations, r + 1, r + 1],
            true,
        ),
    ];
    for (k, (name, shape, random)) in shapes.into_iter().enumerate() {
        let n: usize = shape.iter().product();
        let values = if random {
            normal_values(mix(seed ^ mix(0x5EED_0000 + k as u64)), n, std)
        } else {
            vec![0.0; n]
        };
        out.push(HeadTensor {
            name: name.to_owned(),
            shape,
            values,
        });
    }
    out
}

/// `n` draws of normal(0, `std`) (Box–Muller on pairs of uniform draws).
fn normal_values(stream: u64, n: usize, std: f64) -> Vec<f32> {
    (0..n)
        .map(|i| {
            let u1 = unit(mix(stream ^ (2 * i as u64))).max(f64::MIN_POSITIVE);
            let u2 = unit(mix(stream ^ (2 * i as u64 + 1)));
            ((-2.0 * u1.ln()).sqrt() * (std::f64::consts::TAU * u2).cos() * std) as f32
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::{HeadKind, architecture, config_for, label_set, new_head};
    use crate::model::Config;

    fn base(model_type: &str) -> serde_json::Value {
        json!({
            "model_type": model_type,
            "vocab_size": 500,
            "hidden_size": 64,
            "num_hidden_layers": 1,
            "num_attention_heads": 4,
            "intermediate_size": 128,
            "max_position_embeddings": 64,
            "initializer_range": 0.02,
        })
    }

    #[test]
    fn labels_get_stable_ids_and_config_json_reads_back() {
        let labels = label_set(["VERB", "NOUN", "ADJ", "NOUN", "PUNCT"]);
        assert_eq!(labels, ["ADJ", "NOUN", "PUNCT", "VERB"]);
        let c = config_for(&base("xlm-roberta"), HeadKind::Token, &labels);
        assert_eq!(
            c["architectures"],
            json!(["XLMRobertaForTokenClassification"])
        );
        assert_eq!(c["id2label"]["1"], "NOUN");
        assert_eq!(c["label2id"]["VERB"], 3);
        let parsed = Config::parse(c.to_string().as_bytes()).unwrap();
        assert_eq!(parsed.checked_labels().unwrap(), labels);
        assert_eq!(architecture("bert", HeadKind::MaskedLm), "BertForMaskedLM");
        let mlm = config_for(&base("bert"), HeadKind::MaskedLm, &[]);
        assert!(mlm.get("id2label").is_none());
    }

    #[test]
    #[allow(clippy::float_cmp)] // exactly 0 and exactly 1: what transformers writes
    fn new_heads_are_initialised_as_transformers_does_and_seeded() {
        for model_type in ["bert", "xlm-roberta"] {
            for kind in [HeadKind::Token, HeadKind::Sequence, HeadKind::MaskedLm] {
                let c = base(model_type);
                let head = new_head(&c, kind, 17, 3);
                assert_eq!(head, new_head(&c, kind, 17, 3));
                assert_ne!(head, new_head(&c, kind, 17, 4));
                for t in &head {
                    assert_eq!(
                        t.values.len(),
                        t.shape.iter().product::<usize>(),
                        "{}",
                        t.name
                    );
                    if t.name.ends_with("bias") {
                        assert!(t.values.iter().all(|v| *v == 0.0), "{}", t.name);
                    } else if t.name.contains("LayerNorm") || t.name.contains("layer_norm") {
                        assert!(t.values.iter().all(|v| *v == 1.0), "{}", t.name);
                    } else {
                        let n = t.values.len() as f64;
                        let mean = t.values.iter().map(|v| f64::from(*v)).sum::<f64>() / n;
                        let var = t
                            .values
                            .iter()
                            .map(|v| (f64::from(*v) - mean).powi(2))
                            .sum::<f64>()
                            / n;
                        assert!(mean.abs() < 0.002, "{}: mean {mean}", t.name);
                        assert!(
                            (var.sqrt() - 0.02).abs() < 0.002,
                            "{}: std {}",
                            t.name,
                            var.sqrt()
                        );
                    }
                }
            }
        }
        let names: Vec<String> = new_head(&base("xlm-roberta"), HeadKind::Sequence, 3, 0)
            .into_iter()
            .map(|t| t.name)
            .collect();
        assert_eq!(
            names,
            [
                "classifier.dense.weight",
                "classifier.dense.bias",
                "classifier.out_proj.weight",
                "classifier.out_proj.bias"
            ]
        );
    }
}
