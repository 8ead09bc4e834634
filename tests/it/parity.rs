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
        let mut encoder = Encoder::load(&weights, &config).unwrap();
        let head = Head::load(&weights, &encoder, kind).unwrap();
        let reference =
            candle_core::safetensors::load(dir.join("reference.safetensors"), &Device::Cpu)
                .unwrap();
        let ids = rows(&reference["input_ids"]);
        let mask = rows(&reference["attention_mask"]);
        // The fused CPU kernels (what the CPU runs) and the plain ops (what CUDA runs).
        for fused in [true, false] {
            encoder.set_fused(fused);
            let hidden = encoder.forward(&ids, &mask, &Device::Cpu).unwrap();
            let logits = head.forward(&hidden).unwrap();
            let diff = max_abs_diff(&logits, &reference["logits"]);
            eprintln!("{name} (fused {fused}): max |Δ| = {diff:e}");
            assert!(diff <= 1e-4, "{name} (fused {fused}): max |Δ| = {diff}");
        }
    }
}

#[test]
fn minilm_hidden_states_match_transformers() {
    let shared = crate::common::require_shared!();
    let dir = crate::common::minilm(&shared);
    let (config, weights) = load(&dir);
    let mut encoder = Encoder::load(&weights, &config).unwrap();
    let reference = candle_core::safetensors::load(
        fixtures().join("minilm-reference.safetensors"),
        &Device::Cpu,
    )
    .unwrap();
    let ids = rows(&reference["input_ids"]);
    assert_eq!(ids.len(), 5);
    let mask = rows(&reference["attention_mask"]);
    for fused in [true, false] {
        encoder.set_fused(fused);
        let hidden = encoder.forward(&ids, &mask, &Device::Cpu).unwrap();
        let diff = max_abs_diff(&hidden, &reference["last_hidden_state"]);
        eprintln!("MiniLM (fused {fused}): max |Δ| = {diff:e}");
        assert!(diff <= 1e-4, "MiniLM (fused {fused}): max |Δ| = {diff}");
    }
}

fn spans(t: &Tensor) -> Vec<Vec<Option<std::ops::Range<usize>>>> {
    let v = t.to_vec3::<i64>().unwrap();
    v.into_iter()
        .map(|sentence| {
            sentence
                .into_iter()
                .filter(|w| w[0] >= 0)
                .map(|w| Some(usize::try_from(w[0]).unwrap()..usize::try_from(w[1]).unwrap()))
                .collect()
        })
        .collect()
}

/// The biaffine parser head of schemas/parser.md, written and run in PyTorch
/// (scripts/reference/scoring.py), loads by its names and scores every arc and relation as
/// PyTorch did, with first-subword and mean pooling.
#[test]
fn parser_head_matches_pytorch() {
    use crossmerge::eval::parser::{Parser, ParserConfig};
    let dir = fixtures().join("bert-parser");
    let (config, weights) = load(&dir);
    let encoder = Encoder::load(&weights, &config).unwrap();
    let reference =
        candle_core::safetensors::load(dir.join("reference.safetensors"), &Device::Cpu).unwrap();
    let hidden = encoder
        .forward(
            &rows(&reference["input_ids"]),
            &rows(&reference["attention_mask"]),
            &Device::Cpu,
        )
        .unwrap();
    let words = spans(&reference["spans"]);
    assert_eq!(ParserConfig::of(&config).unwrap().unwrap().word, "first");
    for word in ["first", "mean"] {
        let mut pc: ParserConfig = ParserConfig::of(&config).unwrap().unwrap();
        pc.word = word.to_owned();
        let parser = Parser::load(&weights, pc).unwrap();
        let (arc, rel) = parser.scores(&hidden, &words, &Device::Cpu).unwrap();
        let da = max_abs_diff(&arc, &reference[&format!("arc_{word}")]);
        let dr = max_abs_diff(&rel, &reference[&format!("rel_{word}")]);
        eprintln!("parser ({word}): arcs max |Δ| = {da:e}, relations {dr:e}");
        assert!(
            da <= 1e-4 && dr <= 1e-4,
            "{word}: arcs {da}, relations {dr}"
        );
    }
}

