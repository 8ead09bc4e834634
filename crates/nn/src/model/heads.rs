//! Task heads over the encoder's hidden states: masked LM, token and sequence classification.

#![allow(clippy::many_single_char_names)] // b, t, h, d, q, k, v: the attention formula's names

use candle_core::Tensor;

use super::layers::{LayerNorm, Linear};
use super::weights::missing;
use super::{Dropout, Encoder, Weights, candle};
use crate::error::Result;

/// A task head over the encoder's hidden states.
pub struct Head(Layers);

pub(super) enum Layers {
    /// Masked-LM: transform (dense, GELU, LayerNorm), then the decoder (tied to the word
    /// embeddings unless saved) with its bias.
    MaskedLm {
        dense: Linear,
        norm: LayerNorm,
        decoder: Tensor,
        bias: Tensor,
    },
    /// Token classification: `classifier` on every hidden state.
    Token { classifier: Linear },
    /// BERT sequence classification: pooler (dense + tanh on [CLS]) then `classifier`.
    BertSequence { pooler: Linear, classifier: Linear },
    /// RoBERTa sequence classification: `classifier.dense` + tanh on `<s>`, `classifier.out_proj`.
    RobertaSequence { dense: Linear, out_proj: Linear },
}

/// Which head to load.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum HeadKind {
    MaskedLm,
    Token,
    Sequence,
}

impl Head {
    pub fn load(weights: &Weights, encoder: &Encoder, kind: HeadKind) -> Result<Self> {
        let c = &encoder.config;
        let eps = c.layer_norm_eps;
        Ok(Head(match (kind, c.is_roberta()) {
            (HeadKind::MaskedLm, false) => Layers::MaskedLm {
                dense: Linear::load(weights, "cls.predictions.transform.dense", false)?,
                norm: LayerNorm::load(weights, "cls.predictions.transform.LayerNorm", eps, false)?,
                decoder: weights
                    .head("cls.predictions.decoder.weight")
                    .unwrap_or_else(|_| encoder.word_embeddings().clone()),
                bias: weights
                    .head("cls.predictions.bias")
                    .or_else(|_| weights.head("cls.predictions.decoder.bias"))?,
            },
            (HeadKind::MaskedLm, true) => Layers::MaskedLm {
                dense: Linear::load(weights, "lm_head.dense", false)?,
                norm: LayerNorm::load(weights, "lm_head.layer_norm", eps, false)?,
                decoder: weights
                    .head("lm_head.decoder.weight")
                    .unwrap_or_else(|_| encoder.word_embeddings().clone()),
                bias: weights
                    .head("lm_head.bias")
                    .or_else(|_| weights.head("lm_head.decoder.bias"))?,
            },
            (HeadKind::Token, _) => Layers::Token {
                classifier: Linear::load(weights, "classifier", false)?,
            },
            (HeadKind::Sequence, false) => Layers::BertSequence {
                pooler: Linear::load(weights, "bert.pooler.dense", false)
                    .or_else(|_| Linear::load(weights, "pooler.dense", false))
                    .map_err(|_| missing("bert.pooler.dense.weight"))?,
                classifier: Linear::load(weights, "classifier", false)?,
            },
            (HeadKind::Sequence, true) => Layers::RobertaSequence {
                dense: Linear::load(weights, "classifier.dense", false)?,
                out_proj: Linear::load(weights, "classifier.out_proj", false)?,
            },
        }))
    }

    /// How many labels a classification head scores (`None` for the masked-LM head).
    pub fn outputs(&self) -> Option<usize> {
        match &self.0 {
            Layers::MaskedLm { .. } => None,
            Layers::Token { classifier } | Layers::BertSequence { classifier, .. } => {
                classifier.wt.dim(1).ok()
            }
            Layers::RobertaSequence { out_proj, .. } => out_proj.wt.dim(1).ok(),
        }
    }

    /// Logits: `(batch, len, vocab|labels)` for token-level heads, `(batch, labels)` for
    /// sequence heads.
    pub fn forward(&self, hidden: &Tensor) -> Result<Tensor> {
        self.forward_train(hidden, None)
    }

    /// [`Head::forward`] with training dropout where transformers' heads have it: before a
    /// token classifier, between BERT's pooler and classifier, before and after RoBERTa's
    /// classification `dense`.
    pub fn forward_train(&self, hidden: &Tensor, dropout: Option<&Dropout>) -> Result<Tensor> {
        let drop = |x: Tensor| match dropout {
            Some(d) => d.apply(&x, d.classifier).map_err(candle),
            None => Ok(x),
        };
        match &self.0 {
            Layers::MaskedLm {
                dense,
                norm,
                decoder,
                bias,
            } => {
                let x =
                    norm.forward(&crate::kernels::gelu(&dense.forward(hidden)?).map_err(candle)?)?;
                x.broadcast_matmul(&decoder.t().map_err(candle)?)
                    .and_then(|y| y.broadcast_add(bias))
                    .map_err(candle)
            }
            Layers::Token { classifier } => classifier.forward(&drop(hidden.clone())?),
            Layers::BertSequence { pooler, classifier } => {
                let cls = hidden
                    .narrow(1, 0, 1)
                    .and_then(|c| c.squeeze(1))
                    .map_err(candle)?;
                classifier.forward(&drop(pooler.forward(&cls)?.tanh().map_err(candle)?)?)
            }
            Layers::RobertaSequence { dense, out_proj } => {
                let cls = hidden
                    .narrow(1, 0, 1)
                    .and_then(|c| c.squeeze(1))
                    .map_err(candle)?;
                out_proj.forward(&drop(dense.forward(&drop(cls)?)?.tanh().map_err(candle)?)?)
            }
        }
    }
}
