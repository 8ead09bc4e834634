//! Recipes and merges: the examples in recipes/ (snapshotted ids), agreement with an f64
//! reference, streaming = in-memory bits, validation before any weight is read, failures that
//! leave nothing, exported folders Hugging Face loads.

use std::collections::{BTreeMap, HashSet};
use std::io;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};

use crossmerge::recipe;
use crossmerge::registry::{MergeOptions, MergedPoint};
use crossmerge::store::codec::ObjectKind;
use crossmerge::store::{Backend, FaultBackend, FsBackend, ObjectReader, ObjectWriter};
use crossmerge::tensor::merge::{dare_at, magnitude_mask, stream_of};
use crossmerge::{
    CheckpointFilter, CheckpointKind, DeriveOptions, Error, NoProgress, ObjectId, RegisterOptions,
    Registry, VectorKind,
};
use crossmerge_synth::{Shape, write_checkpoint};
use tempfile::TempDir;

use crate::common::{assert_verify_clean, cm, read_model_tensors};

fn recipes_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("recipes")
}

/// The registry the recipes in recipes/ expect: a tiny XLM-R base, three English task models
/// with heads, three language models, and their vectors.
pub(crate) fn fixture(dir: &Path) -> PathBuf {
    let src = dir.join("src");
    let shape = Shape::TINY;
    write_checkpoint(&src.join("base"), &shape, 42, None, None).unwrap();
    let reg_dir = dir.join("reg");
    let mut reg = Registry::create(&reg_dir).unwrap();
    reg.register(
        &src.join("base"),
        &RegisterOptions::new("xlmr-base", CheckpointKind::Base),
        &NoProgress,
    )
    .unwrap();
    for (k, task) in ["pos", "ner", "nli"].iter().enumerate() {
        let p = src.join(task);
        write_checkpoint(&p, &shape, 42, Some((100 + k as u64, 1e-2)), Some(5)).unwrap();
        let name = format!("xlmr-{task}-en");
        reg.register(
            &p,
            &RegisterOptions::new(&name, CheckpointKind::Task)
                .task(*task)
                .language("en")
                .base("xlmr-base"),
            &NoProgress,
        )
        .unwrap();
        reg.derive(
            &DeriveOptions::new(VectorKind::Task, format!("task/{task}-en"), &name),
            &NoProgress,
        )
        .unwrap();
    }
    for (k, lang) in ["es", "de", "hi"].iter().enumerate() {
        let p = src.join(lang);
        write_checkpoint(&p, &shape, 42, Some((200 + k as u64, 1e-2)), None).unwrap();
        let name = format!("xlmr-mlm-{lang}");
        reg.register(
            &p,
            &RegisterOptions::new(&name, CheckpointKind::Language)
                .language(*lang)
                .base("xlmr-base"),
            &NoProgress,
        )
        .unwrap();
        reg.derive(
            &DeriveOptions::new(VectorKind::Language, format!("language/{lang}"), &name),
            &NoProgress,
        )
        .unwrap();
    }
    reg_dir
}

fn run(
    reg: &mut Registry,
    path: &Path,
    opts: &MergeOptions,
) -> crossmerge::Result<Vec<MergedPoint>> {
    let recipe = recipe::load(path)?;
    let text = std::fs::read_to_string(path).unwrap();
    reg.merge(&recipe, &text, opts, &NoProgress)
}

pub(crate) fn write_recipe(dir: &Path, name: &str, text: &str) -> PathBuf {
    let p = dir.join(name);
    std::fs::write(&p, text).unwrap();
    p
}

