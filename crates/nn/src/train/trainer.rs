//! The training loop of transformers' `Trainer`, on candle's autograd: seeded shuffling per
//! epoch, micro-batches with gradient accumulation, the loss of the task's head, clipping,
//! `AdamW` on the linear schedule ([`super::optim`]), dropout as config.json says.
//!
//! Everything random is a pure function of the seed and the step ([`crate::rng`]): the order
//! of epoch e, the masks of text i in epoch e, the dropout of micro-batch j of step k. So the
//! state a run needs to continue is only its weights, the optimizer's moments and the step
//! ([`Trainer::state`]), and a resumed run repeats the bits of an uninterrupted one.
//!
//! The encoder and head are rebuilt from the variables for every micro-batch: they derive
//! tensors at load (Q/K/V stacked, weights transposed), and the gradients flow through those
//! derivations to the variables.

use std::collections::HashMap;
use std::sync::Arc;

use candle_core::{D, DType, Device, Tensor, Var};
use serde::{Deserialize, Serialize};
use tokenizers::Tokenizer;

use super::data::{Dataset, Example, Target};
use super::masking::Masking;
use super::optim::{AdamW, AdamWConfig, LinearSchedule, grad_norm};
use super::state;
pub use super::state::Trained;
use crate::error::{Error, Result};
use crate::model::{Config, Dropout, Encoder, Head, HeadKind, Weights};
use crate::parser::{Parser, ParserConfig};
use crate::rng::mix;
use crate::run::Model;

/// Which weights stay as they are.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Freeze {
    /// Everything trains.
    #[default]
    None,
    /// The embeddings (word, position, token type and their LayerNorm) stay.
    Embeddings,
    /// The whole encoder stays: only the head trains.
    Encoder,
}

impl Freeze {
    fn keeps(self, name: &str) -> bool {
        let bare = name
            .strip_prefix("bert.")
            .or_else(|| name.strip_prefix("roberta."))
            .unwrap_or(name);
        match self {
            Freeze::None => false,
            Freeze::Embeddings => bare.starts_with("embeddings."),
            Freeze::Encoder => bare.starts_with("embeddings.") || bare.starts_with("encoder."),
        }
    }
}

/// A run's settings (transformers' `TrainingArguments` defaults).
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Options {
    pub epochs: u64,
    /// Stops after this many optimizer steps (overrides `epochs`, as in transformers).
    pub max_steps: Option<u64>,
    pub lr: f64,
    pub warmup_ratio: f64,
    pub weight_decay: f64,
    pub batch_size: usize,
    pub grad_accum: usize,
    pub max_grad_norm: f64,
    pub seed: u64,
    pub freeze: Freeze,
    /// Dropout at config.json's rates (off: every forward pass is deterministic in the
    /// weights alone, as the parity fixtures need).
    pub dropout: bool,
}

impl Default for Options {
    fn default() -> Self {
        Self {
            epochs: 3,
            max_steps: None,
            lr: 5e-5,
            warmup_ratio: 0.0,
            weight_decay: 0.0,
            batch_size: 8,
            grad_accum: 1,
            max_grad_norm: 1.0,
            seed: 42,
            freeze: Freeze::None,
            dropout: true,
        }
    }
}

/// What a model is trained for: one of the model's heads, or the biaffine parser.
#[derive(Clone, Debug)]
pub enum Objective {
    Head(HeadKind),
    Parser(ParserConfig),
}

/// One optimizer step, done.
#[derive(Clone, Copy, Debug, PartialEq, Serialize)]
pub struct Step {
    /// Steps done (1 after the first).
    pub step: u64,
    pub epoch: u64,
    /// Mean loss over the step's micro-batches.
    pub loss: f64,
    pub lr: f64,
    /// The gradients' global norm before clipping.
    pub grad_norm: f64,
    /// Tokens (padding excluded) the step read.
    pub tokens: u64,
}

