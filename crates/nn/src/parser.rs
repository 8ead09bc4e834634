//! A biaffine dependency parser head (Dozat & Manning 2017, "Deep biaffine attention for
//! neural dependency parsing", ICLR) over the encoder's word vectors. Tensor names and config
//! keys: schemas/parser.md.
//!
//! Word vectors are the first subword's hidden state (or the mean of the word's subwords); a
//! learned `[ROOT]` vector is prepended, so heads index `[ROOT] + words` (0 = root). Four MLPs
//! (one linear layer and an activation each) give arc-dependent, arc-head, relation-dependent
//! and relation-head views; the arc score of dependent i and head j is `[dᵢ; 1]ᵀ·U·hⱼ`, the
//! relation scores `[dᵢ; 1]ᵀ·Wₗ·[hⱼ; 1]` per label l. Decoding takes the maximum spanning
//! tree with one word on `[ROOT]` ([`mst`]), then the best relation for each of its arcs.

#![allow(clippy::many_single_char_names)] // b, t, h, n, l, w, x: the formulas' names

use candle_core::{D, Device, Tensor};
use serde::Deserialize;

use super::model::{Config, Weights};
use crate::error::{Error, Result};

/// `crossmerge_parser` in config.json.
#[derive(Clone, Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ParserConfig {
    /// `first` (default) or `mean` subword pooling.
    #[serde(default = "default_word")]
    pub word: String,
    /// `leaky_relu` (slope 0.1, default), `relu` or `gelu`.
    #[serde(default = "default_activation")]
    pub activation: String,
}

impl ParserConfig {
    /// The parser head's settings, if config.json has `crossmerge_parser`.
    pub fn of(config: &Config) -> Result<Option<Self>> {
        config
            .parser_raw
            .clone()
            .map(|v| {
                serde_json::from_value(v).map_err(|e| {
                    Error::invalid(
                        format!("config.json's `crossmerge_parser`: {e}"),
                        "its keys are `word` (first or mean) and `activation` (leaky_relu, relu or gelu); see schemas/parser.md",
                    )
                })
            })
            .transpose()
    }
}

fn default_word() -> String {
    "first".to_owned()
}
fn default_activation() -> String {
    "leaky_relu".to_owned()
}

fn candle(e: &candle_core::Error) -> Error {
    Error::invalid(
        format!("parser computation: {e}"),
        "check the parser tensors against schemas/parser.md",
    )
}

struct Mlp {
    w: Tensor,
    b: Tensor,
}

/// The parser head's tensors.
pub struct Parser {
    pub config: ParserConfig,
    root: Tensor,
    arc_dep: Mlp,
    arc_head: Mlp,
    rel_dep: Mlp,
    rel_head: Mlp,
    arc_attn: Tensor,
    rel_attn: Tensor,
}

/// Predictions for one sentence: (head, relation index) per word.
pub type Parse = Vec<(usize, usize)>;

impl Parser {
    pub fn load(weights: &Weights, config: ParserConfig) -> Result<Self> {
        if !matches!(config.word.as_str(), "first" | "mean")
            || !matches!(config.activation.as_str(), "leaky_relu" | "relu" | "gelu")
        {
            return Err(Error::invalid(
                format!(
                    "crossmerge_parser: word `{}`, activation `{}`",
                    config.word, config.activation
                ),
                "word is first or mean; activation is leaky_relu, relu or gelu",
            ));
        }
        let mlp = |n: &str| -> Result<Mlp> {
            Ok(Mlp {
                w: weights.head(&format!("parser.{n}.weight"))?,
                b: weights.head(&format!("parser.{n}.bias"))?,
            })
        };
        Ok(Self {
            root: weights.head("parser.root")?,
            arc_dep: mlp("arc_dep")?,
            arc_head: mlp("arc_head")?,
            rel_dep: mlp("rel_dep")?,
            rel_head: mlp("rel_head")?,
            arc_attn: weights.head("parser.arc_attn.weight")?,
            rel_attn: weights.head("parser.rel_attn.weight")?,
            config,
        })
    }

