//! Synthetic checkpoints with the exact tensor names and shapes of real encoders, for tests
//! and benchmarks.
//!
//! A *family* is a base plus fine-tunes. Base floats are N(0, 0.02) (`LayerNorm` weights
//! 1 + N(0, 0.02)); every float of fine-tune k is `base · (1 + noise · N(0, 1))` with
//! `noise` = 1e-3 by default, the relative drift real fine-tunes show. Fine-tunes can carry a
//! token-classification head (`classifier.weight`, `classifier.bias`), absent from the base.
//!
//! Values come from splitmix64 + Box–Muller keyed by (seed, tensor, block), written here
//! rather than taken from `rand` so that a family is the same bits forever, whatever version
//! of a dependency is resolved, and can be generated block-parallel.
//!
//! # Place in the workspace
//!
//! Above `crossmerge-store` (atomic writes) only; used by the tests of the crates above and by
//! `cargo xtask synth|bench`, never by the shipped binary.

use std::fs;
use std::io::{self, BufWriter, Write};
use std::path::Path;

use rayon::prelude::*;
use serde::{Deserialize, Serialize};
use serde_json::json;

/// Shapes of an XLM-R-style encoder.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Shape {
    pub vocab: u64,
    pub hidden: u64,
    pub layers: u64,
    pub heads: u64,
    pub intermediate: u64,
    pub max_positions: u64,
    pub type_vocab: u64,
    /// BERT's names (`bert.`, `BertModel`) instead of XLM-R's (`roberta.`).
    #[serde(default)]
    pub bert: bool,
}

impl Shape {
    /// xlm-roberta-base: 278,043,648 parameters with the pooler.
    pub const XLMR_BASE: Shape = Shape {
        vocab: 250_002,
        hidden: 768,
        layers: 12,
        heads: 12,
        intermediate: 3072,
        max_positions: 514,
        type_vocab: 1,
        bert: false,
    };

    /// bert-base-multilingual-cased: 177,853,440 parameters with the pooler.
    pub const MBERT_BASE: Shape = Shape {
        vocab: 119_547,
        hidden: 768,
        layers: 12,
        heads: 12,
        intermediate: 3072,
        max_positions: 512,
        type_vocab: 2,
        bert: true,
    };

    /// A tiny encoder of the same layout, for tests.
    pub const TINY: Shape = Shape {
        vocab: 1000,
        hidden: 32,
        layers: 2,
        heads: 2,
        intermediate: 64,
        max_positions: 66,
        type_vocab: 1,
        bert: false,
    };

    pub fn by_name(name: &str) -> Option<Shape> {
        match name {
            "xlmr-base" | "xlm-roberta-base" => Some(Self::XLMR_BASE),
            "mbert-base" | "bert-base-multilingual-cased" => Some(Self::MBERT_BASE),
            "tiny" => Some(Self::TINY),
            _ => None,
        }
    }
}

#[derive(Clone, Copy, Debug, PartialEq)]
enum Init {
    Normal,
    OnePlusNormal,
}