/// Stream constants of the trainer's draws.
const SHUFFLE: u64 = 0x2545_F491_4F6C_DD1D;
const DROPOUT: u64 = 0x9FB2_1C65_1E98_DF25;

#[allow(clippy::needless_pass_by_value)] // used as `map_err(candle)`
fn candle(e: candle_core::Error) -> Error {
    Error::invalid(
        format!("training computation: {e}"),
        "report this with the training settings",
    )
}

/// Mean cross-entropy of `logits` `(m, C)` against `targets` (log-sum-exp minus the target's
/// logit, as `torch.nn.functional.cross_entropy`).
fn cross_entropy(logits: &Tensor, targets: Vec<u32>) -> candle_core::Result<Tensor> {
    let m = targets.len();
    let max = logits.max_keepdim(D::Minus1)?.detach();
    let shifted = logits.broadcast_sub(&max)?;
    let lse = shifted.exp()?.sum_keepdim(D::Minus1)?.log()?;
    let idx = Tensor::from_vec(targets, (m, 1), logits.device())?;
    let picked = shifted.gather(&idx, D::Minus1)?;
    (lse - picked)?.mean_all()
}

/// The training of one model.
pub struct Trainer {
    config: Config,
    objective: Objective,
    /// Trainable weights, by name (sorted).
    params: Vec<(String, Var)>,
    /// Frozen weights.
    fixed: Vec<(String, Tensor)>,
    optimizer: AdamW,
    schedule: LinearSchedule,
    options: Options,
    data: Dataset,
    masking: Option<Masking>,
    device: Device,
    pad: u32,
    /// The shuffled order of one epoch, cached.
    order: Option<(u64, Vec<usize>)>,
}

impl Trainer {
    /// `tensors`: every weight of the model to train, its head included, as f32 on `device`.
    /// `config` is the trained model's (labels included). `masking` is needed for the masked
    /// LM.
    pub fn new(
        tensors: Vec<(String, Tensor)>,
        config: Config,
        objective: Objective,
        data: Dataset,
        options: Options,
        masking: Option<Masking>,
        device: Device,
    ) -> Result<Self> {
        if data.examples.is_empty() {
            return Err(Error::invalid(
                "the training data has no example to train on",
                "give a training file with at least one sentence (text, pair)",
            ));
        }
        if options.batch_size == 0 || options.grad_accum == 0 {
            return Err(Error::invalid(
                "--batch-size and --grad-accum must be at least 1",
                "the defaults are 8 and 1",
            ));
        }
        let lr_ok = options.lr.is_finite() && options.lr >= 0.0;
        let decay_ok = options.weight_decay.is_finite() && options.weight_decay >= 0.0;
        if !lr_ok || !decay_ok || !(0.0..=1.0).contains(&options.warmup_ratio) {
            return Err(Error::invalid(
                format!(
                    "--lr {}, --warmup-ratio {} or --weight-decay {} is out of range",
                    options.lr, options.warmup_ratio, options.weight_decay
                ),
                "the learning rate and weight decay are finite and ≥ 0, the warm-up ratio in [0, 1]",
            ));
        }
        let mut tensors = tensors;
        tensors.sort_by(|a, b| a.0.cmp(&b.0));
        let mut params = Vec::new();
        let mut fixed = Vec::new();
        for (name, t) in tensors {
            let t = t.to_dtype(DType::F32).map_err(candle)?;
            if options.freeze.keeps(&name) {
                fixed.push((name, t));
            } else {
                params.push((name, Var::from_tensor(&t).map_err(candle)?));
            }
        }
        let optimizer = AdamW::new(
            params.clone(),
            AdamWConfig::new(options.lr, options.weight_decay),
        )?;
        let micro = data.examples.len().div_ceil(options.batch_size) as u64;
        let per_epoch = micro.div_ceil(options.grad_accum as u64);
        let total = options.max_steps.unwrap_or(per_epoch * options.epochs);
        if total == 0 {
            return Err(Error::invalid(
                "the run has no step to take",
                "give --epochs or --max-steps of at least 1",
            ));
        }
        let schedule = LinearSchedule {
            warmup_steps: (total as f64 * options.warmup_ratio).ceil() as u64,
            total_steps: total,
        };
        let pad = config.pad_token_id.unwrap_or(0);
        Ok(Self {
            config,
            objective,
            params,
            fixed,
            optimizer,
            schedule,
            options,
            data,
            masking,
            device,
            pad,
            order: None,
        })
    }