#[test]
fn every_example_recipe_runs_and_keeps_its_ids() {
    let tmp = TempDir::new().unwrap();
    let reg_dir = fixture(tmp.path());
    let mut reg = Registry::create(&reg_dir).unwrap();
    let mut ids = BTreeMap::new();
    // The recipes (study folders beside them are run by the study tests).
    let mut files: Vec<PathBuf> = std::fs::read_dir(recipes_dir())
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| p.is_file())
        .collect();
    files.sort();
    assert!(files.len() >= 4);
    for f in &files {
        let points = run(&mut reg, f, &MergeOptions::default()).unwrap();
        for p in &points {
            let c = p.checkpoint.as_ref().unwrap();
            assert_eq!(c.kind, CheckpointKind::Merged);
            assert!(!p.reused);
            ids.insert(p.name.clone(), c.manifest_id.to_hex());
            let prov = reg.merge_of(c).unwrap().expect("a merge row");
            assert_eq!(prov.recipe_hash, p.recipe_hash);
            assert!(
                prov.recipe_source.contains("method")
                    || prov.recipe_source.contains("merge_method")
            );
        }
        // The same recipe on the same inputs: the existing results, nothing merged.
        for p in run(&mut reg, f, &MergeOptions::default()).unwrap() {
            assert!(p.reused, "{} merged again", p.name);
            assert_eq!(p.objects_written, 0);
        }
    }
    assert_eq!(
        ids.keys()
            .filter(|k| k.starts_with("pos-en+es/es="))
            .count(),
        11,
        "the λ sweep makes one checkpoint per point"
    );
    // λ = 0 is the English task model, bit for bit (heads and config from it too).
    let ta = reg.resolve("pos-en+es/es=0").unwrap();
    let task = reg.resolve("xlmr-pos-en").unwrap();
    assert_eq!(ta.manifest_id, task.manifest_id);
    assert_verify_clean(&reg_dir);

    let golden = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/recipe-ids.json");
    let now = serde_json::to_string_pretty(&ids).unwrap() + "\n";
    if std::env::var_os("CROSSMERGE_BLESS").is_some() {
        std::fs::write(&golden, &now).unwrap();
    }
    let committed = std::fs::read_to_string(&golden).unwrap();
    assert_eq!(
        committed, now,
        "merged ids changed; if intended, rerun with CROSSMERGE_BLESS=1 and commit tests/fixtures/recipe-ids.json"
    );
}

fn tensors_of(reg: &Registry, name: &str) -> BTreeMap<String, Vec<f32>> {
    let c = reg.resolve(name).unwrap();
    let m = reg.manifest(&c).unwrap();
    m.tensors
        .iter()
        .map(|t| {
            let bytes = reg.read_tensor(&m, &t.name).unwrap();
            let v = bytes
                .chunks_exact(4)
                .map(|b| f32::from_le_bytes(b.try_into().unwrap()))
                .collect();
            (t.name.clone(), v)
        })
        .collect()
}

fn assert_close(got: &[f32], want: &[f64], what: &str) {
    assert_eq!(got.len(), want.len());
    for (i, (g, w)) in got.iter().zip(want).enumerate() {
        let tol = 1e-6 * w.abs().max(1e-3);
        assert!(
            (f64::from(*g) - w).abs() <= tol,
            "{what}[{i}]: {g} vs reference {w}"
        );
    }
}

