//! Hostile input: a one-line error with a hint, and the registry exactly as before.

use std::path::Path;

use crossmerge::{CheckpointKind, Dtype, NoProgress, RegisterOptions, Registry};

use crate::common::{self, cm, snapshot, write_raw_safetensors, write_safetensors};

fn f32s(n: usize) -> Vec<u8> {
    (0..n).flat_map(|i| (i as f32).to_le_bytes()).collect()
}

/// Runs `register PATH` and checks the error's shape and that nothing changed.
fn refused(root: &Path, input: &Path, expect: &str) {
    let before = snapshot(root);
    let out = cm(
        root,
        &[
            "register",
            input.to_str().unwrap(),
            "--name",
            "bad",
            "--kind",
            "base",
        ],
    )
    .assert()
    .code(1);
    let stderr = String::from_utf8(out.get_output().stderr.clone()).unwrap();
    let lines: Vec<&str> = stderr.lines().collect();
    assert_eq!(
        lines.len(),
        2,
        "want an error line and a hint line, got:\n{stderr}"
    );
    assert!(
        lines[0].starts_with("error: ") && lines[0].contains(expect),
        "{expect:?} not in {:?}",
        lines[0]
    );
    assert!(lines[1].starts_with("hint: "), "{stderr}");
    assert_eq!(
        snapshot(root),
        before,
        "the registry changed after refusing {}",
        input.display()
    );
}

#[test]
fn each_hostile_input_is_refused_cleanly() {
    let tmp = tempfile::tempdir().unwrap();
    let t = tmp.path();
    let root = t.join("reg");
    let fam = common::tiny_family(&t.join("fam"), 0, None);
    Registry::create(&root)
        .unwrap()
        .register(
            &fam[0],
            &RegisterOptions::new("base", CheckpointKind::Base),
            &NoProgress,
        )
        .unwrap();

    // Truncated: a valid file cut inside its data.
    let good = t.join("good.safetensors");
    write_safetensors(
        &good,
        &[
            ("a", Dtype::F32, vec![64], f32s(64)),
            ("b", Dtype::F32, vec![64], f32s(64)),
        ],
    );
    let bytes = std::fs::read(&good).unwrap();
    let cut = t.join("truncated.safetensors");
    std::fs::write(&cut, &bytes[..bytes.len() - 100]).unwrap();
    refused(&root, &cut, "run past the end");
    let tiny = t.join("tiny.safetensors");
    std::fs::write(&tiny, [1u8, 2, 3]).unwrap();
    refused(&root, &tiny, "truncated");

    let overlap = t.join("overlap.safetensors");
    write_raw_safetensors(
        &overlap,
        r#"{"a":{"dtype":"F32","shape":[4],"data_offsets":[0,16]},"b":{"dtype":"F32","shape":[4],"data_offsets":[8,24]}}"#,
        &[0u8; 24],
    );
    refused(&root, &overlap, "overlap");

    let past = t.join("past.safetensors");
    write_raw_safetensors(
        &past,
        r#"{"a":{"dtype":"F32","shape":[8],"data_offsets":[0,32]}}"#,
        &[0u8; 16],
    );
    refused(&root, &past, "run past the end");

    let huge = t.join("huge-header.safetensors");
    let mut b = 200_000_000u64.to_le_bytes().to_vec();
    b.extend_from_slice(b"{}      ");
    std::fs::write(&huge, b).unwrap();
    refused(&root, &huge, "exceeds the limit");

    let mismatch = t.join("mismatch.safetensors");
    write_raw_safetensors(
        &mismatch,
        r#"{"a":{"dtype":"BF16","shape":[3,3],"data_offsets":[0,16]}}"#,
        &[0u8; 16],
    );
    refused(&root, &mismatch, "need 18 bytes");

    let dotdot = t.join("dotdot.safetensors");
    write_safetensors(
        &dotdot,
        &[("encoder/../../etc/passwd", Dtype::U8, vec![1], vec![0])],
    );
    refused(&root, &dotdot, "`..`");

    let not_json = t.join("garbage.safetensors");
    write_raw_safetensors(&not_json, "{not json", &[]);
    refused(&root, &not_json, "not valid safetensors JSON");

    // Two shards holding the same tensor.
    let dup = t.join("dup");
    std::fs::create_dir(&dup).unwrap();
    write_safetensors(
        &dup.join("model-00001-of-00002.safetensors"),
        &[("w", Dtype::F32, vec![2], f32s(2))],
    );
    write_safetensors(
        &dup.join("model-00002-of-00002.safetensors"),
        &[("w", Dtype::F32, vec![2], f32s(2))],
    );
    std::fs::write(
        dup.join("model.safetensors.index.json"),
        r#"{"metadata":{},"weight_map":{"w":"model-00001-of-00002.safetensors","x":"model-00002-of-00002.safetensors"}}"#,
    )
    .unwrap();
    refused(&root, &dup, "is also in");

    // An index naming a shard that is not there.
    let missing = t.join("missing-shard");
    std::fs::create_dir(&missing).unwrap();
    write_safetensors(
        &missing.join("model-00001-of-00002.safetensors"),
        &[("w", Dtype::F32, vec![2], f32s(2))],
    );
    std::fs::write(
        missing.join("model.safetensors.index.json"),
        r#"{"metadata":{},"weight_map":{"w":"model-00001-of-00002.safetensors","v":"model-00002-of-00002.safetensors"}}"#,
    )
    .unwrap();
    refused(&root, &missing, "does not exist");

    let escape = t.join("escape");
    std::fs::create_dir(&escape).unwrap();
    std::fs::write(
        escape.join("model.safetensors.index.json"),
        r#"{"weight_map":{"w":"../good.safetensors"}}"#,
    )
    .unwrap();
    refused(&root, &escape, "not a plain file name");

    // A folder that is not a model.
    let plain = t.join("not-a-model");
    std::fs::create_dir(&plain).unwrap();
    std::fs::write(plain.join("README.md"), "hello").unwrap();
    refused(&root, &plain, "not a model folder");

    let bad_config = t.join("bad-config");
    common::copy_dir(&fam[0], &bad_config);
    std::fs::write(bad_config.join("config.json"), "{\"hidden_size\": ").unwrap();
    refused(&root, &bad_config, "not valid JSON");

    refused(&root, &t.join("nowhere"), "does not exist");
}

