//! Task and language vectors: exact cosines on hand-built checkpoints, an independent f64
//! recomputation, the per-layer pattern of perturbed real weights, plots, and bad input.

use std::collections::BTreeMap;
use std::path::Path;

use crossmerge::vector::compare::CompareReport;
use crossmerge::{
    CheckpointKind, CompareOptions, DeriveOptions, Dtype, GroupBy, NoProgress, RegisterOptions,
    Registry, VectorKind,
};

use crate::common::{self, cm, read_safetensors, require_shared, write_safetensors};

// ---------------------------------------------------------------------------------------------
// Hand-built checkpoints whose vectors are exact in f32.

/// (name, shape, layer group, module group) of the hand-built model's float tensors.
const TENSORS: &[(&str, &[u64], &str, &str)] = &[
    (
        "embeddings.word_embeddings.weight",
        &[3, 2],
        "embeddings",
        "embeddings",
    ),
    (
        "encoder.layer.0.attention.self.query.weight",
        &[2, 2],
        "layer.0",
        "attention.query",
    ),
    (
        "encoder.layer.0.output.dense.weight",
        &[2, 3],
        "layer.0",
        "ffn.out",
    ),
    (
        "encoder.layer.1.attention.self.query.weight",
        &[2, 2],
        "layer.1",
        "attention.query",
    ),
    (
        "encoder.layer.1.output.LayerNorm.weight",
        &[4],
        "layer.1",
        "layernorm",
    ),
    ("pooler.dense.weight", &[2, 2], "other", "other"),
];
const TIED: &str = "cls.predictions.decoder.weight";

fn delta(v: usize, t: usize, e: usize) -> f32 {
    (((v * 7 + t * 3 + e * 5) % 9) as f32 - 4.0) * 0.25
}

fn f32_bytes(v: impl Iterator<Item = f32>) -> Vec<u8> {
    v.flat_map(f32::to_le_bytes).collect()
}