    /// How many relations the head scores.
    pub fn relations(&self) -> Option<usize> {
        self.rel_attn.dim(0).ok()
    }

    fn mlp(&self, m: &Mlp, x: &Tensor) -> candle_core::Result<Tensor> {
        let y = x.broadcast_matmul(&m.w.t()?)?.broadcast_add(&m.b)?;
        match self.config.activation.as_str() {
            "relu" => y.relu(),
            "gelu" => super::kernels::gelu(&y),
            _ => {
                // leaky ReLU, slope 0.1: max(y, 0.1·y).
                y.maximum(&(&y * 0.1)?)
            }
        }
    }

    /// The arc scores and the pieces of the relation scores for a batch: `hidden` (b, t, H)
    /// and, per sentence, each word's subword range (`None` for words cut by truncation; they
    /// get a zero vector).
    fn views(
        &self,
        hidden: &Tensor,
        words: &[Vec<Option<std::ops::Range<usize>>>],
        device: &Device,
    ) -> candle_core::Result<Views> {
        let (b, t, h) = hidden.dims3()?;
        let n = words.iter().map(Vec::len).max().unwrap_or(0);
        // Pooling weights (b, n, t): one-hot on the first subword, or the mean.
        let mut pool = vec![0f32; b * n * t];
        for (s, ws) in words.iter().enumerate() {
            for (i, r) in ws.iter().enumerate() {
                let Some(r) = r else { continue };
                let row = &mut pool[(s * n + i) * t..(s * n + i + 1) * t];
                if self.config.word == "mean" {
                    let len = r.len().max(1) as f32;
                    for p in r.clone() {
                        row[p] = 1.0 / len;
                    }
                } else {
                    row[r.start] = 1.0;
                }
            }
        }
        let pool = Tensor::from_vec(pool, (b, n, t), device)?;
        let word_vecs = pool.matmul(hidden)?; // (b, n, h)
        let root = self.root.reshape((1, 1, h))?.broadcast_as((b, 1, h))?;
        let x = Tensor::cat(&[&root, &word_vecs], 1)?; // (b, n+1, h)
        let ones = Tensor::ones((b, n + 1, 1), x.dtype(), device)?;
        let arc_d = Tensor::cat(&[&self.mlp(&self.arc_dep, &x)?, &ones], 2)?; // (b, n+1, A+1)
        let arc_h = self.mlp(&self.arc_head, &x)?; // (b, n+1, A)
        let arc = arc_d
            .broadcast_matmul(&self.arc_attn)?
            .matmul(&arc_h.t()?)?; // (b, n+1, n+1)
        let rel_d = Tensor::cat(&[&self.mlp(&self.rel_dep, &x)?, &ones], 2)?; // (b, n+1, R+1)
        let rel_h = Tensor::cat(&[&self.mlp(&self.rel_head, &x)?, &ones], 2)?;
        let (l, r1, _) = self.rel_attn.dims3()?;
        // (b, n+1, R+1) · (R+1, L·(R+1)) → (b, n+1, L, R+1)
        let w = self
            .rel_attn
            .transpose(0, 1)?
            .contiguous()?
            .reshape((r1, l * r1))?;
        let dw = rel_d.broadcast_matmul(&w)?.reshape((b, n + 1, l, r1))?;
        Ok(Views { arc, dw, rel_h })
    }

    /// Every score of a batch: arcs `(b, dependent, head)` over `[ROOT] + words`, and
    /// relations `(b, label, dependent, head)`.
    pub fn scores(
        &self,
        hidden: &Tensor,
        words: &[Vec<Option<std::ops::Range<usize>>>],
        device: &Device,
    ) -> Result<(Tensor, Tensor)> {
        let f = || -> candle_core::Result<(Tensor, Tensor)> {
            let v = self.views(hidden, words, device)?;
            // (b, L, n+1, R+1) · (b, 1, R+1, n+1) → (b, L, n+1, n+1)
            let rel =
                v.dw.transpose(1, 2)?
                    .contiguous()?
                    .broadcast_matmul(&v.rel_h.t()?.unsqueeze(1)?)?;
            Ok((v.arc, rel))
        };
        f().map_err(|e| candle(&e))
    }