#[test]
fn bad_options_are_refused_before_anything_is_read() {
    let tmp = tempfile::tempdir().unwrap();
    let root = tmp.path().join("reg");
    let fam = common::tiny_family(&tmp.path().join("fam"), 0, None);
    let p = fam[0].to_str().unwrap();
    for (args, expect) in [
        (
            vec!["register", p, "--name", "x", "--kind", "language"],
            "needs `--language`",
        ),
        (
            vec!["register", p, "--name", "x", "--kind", "task"],
            "needs `--task`",
        ),
        (
            vec!["register", p, "--name", "bad@name", "--kind", "base"],
            "not a valid checkpoint name",
        ),
        (
            vec![
                "register",
                p,
                "--name",
                "x",
                "--kind",
                "base",
                "--language",
                "e",
            ],
            "not a BCP-47",
        ),
        (
            vec![
                "register", p, "--name", "x", "--kind", "base", "--base", "nothing",
            ],
            "no checkpoint matches",
        ),
        (
            vec!["export", "nothing", "--out", "/tmp/never"],
            "no checkpoint matches",
        ),
    ] {
        let out = cm(&root, &args).assert().code(1);
        let stderr = String::from_utf8(out.get_output().stderr.clone()).unwrap();
        assert!(
            stderr.starts_with("error: ") && stderr.contains(expect),
            "{args:?}: {stderr}"
        );
        assert!(stderr.contains("\nhint: "), "{args:?}: {stderr}");
    }
    assert!(
        Registry::create(&root)
            .unwrap()
            .list(&crossmerge::CheckpointFilter::default())
            .unwrap()
            .is_empty()
    );
}

#[test]
fn a_folder_that_is_not_a_registry_is_left_alone() {
    let tmp = tempfile::tempdir().unwrap();
    std::fs::write(tmp.path().join("notes.txt"), "mine").unwrap();
    let out = cm(tmp.path(), &["list"]).assert().code(1);
    let stderr = String::from_utf8(out.get_output().stderr.clone()).unwrap();
    assert!(
        stderr.contains("not a crossmerge registry") && stderr.contains("hint: "),
        "{stderr}"
    );
    assert_eq!(std::fs::read_dir(tmp.path()).unwrap().count(), 1);
}