#[test]
fn merges_agree_with_an_f64_reference() {
    let tmp = TempDir::new().unwrap();
    let reg_dir = fixture(tmp.path());
    let mut reg = Registry::create(&reg_dir).unwrap();
    let r = |name: &str, body: &str| write_recipe(tmp.path(), name, body);
    let inputs = "base = \"xlmr-base\"\n[heads]\nfrom = \"xlmr-pos-en\"\n[[inputs]]\ncheckpoint = \"xlmr-pos-en\"\nweight = 0.7\n[[inputs]]\ncheckpoint = \"xlmr-ner-en\"\nweight = -0.4\n[[inputs]]\ncheckpoint = \"xlmr-nli-en\"\nweight = 1.3\n";
    for (method, extra) in [
        ("task_arithmetic", "lambda = 0.8\n"),
        ("ties", "density = 0.3\n"),
        ("dare_linear", "density = 0.4\n[output]\nseed = 9\n"),
        (
            "dare_linear-l1",
            "density = 0.4\nrescale_norm = \"l1\"\n[output]\nseed = 9\n",
        ),
        ("linear", ""),
    ] {
        let (method, variant) = method.split_once('-').unwrap_or((method, ""));
        let body = format!("name = \"ref-{method}{variant}\"\nmethod = \"{method}\"\n{extra}");
        // TOML: top-level keys before tables.
        let (top, tables) = body
            .split_once("[output]")
            .map_or((body.as_str(), String::new()), |(a, b)| {
                (a, format!("[output]{b}"))
            });
        let text = format!("{top}{inputs}{tables}");
        let path = r(&format!("{method}{variant}.toml"), &text);
        let out = run(&mut reg, &path, &MergeOptions::default()).unwrap();
        let merged = tensors_of(&reg, &out[0].name);
        let base = tensors_of(&reg, "xlmr-base");
        let fts: Vec<_> = ["xlmr-pos-en", "xlmr-ner-en", "xlmr-nli-en"]
            .iter()
            .map(|n| tensors_of(&reg, n))
            .collect();
        let weights = [0.7f64, -0.4, 1.3];
        for (name, b) in &base {
            let taus: Vec<Vec<f64>> = fts
                .iter()
                .map(|f| {
                    f[name]
                        .iter()
                        .zip(b)
                        .map(|(x, y)| f64::from(x - y))
                        .collect()
                })
                .collect();
            let n = b.len();
            let want: Vec<f64> = match method {
                "task_arithmetic" => (0..n)
                    .map(|e| {
                        f64::from(b[e]) + 0.8 * (0..3).map(|i| weights[i] * taus[i][e]).sum::<f64>()
                    })
                    .collect(),
                "linear" => {
                    let total: f64 = weights.iter().sum();
                    (0..n)
                        .map(|e| {
                            (0..3)
                                .map(|i| weights[i] * f64::from(fts[i][name][e]))
                                .sum::<f64>()
                                / total
                        })
                        .collect()
                }
                "ties" => {
                    // Trim (top 30% by |τ|), elect by Σ wτ, disjoint weighted mean.
                    let masks: Vec<Vec<bool>> = taus
                        .iter()
                        .map(|t| {
                            let t32: Vec<f32> = t.iter().map(|x| *x as f32).collect();
                            magnitude_mask(&t32, 0.3)
                        })
                        .collect();
                    (0..n)
                        .map(|e| {
                            let kept: Vec<(f64, f64)> = (0..3)
                                .filter(|&i| masks[i][e])
                                .map(|i| (weights[i], taus[i][e]))
                                .collect();
                            let total: f64 = kept.iter().map(|(w, t)| w * t).sum();
                            let agree: Vec<&(f64, f64)> = kept
                                .iter()
                                .filter(|(w, t)| {
                                    *t != 0.0 && total != 0.0 && (w * t > 0.0) == (total > 0.0)
                                })
                                .collect();
                            let num: f64 = agree.iter().map(|(w, t)| w * t).sum();
                            let den: f64 = agree.iter().map(|(w, _)| w).sum();
                            let d = if total == 0.0 {
                                0.0
                            } else if den != 0.0 {
                                num / den
                            } else {
                                num
                            };
                            f64::from(b[e]) + d
                        })
                        .collect()
                }
                "dare_linear" if variant == "l1" => {
                    // mergekit's rule: each masked τᵢ scaled back to its own L1 norm.
                    let kept = |i: usize, e: usize| {
                        let mut o = [0f32];
                        dare_at(&[1.0], 0.4, false, 9, stream_of(name, i), e as u64, &mut o);
                        o[0] != 0.0
                    };
                    let factors: Vec<f64> = (0..3)
                        .map(|i| {
                            let before: f64 = taus[i].iter().map(|x| x.abs()).sum();
                            let after: f64 = (0..n)
                                .filter(|&e| kept(i, e))
                                .map(|e| taus[i][e].abs())
                                .sum();
                            if before < 1e-7 || after < 1e-7 {
                                1.0
                            } else {
                                before / after
                            }
                        })
                        .collect();
                    (0..n)
                        .map(|e| {
                            let d: f64 = (0..3)
                                .filter(|&i| kept(i, e))
                                .map(|i| weights[i] * factors[i] * taus[i][e])
                                .sum();
                            f64::from(b[e]) + d
                        })
                        .collect()
                }
                "dare_linear" => {
                    // The engine's mask, fixed: kept where dare_at keeps, rescaled by 1/0.4.
                    (0..n)
                        .map(|e| {
                            let d: f64 = (0..3)
                                .map(|i| {
                                    let mut o = [0f32];
                                    dare_at(
                                        &[1.0],
                                        0.4,
                                        true,
                                        9,
                                        stream_of(name, i),
                                        e as u64,
                                        &mut o,
                                    );
                                    if o[0] == 0.0 {
                                        0.0
                                    } else {
                                        weights[i] * taus[i][e] / 0.4
                                    }
                                })
                                .sum();
                            f64::from(b[e]) + d
                        })
                        .collect()
                }
                _ => unreachable!(),
            };
            assert_close(&merged[name], &want, &format!("{method} {name}"));
        }
        // Heads come from the heads checkpoint, untouched.
        assert_eq!(merged["classifier.weight"], fts[0]["classifier.weight"]);
    }
}

