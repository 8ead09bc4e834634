//! The canonical encodings are pinned: golden vectors, an independent Python implementation,
//! and a frozen registry of format v1 that must keep opening and verifying.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::process::Command;

use crossmerge::checkpoint::{Manifest, ManifestFile, ManifestTensor};
use crossmerge::store::codec::{ObjectKind, content_id};
use crossmerge::tensor::canonical_prefix;
use crossmerge::{
    CheckpointKind, Dtype, ExportOptions, NoProgress, ObjectId, RegisterOptions, Registry,
};
use serde_json::Value;

use crate::common::{self, cm, copy_dir, require_shared};

fn fixtures() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures")
}

fn golden() -> Value {
    serde_json::from_slice(&std::fs::read(fixtures().join("golden-ids.json")).unwrap()).unwrap()
}

fn hex(s: &str) -> Vec<u8> {
    (0..s.len())
        .step_by(2)
        .map(|i| u8::from_str_radix(&s[i..i + 2], 16).unwrap())
        .collect()
}

fn golden_tensors(g: &Value) -> Vec<(Dtype, Vec<u64>, Vec<u8>, String)> {
    g["tensors"]
        .as_array()
        .unwrap()
        .iter()
        .map(|t| {
            (
                Dtype::from_name(t["dtype"].as_str().unwrap()).unwrap(),
                t["shape"]
                    .as_array()
                    .unwrap()
                    .iter()
                    .map(|d| d.as_u64().unwrap())
                    .collect(),
                hex(t["data_hex"].as_str().unwrap()),
                t["id"].as_str().unwrap().to_owned(),
            )
        })
        .collect()
}

/// A folder holding the golden manifest's content: two tensors and a config.json.
fn golden_folder(dir: &Path, g: &Value) {
    let t = golden_tensors(g);
    std::fs::create_dir_all(dir).unwrap();
    common::write_safetensors(
        &dir.join("model.safetensors"),
        &[
            ("encoder.w", t[0].0, t[0].1.clone(), t[0].2.clone()),
            ("b", t[1].0, t[1].1.clone(), t[1].2.clone()),
        ],
    );
    std::fs::write(
        dir.join("config.json"),
        hex(g["blobs"][0]["data_hex"].as_str().unwrap()),
    )
    .unwrap();
}

#[test]
fn golden_vectors_pin_every_id() {
    let g = golden();
    for (dtype, shape, data, id) in golden_tensors(&g) {
        assert_eq!(
            content_id(ObjectKind::Tensor, &canonical_prefix(dtype, &shape), &data).to_hex(),
            id,
            "{dtype} {shape:?}"
        );
    }
    let blob = hex(g["blobs"][0]["data_hex"].as_str().unwrap());
    let blob_id = content_id(ObjectKind::Blob, &[], &blob).to_hex();
    assert_eq!(blob_id, g["blobs"][0]["id"].as_str().unwrap());

    let t = golden_tensors(&g);
    let manifest = Manifest::new(
        vec![
            ManifestTensor {
                name: "encoder.w".into(),
                dtype: t[0].0,
                shape: t[0].1.clone(),
                id: ObjectId::parse_hex(&t[0].3).unwrap(),
            },
            ManifestTensor {
                name: "b".into(),
                dtype: t[1].0,
                shape: t[1].1.clone(),
                id: ObjectId::parse_hex(&t[1].3).unwrap(),
            },
        ],
        vec![ManifestFile {
            path: "config.json".into(),
            size: blob.len() as u64,
            id: ObjectId::parse_hex(&blob_id).unwrap(),
        }],
        BTreeMap::from([("format".to_owned(), "pt".to_owned())]),
    );
    let bytes = manifest.canonical_bytes();
    assert_eq!(
        String::from_utf8(bytes.clone()).unwrap(),
        g["manifests"][0]["canonical"].as_str().unwrap()
    );
    assert_eq!(
        content_id(ObjectKind::Manifest, &[], &bytes).to_hex(),
        g["manifests"][0]["id"].as_str().unwrap()
    );

    // Registering that content yields exactly the golden manifest id.
    let tmp = tempfile::tempdir().unwrap();
    golden_folder(&tmp.path().join("golden"), &g);
    let mut reg = Registry::create(&tmp.path().join("reg")).unwrap();
    let done = reg
        .register(
            &tmp.path().join("golden"),
            &RegisterOptions::new("golden", CheckpointKind::Base),
            &NoProgress,
        )
        .unwrap();
    assert_eq!(
        done.checkpoint.manifest_id.to_hex(),
        g["manifests"][0]["id"].as_str().unwrap()
    );
}