    pub fn total_steps(&self) -> u64 {
        self.schedule.total_steps
    }

    pub fn steps_done(&self) -> u64 {
        self.optimizer.steps()
    }

    pub fn options(&self) -> &Options {
        &self.options
    }

    pub fn config(&self) -> &Config {
        &self.config
    }

    fn micro_per_epoch(&self) -> u64 {
        self.data.examples.len().div_ceil(self.options.batch_size) as u64
    }

    /// Optimizer steps in one pass over the data.
    pub fn steps_per_epoch(&self) -> u64 {
        self.micro_per_epoch()
            .div_ceil(self.options.grad_accum as u64)
    }

    /// Epoch `epoch`'s order of the examples: a Fisher–Yates shuffle seeded by (seed, epoch).
    fn order(&mut self, epoch: u64) -> &[usize] {
        if self.order.as_ref().is_none_or(|(e, _)| *e != epoch) {
            let n = self.data.examples.len();
            let mut v: Vec<usize> = (0..n).collect();
            let base = mix(self.options.seed ^ SHUFFLE ^ mix(epoch.wrapping_add(1)));
            for i in (1..n).rev() {
                let j = (mix(base ^ i as u64) % (i as u64 + 1)) as usize;
                v.swap(i, j);
            }
            self.order = Some((epoch, v));
        }
        &self.order.as_ref().expect("set above").1
    }

    fn weights(&self, detach: bool) -> Weights {
        let mut map: HashMap<String, Tensor> = HashMap::new();
        for (n, v) in &self.params {
            let t = v.as_tensor();
            map.insert(n.clone(), if detach { t.detach() } else { t.clone() });
        }
        for (n, t) in &self.fixed {
            map.insert(n.clone(), t.clone());
        }
        Weights::new(map, &self.config)
    }