/// (name, shape, init) of every tensor, with HF's `roberta.` (or `bert.`) names, sorted by
/// name.
fn tensors(s: &Shape, head_labels: Option<u64>) -> Vec<(String, Vec<u64>, Init)> {
    let (h, i) = (s.hidden, s.intermediate);
    let model = if s.bert { "bert" } else { "roberta" };
    let mut out = vec![
        (
            format!("{model}.embeddings.word_embeddings.weight"),
            vec![s.vocab, h],
            Init::Normal,
        ),
        (
            format!("{model}.embeddings.position_embeddings.weight"),
            vec![s.max_positions, h],
            Init::Normal,
        ),
        (
            format!("{model}.embeddings.token_type_embeddings.weight"),
            vec![s.type_vocab, h],
            Init::Normal,
        ),
        (
            format!("{model}.embeddings.LayerNorm.weight"),
            vec![h],
            Init::OnePlusNormal,
        ),
        (
            format!("{model}.embeddings.LayerNorm.bias"),
            vec![h],
            Init::Normal,
        ),
        (
            format!("{model}.pooler.dense.weight"),
            vec![h, h],
            Init::Normal,
        ),
        (format!("{model}.pooler.dense.bias"), vec![h], Init::Normal),
    ];
    for l in 0..s.layers {
        let p = format!("{model}.encoder.layer.{l}");
        for m in [
            "attention.self.query",
            "attention.self.key",
            "attention.self.value",
            "attention.output.dense",
        ] {
            out.push((format!("{p}.{m}.weight"), vec![h, h], Init::Normal));
            out.push((format!("{p}.{m}.bias"), vec![h], Init::Normal));
        }
        for m in ["attention.output.LayerNorm", "output.LayerNorm"] {
            out.push((format!("{p}.{m}.weight"), vec![h], Init::OnePlusNormal));
            out.push((format!("{p}.{m}.bias"), vec![h], Init::Normal));
        }
        out.push((
            format!("{p}.intermediate.dense.weight"),
            vec![i, h],
            Init::Normal,
        ));
        out.push((
            format!("{p}.intermediate.dense.bias"),
            vec![i],
            Init::Normal,
        ));
        out.push((format!("{p}.output.dense.weight"), vec![h, i], Init::Normal));
        out.push((format!("{p}.output.dense.bias"), vec![h], Init::Normal));
    }
    if let Some(n) = head_labels {
        out.push(("classifier.weight".to_owned(), vec![n, h], Init::Normal));
        out.push(("classifier.bias".to_owned(), vec![n], Init::Normal));
    }
    out.sort_by(|a, b| a.0.cmp(&b.0));
    out
}

/// Parameter count of a shape (without a head).
pub fn parameter_count(s: &Shape) -> u64 {
    tensors(s, None)
        .iter()
        .map(|(_, d, _)| d.iter().product::<u64>())
        .sum()
}

/// What to generate.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[non_exhaustive]
pub struct FamilySpec {
    pub shape: Shape,
    pub seed: u64,
    pub finetunes: usize,
    /// Relative noise of fine-tunes against the base.
    pub noise: f32,
    /// Give fine-tunes a token-classification head with this many labels.
    pub head_labels: Option<u64>,
}

impl FamilySpec {
    pub fn new(shape: Shape, finetunes: usize) -> Self {
        Self {
            shape,
            seed: 42,
            finetunes,
            noise: 1e-3,
            head_labels: None,
        }
    }

    #[must_use]
    pub fn seed(mut self, seed: u64) -> Self {
        self.seed = seed;
        self
    }

    #[must_use]
    pub fn noise(mut self, noise: f32) -> Self {
        self.noise = noise;
        self
    }

    #[must_use]
    pub fn head_labels(mut self, labels: Option<u64>) -> Self {
        self.head_labels = labels;
        self
    }
}

/// Writes `dir/base` and `dir/ft-1` … `dir/ft-N` as Hugging Face folders. A folder written
/// earlier from the same spec (recorded in `dir/synth.json`) is reused, not regenerated.
pub fn write_family(dir: &Path, spec: &FamilySpec) -> io::Result<Vec<std::path::PathBuf>> {
    let marker = dir.join("synth.json");
    let mut paths = vec![dir.join("base")];
    paths.extend((1..=spec.finetunes).map(|k| dir.join(format!("ft-{k}"))));
    if let Ok(old) = fs::read(&marker)
        && serde_json::from_slice::<FamilySpec>(&old).ok().as_ref() == Some(spec)
        && paths.iter().all(|p| p.join("model.safetensors").is_file())
    {
        return Ok(paths);
    }
    let _ = fs::remove_file(&marker);
    write_checkpoint(&paths[0], &spec.shape, spec.seed, None, None)?;
    for (k, p) in paths.iter().enumerate().skip(1) {
        let ft_seed = spec.seed.wrapping_add(1_000_003 * k as u64);
        write_checkpoint(
            p,
            &spec.shape,
            spec.seed,
            Some((ft_seed, spec.noise)),
            spec.head_labels,
        )?;
    }
    fs::write(
        &marker,
        serde_json::to_vec_pretty(spec).map_err(io::Error::other)?,
    )?;
    Ok(paths)
}

