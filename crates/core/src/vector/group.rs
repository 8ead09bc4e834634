//! Grouping tensor names: by encoder layer and by module kind, as BERT and XLM-R name them.

use serde::Serialize;

/// How `compare` groups tensors.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Default)]
#[serde(rename_all = "lowercase")]
pub enum GroupBy {
    /// One group: the whole model.
    #[default]
    Model,
    /// `embeddings`, `layer.0` … `layer.N-1`, `other` (pooler, heads).
    Layer,
    /// Attention query/key/value/output, feed-forward in/out, `LayerNorm`, embeddings, other.
    Module,
    /// Every tensor on its own.
    Tensor,
}

/// A group's key; the derived order is the display order.
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum GroupKey {
    Model,
    Embeddings,
    Layer(u32),
    Module(u8, &'static str),
    Tensor(String),
    Other,
}

impl GroupKey {
    pub fn label(&self) -> String {
        match self {
            GroupKey::Model => "model".to_owned(),
            GroupKey::Embeddings => "embeddings".to_owned(),
            GroupKey::Layer(n) => format!("layer.{n}"),
            GroupKey::Module(_, m) => (*m).to_owned(),
            GroupKey::Tensor(t) => t.clone(),
            GroupKey::Other => "other".to_owned(),
        }
    }
}

/// The encoder layer index in a tensor name (`…layer.3.…`, `…layers.3.…`, `…h.3.…`).
pub fn layer_of(name: &str) -> Option<u32> {
    let parts: Vec<&str> = name.split('.').collect();
    parts.windows(2).find_map(|w| {
        matches!(w[0], "layer" | "layers" | "h" | "block" | "blocks")
            .then(|| w[1].parse().ok())
            .flatten()
    })
}

/// The module kind of a tensor name, with its display rank.
pub fn module_of(name: &str) -> (u8, &'static str) {
    let n = name;
    if n.contains("embeddings.") && !n.contains("LayerNorm") {
        (0, "embeddings")
    } else if n.contains("attention.self.query") || n.contains(".q_proj") {
        (1, "attention.query")
    } else if n.contains("attention.self.key") || n.contains(".k_proj") {
        (2, "attention.key")
    } else if n.contains("attention.self.value") || n.contains(".v_proj") {
        (3, "attention.value")
    } else if n.contains("attention.output.dense") || n.contains(".out_proj") {
        (4, "attention.output")
    } else if n.contains("intermediate.dense") {
        (5, "ffn.in")
    } else if n.contains("output.dense") && layer_of(n).is_some() {
        (6, "ffn.out")
    } else if n.contains("LayerNorm") || n.contains("layer_norm") {
        (7, "layernorm")
    } else {
        (8, "other")
    }
}

pub fn key(by: GroupBy, name: &str) -> GroupKey {
    match by {
        GroupBy::Model => GroupKey::Model,
        GroupBy::Tensor => GroupKey::Tensor(name.to_owned()),
        GroupBy::Module => {
            let (rank, m) = module_of(name);
            GroupKey::Module(rank, m)
        }
        GroupBy::Layer => match layer_of(name) {
            Some(n) => GroupKey::Layer(n),
            None if name.contains("embeddings") => GroupKey::Embeddings,
            None => GroupKey::Other,
        },
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bert_and_xlmr_names_group_as_expected() {
        let cases = [
            (
                "roberta.embeddings.word_embeddings.weight",
                "embeddings",
                "embeddings",
            ),
            (
                "roberta.embeddings.LayerNorm.weight",
                "embeddings",
                "layernorm",
            ),
            (
                "encoder.layer.11.attention.self.query.weight",
                "layer.11",
                "attention.query",
            ),
            (
                "bert.encoder.layer.0.attention.self.key.bias",
                "layer.0",
                "attention.key",
            ),
            (
                "encoder.layer.2.attention.self.value.weight",
                "layer.2",
                "attention.value",
            ),
            (
                "encoder.layer.2.attention.output.dense.weight",
                "layer.2",
                "attention.output",
            ),
            (
                "encoder.layer.2.attention.output.LayerNorm.bias",
                "layer.2",
                "layernorm",
            ),
            (
                "encoder.layer.2.intermediate.dense.weight",
                "layer.2",
                "ffn.in",
            ),
            ("encoder.layer.2.output.dense.weight", "layer.2", "ffn.out"),
            ("pooler.dense.weight", "other", "other"),
            ("lm_head.dense.weight", "other", "other"),
        ];
        for (name, layer, module) in cases {
            assert_eq!(key(GroupBy::Layer, name).label(), layer, "{name}");
            assert_eq!(key(GroupBy::Module, name).label(), module, "{name}");
        }
        assert!(
            GroupKey::Embeddings < GroupKey::Layer(0) && GroupKey::Layer(2) < GroupKey::Layer(10)
        );
        assert!(GroupKey::Layer(11) < GroupKey::Other);
    }
}
