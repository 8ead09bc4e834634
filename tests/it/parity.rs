//! Numerical parity of the candle encoders and heads with Hugging Face transformers (PyTorch):
//! tiny random-init checkpoints saved by transformers for every head type, and the real MiniLM
//! from ../shared. scripts/reference/parity.py made the committed reference outputs.

use std::path::{Path, PathBuf};

use candle_core::{DType, Device, Tensor};
use crossmerge::eval::model::{Config, Encoder, Head, HeadKind, Weights};

fn fixtures() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/parity")
}

fn rows(t: &Tensor) -> Vec<Vec<u32>> {
    t.to_dtype(DType::I64)
        .unwrap()
        .to_vec2::<i64>()
        .unwrap()
        .into_iter()
        .map(|r| r.into_iter().map(|x| u32::try_from(x).unwrap()).collect())
        .collect()
}

fn max_abs_diff(a: &Tensor, b: &Tensor) -> f32 {
    assert_eq!(a.dims(), b.dims());
    a.sub(b)
        .unwrap()
        .abs()
        .unwrap()
        .flatten_all()
        .unwrap()
        .max(0)
        .unwrap()
        .to_scalar::<f32>()
        .unwrap()
}

fn load(dir: &Path) -> (Config, Weights) {
    let config = Config::parse(&std::fs::read(dir.join("config.json")).unwrap()).unwrap();
    let map = candle_core::safetensors::load(dir.join("model.safetensors"), &Device::Cpu).unwrap();
    let weights = Weights::new(map, &config);
    (config, weights)
}

#[test]
fn every_head_matches_transformers() {
    for (name, kind) in [
        ("bert-mlm", HeadKind::MaskedLm),
        ("bert-tok", HeadKind::Token),
        ("bert-seq", HeadKind::Sequence),
        ("xlmr-mlm", HeadKind::MaskedLm),
        ("xlmr-tok", HeadKind::Token),
        ("xlmr-seq", HeadKind::Sequence),
    ] {
        let dir = fixtures().join(name);
        let (config, weights) = load(&dir);
        let encoder = Encoder::load(&weights, &config).unwrap();
        let head = Head::load(&weights, &encoder, kind).unwrap();
        let reference =
            candle_core::safetensors::load(dir.join("reference.safetensors"), &Device::Cpu)
                .unwrap();
        let ids = rows(&reference["input_ids"]);
        let mask = rows(&reference["attention_mask"]);
        let hidden = encoder.forward(&ids, &mask, &Device::Cpu).unwrap();
        let logits = head.forward(&hidden).unwrap();
        let diff = max_abs_diff(&logits, &reference["logits"]);
        eprintln!("{name}: max |Δ| = {diff:e}");
        assert!(diff <= 1e-4, "{name}: max |Δ| = {diff}");
    }
}

#[test]
fn minilm_hidden_states_match_transformers() {
    let shared = crate::common::require_shared!();
    let dir = crate::common::minilm(&shared);
    let (config, weights) = load(&dir);
    let encoder = Encoder::load(&weights, &config).unwrap();
    let reference = candle_core::safetensors::load(
        fixtures().join("minilm-reference.safetensors"),
        &Device::Cpu,
    )
    .unwrap();
    let ids = rows(&reference["input_ids"]);
    assert_eq!(ids.len(), 5);
    let mask = rows(&reference["attention_mask"]);
    let hidden = encoder.forward(&ids, &mask, &Device::Cpu).unwrap();
    let diff = max_abs_diff(&hidden, &reference["last_hidden_state"]);
    eprintln!("MiniLM: max |Δ| = {diff:e}");
    assert!(diff <= 1e-4, "MiniLM: max |Δ| = {diff}");
}