#[test]
fn streaming_windows_give_the_same_bits_as_whole_tensors() {
    let tmp = TempDir::new().unwrap();
    let reg_dir = fixture(tmp.path());
    let copy = tmp.path().join("copy");
    crate::common::copy_dir(&reg_dir, &copy);
    let methods = [
        ("ties", "density = 0.25\nnormalize = false\n"),
        ("breadcrumbs", "density = 0.5\ngamma = 0.05\n"),
        ("magnitude_prune", "density = 0.1\n"),
        ("dare_ties", "density = 0.5\n"),
        ("dare_linear", "density = 0.5\nrescale_norm = \"l1\"\n"),
        ("slerp", "t = 0.3\n"),
    ];
    for (method, extra) in methods {
        let inputs = if method == "slerp" {
            "[[inputs]]\ncheckpoint = \"xlmr-mlm-es\"\n"
        } else {
            "[[inputs]]\nvector = \"language/es\"\n[[inputs]]\nvector = \"language/de\"\nweight = 0.5\n"
        };
        let seed = if method.starts_with("dare") {
            "[output]\nseed = 7\n"
        } else {
            ""
        };
        let text = format!(
            "name = \"s-{method}\"\nmethod = \"{method}\"\nbase = \"xlmr-base\"\n{extra}{inputs}{seed}"
        );
        let path = write_recipe(tmp.path(), &format!("{method}.toml"), &text);
        let mut a = Registry::create(&reg_dir).unwrap();
        let whole = run(&mut a, &path, &MergeOptions::default()).unwrap();
        let mut b = Registry::create(&copy).unwrap();
        let mut opts = MergeOptions::default();
        opts.max_window = Some(1000); // the 32 000-element embedding takes 32 windows
        let streamed = run(&mut b, &path, &opts).unwrap();
        assert_eq!(
            whole[0].checkpoint.as_ref().unwrap().manifest_id,
            streamed[0].checkpoint.as_ref().unwrap().manifest_id,
            "{method}: streamed merge differs"
        );
    }
    assert_verify_clean(&copy);
}

/// A backend that refuses to open tensor objects, counting the attempts.
struct NoTensorReads {
    inner: Arc<dyn Backend>,
    forbidden: HashSet<ObjectId>,
    attempts: Arc<AtomicUsize>,
}

impl Backend for NoTensorReads {
    fn open(&self, id: &ObjectId) -> io::Result<Box<dyn ObjectReader>> {
        if self.forbidden.contains(id) {
            self.attempts.fetch_add(1, Ordering::SeqCst);
            return Err(io::Error::other("a tensor was read"));
        }
        self.inner.open(id)
    }
    fn exists(&self, id: &ObjectId) -> io::Result<bool> {
        self.inner.exists(id)
    }
    fn create(&self) -> io::Result<Box<dyn ObjectWriter>> {
        self.attempts.fetch_add(1, Ordering::SeqCst);
        self.inner.create()
    }
    fn remove(&self, id: &ObjectId) -> io::Result<()> {
        self.inner.remove(id)
    }
    fn list(&self) -> io::Result<Vec<ObjectId>> {
        self.inner.list()
    }
    fn count_tmp(&self) -> io::Result<usize> {
        self.inner.count_tmp()
    }
    fn clean_tmp(&self) -> io::Result<usize> {
        self.inner.clean_tmp()
    }
}