    /// Parses a batch (see [`Parser::scores`] for the arguments): the maximum spanning tree
    /// with one word on `[ROOT]` ([`mst`]), then each arc's best relation.
    pub fn parse(
        &self,
        hidden: &Tensor,
        words: &[Vec<Option<std::ops::Range<usize>>>],
        device: &Device,
    ) -> Result<Vec<Parse>> {
        let f = || -> candle_core::Result<Vec<Parse>> {
            let v = self.views(hidden, words, device)?;
            let arc: Vec<Vec<Vec<f32>>> = v.arc.to_vec3()?;
            let mut out = Vec::with_capacity(words.len());
            for (s, ws) in words.iter().enumerate() {
                let len = ws.len();
                let scores: Vec<Vec<f64>> = arc[s][..=len]
                    .iter()
                    .map(|row| row[..=len].iter().map(|&x| f64::from(x)).collect())
                    .collect();
                let heads = mst(&scores);
                // Relation scores of each word's chosen arc.
                let idx: Vec<u32> = heads.iter().map(|&j| j as u32).collect();
                let idx = Tensor::from_vec(idx, len, device)?;
                let hs = v.rel_h.get(s)?.index_select(&idx, 0)?; // (len, R+1)
                let ds = v.dw.get(s)?.narrow(0, 1, len)?; // (len, L, R+1)
                let rel = ds.broadcast_mul(&hs.unsqueeze(1)?)?.sum(D::Minus1)?; // (len, L)
                let best: Vec<u32> = rel.argmax(D::Minus1)?.to_vec1()?;
                out.push(
                    heads
                        .into_iter()
                        .zip(best)
                        .map(|(hd, r)| (hd, r as usize))
                        .collect(),
                );
            }
            Ok(out)
        };
        f().map_err(|e| candle(&e))
    }
}

/// The parser's intermediate tensors for a batch.
struct Views {
    /// (b, n+1, n+1): dependent × head.
    arc: Tensor,
    /// (b, n+1, L, R+1): `[dᵢ; 1]ᵀ·Wₗ` per dependent and label.
    dw: Tensor,
    /// (b, n+1, R+1): `[hⱼ; 1]`.
    rel_h: Tensor,
}

/// The highest-scoring dependency tree: `scores[i][j]` is the score of word `i` (1-based;
/// row 0 is `[ROOT]`'s and unused) taking head `j` (0 = `[ROOT]`). Returns each word's head.
///
/// Chu-Liu/Edmonds (Chu & Liu 1965, Edmonds 1967) maximum spanning arborescence, with exactly
/// one word attached to `[ROOT]` as UD trees have: every root arc is lowered by more than the
/// spread of any two trees' scores, so the best tree under the lowered scores has one root
/// arc and is the best such tree under the original ones (the reduction of Gabow & Tarjan
/// 1984, as in Zmigrod et al. 2020). Ties go to the lower head index. O(n³).
pub fn mst(scores: &[Vec<f64>]) -> Vec<usize> {
    let n1 = scores.len();
    if n1 <= 1 {
        return Vec::new();
    }
    let (mut lo, mut hi) = (f64::INFINITY, f64::NEG_INFINITY);
    for (i, row) in scores.iter().enumerate().skip(1) {
        for (j, &x) in row.iter().enumerate() {
            if i != j && x.is_finite() {
                lo = lo.min(x);
                hi = hi.max(x);
            }
        }
    }
    let spread = if hi >= lo { hi - lo } else { 0.0 };
    let penalty = (spread + 1.0) * n1 as f64;
    let s: Vec<Vec<f64>> = scores
        .iter()
        .enumerate()
        .map(|(i, row)| {
            row.iter()
                .enumerate()
                .map(|(j, &x)| {
                    if i == 0 || i == j || !x.is_finite() {
                        f64::NEG_INFINITY
                    } else if j == 0 {
                        x - penalty
                    } else {
                        x
                    }
                })
                .collect()
        })
        .collect();
    chu_liu_edmonds(&s)[1..].to_vec()
}

