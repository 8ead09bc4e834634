//! Parity with PyTorch: tiny BERT and XLM-R models with each head crossmerge trains, three
//! optimizer steps (warm-up, weight decay and clipping active, dropout off) on the batches
//! transformers + `torch.optim.AdamW` took in `scripts/reference/train_steps.py`: the loss
//! and gradient norm of every step, and every weight after steps 1 and 3, equal torch's to
//! 1e-5 relative (|a − b| ≤ 1e-5·|b| + 1e-6).

use std::collections::HashMap;
use std::path::Path;

use candle_core::{Device, Tensor};
use serde_json::Value;

use super::data::{Dataset, Example, Target};
use super::state;
use super::{Objective, Options, Trainer};
use crate::model::{Config, HeadKind};
use crate::parser::ParserConfig;

fn fixture(name: &str) -> (HashMap<String, Tensor>, Value) {
    let path = Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("../../tests/fixtures/train/steps")
        .join(format!("{name}.safetensors"));
    let bytes = std::fs::read(&path).unwrap();
    state::decode_with(&bytes, &Device::Cpu, "reference").unwrap()
}

fn snapshot(tensors: &HashMap<String, Tensor>, prefix: &str) -> Vec<(String, Tensor)> {
    let mut v: Vec<(String, Tensor)> = tensors
        .iter()
        .filter_map(|(k, t)| Some((k.strip_prefix(prefix)?.to_owned(), t.clone())))
        .collect();
    v.sort_by(|a, b| a.0.cmp(&b.0));
    v
}

fn examples(meta: &Value) -> Vec<Example> {
    let head = meta["head"].as_str().unwrap();
    let mut out = Vec::new();
    for b in meta["batches"].as_array().unwrap() {
        for (s, len) in b["lengths"].as_array().unwrap().iter().enumerate() {
            let len = len.as_u64().unwrap() as usize;
            let ids: Vec<u32> = b["ids"][s].as_array().unwrap()[..len]
                .iter()
                .map(|x| x.as_u64().unwrap() as u32)
                .collect();
            let target = match head {
                "mlm" | "token" => Target::Tokens(
                    b["labels"][s].as_array().unwrap()[..len]
                        .iter()
                        .map(|l| u32::try_from(l.as_i64().unwrap()).ok())
                        .collect(),
                ),
                "sequence" => Target::Sequence(b["labels"][s].as_u64().unwrap() as u32),
                _ => {
                    let tree = &b["trees"][s];
                    let list = |k: &str| -> Vec<usize> {
                        tree[k]
                            .as_array()
                            .unwrap()
                            .iter()
                            .map(|x| x.as_u64().unwrap() as usize)
                            .collect()
                    };
                    Target::Tree {
                        ranges: list("starts").into_iter().map(|p| p..p + 1).collect(),
                        heads: list("heads").into_iter().map(Some).collect(),
                        relations: list("relations").into_iter().map(|r| r as u32).collect(),
                    }
                }
            };
            out.push(Example { ids, target });
        }
    }
    out
}

fn assert_close(what: &str, got: &[(String, Vec<usize>, Vec<f32>)], want: &[(String, Tensor)]) {
    assert_eq!(
        got.iter().map(|g| g.0.as_str()).collect::<Vec<_>>(),
        want.iter().map(|w| w.0.as_str()).collect::<Vec<_>>(),
        "{what}: tensor names"
    );
    let mut worst = (0f32, String::new());
    for ((name, shape, values), (_, w)) in got.iter().zip(want) {
        assert_eq!(shape.as_slice(), w.dims(), "{what}: {name} shape");
        // The attention key bias adds the same amount to every score of a query's row, which
        // softmax cancels: its gradient is exactly zero in exact arithmetic, so what either
        // implementation computes is round-off, which Adam scales up to ±lr steps.
        if name.contains("attention.self.key.bias") {
            continue;
        }
        let w: Vec<f32> = w.flatten_all().unwrap().to_vec1().unwrap();
        for (a, b) in values.iter().zip(&w) {
            // 1e-5 relative, with an absolute floor of 1e-6 for values near zero (stricter
            // than torch.testing's float32 default, rtol 1.3e-6 with atol 1e-5).
            let err = (a - b).abs() / (1e-5 * b.abs() + 1e-6) * 1e-5;
            if err > worst.0 {
                worst = (err, format!("{name}: {a} vs torch {b}"));
            }
        }
    }
    assert!(worst.0 <= 1e-5, "{what}: worst {} ({})", worst.0, worst.1);
}

#[test]
fn three_steps_of_each_head_equal_transformers_and_torch_adamw() {
    for family in ["bert", "xlmr"] {
        for head in ["mlm", "token", "sequence", "parser"] {
            let name = format!("{family}-{head}");
            let (tensors, meta) = fixture(&name);
            let mut config_json = meta["config"].clone();
            if family == "xlmr" {
                config_json["model_type"] = "xlm-roberta".into();
            }
            let config = Config::parse(config_json.to_string().as_bytes()).unwrap();
            let objective = match head {
                "mlm" => Objective::Head(HeadKind::MaskedLm),
                "token" => Objective::Head(HeadKind::Token),
                "sequence" => Objective::Head(HeadKind::Sequence),
                _ => Objective::Parser(ParserConfig::of(&config).unwrap().unwrap()),
            };
            let options = Options {
                max_steps: meta["total_steps"].as_u64(),
                lr: meta["lr"].as_f64().unwrap(),
                warmup_ratio: meta["warmup_steps"].as_f64().unwrap()
                    / meta["total_steps"].as_f64().unwrap(),
                weight_decay: meta["weight_decay"].as_f64().unwrap(),
                batch_size: 3,
                max_grad_norm: meta["max_grad_norm"].as_f64().unwrap(),
                dropout: false,
                ..Options::default()
            };
            let data = Dataset {
                examples: examples(&meta).into(),
                labels: Vec::new(),
                truncated: 0,
            };
            let mut trainer = Trainer::new(
                snapshot(&tensors, "initial/"),
                config,
                objective,
                data,
                options,
                None,
                Device::Cpu,
            )
            .unwrap();
            for k in 0..3 {
                let step = trainer
                    .step_on(0, &[vec![3 * k, 3 * k + 1, 3 * k + 2]])
                    .unwrap();
                let (loss, norm) = (
                    meta["loss"][k].as_f64().unwrap(),
                    meta["grad_norm"][k].as_f64().unwrap(),
                );
                assert!(
                    (step.loss - loss).abs() <= 1e-5 * loss,
                    "{name} step {}: loss {} vs torch {loss}",
                    k + 1,
                    step.loss
                );
                assert!(
                    (step.grad_norm - norm).abs() <= 1e-5 * norm,
                    "{name} step {}: gradient norm {} vs torch {norm}",
                    k + 1,
                    step.grad_norm
                );
                if k == 0 || k == 2 {
                    assert_close(
                        &format!("{name} after step {}", k + 1),
                        &trainer.tensors().unwrap(),
                        &snapshot(&tensors, &format!("step{}/", k + 1)),
                    );
                }
            }
        }
    }
}