    /// The loss of one micro-batch (and its tokens); `None` when it has nothing to score
    /// (masked LM texts where no token was chosen, parser sentences with every head cut).
    pub fn loss(
        &self,
        batch: &[(usize, &Example)],
        epoch: u64,
        dropout: Option<&Arc<Dropout>>,
    ) -> Result<Option<(Tensor, u64)>> {
        let weights = self.weights(false);
        let mut encoder = Encoder::load(&weights, &self.config)?;
        encoder.set_dropout(dropout.cloned());
        let t = batch.iter().map(|(_, e)| e.ids.len()).max().unwrap_or(0);
        let tokens: u64 = batch.iter().map(|(_, e)| e.ids.len() as u64).sum();
        let mut ids: Vec<Vec<u32>> = Vec::with_capacity(batch.len());
        let mut targets: Vec<u32> = Vec::new();
        let mut rows: Vec<u32> = Vec::new();
        for (s, (index, e)) in batch.iter().enumerate() {
            let mut row = e.ids.clone();
            match &e.target {
                Target::Tokens(labels) => {
                    for (p, l) in labels.iter().enumerate() {
                        if let Some(l) = l {
                            rows.push((s * t + p) as u32);
                            targets.push(*l);
                        }
                    }
                }
                Target::Sequence(l) => targets.push(*l),
                Target::Text { special, words } => {
                    let m = self.masking.as_ref().ok_or_else(|| {
                        Error::invalid("masked-LM training needs a mask token", "report this")
                    })?;
                    let masked = m.apply(
                        &e.ids,
                        special,
                        words,
                        self.options.seed,
                        epoch,
                        *index as u64,
                    );
                    for (p, l) in masked.labels.iter().enumerate() {
                        if let Some(l) = l {
                            rows.push((s * t + p) as u32);
                            targets.push(*l);
                        }
                    }
                    row = masked.ids;
                }
                Target::Tree { .. } => {}
            }
            row.resize(t, self.pad);
            ids.push(row);
        }
        let mask: Vec<Vec<u32>> = batch
            .iter()
            .map(|(_, e)| (0..t).map(|i| u32::from(i < e.ids.len())).collect())
            .collect();
        let hidden = encoder.forward(&ids, &mask, &self.device)?;
        let (b, _, h) = hidden.dims3().map_err(candle)?;
        let loss = match &self.objective {
            Objective::Head(kind) => {
                let head = Head::load(&weights, &encoder, *kind)?;
                match kind {
                    HeadKind::Sequence => {
                        let logits = head.forward_train(&hidden, dropout.map(AsRef::as_ref))?;
                        Some(cross_entropy(&logits, targets).map_err(candle)?)
                    }
                    HeadKind::Token | HeadKind::MaskedLm => {
                        if rows.is_empty() {
                            return Ok(None);
                        }
                        let m = rows.len();
                        let idx = Tensor::from_vec(rows, m, &self.device).map_err(candle)?;
                        let picked = hidden
                            .reshape((b * t, h))
                            .and_then(|x| x.index_select(&idx, 0))
                            .and_then(|x| x.unsqueeze(0))
                            .map_err(candle)?;
                        // The head on the scored positions only: per position it is the same
                        // map (dropout included), and a vocabulary projection of every
                        // position would be b·t·V floats.
                        let logits = head
                            .forward_train(&picked, dropout.map(AsRef::as_ref))?
                            .squeeze(0)
                            .map_err(candle)?;
                        Some(cross_entropy(&logits, targets).map_err(candle)?)
                    }
                }
            }
            Objective::Parser(pc) => {
                let parser = Parser::load(&weights, pc.clone())?;
                self.parser_loss(&parser, &hidden, batch)?
            }
        };
        Ok(loss.map(|l| (l, tokens)))
    }

    /// The parser's loss: cross-entropy of each word's gold head over `[ROOT]` and the
    /// sentence's words, plus cross-entropy of its gold relation on the gold arc.
    fn parser_loss(
        &self,
        parser: &Parser,
        hidden: &Tensor,
        batch: &[(usize, &Example)],
    ) -> Result<Option<Tensor>> {
        let trees: Vec<_> = batch
            .iter()
            .map(|(_, e)| match &e.target {
                Target::Tree {
                    ranges,
                    heads,
                    relations,
                } => Ok((ranges, heads, relations)),
                _ => Err(Error::invalid("a parser trains on trees", "report this")),
            })
            .collect::<Result<_>>()?;
        let words: Vec<Vec<Option<std::ops::Range<usize>>>> = trees
            .iter()
            .map(|(r, _, _)| r.iter().cloned().map(Some).collect())
            .collect();
        let n = words.iter().map(Vec::len).max().unwrap_or(0);
        let b = batch.len();
        let (arc, rel) = parser.scores(hidden, &words, &self.device)?;
        let mut arc_rows = Vec::new();
        let mut arc_targets = Vec::new();
        let mut rel_rows = Vec::new();
        let mut rel_targets = Vec::new();
        let mut bias = vec![0f32; b * (n + 1)];
        for (s, (ranges, heads, relations)) in trees.iter().enumerate() {
            for j in ranges.len() + 1..=n {
                bias[s * (n + 1) + j] = -1e9;
            }
            for (w, (head, r)) in heads.iter().zip(relations.iter()).enumerate() {
                let Some(head) = head else { continue };
                let i = w + 1;
                arc_rows.push((s * (n + 1) + i) as u32);
                arc_targets.push(*head as u32);
                rel_rows.push(((s * (n + 1) + i) * (n + 1) + head) as u32);
                rel_targets.push(*r);
            }
        }
        if arc_rows.is_empty() {
            return Ok(None);
        }
        let f = || -> candle_core::Result<Tensor> {
            let l = rel.dim(1)?;
            let bias = Tensor::from_vec(bias, (b, 1, n + 1), &self.device)?;
            let arc = arc.broadcast_add(&bias)?.reshape((b * (n + 1), n + 1))?;
            let m = arc_rows.len();
            let arc = arc.index_select(&Tensor::from_vec(arc_rows, m, &self.device)?, 0)?;
            let rel = rel
                .permute((0, 2, 3, 1))?
                .contiguous()?
                .reshape((b * (n + 1) * (n + 1), l))?
                .index_select(&Tensor::from_vec(rel_rows, m, &self.device)?, 0)?;
            cross_entropy(&arc, arc_targets)? + cross_entropy(&rel, rel_targets)?
        };
        Ok(Some(f().map_err(candle)?))
    }