/// `crossmerge eval --task dp` of the PyTorch-written parser on sentences whose gold trees
/// are the best single-root trees under its own scores (found by enumeration in Python):
/// tokenization, alignment, encoder, scores, tree decoding and relations all agree.
#[test]
#[allow(clippy::float_cmp)] // every word right: exactly 1
fn parser_checkpoint_recovers_its_best_trees() {
    use crossmerge::eval::run::Task;
    use crossmerge::evaluate::{EvalOptions, Evaluate};
    use crossmerge::{CheckpointKind, NoProgress, RegisterOptions, Registry};
    let tmp = tempfile::TempDir::new().unwrap();
    let mut reg = Registry::create(tmp.path()).unwrap();
    let dir = fixtures().join("bert-parser");
    reg.register(
        &dir,
        &RegisterOptions::new("tiny-parser", CheckpointKind::Task).task("dp"),
        &NoProgress,
    )
    .unwrap();
    let r = reg
        .evaluate(
            "tiny-parser",
            &EvalOptions::new(Task::Dp, dir.join("gold.conllu")),
            &NoProgress,
        )
        .unwrap();
    assert_eq!(r.outcome.metrics["uas"], 1.0, "{:?}", r.outcome.metrics);
    assert_eq!(r.outcome.metrics["las"], 1.0, "{:?}", r.outcome.metrics);
}

/// Pseudo-perplexity (Salazar et al. 2020) of a tiny BERT masked LM equals the one computed
/// token by token in PyTorch, batched across texts of different lengths.
#[test]
#[allow(clippy::float_cmp)] // a count
fn pseudo_perplexity_matches_pytorch() {
    use crossmerge::eval::run::Task;
    use crossmerge::evaluate::{EvalOptions, Evaluate};
    use crossmerge::{CheckpointKind, NoProgress, RegisterOptions, Registry};
    let tmp = tempfile::TempDir::new().unwrap();
    let mut reg = Registry::create(tmp.path()).unwrap();
    let dir = fixtures().join("bert-pppl");
    reg.register(
        &dir,
        &RegisterOptions::new("tiny-mlm", CheckpointKind::Base),
        &NoProgress,
    )
    .unwrap();
    let reference: serde_json::Value =
        serde_json::from_slice(&std::fs::read(dir.join("reference.json")).unwrap()).unwrap();
    let mut opts = EvalOptions::new(Task::Mlm, dir.join("texts.txt"));
    opts.pseudo_perplexity = true;
    opts.batch_size = 3;
    let r = reg.evaluate("tiny-mlm", &opts, &NoProgress).unwrap();
    let got = r.outcome.metrics["pseudo_perplexity"];
    let want = reference["pseudo_perplexity"].as_f64().unwrap();
    eprintln!("pseudo-perplexity {got} (PyTorch {want})");
    assert!((got - want).abs() <= 1e-4 * want, "{got} vs {want}");
    assert_eq!(
        r.outcome.metrics["scored_tokens"],
        reference["scored_tokens"].as_f64().unwrap()
    );
    assert_eq!(r.settings["scoring"], "pseudo");
    // Seeded masking on the same texts: a different metric, stored with its seed.
    let masked = reg
        .evaluate(
            "tiny-mlm",
            &EvalOptions::new(Task::Mlm, dir.join("texts.txt")),
            &NoProgress,
        )
        .unwrap();
    assert!(masked.outcome.metrics.contains_key("perplexity"));
    assert_eq!(masked.settings["scoring"]["masked"]["seed"], 42);
    // Options that do not fit the task: one line and a hint, no row.
    let mut pos = EvalOptions::new(Task::Pos, dir.join("texts.txt"));
    pos.pseudo_perplexity = true;
    let map = tmp.path().join("map.tsv");
    std::fs::write(&map, "a b\n").unwrap();
    let mut mlm = EvalOptions::new(Task::Mlm, dir.join("texts.txt"));
    mlm.label_map = Some(map);
    for (opts, needle) in [(pos, "--pseudo-perplexity"), (mlm, "--label-map")] {
        let e = reg.evaluate("tiny-mlm", &opts, &NoProgress).unwrap_err();
        assert!(e.to_string().contains(needle) && e.hint().is_some(), "{e}");
    }
    assert_eq!(reg.evaluations(None, None, None).unwrap().len(), 2);
}
