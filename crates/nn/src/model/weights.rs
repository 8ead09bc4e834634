//! Named weights, looked up by the names Hugging Face saves (with or without the
//! `bert.`/`roberta.` prefix).

use std::collections::HashMap;

use candle_core::Tensor;

use super::Config;
use crate::error::{Error, Result};

/// Named weights, as Hugging Face saves them.
pub struct Weights {
    pub(super) map: HashMap<String, Tensor>,
    pub(super) prefix: &'static str,
}

impl Weights {
    /// `prefix` is `bert` or `roberta`: names are found with or without it.
    pub fn new(map: HashMap<String, Tensor>, config: &Config) -> Self {
        Self {
            map,
            prefix: if config.is_roberta() {
                "roberta"
            } else {
                "bert"
            },
        }
    }

    /// An encoder weight: `PREFIX.name` or `name`.
    pub(super) fn encoder(&self, name: &str) -> Result<Tensor> {
        let prefixed = format!("{}.{name}", self.prefix);
        self.map
            .get(&prefixed)
            .or_else(|| self.map.get(name))
            .cloned()
            .ok_or_else(|| missing(&prefixed))
    }

    /// A head weight, by its exact name.
    pub fn head(&self, name: &str) -> Result<Tensor> {
        self.map.get(name).cloned().ok_or_else(|| missing(name))
    }

    pub fn has(&self, name: &str) -> bool {
        self.map.contains_key(name)
    }
}

pub(super) fn missing(name: &str) -> Error {
    Error::invalid(
        format!("the checkpoint has no tensor `{name}`"),
        "evaluate a checkpoint with the head this task needs (`crossmerge show REF --tensors`)",
    )
}