#[test]
fn bad_recipes_fail_before_any_weight_is_read() {
    let tmp = TempDir::new().unwrap();
    let reg_dir = fixture(tmp.path());
    // A checkpoint of another shape.
    let other = tmp.path().join("other");
    let mut shape = Shape::TINY;
    shape.hidden = 48;
    write_checkpoint(&other, &shape, 1, None, None).unwrap();
    Registry::create(&reg_dir)
        .unwrap()
        .register(
            &other,
            &RegisterOptions::new("wide", CheckpointKind::Base),
            &NoProgress,
        )
        .unwrap();
    let forbidden: HashSet<ObjectId> = Registry::create(&reg_dir)
        .unwrap()
        .catalog()
        .all_objects()
        .unwrap()
        .into_iter()
        .filter(|o| o.kind == ObjectKind::Tensor)
        .map(|o| o.id)
        .collect();
    let good = "name = \"m\"\nmethod = \"ties\"\nbase = \"xlmr-base\"\ndensity = 0.2\n[[inputs]]\nvector = \"task/pos-en\"\n[[inputs]]\ncheckpoint = \"xlmr-ner-en\"\n[heads]\nfrom = \"xlmr-pos-en\"\n";
    let cases: &[(&str, String, usize, &str)] = &[
        (
            "typo'd method",
            good.replace("\"ties\"", "\"tie\""),
            2,
            "did you mean `ties`",
        ),
        (
            "missing checkpoint",
            good.replace("\"xlmr-ner-en\"", "\"xlmr-ner-fr\""),
            8,
            "crossmerge list",
        ),
        (
            "missing vector",
            good.replace("task/pos-en", "task/pos-xx"),
            6,
            "derive",
        ),
        (
            "mismatched shapes",
            good.replace("checkpoint = \"xlmr-ner-en\"", "checkpoint = \"wide\""),
            8,
            "architecture",
        ),
        (
            "missing head",
            good.replace("[heads]\nfrom = \"xlmr-pos-en\"\n", ""),
            6,
            "[heads]",
        ),
        (
            "unknown key",
            good.replace("density = 0.2", "density = 0.2\ndensty = 0.3"),
            5,
            "schema",
        ),
    ];
    for (what, text, line, hint_part) in cases {
        let path = write_recipe(tmp.path(), "bad.toml", text);
        let attempts = Arc::new(AtomicUsize::new(0));
        let backend = NoTensorReads {
            inner: Arc::new(FsBackend::new(&reg_dir).unwrap()),
            forbidden: forbidden.clone(),
            attempts: Arc::clone(&attempts),
        };
        let mut reg = Registry::open_with_backend(&reg_dir, Arc::new(backend)).unwrap();
        let err = run(&mut reg, &path, &MergeOptions::default()).unwrap_err();
        let Error::Recipe {
            line: got,
            problem,
            hint,
            path: p,
        } = &err
        else {
            panic!("{what}: not a recipe error: {err}");
        };
        assert_eq!(*got, Some(*line), "{what}: {problem}");
        assert_eq!(p, &path);
        assert!(hint.contains(hint_part), "{what}: hint `{hint}`");
        assert_eq!(
            attempts.load(Ordering::SeqCst),
            0,
            "{what}: weights were read or written"
        );
        assert!(
            err.to_string()
                .starts_with(&format!("`{}:{line}`", path.display())),
            "{err}"
        );
    }
    // The CLI prints the same as one line and a hint, exit 1.
    let path = write_recipe(tmp.path(), "bad.toml", &cases[0].1);
    let out = cm(&reg_dir, &["merge", path.to_str().unwrap()])
        .assert()
        .code(1);
    let stderr = String::from_utf8_lossy(&out.get_output().stderr).to_string();
    assert_eq!(stderr.lines().count(), 2, "{stderr}");
    assert!(
        stderr.contains("bad.toml:2") && stderr.contains("hint: did you mean"),
        "{stderr}"
    );
}