/// The maximum spanning arborescence rooted at node 0 of `s[dependent][head]` (every node
/// `≥ 1` has a finite score on node 0). Returns every node's head (`[0]` unused).
fn chu_liu_edmonds(s: &[Vec<f64>]) -> Vec<usize> {
    let n = s.len();
    let mut head = vec![0usize; n];
    for d in 1..n {
        head[d] = (0..n)
            .filter(|&h| h != d)
            .max_by(|&a, &b| s[d][a].total_cmp(&s[d][b]).then(b.cmp(&a)))
            .unwrap_or(0);
    }
    let Some(cycle) = find_cycle(&head) else {
        return head;
    };
    // Contract the cycle into one node `c`, the last of the smaller graph.
    let mut in_cycle = vec![false; n];
    for &v in &cycle {
        in_cycle[v] = true;
    }
    let keep: Vec<usize> = (0..n).filter(|&v| !in_cycle[v]).collect();
    let m = keep.len() + 1;
    let c = m - 1;
    let mut t = vec![vec![f64::NEG_INFINITY; m]; m];
    // For a kept dependent `a` taking `c` as head: which cycle node is its head.
    let mut exit_to = vec![0usize; m];
    // For `c` taking kept node `a` as head: which cycle node's arc is replaced.
    let mut enter_at = vec![0usize; m];
    let best_of = |items: &mut dyn Iterator<Item = (usize, f64)>| {
        items
            .max_by(|x, y| x.1.total_cmp(&y.1).then(y.0.cmp(&x.0)))
            .expect("the cycle is not empty")
    };
    for (a, &u) in keep.iter().enumerate() {
        for (b, &v) in keep.iter().enumerate() {
            t[a][b] = s[u][v];
        }
        let (v, score) = best_of(&mut cycle.iter().map(|&v| (v, s[u][v])));
        t[a][c] = score;
        exit_to[a] = v;
        // Entering the cycle at `d` from `u` replaces `d`'s cycle arc.
        let (d, gain) = best_of(&mut cycle.iter().map(|&d| (d, s[d][u] - s[d][head[d]])));
        t[c][a] = gain;
        enter_at[a] = d;
    }
    let sub = chu_liu_edmonds(&t);
    let mut out = head;
    for (a, &u) in keep.iter().enumerate().skip(1) {
        out[u] = if sub[a] == c {
            exit_to[a]
        } else {
            keep[sub[a]]
        };
    }
    let a = sub[c];
    out[enter_at[a]] = keep[a];
    out
}

/// A cycle among `head` (node 0 has none), if any.
fn find_cycle(head: &[usize]) -> Option<Vec<usize>> {
    // 0: unvisited, 1: on the current path, 2: known to reach node 0.
    let mut state = vec![0u8; head.len()];
    state[0] = 2;
    for start in 1..head.len() {
        let mut path = Vec::new();
        let mut v = start;
        while state[v] == 0 {
            state[v] = 1;
            path.push(v);
            v = head[v];
        }
        if state[v] == 1 {
            let from = path.iter().position(|&x| x == v).expect("on the path");
            return Some(path[from..].to_vec());
        }
        for p in path {
            state[p] = 2;
        }
    }
    None
}

#[cfg(test)]
mod tests {
    use std::collections::HashMap;

    use super::*;

