//! BERT and XLM-RoBERTa encoders with their task heads, built from plain candle ops (matmul,
//! exp, sums), so the same code can later be differentiated for fine-tuning (candle's fused
//! LayerNorm and softmax have no backward pass).
//!
//! Weights are looked up by the names Hugging Face saves: `bert.…`/`roberta.…` for models with
//! a head, bare `embeddings.…`/`encoder.…` for `BertModel`/`XLMRobertaModel`; either is found.
//! The numerics follow `transformers` (float32): embeddings = word + position + token type,
//! LayerNorm; post-LN layers with exact (erf) GELU; attention scores masked with the dtype's
//! lowest value; XLM-R positions start after the padding index and skip padding.

//!
//! One concern per file, as candle organises a model: [`config`] (config.json), [`weights`]
//! (named tensors), `layers` (linear, LayerNorm), [`encoder`], [`heads`].

pub mod config;
pub mod dropout;
pub mod encoder;
pub mod heads;
mod layers;
pub mod weights;

pub use config::Config;
pub use dropout::Dropout;
pub use encoder::Encoder;
pub use heads::{Head, HeadKind};
pub use weights::Weights;

use crate::error::Error;

#[allow(clippy::needless_pass_by_value)] // used as `map_err(candle)`
pub(crate) fn candle(e: candle_core::Error) -> Error {
    Error::invalid(
        format!("model computation: {e}"),
        "report this with the checkpoint's config.json",
    )
}