    /// Takes the next optimizer step: the next `grad_accum` micro-batches of the epoch's
    /// order. A loss or gradient that is not finite stops the run with an error naming the
    /// step.
    pub fn step(&mut self) -> Result<Step> {
        let k = self.optimizer.steps();
        let per_epoch = self.steps_per_epoch();
        let (epoch, group) = (k / per_epoch, k % per_epoch);
        let micro = self.micro_per_epoch();
        let accum = self.options.grad_accum as u64;
        let first = group * accum;
        let last = (first + accum).min(micro);
        let bs = self.options.batch_size;
        let order = self.order(epoch);
        let batches: Vec<Vec<usize>> = (first..last)
            .map(|mb| {
                let start = mb as usize * bs;
                order[start..(start + bs).min(order.len())].to_vec()
            })
            .collect();
        self.step_on(epoch, &batches)
    }

    /// One optimizer step on the given micro-batches (indexes into the data), their
    /// gradients summed, each loss divided by their number.
    pub fn step_on(&mut self, epoch: u64, batches: &[Vec<usize>]) -> Result<Step> {
        let k = self.optimizer.steps();
        let n_micro = batches.len().max(1) as f64;
        let mut grads: Vec<Option<Tensor>> = vec![None; self.params.len()];
        let (mut loss_sum, mut tokens) = (0f64, 0u64);
        for (j, indexes) in batches.iter().enumerate() {
            let owned = indexes
                .iter()
                .map(|&i| Ok((i, self.data.examples.get(i)?)))
                .collect::<Result<Vec<_>>>()?;
            let batch: Vec<(usize, &Example)> =
                owned.iter().map(|(i, e)| (*i, e.as_ref())).collect();
            let dropout = self.options.dropout.then(|| {
                let hidden = self.config.hidden_dropout_prob.unwrap_or(0.1);
                Arc::new(Dropout::new(
                    hidden,
                    self.config.attention_probs_dropout_prob.unwrap_or(0.1),
                    self.config.classifier_dropout.unwrap_or(hidden),
                    mix(self.options.seed ^ DROPOUT ^ mix(k) ^ mix(j as u64).rotate_left(23)),
                ))
            });
            let Some((loss, t)) = self.loss(&batch, epoch, dropout.as_ref())? else {
                continue;
            };
            tokens += t;
            let value = f64::from(loss.to_scalar::<f32>().map_err(candle)?);
            if !value.is_finite() {
                return Err(nan(k + 1, "loss", value));
            }
            loss_sum += value / n_micro;
            let g = (loss / n_micro)
                .and_then(|l| l.backward())
                .map_err(candle)?;
            for ((_, var), acc) in self.params.iter().zip(grads.iter_mut()) {
                if let Some(g) = g.get(var.as_tensor()) {
                    *acc = Some(match acc.take() {
                        Some(a) => (a + g).map_err(candle)?,
                        None => g.clone(),
                    });
                }
            }
        }
        let (grad_norm, coef) = grad_norm(&grads, self.options.max_grad_norm)?;
        if !grad_norm.is_finite() {
            return Err(nan(k + 1, "gradient norm", grad_norm));
        }
        let lr = self.options.lr * self.schedule.factor(k);
        self.optimizer.step_scaled(&grads, coef, lr)?;
        Ok(Step {
            step: k + 1,
            epoch,
            loss: loss_sum,
            lr,
            grad_norm,
            tokens,
        })
    }