fn python_ready() -> bool {
    let ok = Command::new(common::python())
        .args(["-c", "import blake3, safetensors, numpy"])
        .output()
        .is_ok_and(|o| o.status.success());
    if !ok {
        common::skipped(
            "the independent Python check of the id format",
            "`pip install blake3 safetensors numpy` (or CROSSMERGE_PYTHON) enables it",
        );
    }
    ok
}

fn python(args: &[&str]) -> Value {
    let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/python/canonical_ids.py");
    let out = Command::new(common::python())
        .arg(script)
        .args(args)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    serde_json::from_slice(&out.stdout).unwrap()
}

#[test]
fn an_independent_python_implementation_agrees() {
    if !python_ready() {
        return;
    }
    assert_eq!(
        python(&["golden"]),
        golden(),
        "the Python implementation disagrees with the golden file"
    );
    let shared = require_shared!();
    let tmp = tempfile::tempdir().unwrap();
    let reg = tmp.path().join("reg");
    let minilm = common::minilm(&shared);
    cm(
        &reg,
        &[
            "register",
            minilm.to_str().unwrap(),
            "--name",
            "minilm",
            "--kind",
            "base",
        ],
    )
    .assert()
    .success();
    let out = cm(&reg, &["show", "minilm", "--tensors", "--json"])
        .assert()
        .success();
    let shown: Value = serde_json::from_slice(&out.get_output().stdout).unwrap();
    let ours: BTreeMap<String, String> = shown["tensors"]
        .as_array()
        .unwrap()
        .iter()
        .map(|t| {
            (
                t["name"].as_str().unwrap().to_owned(),
                t["id"].as_str().unwrap().to_owned(),
            )
        })
        .collect();
    let theirs: BTreeMap<String, String> = serde_json::from_value(python(&[
        "ids",
        minilm.join("model.safetensors").to_str().unwrap(),
    ]))
    .unwrap();
    assert_eq!(ours.len(), 104);
    assert_eq!(ours, theirs);
    // The Python safetensors package reads our export and finds the same tensors.
    let out = tmp.path().join("export");
    cm(&reg, &["export", "minilm", "--out", out.to_str().unwrap()])
        .assert()
        .success();
    let exported: BTreeMap<String, String> = serde_json::from_value(python(&[
        "ids",
        out.join("model.safetensors").to_str().unwrap(),
    ]))
    .unwrap();
    assert_eq!(ours, exported);
}

#[test]
fn a_registry_written_by_format_v1_still_opens_and_verifies() {
    let tmp = tempfile::tempdir().unwrap();
    let root = tmp.path().join("registry-v1");
    copy_dir(&fixtures().join("registry-v1"), &root);
    let reg = Registry::create(&root).unwrap();
    assert!(reg.verify(&NoProgress).unwrap().is_clean());
    assert_eq!(
        reg.catalog().schema_version().unwrap(),
        crossmerge::catalog::SCHEMA_VERSION,
        "opening migrates"
    );
    let out = tmp.path().join("out");
    reg.export("golden-ft", &out, &ExportOptions::default(), &NoProgress)
        .unwrap();
    let g = golden();
    let t = golden_tensors(&g);
    let got = common::read_safetensors(&out.join("model.safetensors"));
    assert_eq!(got["b"].2, t[1].2);
    assert_eq!(got.len(), 2);
    let base = reg.show("golden").unwrap();
    assert_eq!(
        base.checkpoint.manifest_id.to_hex(),
        g["manifests"][0]["id"].as_str().unwrap()
    );
}