/// Writes one checkpoint folder: `config.json` and `model.safetensors` (F32).
/// `finetune` = (seed, relative noise) perturbs the base drawn from `seed`.
const BLOCK: usize = 1 << 20;

pub fn write_checkpoint(
    dir: &Path,
    shape: &Shape,
    seed: u64,
    finetune: Option<(u64, f32)>,
    head_labels: Option<u64>,
) -> io::Result<()> {
    fs::create_dir_all(dir)?;
    let specs = tensors(shape, head_labels);
    let mut header = serde_json::Map::new();
    header.insert("__metadata__".into(), json!({"format": "pt"}));
    let mut offset = 0u64;
    for (name, dims, _) in &specs {
        let len = dims.iter().product::<u64>() * 4;
        header.insert(
            name.clone(),
            json!({"dtype": "F32", "shape": dims, "data_offsets": [offset, offset + len]}),
        );
        offset += len;
    }
    let mut text = serde_json::to_vec(&serde_json::Value::Object(header))?;
    while !text.len().is_multiple_of(8) {
        text.push(b' ');
    }
    let tmp = dir.join("model.safetensors.partial");
    let mut w = BufWriter::with_capacity(8 << 20, fs::File::create(&tmp)?);
    w.write_all(&(text.len() as u64).to_le_bytes())?;
    w.write_all(&text)?;
    let mut buf = vec![0f32; BLOCK * 8];
    let mut bytes = vec![0u8; BLOCK * 8 * 4];
    for (name, dims, init) in &specs {
        // Keyed by name, not position, so a head added to a fine-tune shifts nothing.
        let t = u64::from_le_bytes(
            blake3::hash(name.as_bytes()).as_bytes()[..8]
                .try_into()
                .expect("8 bytes"),
        );
        // Heads are new in the fine-tune: draw them from the fine-tune's own seed.
        let is_head = name.starts_with("classifier.");
        let tensor_seed = match (is_head, finetune) {
            (true, Some((s, _))) => s,
            _ => seed,
        };
        let n = usize::try_from(dims.iter().product::<u64>()).map_err(io::Error::other)?;
        let mut done = 0usize;
        while done < n {
            let m = (n - done).min(buf.len());
            buf[..m]
                .par_chunks_mut(BLOCK)
                .enumerate()
                .for_each(|(b, out)| {
                    let block = (done / BLOCK + b) as u64;
                    fill_normal(out, key(tensor_seed, t, block), 0.02);
                    if *init == Init::OnePlusNormal {
                        for v in out.iter_mut() {
                            *v += 1.0;
                        }
                    }
                    if let (Some((ft, noise)), false) = (finetune, is_head) {
                        let mut rel = vec![0f32; out.len()];
                        fill_normal(&mut rel, key(ft, t, block), noise);
                        out.iter_mut().zip(&rel).for_each(|(v, r)| *v *= 1.0 + r);
                    }
                });
            for (dst, v) in bytes.chunks_exact_mut(4).zip(&buf[..m]) {
                dst.copy_from_slice(&v.to_le_bytes());
            }
            w.write_all(&bytes[..m * 4])?;
            done += m;
        }
    }
    w.into_inner()
        .map_err(io::IntoInnerError::into_error)?
        .sync_all()?;
    crossmerge_store::atomic::rename_durably(&tmp, &dir.join("model.safetensors"))?;
    let (family, model_type) = if shape.bert {
        ("Bert", "bert")
    } else {
        ("XLMRoberta", "xlm-roberta")
    };
    let mut config = json!({
        "architectures": [if head_labels.is_some() { format!("{family}ForTokenClassification") } else { format!("{family}Model") }],
        "model_type": model_type,
        "vocab_size": shape.vocab,
        "hidden_size": shape.hidden,
        "num_hidden_layers": shape.layers,
        "num_attention_heads": shape.heads,
        "intermediate_size": shape.intermediate,
        "max_position_embeddings": shape.max_positions,
        "type_vocab_size": shape.type_vocab,
        "hidden_act": "gelu",
        "hidden_dropout_prob": 0.1,
        "attention_probs_dropout_prob": 0.1,
        "layer_norm_eps": 1e-5,
        "initializer_range": 0.02,
        "pad_token_id": 1,
        "bos_token_id": 0,
        "eos_token_id": 2,
        "position_embedding_type": "absolute",
        "torch_dtype": "float32",
    });
    if let Some(n) = head_labels {
        let id2label: serde_json::Map<String, serde_json::Value> = (0..n)
            .map(|i| (i.to_string(), json!(format!("LABEL_{i}"))))
            .collect();
        let label2id: serde_json::Map<String, serde_json::Value> =
            (0..n).map(|i| (format!("LABEL_{i}"), json!(i))).collect();
        config["id2label"] = json!(id2label);
        config["label2id"] = json!(label2id);
    }
    let mut text = serde_json::to_vec_pretty(&config)?;
    text.push(b'\n');
    fs::write(dir.join("config.json"), text)?;
    Ok(())
}

