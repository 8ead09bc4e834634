//! Training (issue 12): fine-tuning the encoders of [`crate::model`] on a language (masked LM)
//! or a task (POS, NER, NLI, dependency parsing). What it trains is registered by the crate
//! above through `crossmerge-core`'s one checkpoint writer (`Registry::register_tensors`), so
//! this crate stays below the registry.
//!
//! The pieces: [`data`] (training examples: files read by `eval`'s readers, tokenized and
//! aligned as `eval` aligns; masked-LM text streamed from its file), [`masking`] (masked-LM
//! inputs as transformers' collators make them, seeded per epoch), [`heads`] (new heads and
//! the trained model's config.json as transformers makes them), [`optim`] (gradient
//! clipping, `AdamW` and the linear schedule, checked against torch), [`trainer`] (the loop:
//! shuffling, micro-batches, each head's loss, dropout, state to save and restore). The
//! `train` command and the registry side are in the crate above (`crossmerge::train`).

pub mod data;
pub mod heads;
pub mod masking;
pub mod optim;
#[cfg(test)]
mod parity;
pub mod state;
pub mod trainer;

pub use trainer::{Freeze, Objective, Options, Step, Trainer};

/// Keeps the memory that a training step frees in the process for the next step, instead of
/// handing it back to the kernel. Every step allocates and frees the same large buffers
/// (activations and gradients, megabytes each); with glibc's defaults many of them are mapped
/// and unmapped, or trimmed off the heap, each time, and the page faults, zeroing and TLB
/// shootdowns that follow took a fifth of a step on e5-small (with it: 1.2× the tokens/s,
/// `cargo xtask bench --suite train`). Blocks up to 32 MiB then come from the heap, which is
/// trimmed only above 2 GiB free. Process-wide; a no-op off glibc.
pub fn retain_freed_memory() {
    #[cfg(all(target_os = "linux", target_env = "gnu"))]
    #[allow(unsafe_code)]
    // SAFETY: `mallopt` sets two of glibc's allocator parameters under its own lock; it reads
    // and writes no memory of ours, and any value is valid (a refused one returns 0).
    unsafe {
        libc::mallopt(libc::M_MMAP_THRESHOLD, 32 << 20);
        libc::mallopt(libc::M_TRIM_THRESHOLD, libc::c_int::MAX);
    }
}

/// The encoders and heads of [`crate::model`] are differentiable as they stand when their
/// weights are candle variables (the fused CPU kernels, which record no backward pass, step
/// aside for tensors in an autograd graph): on a real batch every trainable tensor of a tiny
/// BERT and a tiny XLM-R with a token-classification head gets a gradient that is not all
/// zeros, and a step against it lowers the loss.
#[cfg(test)]
#[allow(clippy::many_single_char_names)] // h, i, b, t, c: the model's dimensions
mod tests {
    use std::collections::HashMap;

    use candle_core::{D, DType, Device, Tensor, Var};

    use crate::model::{Config, Encoder, Head, HeadKind, Weights};

    fn config(model_type: &str) -> Config {
        let json = serde_json::json!({
            "model_type": model_type,
            "vocab_size": 40,
            "hidden_size": 8,
            "num_hidden_layers": 2,
            "num_attention_heads": 2,
            "intermediate_size": 16,
            "max_position_embeddings": 24,
            "type_vocab_size": 1,
            "layer_norm_eps": 1e-12,
            "pad_token_id": 1,
            "hidden_act": "gelu",
            "id2label": {"0": "A", "1": "B", "2": "C"},
        });
        Config::parse(json.to_string().as_bytes()).unwrap()
    }

    /// Every tensor a token-classification model of `c` has, as transformers names them,
    /// seeded normal(0, 0.2) (LayerNorm weights 1 + that).
    fn variables(c: &Config, prefix: &str) -> Vec<(String, Var)> {
        let (h, i, dev) = (c.hidden_size, c.intermediate_size, Device::Cpu);
        let labels = c.id2label.len();
        let mut shapes: Vec<(String, Vec<usize>)> = vec![
            (
                "embeddings.word_embeddings.weight".into(),
                vec![c.vocab_size, h],
            ),
            (
                "embeddings.position_embeddings.weight".into(),
                vec![c.max_position_embeddings, h],
            ),
            ("embeddings.token_type_embeddings.weight".into(), vec![1, h]),
            ("embeddings.LayerNorm.weight".into(), vec![h]),
            ("embeddings.LayerNorm.bias".into(), vec![h]),
        ];
        for l in 0..c.num_hidden_layers {
            let p = format!("encoder.layer.{l}");
            for n in ["query", "key", "value"] {
                shapes.push((format!("{p}.attention.self.{n}.weight"), vec![h, h]));
                shapes.push((format!("{p}.attention.self.{n}.bias"), vec![h]));
            }
            for (n, shape) in [
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
                shapes.push((format!("{p}.{n}"), shape));
            }
        }
        // The head; random like the rest (with equal rows, the loss's gradient into the
        // encoder would be exactly zero: cross-entropy's gradient sums to zero over labels).
        shapes.push(("classifier.weight".into(), vec![labels, h]));
        shapes.push(("classifier.bias".into(), vec![labels]));
        shapes
            .into_iter()
            .enumerate()
            .map(|(k, (name, shape))| {
                let n: usize = shape.iter().product();
                let values: Vec<f32> = (0..n)
                    .map(|j| {
                        let u = crate::rng::unit(crate::rng::mix((k as u64) << 32 | j as u64));
                        let x = (u as f32 - 0.5) * 0.7;
                        if name.ends_with("LayerNorm.weight") {
                            1.0 + x
                        } else {
                            x
                        }
                    })
                    .collect();
                let var = Var::from_vec(values, shape, &dev).unwrap();
                let head = name.starts_with("classifier.");
                (
                    if head {
                        name
                    } else {
                        format!("{prefix}{name}")
                    },
                    var,
                )
            })
            .collect()
    }

