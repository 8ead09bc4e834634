//! The BERT / XLM-RoBERTa encoder: embeddings and post-LN transformer layers.

#![allow(clippy::many_single_char_names)] // b, t, h, d, q, k, v: the attention formula's names

use candle_core::{D, DType, Device, Tensor};

use super::layers::{LayerNorm, Linear};
use super::{Config, Weights, candle};
use crate::error::{Error, Result};
use crate::kernels::grad;

pub(super) struct Layer {
    /// Query, key and value projections stacked: `(H, 3H)`.
    pub(super) qkv: Linear,
    pub(super) attn_out: Linear,
    pub(super) attn_norm: LayerNorm,
    pub(super) inter: Linear,
    pub(super) out: Linear,
    pub(super) out_norm: LayerNorm,
}

/// Whether every layer has its weights on the host for the fused CPU kernels.
pub(super) fn can_fuse(layers: &[Layer]) -> bool {
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
    pub(super) fused: bool,
    pub(super) word: Tensor,
    pub(super) position: Tensor,
    pub(super) token_type: Tensor,
    pub(super) emb_norm: LayerNorm,
    pub(super) layers: Vec<Layer>,
    /// Training: dropout on (the plain-op path runs).
    pub(super) dropout: Option<std::sync::Arc<super::Dropout>>,
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
            dropout: None,
        })
    }

    /// The word-embedding matrix (the MLM decoder is tied to it).
    pub fn word_embeddings(&self) -> &Tensor {
        &self.word
    }

    /// Position ids as transformers makes them: 0.. for BERT; for XLM-R, the padding index +
    /// the running count of non-padding tokens, and the padding index on padding.
    pub(super) fn positions(&self, ids: &[Vec<u32>]) -> Vec<u32> {
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
                .add(&self.token_type.index_select(&tt, 0)?)?;
            Ok(x)
        };
        let mut x = self.emb_norm.forward(&f().map_err(candle)?)?;
        if let Some(d) = &self.dropout {
            x = d.apply(&x, d.hidden).map_err(candle)?;
        }
        // Additive mask: 0 on tokens, the lowest f32 on padding, as transformers does.
        let bias: Vec<f32> = mask
            .iter()
            .flatten()
            .map(|&m| if m == 0 { f32::MIN } else { 0.0 })
            .collect();
        if self.fused && device.is_cpu() && self.dropout.is_none() {
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

    /// Training: dropout in every forward pass from now on (`None`: off, as in evaluation).
    pub fn set_dropout(&mut self, dropout: Option<std::sync::Arc<super::Dropout>>) {
        self.dropout = dropout;
    }

    /// The layers in plain candle ops (any device), on the embeddings' rows `(b·t, H)`, kept
    /// as rows throughout: in training every reshape is a node of the autograd graph, whose
    /// backward pass costs a zero tensor and an add of its size.
    pub(super) fn layers_plain(
        &self,
        mut x: Tensor,
        bias: Vec<f32>,
        b: usize,
        t: usize,
        device: &Device,
    ) -> Result<Tensor> {
        let h = self.config.hidden_size;
        let host = device.is_cpu().then(|| std::sync::Arc::new(bias.clone()));
        let bias = Tensor::from_vec(bias, (b, 1, 1, t), device).map_err(candle)?;
        let heads = self.config.num_attention_heads;
        let scale = 1.0 / ((h / heads) as f64).sqrt();
        for layer in &self.layers {
            let qkv = layer.qkv.forward(&x)?;
            let ctx = match host.as_ref().filter(|_| grad::applies(&qkv)) {
                // On the CPU, the whole attention as one op with a backward pass.
                Some(mask) => {
                    let dropout = self.dropout.as_ref().and_then(|d| d.site(d.attention));
                    grad::self_attention(&qkv, mask.clone(), (t, heads), scale, dropout)
                        .map_err(candle)?
                }
                None => self.attention_plain(&qkv, &bias, (b, t, heads), scale)?,
            };
            let hidden = self.dropout.as_deref().map(|d| (d, d.hidden));
            let a = layer
                .attn_norm
                .forward(&(layer.attn_out.forward_dropped(&ctx, hidden)? + &x).map_err(candle)?)?;
            let inter = layer.inter.forward_gelu(&a)?;
            x = layer
                .out_norm
                .forward(&(layer.out.forward_dropped(&inter, hidden)? + &a).map_err(candle)?)?;
        }
        x.reshape((b, t, h)).map_err(candle)
    }

    /// Self-attention in candle's ops (devices other than the CPU) from rows `(b·t, 3H)`: the
    /// heads split out, scaled and masked scores, softmax, dropout, the weighted values, heads
    /// merged into rows `(b·t, H)`.
    fn attention_plain(
        &self,
        qkv: &Tensor,
        bias: &Tensor,
        (b, t, heads): (usize, usize, usize),
        scale: f64,
    ) -> Result<Tensor> {
        let h = self.config.hidden_size;
        let d = h / heads;
        let f = || -> candle_core::Result<Tensor> {
            let part = |i: usize| {
                qkv.narrow(D::Minus1, i * h, h)?
                    .reshape((b, t, heads, d))?
                    .transpose(1, 2)?
                    .contiguous()
            };
            let (q, k, v) = (part(0)?, part(1)?, part(2)?);
            let scores = (q.matmul(&k.t()?)? * scale)?.broadcast_add(bias)?;
            let max = scores.max_keepdim(D::Minus1)?;
            let e = scores.broadcast_sub(&max)?.exp()?;
            let mut p = e.broadcast_div(&e.sum_keepdim(D::Minus1)?)?;
            if let Some(d) = &self.dropout {
                p = d.apply(&p, d.attention)?;
            }
            p.matmul(&v)?.transpose(1, 2)?.reshape((b * t, h))
        };
        f().map_err(candle)
    }

    /// The layers on the CPU: the same computation with every element-wise step fused into
    /// the pass after its matrix product (`crate::kernels`), rows `(b·t, H)` throughout.
    pub(super) fn layers_fused(
        &self,
        x: &Tensor,
        mask: &[f32],
        b: usize,
        t: usize,
    ) -> Result<Tensor> {
        use crate::kernels::{attention, bias_gelu, bias_residual_norm};
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