    fn values(n: usize, seed: u64) -> Vec<f32> {
        let mut s = seed;
        (0..n)
            .map(|_| {
                s = s
                    .wrapping_mul(6_364_136_223_846_793_005)
                    .wrapping_add(1_442_695_040_888_963_407);
                ((s >> 40) as f32 / (1u64 << 24) as f32) - 0.5
            })
            .collect()
    }

    /// The parse by the formulas of schemas/parser.md, in f64 loops: every arc score, the
    /// best single-root tree by enumeration, each arc's best relation.
    #[allow(clippy::needless_range_loop)]
    fn reference(
        t: &HashMap<String, Vec<f32>>,
        words: &[Vec<f32>],
        dims: (usize, usize, usize, usize),
    ) -> Parse {
        let (h, a, r, l) = dims;
        let mlp = |name: &str, x: &[f32], out: usize| -> Vec<f64> {
            let (w, b) = (
                &t[&format!("parser.{name}.weight")],
                &t[&format!("parser.{name}.bias")],
            );
            (0..out)
                .map(|o| {
                    let y = f64::from(b[o])
                        + (0..h)
                            .map(|k| f64::from(w[o * h + k]) * f64::from(x[k]))
                            .sum::<f64>();
                    if y > 0.0 { y } else { 0.1 * y }
                })
                .collect()
        };
        let mut xs = vec![t["parser.root"].clone()];
        xs.extend(words.iter().cloned());
        let n = words.len();
        let u = &t["parser.arc_attn.weight"];
        let wr = &t["parser.rel_attn.weight"];
        let arc = |i: usize, j: usize| -> f64 {
            let mut d = mlp("arc_dep", &xs[i], a);
            d.push(1.0);
            let hj = mlp("arc_head", &xs[j], a);
            (0..=a)
                .map(|p| {
                    (0..a)
                        .map(|q| d[p] * f64::from(u[p * a + q]) * hj[q])
                        .sum::<f64>()
                })
                .sum()
        };
        let scores: Vec<Vec<f64>> = (0..=n)
            .map(|i| (0..=n).map(|j| arc(i, j)).collect())
            .collect();
        best_tree(&scores)
            .into_iter()
            .enumerate()
            .map(|(k, head)| {
                let i = k + 1;
                let mut dr = mlp("rel_dep", &xs[i], r);
                dr.push(1.0);
                let mut hr = mlp("rel_head", &xs[head], r);
                hr.push(1.0);
                let rel_score = |lab: usize| -> f64 {
                    (0..=r)
                        .map(|p| {
                            (0..=r)
                                .map(|q| {
                                    dr[p] * f64::from(wr[(lab * (r + 1) + p) * (r + 1) + q]) * hr[q]
                                })
                                .sum::<f64>()
                        })
                        .sum()
                };
                let rel = (0..l)
                    .max_by(|&x, &y| rel_score(x).total_cmp(&rel_score(y)))
                    .unwrap();
                (head, rel)
            })
            .collect()
    }

    /// The best tree with one word on `[ROOT]`, by enumerating every head assignment.
    fn best_tree(scores: &[Vec<f64>]) -> Vec<usize> {
        let n = scores.len() - 1;
        let mut heads = vec![0usize; n];
        let mut best = (f64::NEG_INFINITY, Vec::new());
        loop {
            let tree = heads.iter().filter(|&&h| h == 0).count() == 1
                && (1..=n).all(|i| {
                    let (mut j, mut steps) = (i, 0);
                    while j != 0 && steps <= n {
                        j = heads[j - 1];
                        steps += 1;
                    }
                    j == 0
                });
            if tree {
                let score: f64 = heads
                    .iter()
                    .enumerate()
                    .map(|(k, &h)| scores[k + 1][h])
                    .sum();
                if score > best.0 {
                    best = (score, heads.clone());
                }
            }
            // Next assignment (odometer over 0..=n).
            let Some(k) = (0..n).find(|&k| heads[k] < n) else {
                return best.1;
            };
            heads[k] += 1;
            for h in &mut heads[..k] {
                *h = 0;
            }
        }
    }

