//! BERT and XLM-RoBERTa encoders with their task heads, built from plain candle ops (matmul,
//! exp, sums), so the same code can later be differentiated for fine-tuning (candle's fused
//! LayerNorm and softmax have no backward pass).
//!
//! Weights are looked up by the names Hugging Face saves: `bert.…`/`roberta.…` for models with
//! a head, bare `embeddings.…`/`encoder.…` for `BertModel`/`XLMRobertaModel`; either is found.
//! The numerics follow `transformers` (float32): embeddings = word + position + token type,
//! LayerNorm; post-LN layers with exact (erf) GELU; attention scores masked with the dtype's
//! lowest value; XLM-R positions start after the padding index and skip padding.

#![allow(clippy::many_single_char_names)] // b, t, h, d, q, k, v: the attention formula's names

use std::collections::{BTreeMap, HashMap};

use candle_core::{D, DType, Device, Tensor};
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
}

fn default_type_vocab() -> usize {
    2
}
fn default_eps() -> f64 {
    1e-12
}
fn default_act() -> String {
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

#[allow(clippy::needless_pass_by_value)] // used as `map_err(candle)`
fn candle(e: candle_core::Error) -> Error {
    Error::invalid(
        format!("model computation: {e}"),
        "report this with the checkpoint's config.json",
    )
}

/// Named weights, as Hugging Face saves them.
pub struct Weights {
    map: HashMap<String, Tensor>,
    prefix: &'static str,
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
    fn encoder(&self, name: &str) -> Result<Tensor> {
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

fn missing(name: &str) -> Error {
    Error::invalid(
        format!("the checkpoint has no tensor `{name}`"),
        "evaluate a checkpoint with the head this task needs (`crossmerge show REF --tensors`)",
    )
}

/// `x·Wᵀ + b` over the last dimension. The weight is kept transposed, `(in, out)` and
/// contiguous: the matrix product reads it row by row (measured 6% faster on the CPU than
/// through a transposed view).
struct Linear {
    wt: Tensor,
    b: Option<Tensor>,
    /// The bias (zeros when the layer has none) for the fused CPU kernels.
    host_bias: Option<Vec<f32>>,
}

impl Linear {
    fn load(weights: &Weights, name: &str, encoder: bool) -> Result<Self> {
        let get = |n: &str| {
            if encoder {
                weights.encoder(n)
            } else {
                weights.head(n)
            }
        };
        Self::new(
            &get(&format!("{name}.weight"))?,
            get(&format!("{name}.bias")).ok(),
        )
    }

    /// Several layers over the same input as one: their weights stacked on the output
    /// dimension (the query, key and value projections: one matrix product instead of three).
    fn stacked(weights: &Weights, names: &[String]) -> Result<Self> {
        let mut ws = Vec::with_capacity(names.len());
        let mut bs = Vec::with_capacity(names.len());
        for n in names {
            ws.push(weights.encoder(&format!("{n}.weight"))?);
            let w = ws.last().expect("just pushed");
            bs.push(match weights.encoder(&format!("{n}.bias")) {
                Ok(b) => b,
                Err(_) => w
                    .dim(0)
                    .and_then(|o| Tensor::zeros(o, w.dtype(), w.device()))
                    .map_err(candle)?,
            });
        }
        let w = Tensor::cat(&ws, 0).map_err(candle)?;
        let b = Tensor::cat(&bs, 0).map_err(candle)?;
        Self::new(&w, Some(b))
    }

    fn new(w: &Tensor, b: Option<Tensor>) -> Result<Self> {
        let host_bias = if super::kernels::fused(w) {
            let bias = match &b {
                Some(b) => b.flatten_all().and_then(|b| b.to_vec1()),
                None => w.dim(0).map(|n| vec![0f32; n]),
            };
            Some(bias.map_err(candle)?)
        } else {
            None
        };
        let wt = w.t().and_then(|t| t.contiguous()).map_err(candle)?;
        Ok(Self { wt, b, host_bias })
    }

    fn forward(&self, x: &Tensor) -> Result<Tensor> {
        // CUDA's matmul takes only row-major (or transposed) operands: a strided view such as
        // the [CLS] rows of a batch must be copied first (a no-op when already contiguous).
        let x = x.contiguous().map_err(candle)?;
        let y = x.broadcast_matmul(&self.wt).map_err(candle)?;
        match &self.b {
            Some(b) => y.broadcast_add(b).map_err(candle),
            None => Ok(y),
        }
    }

    /// `x·Wᵀ` for rows `x` (b·t, in), the bias left to a fused kernel.
    fn product(&self, x: &Tensor) -> candle_core::Result<Tensor> {
        x.matmul(&self.wt)
    }

    fn bias(&self) -> &[f32] {
        self.host_bias
            .as_deref()
            .expect("fused kernels only run on host weights")
    }
}

struct LayerNorm {
    w: Tensor,
    b: Tensor,
    eps: f64,
    /// The weights for the fused CPU kernel (f32 on the CPU).
    fused: Option<super::kernels::NormWeights>,
}

impl LayerNorm {
    fn load(weights: &Weights, name: &str, eps: f64, encoder: bool) -> Result<Self> {
        let get = |n: &str| {
            if encoder {
                weights.encoder(n)
            } else {
                weights.head(n)
            }
        };
        let (w, b) = (
            get(&format!("{name}.weight"))?,
            get(&format!("{name}.bias"))?,
        );
        let fused = super::kernels::NormWeights::new(&w, &b).map_err(candle)?;
        Ok(Self { w, b, eps, fused })
    }

    /// Mean, centred variance, scale and shift (as torch's LayerNorm, biased variance): one
    /// fused pass on the CPU, plain ops elsewhere.
    fn forward(&self, x: &Tensor) -> Result<Tensor> {
        if let Some(fused) = self.fused.as_ref().filter(|_| x.device().is_cpu()) {
            return fused.forward(x, self.eps).map_err(candle);
        }
        let f = || -> candle_core::Result<Tensor> {
            let mean = x.mean_keepdim(D::Minus1)?;
            let centred = x.broadcast_sub(&mean)?;
            let var = centred.sqr()?.mean_keepdim(D::Minus1)?;
            let normed = centred.broadcast_div(&(var + self.eps)?.sqrt()?)?;
            normed.broadcast_mul(&self.w)?.broadcast_add(&self.b)
        };
        f().map_err(candle)
    }
}

struct Layer {
    /// Query, key and value projections stacked: `(H, 3H)`.
    qkv: Linear,
    attn_out: Linear,
    attn_norm: LayerNorm,
    inter: Linear,
    out: Linear,
    out_norm: LayerNorm,
}

/// Whether every layer has its weights on the host for the fused CPU kernels.
fn can_fuse(layers: &[Layer]) -> bool {
    layers.iter().all(|l| {
        [&l.qkv, &l.attn_out, &l.inter, &l.out]
            .iter()
            .all(|lin| lin.host_bias.is_some())
            && l.attn_norm.fused.is_some()
            && l.out_norm.fused.is_some()
    })
}

/// A BERT or XLM-R encoder.
pub struct Encoder {
    pub config: Config,
    /// Every weight is f32 on the CPU: the layers run on the fused kernels.
    fused: bool,
    word: Tensor,
    position: Tensor,
    token_type: Tensor,
    emb_norm: LayerNorm,
    layers: Vec<Layer>,
}

impl Encoder {
    pub fn load(weights: &Weights, config: &Config) -> Result<Self> {
        let eps = config.layer_norm_eps;
        let mut layers = Vec::with_capacity(config.num_hidden_layers);
        for i in 0..config.num_hidden_layers {
            let p = format!("encoder.layer.{i}");
            layers.push(Layer {
                qkv: Linear::stacked(
                    weights,
                    &["query", "key", "value"].map(|n| format!("{p}.attention.self.{n}")),
                )?,
                attn_out: Linear::load(weights, &format!("{p}.attention.output.dense"), true)?,
                attn_norm: LayerNorm::load(
                    weights,
                    &format!("{p}.attention.output.LayerNorm"),
                    eps,
                    true,
                )?,
                inter: Linear::load(weights, &format!("{p}.intermediate.dense"), true)?,
                out: Linear::load(weights, &format!("{p}.output.dense"), true)?,
                out_norm: LayerNorm::load(weights, &format!("{p}.output.LayerNorm"), eps, true)?,
            });
        }
        let fused = can_fuse(&layers);
        Ok(Self {
            config: config.clone(),
            fused,
            word: weights.encoder("embeddings.word_embeddings.weight")?,
            position: weights.encoder("embeddings.position_embeddings.weight")?,
            token_type: weights.encoder("embeddings.token_type_embeddings.weight")?,
            emb_norm: LayerNorm::load(weights, "embeddings.LayerNorm", eps, true)?,
            layers,
        })
    }

    /// The word-embedding matrix (the MLM decoder is tied to it).
    pub fn word_embeddings(&self) -> &Tensor {
        &self.word
    }

    /// Position ids as transformers makes them: 0.. for BERT; for XLM-R, the padding index +
    /// the running count of non-padding tokens, and the padding index on padding.
    fn positions(&self, ids: &[Vec<u32>]) -> Vec<u32> {
        let pad = self.config.pad_token_id.unwrap_or(1);
        ids.iter()
            .flat_map(|row| {
                let mut count = 0u32;
                row.iter()
                    .enumerate()
                    .map(|(i, &id)| {
                        if !self.config.is_roberta() {
                            i as u32
                        } else if id == pad {
                            pad
                        } else {
                            count += 1;
                            pad + count
                        }
                    })
                    .collect::<Vec<_>>()
            })
            .collect()
    }

    /// Last hidden states `(batch, len, hidden)` for token ids (rows of one length) and their
    /// attention mask (1 = token, 0 = padding).
    pub fn forward(&self, ids: &[Vec<u32>], mask: &[Vec<u32>], device: &Device) -> Result<Tensor> {
        let b = ids.len();
        let t = ids.first().map_or(0, Vec::len);
        let h = self.config.hidden_size;
        let vocab = self.config.vocab_size as u32;
        if let Some(bad) = ids.iter().flatten().find(|&&i| i >= vocab) {
            return Err(Error::invalid(
                format!("token id {bad} is outside the model's vocabulary of {vocab}"),
                "the tokenizer does not fit this checkpoint's embeddings",
            ));
        }
        if t > self.config.max_position_embeddings - usize::from(self.config.is_roberta()) * 2 {
            return Err(Error::invalid(
                format!("a sequence of {t} tokens is longer than the model's positions"),
                "lower --max-length",
            ));
        }
        let f = || -> candle_core::Result<Tensor> {
            let flat: Vec<u32> = ids.iter().flatten().copied().collect();
            let idx = Tensor::from_vec(flat, b * t, device)?;
            let pos = Tensor::from_vec(self.positions(ids), b * t, device)?;
            let tt = Tensor::zeros(b * t, DType::U32, device)?;
            let x = self
                .word
                .index_select(&idx, 0)?
                .add(&self.position.index_select(&pos, 0)?)?
                .add(&self.token_type.index_select(&tt, 0)?)?
                .reshape((b, t, h))?;
            Ok(x)
        };
        let x = self.emb_norm.forward(&f().map_err(candle)?)?;
        // Additive mask: 0 on tokens, the lowest f32 on padding, as transformers does.
        let bias: Vec<f32> = mask
            .iter()
            .flatten()
            .map(|&m| if m == 0 { f32::MIN } else { 0.0 })
            .collect();
        if self.fused && device.is_cpu() {
            self.layers_fused(&x, &bias, b, t)
        } else {
            self.layers_plain(x, bias, b, t, device)
        }
    }

    /// Turns the fused CPU kernels off (on) for the layers: the plain-op path is the one
    /// other devices run; tests compare the two.
    pub fn set_fused(&mut self, on: bool) {
        self.fused = on && can_fuse(&self.layers);
    }

    /// The layers in plain candle ops (any device).
    fn layers_plain(
        &self,
        mut x: Tensor,
        bias: Vec<f32>,
        b: usize,
        t: usize,
        device: &Device,
    ) -> Result<Tensor> {
        let h = self.config.hidden_size;
        let bias = Tensor::from_vec(bias, (b, 1, 1, t), device).map_err(candle)?;
        let heads = self.config.num_attention_heads;
        let d = h / heads;
        let scale = 1.0 / (d as f64).sqrt();
        for layer in &self.layers {
            let split = |y: Tensor| -> candle_core::Result<Tensor> {
                y.reshape((b, t, heads, d))?.transpose(1, 2)?.contiguous()
            };
            let qkv = layer.qkv.forward(&x)?;
            let part = |i: usize| qkv.narrow(D::Minus1, i * h, h).and_then(split);
            let (q, k, v) = (
                part(0).map_err(candle)?,
                part(1).map_err(candle)?,
                part(2).map_err(candle)?,
            );
            let attn = || -> candle_core::Result<Tensor> {
                let scores = (q.matmul(&k.t()?)? * scale)?.broadcast_add(&bias)?;
                let max = scores.max_keepdim(D::Minus1)?;
                let e = scores.broadcast_sub(&max)?.exp()?;
                let p = e.broadcast_div(&e.sum_keepdim(D::Minus1)?)?;
                p.matmul(&v)?.transpose(1, 2)?.reshape((b, t, h))
            };
            let ctx = attn().map_err(candle)?;
            let a = layer
                .attn_norm
                .forward(&(layer.attn_out.forward(&ctx)? + &x).map_err(candle)?)?;
            let inter = layer.inter.forward(&a)?.gelu_erf().map_err(candle)?;
            x = layer
                .out_norm
                .forward(&(layer.out.forward(&inter)? + &a).map_err(candle)?)?;
        }
        Ok(x)
    }

    /// The layers on the CPU: the same computation with every element-wise step fused into
    /// the pass after its matrix product (`super::kernels`), rows `(b·t, H)` throughout.
    fn layers_fused(&self, x: &Tensor, mask: &[f32], b: usize, t: usize) -> Result<Tensor> {
        use super::kernels::{attention, bias_gelu, bias_residual_norm};
        let h = self.config.hidden_size;
        let heads = self.config.num_attention_heads;
        let scale = 1.0 / ((h / heads) as f64).sqrt();
        let eps = self.config.layer_norm_eps;
        let f = || -> candle_core::Result<Tensor> {
            let mut x = x.reshape((b * t, h))?;
            for l in &self.layers {
                let ctx = attention(
                    &l.qkv.product(&x)?,
                    l.qkv.bias(),
                    mask,
                    (b, t, heads),
                    scale,
                )?;
                let a = bias_residual_norm(
                    l.attn_out.product(&ctx)?,
                    l.attn_out.bias(),
                    &x,
                    l.attn_norm.fused.as_ref().expect("checked at load"),
                    eps,
                )?;
                let inter = bias_gelu(l.inter.product(&a)?, l.inter.bias())?;
                x = bias_residual_norm(
                    l.out.product(&inter)?,
                    l.out.bias(),
                    &a,
                    l.out_norm.fused.as_ref().expect("checked at load"),
                    eps,
                )?;
            }
            x.reshape((b, t, h))
        };
        f().map_err(candle)
    }
}

/// A task head over the encoder's hidden states.
pub struct Head(Layers);

enum Layers {
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
        match &self.0 {
            Layers::MaskedLm {
                dense,
                norm,
                decoder,
                bias,
            } => {
                let x =
                    norm.forward(&super::kernels::gelu(&dense.forward(hidden)?).map_err(candle)?)?;
                x.broadcast_matmul(&decoder.t().map_err(candle)?)
                    .and_then(|y| y.broadcast_add(bias))
                    .map_err(candle)
            }
            Layers::Token { classifier } => classifier.forward(hidden),
            Layers::BertSequence { pooler, classifier } => {
                let cls = hidden
                    .narrow(1, 0, 1)
                    .and_then(|c| c.squeeze(1))
                    .map_err(candle)?;
                classifier.forward(&pooler.forward(&cls)?.tanh().map_err(candle)?)
            }
            Layers::RobertaSequence { dense, out_proj } => {
                let cls = hidden
                    .narrow(1, 0, 1)
                    .and_then(|c| c.squeeze(1))
                    .map_err(candle)?;
                out_proj.forward(&dense.forward(&cls)?.tanh().map_err(candle)?)
            }
        }
    }
}