#[test]
fn a_failed_merge_leaves_no_checkpoint_and_no_row() {
    let tmp = TempDir::new().unwrap();
    let reg_dir = fixture(tmp.path());
    let path = recipes_dir().join("ties-three-tasks.toml");
    let before = crate::common::snapshot(&reg_dir).checkpoints;
    let hash = {
        let mut reg = Registry::create(&reg_dir).unwrap();
        run(&mut reg, &path, &MergeOptions::default().dry_run(true)).unwrap()[0]
            .recipe_hash
            .clone()
    };
    let mut step = 0;
    loop {
        let fault = FaultBackend::new(Arc::new(FsBackend::new(&reg_dir).unwrap()), step);
        let mut reg = Registry::open_with_backend(&reg_dir, Arc::new(fault)).unwrap();
        if let Ok(points) = run(&mut reg, &path, &MergeOptions::default()) {
            assert!(step > 20, "the merge took only {step} steps");
            assert_eq!(points.len(), 1);
            break;
        }
        drop(reg);
        let reg = Registry::create(&reg_dir).unwrap();
        let now: Vec<String> = reg
            .list(&CheckpointFilter::default())
            .unwrap()
            .iter()
            .map(|c| format!("{} {}", c.reference(), c.manifest_id.to_hex()))
            .collect();
        assert_eq!(now, before, "fault at step {step} left a checkpoint");
        assert!(
            reg.catalog().merges_by_hash(&hash).unwrap().is_empty(),
            "fault at step {step} left a merge row"
        );
        assert_verify_clean(&reg_dir);
        step += 3;
    }
    // The merge then completes, and verify and gc are clean.
    let mut reg = Registry::create(&reg_dir).unwrap();
    let again = run(&mut reg, &path, &MergeOptions::default()).unwrap();
    assert!(again[0].reused);
    reg.gc(false).unwrap();
    assert_verify_clean(&reg_dir);
}

#[test]
fn an_exported_merge_is_a_hugging_face_folder() {
    let tmp = TempDir::new().unwrap();
    let reg_dir = fixture(tmp.path());
    let out = tmp.path().join("out");
    let path = recipes_dir().join("ties-three-tasks.toml");
    let stdout = cm(
        &reg_dir,
        &[
            "merge",
            path.to_str().unwrap(),
            "--out",
            out.to_str().unwrap(),
        ],
    )
    .assert()
    .success()
    .get_output()
    .stdout
    .clone();
    assert!(String::from_utf8_lossy(&stdout).starts_with("ties-pos-ner-nli@1 "));
    let tensors = read_model_tensors(&out);
    assert!(tensors.contains_key("classifier.weight"));
    let config: serde_json::Value =
        serde_json::from_slice(&std::fs::read(out.join("config.json")).unwrap()).unwrap();
    assert_eq!(
        config["architectures"][0],
        "XLMRobertaForTokenClassification"
    );
    // An independent reader, and transformers where it is installed.
    let python = crate::common::python();
    let script = r#"
import sys, json
from safetensors.numpy import load_file
t = load_file(sys.argv[1] + "/model.safetensors")
print(len(t))
try:
    import transformers, torch
except ImportError:
    print("no-transformers"); sys.exit(0)
m = transformers.AutoModelForTokenClassification.from_pretrained(sys.argv[1])
sd = m.state_dict()
bad = [k for k in t if k in sd and not torch.equal(sd[k], torch.from_numpy(t[k].copy()))]
assert not bad, bad
print("transformers-ok", m.config.num_labels)
"#;
    match std::process::Command::new(&python)
        .arg("-c")
        .arg(script)
        .arg(&out)
        .output()
    {
        Ok(o) if o.status.success() => {
            let text = String::from_utf8_lossy(&o.stdout);
            assert!(text.starts_with(&tensors.len().to_string()), "{text}");
            if text.contains("no-transformers") {
                crate::common::skipped(
                    "the transformers from_pretrained check of an exported merge",
                    &format!("transformers (with torch) is not installed for {python}"),
                );
            } else {
                assert!(text.contains("transformers-ok 5"), "{text}");
            }
        }
        Ok(o) if String::from_utf8_lossy(&o.stderr).contains("No module named 'safetensors'") => {
            crate::common::skipped(
                "the Python safetensors check of an exported merge",
                &format!("safetensors is not installed for {python}"),
            );
        }
        Ok(o) => panic!("python failed: {}", String::from_utf8_lossy(&o.stderr)),
        Err(e) => crate::common::skipped(
            "the Python safetensors check of an exported merge",
            &format!("{python}: {e}"),
        ),
    }
}

#[test]
fn dry_run_prints_the_plan_and_writes_nothing() {
    let tmp = TempDir::new().unwrap();
    let reg_dir = fixture(tmp.path());
    let before = crate::common::snapshot(&reg_dir);
    let path = recipes_dir().join("seed-study-pos-es.toml");
    let out = cm(&reg_dir, &["merge", path.to_str().unwrap(), "--dry-run"])
        .assert()
        .success()
        .get_output()
        .stdout
        .clone();
    let plan: serde_json::Value = serde_json::from_slice(&out).unwrap();
    assert_eq!(plan.as_array().unwrap().len(), 11);
    let first = &plan[0]["plan"];
    assert_eq!(first["method"], "task_arithmetic");
    assert!(
        first["tensors"]
            .as_array()
            .unwrap()
            .iter()
            .any(|t| t["action"] == "copy" && t["name"] == "classifier.weight")
    );
    assert_eq!(crate::common::snapshot(&reg_dir), before);
}