    #[test]
    fn mst_is_the_best_single_root_tree() {
        let mut greedy_not_a_tree = 0;
        for n in 1..=6 {
            for seed in 0..40u64 {
                let v = values((n + 1) * (n + 1), 1000 * n as u64 + seed);
                let scores: Vec<Vec<f64>> = v
                    .chunks(n + 1)
                    .map(|row| row.iter().map(|&x| f64::from(x) * 10.0).collect())
                    .collect();
                let want = best_tree(&scores);
                assert_eq!(mst(&scores), want, "n {n}, seed {seed}");
                let greedy: Vec<usize> = (1..=n)
                    .map(|i| {
                        (0..=n)
                            .filter(|&j| j != i)
                            .max_by(|&a, &b| scores[i][a].total_cmp(&scores[i][b]))
                            .unwrap()
                    })
                    .collect();
                greedy_not_a_tree += usize::from(greedy != want);
            }
        }
        // The cases where decoding matters (cycles, several root words) were exercised.
        assert!(greedy_not_a_tree > 50, "{greedy_not_a_tree}");
        assert!(mst(&[vec![0.0]]).is_empty());
    }

    #[test]
    fn biaffine_scores_follow_the_documented_formulas() {
        let (h, a, r, l) = (6, 4, 3, 5);
        let shapes: [(&str, Vec<usize>); 11] = [
            ("parser.root", vec![h]),
            ("parser.arc_dep.weight", vec![a, h]),
            ("parser.arc_dep.bias", vec![a]),
            ("parser.arc_head.weight", vec![a, h]),
            ("parser.arc_head.bias", vec![a]),
            ("parser.rel_dep.weight", vec![r, h]),
            ("parser.rel_dep.bias", vec![r]),
            ("parser.rel_head.weight", vec![r, h]),
            ("parser.rel_head.bias", vec![r]),
            ("parser.arc_attn.weight", vec![a + 1, a]),
            ("parser.rel_attn.weight", vec![l, r + 1, r + 1]),
        ];
        let mut raw = HashMap::new();
        let mut map = HashMap::new();
        for (k, (name, shape)) in shapes.iter().enumerate() {
            let v = values(shape.iter().product(), 11 + k as u64);
            map.insert(
                (*name).to_owned(),
                Tensor::from_vec(v.clone(), shape.as_slice(), &Device::Cpu).unwrap(),
            );
            raw.insert((*name).to_owned(), v);
        }
        let config: Config = serde_json::from_str(
            r#"{"model_type": "bert", "vocab_size": 10, "hidden_size": 6, "num_hidden_layers": 0,
                "num_attention_heads": 1, "intermediate_size": 4, "max_position_embeddings": 8}"#,
        )
        .unwrap();
        let weights = Weights::new(map, &config);
        let parser = Parser::load(
            &weights,
            ParserConfig {
                word: "first".into(),
                activation: "leaky_relu".into(),
            },
        )
        .unwrap();
        // Two sentences of 4 and 2 words over 7 subword positions.
        let hidden = values(2 * 7 * h, 99);
        let tensor = Tensor::from_vec(hidden.clone(), (2, 7, h), &Device::Cpu).unwrap();
        let words = vec![
            vec![Some(1..2), Some(2..4), Some(4..5), Some(5..6)],
            vec![Some(1..3), Some(3..4)],
        ];
        let parses = parser.parse(&tensor, &words, &Device::Cpu).unwrap();
        for (s, ws) in words.iter().enumerate() {
            let vecs: Vec<Vec<f32>> = ws
                .iter()
                .map(|r| {
                    let p = r.as_ref().unwrap().start;
                    hidden[(s * 7 + p) * h..(s * 7 + p + 1) * h].to_vec()
                })
                .collect();
            assert_eq!(
                parses[s],
                reference(&raw, &vecs, (h, a, r, l)),
                "sentence {s}"
            );
        }
    }
}
