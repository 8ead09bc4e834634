//! Damaged objects are found by verify, each with its own message, and never read as data.

use std::path::{Path, PathBuf};

use crossmerge::{
    CheckpointKind, Error, ExportOptions, NoProgress, ObjectId, RegisterOptions, Registry,
};

use crate::common::{self, cm};

fn object_path(root: &Path, id: &ObjectId) -> PathBuf {
    let hex = id.to_hex();
    root.join("objects").join(&hex[..2]).join(hex)
}

#[test]
fn verify_reports_each_kind_of_damage_and_reads_refuse_wrong_bytes() {
    let tmp = tempfile::tempdir().unwrap();
    let fam = common::tiny_family(&tmp.path().join("fam"), 1, None);
    let root = tmp.path().join("reg");
    let mut reg = Registry::create(&root).unwrap();
    reg.register(
        &fam[0],
        &RegisterOptions::new("base", CheckpointKind::Base),
        &NoProgress,
    )
    .unwrap();
    reg.register(
        &fam[1],
        &RegisterOptions::new("lang-de", CheckpointKind::Language).language("de"),
        &NoProgress,
    )
    .unwrap();
    cm(&root, &["verify"]).assert().success();

    let manifest = reg.manifest(&reg.resolve("base").unwrap()).unwrap();
    let pick = |name: &str| manifest.tensor(name).unwrap().object();
    let flipped = pick("roberta.encoder.layer.0.intermediate.dense.weight");
    let truncated = pick("roberta.encoder.layer.1.output.dense.weight");
    let deleted = pick("roberta.pooler.dense.weight");

    let p = object_path(&root, &flipped);
    let mut bytes = std::fs::read(&p).unwrap();
    let mid = bytes.len() / 2;
    bytes[mid] ^= 0x04;
    std::fs::write(&p, bytes).unwrap();
    let p = object_path(&root, &truncated);
    let bytes = std::fs::read(&p).unwrap();
    std::fs::write(&p, &bytes[..bytes.len() - 10]).unwrap();
    std::fs::remove_file(object_path(&root, &deleted)).unwrap();
    let orphan = ObjectId::from_bytes([0xab; 32]);
    std::fs::create_dir_all(object_path(&root, &orphan).parent().unwrap()).unwrap();
    std::fs::write(object_path(&root, &orphan), b"not ours").unwrap();

    let out = cm(&root, &["verify"]).assert().code(1);
    let stdout = String::from_utf8(out.get_output().stdout.clone()).unwrap();
    let lines: Vec<&str> = stdout.lines().collect();
    let line_for = |id: &ObjectId| {
        lines
            .iter()
            .find(|l| l.contains(&format!("`{id}`")))
            .copied()
            .unwrap_or("")
    };
    assert!(line_for(&flipped).starts_with("corrupted: "), "{stdout}");
    assert!(
        line_for(&flipped).contains("intermediate.dense.weight"),
        "{stdout}"
    );
    assert!(line_for(&truncated).starts_with("truncated: "), "{stdout}");
    assert!(line_for(&deleted).starts_with("missing: "), "{stdout}");
    assert!(
        line_for(&deleted).contains("pooler.dense.weight"),
        "{stdout}"
    );
    assert!(line_for(&orphan).starts_with("orphan: "), "{stdout}");
    let json = cm(&root, &["verify", "--json"]).assert().code(1);
    let report: serde_json::Value = serde_json::from_slice(&json.get_output().stdout).unwrap();
    let classes: Vec<&str> = report["findings"]
        .as_array()
        .unwrap()
        .iter()
        .map(|f| f["class"].as_str().unwrap())
        .collect();
    for class in ["corrupted", "truncated", "missing", "orphan"] {
        assert!(classes.contains(&class), "{classes:?}");
    }

    // Reads fail naming the tensor and the object; nothing wrong is ever returned.
    let reg = Registry::create(&root).unwrap();
    match reg.read_tensor(
        &manifest,
        "roberta.encoder.layer.0.intermediate.dense.weight",
    ) {
        Err(e @ Error::Corrupt { .. }) => {
            let msg = e.to_string();
            assert!(
                msg.contains(&flipped.to_string()) && msg.contains("intermediate.dense.weight"),
                "{msg}"
            );
        }
        other => panic!("expected a corruption error, got {other:?}"),
    }
    assert!(matches!(
        reg.read_tensor(&manifest, "roberta.pooler.dense.weight"),
        Err(Error::MissingObject { .. })
    ));
    let out_dir = tmp.path().join("out");
    let err = reg
        .export("base", &out_dir, &ExportOptions::default(), &NoProgress)
        .unwrap_err();
    assert!(!out_dir.exists(), "a failed export left a folder");
    assert!(err.hint().is_some());
    let cli = cm(
        &root,
        &["export", "base", "--out", out_dir.to_str().unwrap()],
    )
    .assert()
    .code(1);
    let stderr = String::from_utf8(cli.get_output().stderr.clone()).unwrap();
    assert!(
        stderr.lines().next().unwrap().starts_with("error: "),
        "{stderr}"
    );
    assert!(stderr.contains("hint: "), "{stderr}");

    // The fine-tune stored against those tensors is unaffected where its bases are intact,
    // and gc removes the orphan.
    let mut reg = Registry::create(&root).unwrap();
    let plan = reg.gc_plan().unwrap();
    assert_eq!(plan.orphans, vec![orphan]);
    reg.gc(false).unwrap();
    assert!(!object_path(&root, &orphan).exists());
}