#[test]
fn killing_a_merge_at_random_moments_leaves_all_of_it_or_none() {
    let tmp = TempDir::new().unwrap();
    let shape = crate::common::medium_shape();
    let root = tmp.path().join("reg");
    let mut reg = Registry::create(&root).unwrap();
    for (name, ft) in [("base", None), ("ft-1", Some(1)), ("ft-2", Some(2))] {
        let dir = tmp.path().join(name);
        write_checkpoint(&dir, &shape, 42, ft.map(|s| (s, 1e-2)), None).unwrap();
        let mut opts = RegisterOptions::new(name, CheckpointKind::Base);
        if ft.is_some() {
            opts = RegisterOptions::new(name, CheckpointKind::Task)
                .task("pos")
                .base("base");
        }
        reg.register(&dir, &opts, &NoProgress).unwrap();
    }
    drop(reg);
    let recipe = |k: usize| {
        // Each attempt merges something new: an identical recipe would be found, not merged.
        write_recipe(
            tmp.path(),
            "kill.toml",
            &format!(
                "name = \"killed\"\nmethod = \"ties\"\nbase = \"base\"\ndensity = 0.3\n[[inputs]]\ncheckpoint = \"ft-1\"\nweight = {}\n[[inputs]]\ncheckpoint = \"ft-2\"\n",
                1.0 + k as f64 / 100.0
            ),
        )
    };
    let args = |reg: &Path, recipe: &Path| {
        let mut c = std::process::Command::new(env!("CARGO_BIN_EXE_crossmerge"));
        c.arg("--registry")
            .arg(reg)
            .arg("--quiet")
            .arg("merge")
            .arg(recipe)
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::null());
        c
    };
    let probe = tmp.path().join("probe");
    crate::common::copy_dir(&root, &probe);
    let t = std::time::Instant::now();
    assert!(args(&probe, &recipe(999)).status().unwrap().success());
    let full = t.elapsed();
    let mut seed: u64 = 0x2026_1127;
    let mut completed = 0;
    for k in 0..16 {
        seed = seed
            .wrapping_mul(6_364_136_223_846_793_005)
            .wrapping_add(1_442_695_040_888_963_407);
        let at = full.mul_f64(1.2 * (seed >> 11) as f64 / (1u64 << 53) as f64);
        let mut child = args(&root, &recipe(k)).spawn().unwrap();
        std::thread::sleep(at);
        let _ = child.kill();
        completed += usize::from(child.wait().unwrap().success());
        assert_verify_clean(&root);
        let reg = Registry::create(&root).unwrap();
        let mut only_merged = CheckpointFilter::default();
        only_merged.kind = Some(CheckpointKind::Merged);
        let merged = reg.list(&only_merged).unwrap();
        for c in &merged {
            assert!(
                reg.merge_of(c).unwrap().is_some(),
                "{} has no provenance",
                c.reference()
            );
        }
    }
    eprintln!("16 kills over {full:?}: {completed} merges had finished before their kill");
    let mut reg = Registry::create(&root).unwrap();
    reg.gc(false).unwrap();
    assert_verify_clean(&root);
}