fn key(seed: u64, tensor: u64, block: u64) -> u64 {
    let mut s = seed
        ^ tensor.wrapping_mul(0x9E37_79B9_7F4A_7C15)
        ^ block.wrapping_mul(0xD1B5_4A32_D192_ED03);
    splitmix64(&mut s)
}

fn splitmix64(state: &mut u64) -> u64 {
    *state = state.wrapping_add(0x9E37_79B9_7F4A_7C15);
    let mut z = *state;
    z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
    z ^ (z >> 31)
}

/// Fills `out` with N(0, std²) draws (Box–Muller over splitmix64).
fn fill_normal(out: &mut [f32], seed: u64, std: f32) {
    let mut state = seed;
    for pair in out.chunks_mut(2) {
        let u1 = ((splitmix64(&mut state) >> 11) as f64 + 1.0) / (1u64 << 53) as f64;
        let u2 = (splitmix64(&mut state) >> 11) as f64 / (1u64 << 53) as f64;
        let r = (-2.0 * u1.ln()).sqrt();
        let (s, c) = (std::f64::consts::TAU * u2).sin_cos();
        pair[0] = (r * c) as f32 * std;
        if let Some(second) = pair.get_mut(1) {
            *second = (r * s) as f32 * std;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn xlmr_base_has_its_real_parameter_count() {
        assert_eq!(parameter_count(&Shape::XLMR_BASE), 278_043_648);
        assert_eq!(parameter_count(&Shape::MBERT_BASE), 177_853_440);
        let names: Vec<String> = tensors(&Shape::MBERT_BASE, None)
            .into_iter()
            .map(|t| t.0)
            .collect();
        assert!(names.iter().all(|n| n.starts_with("bert.")), "{names:?}");
    }

    #[test]
    fn normals_have_the_asked_spread() {
        let mut v = vec![0f32; 100_000];
        fill_normal(&mut v, 7, 0.02);
        let mean = v.iter().map(|&x| f64::from(x)).sum::<f64>() / v.len() as f64;
        let var = v
            .iter()
            .map(|&x| (f64::from(x) - mean).powi(2))
            .sum::<f64>()
            / v.len() as f64;
        assert!(mean.abs() < 5e-4, "{mean}");
        assert!((var.sqrt() - 0.02).abs() < 5e-4, "{}", var.sqrt());
    }
}
