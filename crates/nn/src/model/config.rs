//! `config.json`: the keys an encoder and its heads read, checked.

use std::collections::BTreeMap;

use serde::Deserialize;

use crate::error::{Error, Result};

/// The config.json keys an encoder needs.
#[derive(Clone, Debug, Deserialize)]
pub struct Config {
    pub model_type: String,
    pub vocab_size: usize,
    pub hidden_size: usize,
    pub num_hidden_layers: usize,
    pub num_attention_heads: usize,
    pub intermediate_size: usize,
    pub max_position_embeddings: usize,
    #[serde(default = "default_type_vocab")]
    pub type_vocab_size: usize,
    #[serde(default = "default_eps")]
    pub layer_norm_eps: f64,
    pub pad_token_id: Option<u32>,
    #[serde(default = "default_act")]
    pub hidden_act: String,
    #[serde(default)]
    pub id2label: BTreeMap<String, String>,
    #[serde(default)]
    pub architectures: Vec<String>,
    /// The biaffine parser head's settings (schemas/parser.md), read only by `--task dp`
    /// ([`crate::parser::ParserConfig::of`]): a key it does not know must not break the other tasks.
    #[serde(default, rename = "crossmerge_parser")]
    pub parser_raw: Option<serde_json::Value>,
    /// Dropout rates (training only; transformers' defaults when absent).
    #[serde(default)]
    pub hidden_dropout_prob: Option<f64>,
    #[serde(default)]
    pub attention_probs_dropout_prob: Option<f64>,
    #[serde(default)]
    pub classifier_dropout: Option<f64>,
    #[serde(default)]
    pub initializer_range: Option<f64>,
}

pub(super) fn default_type_vocab() -> usize {
    2
}
pub(super) fn default_eps() -> f64 {
    1e-12
}
pub(super) fn default_act() -> String {
    "gelu".to_owned()
}

impl Config {
    pub fn parse(bytes: &[u8]) -> Result<Self> {
        let c: Config = serde_json::from_slice(bytes).map_err(|e| {
            Error::invalid(
                format!("config.json: {e}"),
                "the checkpoint needs a BERT or XLM-RoBERTa config.json as transformers saves it",
            )
        })?;
        if !matches!(c.model_type.as_str(), "bert" | "xlm-roberta" | "roberta") {
            return Err(Error::invalid(
                format!(
                    "model_type `{}` is not an encoder crossmerge evaluates",
                    c.model_type
                ),
                "use a BERT or XLM-RoBERTa checkpoint",
            ));
        }
        if c.hidden_act != "gelu" {
            return Err(Error::invalid(
                format!("hidden_act `{}` is not supported", c.hidden_act),
                "BERT and XLM-R use `gelu` (erf)",
            ));
        }
        if c.num_attention_heads == 0 || !c.hidden_size.is_multiple_of(c.num_attention_heads) {
            return Err(Error::invalid(
                "hidden_size is not a multiple of num_attention_heads",
                "check config.json",
            ));
        }
        Ok(c)
    }

    pub fn is_roberta(&self) -> bool {
        self.model_type != "bert"
    }

    /// Labels by id, checked: `id2label`'s keys must be exactly the ids 0..n-1, or labels
    /// would shift onto the wrong outputs.
    pub fn checked_labels(&self) -> Result<Vec<String>> {
        let mut ids: Vec<(usize, &String)> = Vec::with_capacity(self.id2label.len());
        for (k, v) in &self.id2label {
            let id = k.parse::<usize>().map_err(|_| {
                Error::invalid(
                    format!("config.json's id2label has key `{k}`, which is not an id"),
                    "id2label maps ids \"0\", \"1\", … to label names, as transformers saves it",
                )
            })?;
            ids.push((id, v));
        }
        ids.sort();
        if let Some((want, (got, _))) = ids.iter().enumerate().find(|(i, (id, _))| i != id) {
            return Err(Error::invalid(
                format!(
                    "config.json's id2label has {} labels but no id {want} (it jumps to {got})",
                    ids.len()
                ),
                "id2label must name every output 0..n-1 of the head; fix config.json",
            ));
        }
        Ok(ids.into_iter().map(|(_, l)| l.clone()).collect())
    }

    /// Labels by id (`id2label`), in id order.
    pub fn labels(&self) -> Vec<String> {
        let mut v: Vec<(usize, String)> = self
            .id2label
            .iter()
            .filter_map(|(k, v)| Some((k.parse().ok()?, v.clone())))
            .collect();
        v.sort();
        v.into_iter().map(|(_, l)| l).collect()
    }
}