/// The committed corpus (tests/fixtures/hostile, written by its make.py): every file is refused
/// with one error line and one hint line (exit 1), and the registry stays byte for byte as it
/// was. Safetensors by `register`, recipes by `merge` (TOML and mergekit YAML), CoNLL-U by
/// `eval --task dp`, IOB2 by `eval --task ner`; manifests by the parser every stored manifest
/// goes through (a manifest is never an input file).
#[test]
fn the_hostile_corpus_is_refused_cleanly() {
    let corpus = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/hostile");
    let tmp = tempfile::tempdir().unwrap();
    let root = crate::merge::fixture(tmp.path());
    // An evaluable parser and tagger in the same registry (tiny BERT of the parity fixtures).
    let parity = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/parity/bert-parser");
    let tagger = tmp.path().join("tagger");
    common::copy_dir(&parity, &tagger);
    let mut tensors: Vec<(String, Dtype, Vec<u64>, Vec<u8>)> =
        common::read_safetensors(&parity.join("model.safetensors"))
            .into_iter()
            .map(|(n, (d, s, b))| (n, Dtype::from_name(&d).unwrap(), s, b))
            .collect();
    tensors.push((
        "classifier.weight".into(),
        Dtype::F32,
        vec![3, 32],
        f32s(96),
    ));
    tensors.push(("classifier.bias".into(), Dtype::F32, vec![3], f32s(3)));
    let refs: Vec<(&str, Dtype, Vec<u64>, Vec<u8>)> = tensors
        .iter()
        .map(|(n, d, s, b)| (n.as_str(), *d, s.clone(), b.clone()))
        .collect();
    write_safetensors(&tagger.join("model.safetensors"), &refs);
    let mut cfg: serde_json::Value =
        serde_json::from_slice(&std::fs::read(parity.join("config.json")).unwrap()).unwrap();
    cfg["id2label"] = serde_json::json!({"0": "O", "1": "B-PER", "2": "I-PER"});
    std::fs::write(tagger.join("config.json"), cfg.to_string()).unwrap();
    for (name, dir) in [("parser", &parity), ("tagger", &tagger)] {
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
    let before = snapshot(&root);
    let mut seen = 0;
    for (sub, args) in [
        (
            "safetensors",
            &["register", "{}", "--name", "bad", "--kind", "base"][..],
        ),
        ("recipes", &["merge", "{}"][..]),
        (
            "conllu",
            &["eval", "parser", "--task", "dp", "--data", "{}"][..],
        ),
        (
            "iob2",
            &["eval", "tagger", "--task", "ner", "--data", "{}"][..],
        ),
    ] {
        let mut files: Vec<_> = std::fs::read_dir(corpus.join(sub))
            .unwrap()
            .map(|e| e.unwrap().path())
            .collect();
        files.sort();
        assert!(files.len() >= 3, "{sub}");
        for f in files {
            let args: Vec<&str> = args
                .iter()
                .map(|a| if *a == "{}" { f.to_str().unwrap() } else { a })
                .collect();
            let out = cm(&root, &args).assert();
            let code = out.get_output().status.code();
            let stderr = String::from_utf8(out.get_output().stderr.clone()).unwrap();
            let lines: Vec<&str> = stderr.lines().collect();
            assert_eq!(code, Some(1), "{}: {stderr}", f.display());
            assert!(
                lines.len() == 2
                    && lines[0].starts_with("error: ")
                    && lines[1].starts_with("hint: "),
                "{}: want one error line and one hint line:\n{stderr}",
                f.display()
            );
            assert_eq!(
                snapshot(&root),
                before,
                "{} changed the registry",
                f.display()
            );
            seen += 1;
        }
    }
    for f in std::fs::read_dir(corpus.join("manifests")).unwrap() {
        let f = f.unwrap().path();
        let err = crossmerge::checkpoint::Manifest::parse(&std::fs::read(&f).unwrap())
            .expect_err(&f.display().to_string());
        assert!(!err.contains('\n'), "{}: {err}", f.display());
        seen += 1;
    }
    assert!(seen >= 50, "{seen} files");
}