    /// Mean cross-entropy of the logits `(b, t, L)` against `labels` at the non-padding
    /// positions, from plain ops (log-sum-exp, gather).
    fn loss(logits: &Tensor, labels: &[Vec<u32>]) -> Tensor {
        let max = logits.max_keepdim(D::Minus1).unwrap();
        let shifted = logits.broadcast_sub(&max).unwrap();
        let lse = shifted
            .exp()
            .unwrap()
            .sum_keepdim(D::Minus1)
            .unwrap()
            .log()
            .unwrap();
        let log_probs = shifted.broadcast_sub(&lse).unwrap();
        let (b, t) = (labels.len(), labels[0].len());
        let idx = Tensor::from_vec(
            labels.iter().flatten().copied().collect::<Vec<u32>>(),
            (b, t, 1),
            &Device::Cpu,
        )
        .unwrap();
        let picked = log_probs.gather(&idx, D::Minus1).unwrap();
        (picked.sum_all().unwrap().neg().unwrap() / (b * t) as f64).unwrap()
    }

    fn forward(c: &Config, vars: &[(String, Var)], ids: &[Vec<u32>]) -> Tensor {
        let map: HashMap<String, Tensor> = vars
            .iter()
            .map(|(n, v)| (n.clone(), v.as_tensor().clone()))
            .collect();
        let weights = Weights::new(map, c);
        let encoder = Encoder::load(&weights, c).unwrap();
        let head = Head::load(&weights, &encoder, HeadKind::Token).unwrap();
        let mask: Vec<Vec<u32>> = ids.iter().map(|s| vec![1; s.len()]).collect();
        let hidden = encoder.forward(ids, &mask, &Device::Cpu).unwrap();
        head.forward(&hidden).unwrap()
    }

    #[test]
    fn every_trainable_tensor_gets_a_gradient_and_a_step_lowers_the_loss() {
        for (model_type, prefix) in [("bert", "bert."), ("xlm-roberta", "roberta.")] {
            let c = config(model_type);
            let vars = variables(&c, prefix);
            let ids: Vec<Vec<u32>> = vec![
                vec![0, 5, 17, 33, 9, 2],
                vec![0, 21, 8, 8, 30, 2],
                vec![0, 3, 39, 12, 6, 2],
            ];
            let labels: Vec<Vec<u32>> = vec![
                vec![0, 1, 2, 0, 1, 0],
                vec![0, 2, 2, 1, 0, 0],
                vec![0, 0, 1, 2, 2, 0],
            ];
            let l0 = loss(&forward(&c, &vars, &ids), &labels);
            let grads = l0.backward().unwrap();
            for (name, var) in &vars {
                let g = grads
                    .get(var.as_tensor())
                    .unwrap_or_else(|| panic!("{model_type}: no gradient for {name}"));
                let norm: f32 = g
                    .sqr()
                    .and_then(|g| g.sum_all())
                    .and_then(|s| s.to_dtype(DType::F32))
                    .and_then(|s| s.to_scalar())
                    .unwrap();
                assert!(
                    norm > 0.0 && norm.is_finite(),
                    "{model_type}: {name} gradient {norm}"
                );
            }
            // One plain gradient step lowers the loss: the gradient points the right way.
            for (_, var) in &vars {
                let g = grads.get(var.as_tensor()).unwrap();
                var.set(&(var.as_tensor() - (g * 0.05).unwrap()).unwrap())
                    .unwrap();
            }
            let l1 = loss(&forward(&c, &vars, &ids), &labels);
            let (a, b): (f32, f32) = (l0.to_scalar().unwrap(), l1.to_scalar().unwrap());
            assert!(b < a, "{model_type}: loss {a} → {b}");
        }
    }
}