    /// Every weight of the model as it stands, by name: (name, shape, f32 values).
    pub fn tensors(&self) -> Result<Vec<Trained>> {
        let mut out: Vec<Trained> = self
            .params
            .iter()
            .map(|(n, v)| (n, v.as_tensor()))
            .chain(self.fixed.iter().map(|(n, t)| (n, t)))
            .map(|(n, t)| {
                let values = t.flatten_all().and_then(|x| x.to_vec1()).map_err(candle)?;
                Ok((n.clone(), t.dims().to_vec(), values))
            })
            .collect::<Result<_>>()?;
        out.sort_by(|a, b| a.0.cmp(&b.0));
        Ok(out)
    }

    /// The model as it stands, for evaluation (no dropout, fused kernels where they apply).
    pub fn model(&self, tokenizer: Tokenizer) -> Result<Model> {
        let weights = self.weights(true);
        let encoder = Encoder::load(&weights, &self.config)?;
        let (head, parser) = match &self.objective {
            Objective::Head(kind) => (Some(Head::load(&weights, &encoder, *kind)?), None),
            Objective::Parser(pc) => (None, Some(Parser::load(&weights, pc.clone())?)),
        };
        Ok(Model {
            config: self.config.clone(),
            encoder,
            head,
            parser,
            tokenizer,
            device: self.device.clone(),
        })
    }

    /// The training state as one safetensors file: weights, moments and the step, with
    /// `extra` (the caller's bookkeeping: losses, dev scores) in its metadata.
    pub fn state(&self, extra: &serde_json::Value) -> Result<Vec<u8>> {
        let mut tensors: Vec<(String, Tensor)> = Vec::new();
        for ((name, var), (m, v)) in self.params.iter().zip(self.optimizer.moments()) {
            tensors.push((format!("param/{name}"), var.as_tensor().clone()));
            tensors.push((format!("m/{name}"), m.clone()));
            tensors.push((format!("v/{name}"), v.clone()));
        }
        let meta = serde_json::json!({
            "step": self.optimizer.steps(),
            "options": self.options,
            "extra": extra,
        });
        state::encode(&tensors, &meta)
    }

    /// Restores a state [`Trainer::state`] wrote; returns its `extra`.
    pub fn restore(&mut self, bytes: &[u8]) -> Result<serde_json::Value> {
        let (mut tensors, meta) = state::decode(bytes, &self.device)?;
        let options: Options = serde_json::from_value(meta["options"].clone())
            .map_err(|e| state::corrupt(&e.to_string()))?;
        if options != self.options {
            return Err(Error::invalid(
                "the saved training state was made with other settings",
                "resume with the settings the run started with, or start again without --resume",
            ));
        }
        let step = meta["step"]
            .as_u64()
            .ok_or_else(|| state::corrupt("no step"))?;
        let mut moments = Vec::with_capacity(self.params.len());
        for (name, var) in &self.params {
            let mut take = |kind: &str| {
                tensors
                    .remove(&format!("{kind}/{name}"))
                    .ok_or_else(|| state::corrupt(&format!("no {kind}/{name}")))
            };
            let p = take("param")?;
            let (m, v) = (take("m")?, take("v")?);
            if p.shape() != var.as_tensor().shape() {
                return Err(state::corrupt(&format!("`{name}` has another shape")));
            }
            var.set(&p).map_err(candle)?;
            moments.push((m, v));
        }
        self.optimizer.restore(step, moments)?;
        Ok(meta["extra"].clone())
    }
}

fn nan(step: u64, what: &str, value: f64) -> Error {
    Error::invalid(
        format!("the {what} is {value} at step {step}: training stopped there"),
        "lower --lr (the defaults are transformers': 5e-5), or check the data; nothing was registered",
    )
}
