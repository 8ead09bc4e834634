//! Register then export gives back every byte.

use crossmerge::{CheckpointKind, Dtype, ExportOptions, NoProgress, RegisterOptions, Registry};

use crate::common::{self, cm, read_model_tensors, require_shared};

#[test]
fn minilm_round_trips_bit_for_bit_through_the_cli() {
    let shared = require_shared!();
    let src = common::minilm(&shared);
    let tmp = tempfile::tempdir().unwrap();
    let reg = tmp.path().join("reg");
    let out = tmp.path().join("export");
    let registered = cm(
        &reg,
        &[
            "register",
            src.to_str().unwrap(),
            "--name",
            "minilm",
            "--kind",
            "base",
        ],
    )
    .assert()
    .success();
    let line = String::from_utf8(registered.get_output().stdout.clone()).unwrap();
    assert!(line.starts_with("minilm@1 "), "{line}");
    cm(&reg, &["export", "minilm", "--out", out.to_str().unwrap()])
        .assert()
        .success();

    let before = read_model_tensors(&src);
    let after = read_model_tensors(&out);
    assert_eq!(before.len(), 105 - 1, "MiniLM has 104 tensors");
    assert_eq!(
        before.keys().collect::<Vec<_>>(),
        after.keys().collect::<Vec<_>>()
    );
    for (name, t) in &before {
        assert_eq!(
            t, &after[name],
            "tensor `{name}` differs after the round trip"
        );
    }
    for file in [
        "config.json",
        "tokenizer.json",
        "vocab.txt",
        "tokenizer_config.json",
        "special_tokens_map.json",
    ] {
        assert_eq!(
            std::fs::read(src.join(file)).unwrap(),
            std::fs::read(out.join(file)).unwrap(),
            "{file} differs"
        );
    }
    cm(&reg, &["verify"]).assert().success();
}

#[test]
fn sharded_export_reregisters_to_the_same_manifest() {
    let shared = require_shared!();
    let tmp = tempfile::tempdir().unwrap();
    let mut reg = Registry::create(&tmp.path().join("reg")).unwrap();
    let a = reg
        .register(
            &common::minilm(&shared),
            &RegisterOptions::new("minilm", CheckpointKind::Base),
            &NoProgress,
        )
        .unwrap();
    let out = tmp.path().join("sharded");
    let report = reg
        .export(
            "minilm",
            &out,
            &ExportOptions::default().max_shard_size(Some(20_000_000)),
            &NoProgress,
        )
        .unwrap();
    let shards: Vec<_> = report
        .files
        .iter()
        .filter(|f| f.ends_with(".safetensors"))
        .collect();
    assert!(shards.len() >= 4, "{:?}", report.files);
    assert!(
        report
            .files
            .contains(&"model.safetensors.index.json".to_owned())
    );
    let index: serde_json::Value =
        serde_json::from_slice(&std::fs::read(out.join("model.safetensors.index.json")).unwrap())
            .unwrap();
    assert_eq!(index["weight_map"].as_object().unwrap().len(), 104);
    assert_eq!(
        index["metadata"]["total_size"].as_u64().unwrap(),
        report.tensor_bytes
    );
    // Content addressing: the same tensors and files, however sharded, are the same manifest.
    let b = reg
        .register(
            &out,
            &RegisterOptions::new("minilm-resharded", CheckpointKind::Base),
            &NoProgress,
        )
        .unwrap();
    assert_eq!(a.checkpoint.manifest_id, b.checkpoint.manifest_id);
    assert_eq!(b.bytes_written, 0);
}

#[test]
fn every_dtype_round_trips_from_a_single_file() {
    let tmp = tempfile::tempdir().unwrap();
    let file = tmp.path().join("all.safetensors");
    let tensors: Vec<(String, Dtype, Vec<u64>, Vec<u8>)> = Dtype::ALL
        .iter()
        .enumerate()
        .map(|(i, &d)| {
            let shape = vec![3, 5];
            let n = 15 * d.size();
            let bytes = (0..n).map(|k| ((k * 31 + i * 7) % 251) as u8).collect();
            (format!("t.{}", d.name().to_lowercase()), d, shape, bytes)
        })
        .collect();
    let refs: Vec<(&str, Dtype, Vec<u64>, Vec<u8>)> = tensors
        .iter()
        .map(|(n, d, s, b)| (n.as_str(), *d, s.clone(), b.clone()))
        .collect();
    let mut with_scalar = refs.clone();
    with_scalar.push(("scalar", Dtype::F64, vec![], 1.5f64.to_le_bytes().to_vec()));
    with_scalar.push(("empty", Dtype::F32, vec![0, 4], vec![]));
    common::write_safetensors(&file, &with_scalar);

    let mut reg = Registry::create(&tmp.path().join("reg")).unwrap();
    reg.register(
        &file,
        &RegisterOptions::new("dtypes", CheckpointKind::Base),
        &NoProgress,
    )
    .unwrap();
    let out = tmp.path().join("out");
    reg.export("dtypes", &out, &ExportOptions::default(), &NoProgress)
        .unwrap();
    let got = common::read_safetensors(&out.join("model.safetensors"));
    let want = common::read_safetensors(&file);
    assert_eq!(got, want);
    assert!(reg.verify(&NoProgress).unwrap().is_clean());
}

#[test]
fn fine_tune_with_head_round_trips_against_its_base() {
    let tmp = tempfile::tempdir().unwrap();
    let fam = common::tiny_family(&tmp.path().join("fam"), 2, Some(5));
    let mut reg = Registry::create(&tmp.path().join("reg")).unwrap();
    reg.register(
        &fam[0],
        &RegisterOptions::new("base", CheckpointKind::Base),
        &NoProgress,
    )
    .unwrap();
    let ft = reg
        .register(
            &fam[1],
            &RegisterOptions::new("pos-en", CheckpointKind::Task)
                .task("pos")
                .language("en")
                .base("base"),
            &NoProgress,
        )
        .unwrap();
    assert_eq!(
        ft.delta_objects, 39,
        "every body tensor is stored against the base"
    );
    assert_eq!(ft.checkpoint.base.as_deref(), Some("base@1"));
    let details = reg.show("pos-en").unwrap();
    let heads: Vec<_> = details
        .tensors
        .iter()
        .filter(|t| t.encoding == "plain")
        .map(|t| t.name.as_str())
        .collect();
    assert_eq!(heads, ["classifier.bias", "classifier.weight"]);
    let out = tmp.path().join("out");
    reg.export("pos-en", &out, &ExportOptions::default(), &NoProgress)
        .unwrap();
    assert_eq!(read_model_tensors(&out), read_model_tensors(&fam[1]));
    assert_eq!(
        std::fs::read(out.join("config.json")).unwrap(),
        std::fs::read(fam[1].join("config.json")).unwrap()
    );
}