/// A base, a task model and a language model whose values are unrelated to the base's, so
/// `θ_task − θ_base` is not exact in f32 for many elements.
fn far_apart_family(dir: &Path) -> PathBuf {
    let root = dir.join("reg");
    let config = "{\"model_type\":\"bert\",\"architectures\":[\"BertModel\"]}";
    let mut state = 0x9e37_79b9_7f4a_7c15_u64;
    let mut next = || {
        state ^= state << 13;
        state ^= state >> 7;
        state ^= state << 17;
        // Values over several orders of magnitude, both signs.
        let m = (state >> 40) as f32 / (1u64 << 24) as f32 - 0.5;
        m * 10f32.powi(((state >> 8) % 7) as i32 - 3)
    };
    for (name, kind) in [("base", "base"), ("task", "task"), ("lang", "language")] {
        let d = dir.join(name);
        std::fs::create_dir_all(&d).unwrap();
        let values: Vec<u8> = (0..4096).flat_map(|_| next().to_le_bytes()).collect();
        crate::common::write_safetensors(
            &d.join("model.safetensors"),
            &[("encoder.w", crossmerge::Dtype::F32, vec![64, 64], values)],
        );
        std::fs::write(d.join("config.json"), config).unwrap();
        let mut args = vec![
            "register",
            d.to_str().unwrap(),
            "--name",
            name,
            "--kind",
            kind,
        ];
        match kind {
            "task" => args.extend(["--task", "pos", "--base", "base"]),
            "language" => args.extend(["--language", "es", "--base", "base"]),
            _ => {}
        }
        cm(&root, &args).assert().success();
    }
    root
}

#[test]
fn lambda_zero_is_the_task_model_bit_for_bit_even_when_differences_round() {
    let tmp = TempDir::new().unwrap();
    let root = far_apart_family(tmp.path());
    let recipe = write_recipe(
        tmp.path(),
        "study.toml",
        "name = \"study\"\nmethod = \"task_arithmetic\"\nbase = \"base\"\n\
         [[inputs]]\ncheckpoint = \"task\"\n[[inputs]]\ncheckpoint = \"lang\"\n\
         weight = { sweep = [0.0, 0.5] }\n",
    );
    cm(&root, &["merge", recipe.to_str().unwrap()])
        .assert()
        .success();
    let reg = Registry::create(&root).unwrap();
    let zero = reg.resolve("study/lang=0").unwrap();
    let task = reg.resolve("task").unwrap();
    assert_eq!(
        zero.manifest_id, task.manifest_id,
        "λ = 0 must be the task model"
    );
    // The other point is computed (not copied), and differs.
    assert_ne!(
        reg.resolve("study/lang=0.5").unwrap().manifest_id,
        task.manifest_id
    );
}

#[test]
fn linear_without_normalize_is_the_weighted_sum() {
    let tmp = TempDir::new().unwrap();
    let root = far_apart_family(tmp.path());
    let reg = Registry::create(&root).unwrap();
    let read = |name: &str| -> Vec<f32> {
        let row = reg.resolve(name).unwrap();
        let m = reg.manifest(&row).unwrap();
        reg.read_tensor(&m, "encoder.w")
            .unwrap()
            .chunks(4)
            .map(|c| f32::from_le_bytes(c.try_into().unwrap()))
            .collect()
    };
    let (task, lang) = (read("task"), read("lang"));
    for (normalize, yaml) in [(false, false), (true, false), (false, true)] {
        let name = format!("lin-{normalize}-{yaml}");
        let recipe = if yaml {
            write_recipe(
                tmp.path(),
                &format!("{name}.yml"),
                "models:\n  - model: task\n    parameters: {weight: 0.25}\n  - model: lang\n    parameters: {weight: 0.5}\nmerge_method: linear\nparameters: {normalize: false}\n",
            )
        } else {
            write_recipe(
                tmp.path(),
                &format!("{name}.toml"),
                &format!(
                    "name = \"{name}\"\nmethod = \"linear\"\nnormalize = {normalize}\n\
                     [[inputs]]\ncheckpoint = \"task\"\nweight = 0.25\n\
                     [[inputs]]\ncheckpoint = \"lang\"\nweight = 0.5\n"
                ),
            )
        };
        cm(&root, &["merge", recipe.to_str().unwrap(), "--name", &name])
            .assert()
            .success();
        let reg = Registry::create(&root).unwrap();
        let row = reg.resolve(&name).unwrap();
        let m = reg.manifest(&row).unwrap();
        let got: Vec<f32> = reg
            .read_tensor(&m, "encoder.w")
            .unwrap()
            .chunks(4)
            .map(|c| f32::from_le_bytes(c.try_into().unwrap()))
            .collect();
        let want: Vec<f64> = task
            .iter()
            .zip(&lang)
            .map(|(a, b)| {
                let s = 0.25 * f64::from(*a) + 0.5 * f64::from(*b);
                if normalize { s / 0.75 } else { s }
            })
            .collect();
        assert_close(&got, &want, &name);
    }
}