/// Writes the base (`v = None`) or fine-tune `v` of the hand-built model.
fn write_exact(dir: &Path, v: Option<usize>) {
    std::fs::create_dir_all(dir).unwrap();
    let mut tensors: Vec<(String, Dtype, Vec<u64>, Vec<u8>)> = Vec::new();
    for (t, (name, shape, _, _)) in TENSORS.iter().enumerate() {
        let n: u64 = shape.iter().product();
        let values = (0..n as usize).map(|e| 0.5 + v.map_or(0.0, |v| delta(v, t, e)));
        tensors.push((
            (*name).to_owned(),
            Dtype::F32,
            shape.to_vec(),
            f32_bytes(values),
        ));
    }
    let tied = tensors[0].3.clone();
    tensors.push((TIED.to_owned(), Dtype::F32, vec![3, 2], tied));
    tensors.push((
        "embeddings.position_ids".to_owned(),
        Dtype::I64,
        vec![1, 4],
        (0..4i64).flat_map(i64::to_le_bytes).collect(),
    ));
    if v.is_some() {
        tensors.push((
            "classifier.weight".to_owned(),
            Dtype::F32,
            vec![3, 2],
            f32_bytes((0..6).map(|i| i as f32)),
        ));
    }
    let refs: Vec<(&str, Dtype, Vec<u64>, Vec<u8>)> = tensors
        .iter()
        .map(|(n, d, s, b)| (n.as_str(), *d, s.clone(), b.clone()))
        .collect();
    write_safetensors(&dir.join("model.safetensors"), &refs);
    std::fs::write(dir.join("config.json"), r#"{"model_type": "bert"}"#).unwrap();
}

/// Expected (dot, norm², norm², agree, both non-zero) per group, in f64 from the formula.
fn expected(
    v1: usize,
    v2: usize,
    group_of: impl Fn(usize) -> String,
    count_tied: bool,
) -> BTreeMap<String, [f64; 5]> {
    let mut out: BTreeMap<String, [f64; 5]> = BTreeMap::new();
    let mut add = |g: String, t: usize, n: usize| {
        let e = out.entry(g).or_default();
        for i in 0..n {
            let (a, b) = (f64::from(delta(v1, t, i)), f64::from(delta(v2, t, i)));
            e[0] += a * b;
            e[1] += a * a;
            e[2] += b * b;
            if a != 0.0 && b != 0.0 {
                e[4] += 1.0;
                if (a > 0.0) == (b > 0.0) {
                    e[3] += 1.0;
                }
            }
        }
    };
    for (t, (_, shape, _, _)) in TENSORS.iter().enumerate() {
        add(group_of(t), t, shape.iter().product::<u64>() as usize);
    }
    if count_tied {
        add(group_of(usize::MAX), 0, 6);
    }
    out
}

fn exact_registry(root: &Path, tmp: &Path) -> Registry {
    let mut reg = Registry::create(root).unwrap();
    write_exact(&tmp.join("base"), None);
    reg.register(
        &tmp.join("base"),
        &RegisterOptions::new("base", CheckpointKind::Base),
        &NoProgress,
    )
    .unwrap();
    for v in 1..=3 {
        let dir = tmp.join(format!("ft{v}"));
        write_exact(&dir, Some(v));
        let opts = RegisterOptions::new(format!("ft{v}"), CheckpointKind::Language)
            .language("es")
            .base("base");
        reg.register(&dir, &opts, &NoProgress).unwrap();
        reg.derive(
            &DeriveOptions::new(VectorKind::Language, format!("v{v}"), format!("ft{v}")),
            &NoProgress,
        )
        .unwrap();
    }
    reg
}

fn check_exact(report: &CompareReport, group_of: &dyn Fn(usize) -> String, count_tied: bool) {
    for (i, j) in [(0, 1), (0, 2), (1, 2)] {
        let want = expected(i + 1, j + 1, group_of, count_tied);
        assert_eq!(
            report.groups.len(),
            want.len(),
            "{:?}",
            report.groups.iter().map(|g| &g.group).collect::<Vec<_>>()
        );
        for g in &report.groups {
            let w = want[&g.group];
            let cos = w[0] / (w[1].sqrt() * w[2].sqrt());
            let got = g.cosine[i][j].unwrap();
            assert!(
                (got - cos).abs() < 1e-12,
                "{} v{} v{}: {got} vs {cos}",
                g.group,
                i + 1,
                j + 1
            );
            assert!((g.norms[i] - w[1].sqrt()).abs() < 1e-12);
            assert!((g.sign_agreement[i][j].unwrap() - w[3] / w[4]).abs() < 1e-12);
            assert_eq!(g.cosine[j][i], g.cosine[i][j]);
            assert!((g.cosine[i][i].unwrap() - 1.0).abs() < 1e-12);
        }
    }
}

#[test]
fn cosines_are_exact_for_every_grouping_and_tied_weights_count_once() {
    let tmp = tempfile::tempdir().unwrap();
    let reg = exact_registry(&tmp.path().join("reg"), tmp.path());
    let vs: Vec<String> = (1..=3).map(|v| format!("v{v}")).collect();
    let layer = |t: usize| {
        if t == usize::MAX {
            "other".to_owned()
        } else {
            TENSORS[t].2.to_owned()
        }
    };
    let module = |t: usize| {
        if t == usize::MAX {
            "other".to_owned()
        } else {
            TENSORS[t].3.to_owned()
        }
    };
    let tensor = |t: usize| {
        if t == usize::MAX {
            TIED.to_owned()
        } else {
            TENSORS[t].0.to_owned()
        }
    };
    for count_tied in [false, true] {
        let run = |by| {
            reg.compare(
                &vs,
                &CompareOptions::default().by(by).count_tied(count_tied),
                &NoProgress,
            )
            .unwrap()
        };
        let model = run(GroupBy::Model);
        check_exact(&model, &|_| "model".to_owned(), count_tied);
        assert_eq!(
            model.tied.len(),
            usize::from(!count_tied),
            "{:?}",
            model.tied
        );
        check_exact(&run(GroupBy::Layer), &layer, count_tied);
        check_exact(&run(GroupBy::Module), &module, count_tied);
        check_exact(&run(GroupBy::Tensor), &tensor, count_tied);
    }
    // Layer order: embeddings, layer.0, layer.1, other.
    let groups: Vec<String> = reg
        .compare(
            &vs,
            &CompareOptions::default().by(GroupBy::Layer),
            &NoProgress,
        )
        .unwrap()
        .groups
        .into_iter()
        .map(|g| g.group)
        .collect();
    assert_eq!(groups, ["embeddings", "layer.0", "layer.1", "other"]);

    // show: lineage, heads, skipped integers, per-tensor norms that add up.
    let d = reg.show_vector("v1").unwrap();
    assert_eq!(d.vector.from, "ft1@1");
    assert_eq!(d.vector.minus, "base@1");
    assert_eq!(d.heads, ["classifier.weight"]);
    assert_eq!(d.skipped_integer, ["embeddings.position_ids"]);
    assert_eq!(d.tensors.len(), TENSORS.len() + 1);
    let total: f64 = d
        .tensors
        .iter()
        .map(|t| t.l2_norm * t.l2_norm)
        .sum::<f64>()
        .sqrt();
    assert!((total - d.vector.l2_norm).abs() < 1e-12);
    let want = expected(1, 1, |_| "m".into(), true)["m"][0].sqrt();
    assert!((d.vector.l2_norm - want).abs() < 1e-12);
}

#[test]
fn filters_versions_and_dedup() {
    let tmp = tempfile::tempdir().unwrap();
    let mut reg = exact_registry(&tmp.path().join("reg"), tmp.path());
    let same = reg
        .derive(
            &DeriveOptions::new(VectorKind::Language, "v1", "ft1"),
            &NoProgress,
        )
        .unwrap();
    assert!(!same.created);
    assert_eq!(same.vector.version, 1);
    let explicit = reg
        .derive(
            &DeriveOptions::new(VectorKind::Language, "v1", "ft1").minus("base@1"),
            &NoProgress,
        )
        .unwrap();
    assert!(
        !explicit.created,
        "naming the default --minus is the same definition"
    );
    let filtered = reg
        .derive(
            &DeriveOptions::new(VectorKind::Language, "v1", "ft1")
                .include("encoder.*")
                .exclude("*.LayerNorm.*"),
            &NoProgress,
        )
        .unwrap();
    assert!(filtered.created);
    assert_eq!(filtered.vector.version, 2);
    assert_eq!(filtered.vector.tensor_count, 3);
    assert_eq!(filtered.filtered_out, 4);
    assert_eq!(reg.resolve_vector("v1").unwrap().version, 2);
    assert_eq!(reg.resolve_vector("v1@1").unwrap().tensor_count, 7);
    let as_task = reg
        .derive(
            &DeriveOptions::new(VectorKind::Task, "t1", "ft1"),
            &NoProgress,
        )
        .unwrap();
    assert!(as_task.created);
    assert_ne!(
        as_task.vector.definition, same.vector.definition,
        "the kind is part of the definition"
    );
    // A vector costs no stored bytes.
    let before = reg.du().unwrap().total_stored;
    reg.derive(
        &DeriveOptions::new(VectorKind::Language, "v9", "ft2"),
        &NoProgress,
    )
    .unwrap();
    assert_eq!(reg.du().unwrap().total_stored, before);
}

// ---------------------------------------------------------------------------------------------
// An independent recomputation over exported tensors.

#[test]
fn an_independent_f64_implementation_agrees() {
    let tmp = tempfile::tempdir().unwrap();
    let fam = common::tiny_family(&tmp.path().join("fam"), 3, Some(4));
    let root = tmp.path().join("reg");
    cm(
        &root,
        &[
            "register",
            fam[0].to_str().unwrap(),
            "--name",
            "base",
            "--kind",
            "base",
        ],
    )
    .assert()
    .success();
    for (i, dir) in fam.iter().enumerate().skip(1) {
        let name = format!("ft{i}");
        cm(
            &root,
            &[
                "register",
                dir.to_str().unwrap(),
                "--name",
                &name,
                "--kind",
                "task",
                "--task",
                "pos",
                "--base",
                "base",
            ],
        )
        .assert()
        .success();
        cm(
            &root,
            &[
                "derive",
                "task",
                "--from",
                &name,
                "--name",
                &format!("pos-{i}"),
            ],
        )
        .assert()
        .success();
    }
    let out = cm(
        &root,
        &[
            "compare", "pos-1", "pos-2", "pos-3", "--by", "layer", "--json",
        ],
    )
    .assert()
    .success();
    let report: serde_json::Value = serde_json::from_slice(&out.get_output().stdout).unwrap();

    // Separately: export, read the tensors, subtract in f64, group by layer by hand.
    let load = |name: &str| {
        let dir = tmp.path().join(format!("export-{name}"));
        cm(&root, &["export", name, "--out", dir.to_str().unwrap()])
            .assert()
            .success();
        read_safetensors(&dir.join("model.safetensors"))
    };
    let base = load("base");
    let fts: Vec<_> = (1..=3).map(|i| load(&format!("ft{i}"))).collect();
    let layer_of = |name: &str| -> String {
        let parts: Vec<&str> = name.split('.').collect();
        match parts.iter().position(|p| *p == "layer") {
            Some(i) => format!("layer.{}", parts[i + 1]),
            None if name.contains("embeddings") => "embeddings".into(),
            None => "other".into(),
        }
    };
    let mut dots: BTreeMap<String, [[f64; 3]; 3]> = BTreeMap::new();
    for (name, (dtype, _, b)) in &base {
        assert_eq!(dtype, "F32");
        let f = |bytes: &[u8]| -> Vec<f64> {
            bytes
                .chunks_exact(4)
                .map(|c| f64::from(f32::from_le_bytes(c.try_into().unwrap())))
                .collect()
        };
        let bv = f(b);
        let vs: Vec<Vec<f64>> = fts
            .iter()
            .map(|ft| f(&ft[name].2).iter().zip(&bv).map(|(x, y)| x - y).collect())
            .collect();
        let d = dots.entry(layer_of(name)).or_default();
        for i in 0..3 {
            for j in 0..3 {
                d[i][j] += vs[i].iter().zip(&vs[j]).map(|(a, b)| a * b).sum::<f64>();
            }
        }
    }
    let groups = report["groups"].as_array().unwrap();
    assert_eq!(groups.len(), dots.len());
    for g in groups {
        let d = dots[g["group"].as_str().unwrap()];
        for i in 0..3 {
            let norm = d[i][i].sqrt();
            assert!(
                (g["norms"][i].as_f64().unwrap() - norm).abs() <= 1e-6 * norm,
                "{g}"
            );
            for j in 0..3 {
                let cos = d[i][j] / (d[i][i].sqrt() * d[j][j].sqrt());
                let got = g["cosine"][i][j].as_f64().unwrap();
                assert!(
                    (got - cos).abs() < 1e-6,
                    "{} {i} {j}: {got} vs {cos}",
                    g["group"]
                );
            }
        }
    }
}

// ---------------------------------------------------------------------------------------------
// Real weights: MiniLM and perturbed copies with a designed per-layer pattern.

fn splitmix(state: &mut u64) -> u64 {
    *state = state.wrapping_add(0x9E37_79B9_7F4A_7C15);
    let mut z = *state;
    z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
    z ^ (z >> 31)
}

fn uniform(state: &mut u64) -> f32 {
    ((splitmix(state) >> 40) as f32 / (1u64 << 24) as f32) * 2.0 - 1.0
}

/// The designed cosine of copy `c` (0 or 1) with the reference perturbation, per layer group.
fn target(c: usize, group: &str) -> f64 {
    match group.strip_prefix("layer.") {
        Some(l) => {
            let l: f64 = l.parse().unwrap();
            if c == 0 {
                0.9 - 0.15 * l
            } else {
                0.15 + 0.15 * l
            }
        }
        None if group == "embeddings" => 0.5,
        None => 0.0,
    }
}

#[test]
fn perturbed_minilm_copies_recover_their_per_layer_pattern() {
    let shared = require_shared!();
    let src = common::minilm(&shared);
    let tmp = tempfile::tempdir().unwrap();
    let original = read_safetensors(&src.join("model.safetensors"));
    let group_of = |name: &str| crossmerge::vector::group::key(GroupBy::Layer, name).label();
    // copy 2 is the reference: base + p. Copies 0, 1: base + c·p + sqrt(1 − c²)·q.
    for copy in 0..3usize {
        let mut seed_p = 7u64;
        let mut seed_q = 1000 + copy as u64;
        let tensors: Vec<(String, Dtype, Vec<u64>, Vec<u8>)> = original
            .iter()
            .map(|(name, (dtype, shape, bytes))| {
                if dtype != "F32" {
                    return (
                        name.clone(),
                        Dtype::from_name(dtype).unwrap(),
                        shape.clone(),
                        bytes.clone(),
                    );
                }
                let c = if copy == 2 {
                    1.0
                } else {
                    target(copy, &group_of(name)) as f32
                };
                let s = (1.0 - c * c).sqrt();
                let values = bytes.chunks_exact(4).map(|b| {
                    let (p, q) = (uniform(&mut seed_p), uniform(&mut seed_q));
                    f32::from_le_bytes(b.try_into().unwrap()) + 0.01 * (c * p + s * q)
                });
                (name.clone(), Dtype::F32, shape.clone(), f32_bytes(values))
            })
            .collect();
        let dir = tmp.path().join(format!("copy{copy}"));
        std::fs::create_dir_all(&dir).unwrap();
        let refs: Vec<_> = tensors
            .iter()
            .map(|(n, d, s, b)| (n.as_str(), *d, s.clone(), b.clone()))
            .collect();
        write_safetensors(&dir.join("model.safetensors"), &refs);
        std::fs::copy(src.join("config.json"), dir.join("config.json")).unwrap();
    }
    let root = tmp.path().join("reg");
    let mut reg = Registry::create(&root).unwrap();
    reg.register(
        &src,
        &RegisterOptions::new("minilm", CheckpointKind::Base),
        &NoProgress,
    )
    .unwrap();
    for (copy, lang) in [(0, "de"), (1, "hi"), (2, "en")] {
        let name = format!("minilm-{lang}");
        let opts = RegisterOptions::new(&name, CheckpointKind::Language)
            .language(lang)
            .base("minilm");
        reg.register(&tmp.path().join(format!("copy{copy}")), &opts, &NoProgress)
            .unwrap();
        reg.derive(
            &DeriveOptions::new(VectorKind::Language, format!("lang/{lang}"), &name),
            &NoProgress,
        )
        .unwrap();
    }
    let d = reg.show_vector("lang/en").unwrap();
    assert_eq!(d.skipped_integer, ["embeddings.position_ids"]);
    drop(reg);

    let png = tmp.path().join("layers.png");
    let svg = tmp.path().join("lines.svg");
    let out = cm(
        &root,
        &[
            "compare",
            "lang/de",
            "lang/hi",
            "--reference",
            "lang/en",
            "--by",
            "layer",
            "--json",
            "--plot",
            png.to_str().unwrap(),
            "--plot-lines",
            svg.to_str().unwrap(),
        ],
    )
    .assert()
    .success();
    let report: CompareReportJson = serde_json::from_slice(&out.get_output().stdout).unwrap();
    assert_eq!(report.reference, Some(2));
    let groups: Vec<&str> = report.groups.iter().map(|g| g.group.as_str()).collect();
    assert_eq!(
        groups,
        [
            "embeddings",
            "layer.0",
            "layer.1",
            "layer.2",
            "layer.3",
            "layer.4",
            "layer.5",
            "other"
        ]
    );
    for g in &report.groups {
        for copy in 0..2 {
            let got = g.cosine[copy][2].unwrap();
            let want = target(copy, &g.group);
            assert!(
                (got - want).abs() < 0.01,
                "{} copy {copy}: {got:.4} vs designed {want}",
                g.group
            );
        }
    }
    // The plots open: the PNG decodes at the size its layout gives, the SVG parses and names
    // the languages.
    let img = image::open(&png).unwrap();
    let rows = vec!["lang/de@1".to_owned(), "lang/hi@1".to_owned()];
    let cols: Vec<String> = groups.iter().map(|s| (*s).to_owned()).collect();
    let layout = crossmerge::report::Heatmap {
        rows,
        cols,
        ..Default::default()
    };
    assert_eq!((img.width(), img.height()), layout.size());
    let text = std::fs::read_to_string(&svg).unwrap();
    let doc = roxmltree::Document::parse(&text).unwrap();
    let texts: Vec<&str> = doc.descendants().filter_map(|n| n.text()).collect();
    for label in ["lang/de@1", "lang/hi@1", "layer.3", "cosine similarity"] {
        assert!(
            texts.iter().any(|t| t.contains(label)),
            "{label} missing from the SVG"
        );
    }
}

#[derive(serde::Deserialize)]
struct CompareReportJson {
    reference: Option<usize>,
    groups: Vec<GroupJson>,
}

#[derive(serde::Deserialize)]
struct GroupJson {
    group: String,
    cosine: Vec<Vec<Option<f64>>>,
}

#[test]
fn matrix_plots_render_as_png_and_svg() {
    let tmp = tempfile::tempdir().unwrap();
    let _reg = exact_registry(&tmp.path().join("reg"), tmp.path());
    let root = tmp.path().join("reg");
    let png = tmp.path().join("m.png");
    let svg = tmp.path().join("m.svg");
    let csv = tmp.path().join("m.csv");
    for p in [&png, &svg] {
        cm(
            &root,
            &[
                "compare",
                "v1",
                "v2",
                "v3",
                "--plot",
                p.to_str().unwrap(),
                "--csv",
                csv.to_str().unwrap(),
            ],
        )
        .assert()
        .success();
    }
    let names: Vec<String> = (1..=3).map(|v| format!("v{v}@1")).collect();
    let h = crossmerge::report::Heatmap {
        rows: names.clone(),
        cols: names,
        ..Default::default()
    };
    let img = image::open(&png).unwrap();
    assert_eq!((img.width(), img.height()), h.size());
    let text = std::fs::read_to_string(&svg).unwrap();
    let doc = roxmltree::Document::parse(&text).unwrap();
    assert!(
        doc.descendants()
            .filter_map(|n| n.text())
            .any(|t| t.contains("v2@1"))
    );
    let table = std::fs::read_to_string(&csv).unwrap();
    assert_eq!(table.lines().count(), 1 + 9);
    assert!(table.starts_with("group,vector_a,vector_b,cosine,sign_agreement"));
}

// ---------------------------------------------------------------------------------------------

#[test]
fn bad_vector_input_gets_one_line_and_a_hint() {
    let tmp = tempfile::tempdir().unwrap();
    let root = tmp.path().join("reg");
    let _reg = exact_registry(&root, tmp.path());
    let tiny = common::tiny_family(&tmp.path().join("tiny"), 1, None);
    cm(
        &root,
        &[
            "register",
            tiny[0].to_str().unwrap(),
            "--name",
            "tiny",
            "--kind",
            "base",
        ],
    )
    .assert()
    .success();
    cm(
        &root,
        &[
            "register",
            tiny[1].to_str().unwrap(),
            "--name",
            "tiny-ft",
            "--kind",
            "base",
        ],
    )
    .assert()
    .success();
    // Same names as the hand-built model but other shapes: a foreign architecture.
    for (name, scale) in [("other", 1.0f32), ("other2", 2.0)] {
        let dir = tmp.path().join(name);
        std::fs::create_dir_all(&dir).unwrap();
        let values = f32_bytes((0..4).map(|i| i as f32 * scale));
        write_safetensors(
            &dir.join("model.safetensors"),
            &[(TENSORS[1].0, Dtype::F32, vec![4], values)],
        );
        cm(
            &root,
            &[
                "register",
                dir.to_str().unwrap(),
                "--name",
                name,
                "--kind",
                "base",
            ],
        )
        .assert()
        .success();
    }
    cm(
        &root,
        &[
            "derive", "language", "--from", "other2", "--minus", "other", "--name", "w",
        ],
    )
    .assert()
    .success();

    for (args, expect) in [
        (vec!["compare", "v1", "w"], "has shape"),
        (vec!["compare", "v1"], "at least two vectors"),
        (vec!["compare", "v1", "nope"], "no vector matches `nope`"),
        (
            vec![
                "derive",
                "task",
                "--from",
                "ft1",
                "--name",
                "x",
                "--include",
                "nothing.*",
            ],
            "no tensors left",
        ),
        (
            vec!["derive", "task", "--from", "tiny-ft", "--name", "x"],
            "has no registered base",
        ),
        (
            vec![
                "derive", "task", "--from", "tiny-ft", "--minus", "base", "--name", "x",
            ],
            "has no tensors left",
        ),
        (
            vec![
                "derive", "task", "--from", "ft1", "--minus", "other", "--name", "x",
            ],
            "tensor `encoder.layer.0.attention.self.query.weight`",
        ),
        (
            vec![
                "derive",
                "task",
                "--from",
                "ft1",
                "--name",
                "x",
                "--include",
                "[unclosed",
            ],
            "not a valid glob",
        ),
        (
            vec!["compare", "v1", "v2", "--plot", "out.gif"],
            "neither .png nor .svg",
        ),
    ] {
        let out = cm(&root, &args).assert().code(1);
        let stderr = String::from_utf8(out.get_output().stderr.clone()).unwrap();
        let lines: Vec<&str> = stderr.lines().collect();
        assert_eq!(lines.len(), 2, "{args:?}: {stderr}");
        assert!(
            lines[0].starts_with("error: ") && lines[0].contains(expect),
            "{args:?}: {stderr}"
        );
        assert!(lines[1].starts_with("hint: "), "{args:?}: {stderr}");
    }
}

#[test]
fn diff_reports_added_removed_retyped_and_changed() {
    let tmp = tempfile::tempdir().unwrap();
    let reg = exact_registry(&tmp.path().join("reg"), tmp.path());
    let d = reg.diff("base", "ft1", &NoProgress).unwrap();
    assert_eq!(d.added, ["classifier.weight"]);
    assert!(d.removed.is_empty() && d.retyped.is_empty());
    assert_eq!(d.unchanged, 1, "position ids are equal");
    assert_eq!(d.changed.len(), TENSORS.len() + 1);
    // Relative L2 of one tensor, by hand: ‖δ‖ / ‖0.5‖.
    let t = 1;
    let n = 4;
    let num: f64 = (0..n)
        .map(|e| f64::from(delta(1, t, e)).powi(2))
        .sum::<f64>()
        .sqrt();
    let den = (n as f64 * 0.25f64).sqrt();
    let got = d
        .changed
        .iter()
        .find(|c| c.name == TENSORS[t].0)
        .unwrap()
        .relative_l2
        .unwrap();
    assert!((got - num / den).abs() < 1e-12, "{got} vs {}", num / den);
    let out = cm(&tmp.path().join("reg"), &["diff", "ft1", "base"])
        .assert()
        .success();
    let text = String::from_utf8(out.get_output().stdout.clone()).unwrap();
    assert!(text.contains("removed  classifier.weight"), "{text}");
    assert!(
        text.lines()
            .last()
            .unwrap()
            .contains("1 unchanged, 7 changed"),
        "{text}"
    );
}

#[test]
fn a_damaged_input_fails_the_comparison_instead_of_skewing_it() {
    let tmp = tempfile::tempdir().unwrap();
    let root = tmp.path().join("reg");
    let reg = exact_registry(&root, tmp.path());
    let ft = reg.manifest(&reg.resolve("ft2").unwrap()).unwrap();
    let id = ft
        .tensor("encoder.layer.1.attention.self.query.weight")
        .unwrap()
        .object();
    let hex = id.to_hex();
    let path = root.join("objects").join(&hex[..2]).join(&hex);
    let mut bytes = std::fs::read(&path).unwrap();
    let last_frame_byte = bytes.len() - 40;
    bytes[last_frame_byte] ^= 0x01;
    std::fs::write(&path, bytes).unwrap();
    drop(reg);
    let out = cm(&root, &["compare", "v1", "v2", "v3"]).assert().code(1);
    let stderr = String::from_utf8(out.get_output().stderr.clone()).unwrap();
    assert!(
        stderr.contains("encoder.layer.1.attention.self.query.weight")
            && stderr.contains(&id.to_string()),
        "{stderr}"
    );
    assert!(
        out.get_output().stdout.is_empty(),
        "no statistics from damaged bytes"
    );
}

/// An F32 fine-tune of an F16 base (what training a half-precision checkpoint gives): its
/// vector is taken in F32 after widening the base exactly, and merging it back onto the F16
/// base gives the fine-tune's values in F16.
#[test]
fn a_vector_of_an_f32_fine_tune_over_an_f16_base_is_exact() {
    let tmp = tempfile::tempdir().unwrap();
    let f16 = |v: &[u16]| v.iter().flat_map(|x| x.to_le_bytes()).collect::<Vec<u8>>();
    let f32b = |v: &[f32]| v.iter().flat_map(|x| x.to_le_bytes()).collect::<Vec<u8>>();
    // 1.0, 0.5, 2.0, -1.0 in F16.
    let base = tmp.path().join("base.safetensors");
    write_safetensors(
        &base,
        &[(
            "w",
            Dtype::F16,
            vec![4],
            f16(&[0x3C00, 0x3800, 0x4000, 0xBC00]),
        )],
    );
    let tuned = tmp.path().join("tuned.safetensors");
    write_safetensors(
        &tuned,
        &[("w", Dtype::F32, vec![4], f32b(&[1.25, 0.5, 1.0, -1.0]))],
    );
    let reg = tmp.path().join("reg");
    cm(
        &reg,
        &[
            "register",
            base.to_str().unwrap(),
            "--name",
            "b",
            "--kind",
            "base",
        ],
    )
    .assert()
    .success();
    cm(
        &reg,
        &[
            "register",
            tuned.to_str().unwrap(),
            "--name",
            "t",
            "--kind",
            "task",
            "--task",
            "pos",
            "--base",
            "b",
        ],
    )
    .assert()
    .success();
    let out = cm(
        &reg,
        &["derive", "task", "--from", "t", "--name", "v", "--json"],
    )
    .output()
    .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    let norm = v["vector"]["l2_norm"].as_f64().unwrap();
    assert!((norm - 1.0625f64.sqrt()).abs() < 1e-15, "{norm}");
    let recipe = tmp.path().join("r.toml");
    std::fs::write(
        &recipe,
        "name = \"m\"\nmethod = \"task_arithmetic\"\nbase = \"b\"\n[[inputs]]\nvector = \"v\"\n",
    )
    .unwrap();
    cm(&reg, &["merge", recipe.to_str().unwrap()])
        .assert()
        .success();
    let dir = tmp.path().join("m");
    cm(&reg, &["export", "m", "--out", dir.to_str().unwrap()])
        .assert()
        .success();
    let merged = read_safetensors(&dir.join("model.safetensors"));
    assert_eq!(merged["w"].0, "F16");
    assert_eq!(merged["w"].2, f16(&[0x3D00, 0x3800, 0x3C00, 0xBC00]));
}
