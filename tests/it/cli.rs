//! References, listings and JSON output through the command line.

use crate::common::{self, cm};

fn stdout(a: &assert_cmd::assert::Assert) -> String {
    String::from_utf8(a.get_output().stdout.clone()).unwrap()
}

fn stderr(a: &assert_cmd::assert::Assert) -> String {
    String::from_utf8(a.get_output().stderr.clone()).unwrap()
}

#[test]
fn references_resolve_by_name_version_and_prefix() {
    let tmp = tempfile::tempdir().unwrap();
    let fam = common::tiny_family(&tmp.path().join("fam"), 2, Some(4));
    let reg = tmp.path().join("reg");
    let p = |i: usize| fam[i].to_str().unwrap().to_owned();
    cm(&reg, &["init"]).assert().success();
    cm(
        &reg,
        &[
            "register",
            &p(0),
            "--name",
            "xlmr-tiny",
            "--kind",
            "base",
            "--tag",
            "source=synth",
        ],
    )
    .assert()
    .success();
    let ner = cm(
        &reg,
        &[
            "register",
            &p(1),
            "--name",
            "ner-en",
            "--kind",
            "task",
            "--task",
            "ner",
            "--language",
            "en",
            "--base",
            "xlmr-tiny",
        ],
    )
    .assert()
    .success();
    let line = stdout(&ner);
    let short = line.split_whitespace().nth(1).unwrap().to_owned();
    assert_eq!(short.len(), 12);
    cm(
        &reg,
        &[
            "register",
            &p(2),
            "--name",
            "ner-en",
            "--kind",
            "task",
            "--task",
            "ner",
            "--base",
            "xlmr-tiny",
        ],
    )
    .assert()
    .success();

    // name → latest; name@1; a 6-character prefix.
    let latest = cm(&reg, &["show", "ner-en", "--json"]).assert().success();
    let v: serde_json::Value = serde_json::from_str(&stdout(&latest)).unwrap();
    assert_eq!(v["checkpoint"]["version"], 2);
    let first = cm(&reg, &["show", "ner-en@1", "--json"]).assert().success();
    let v: serde_json::Value = serde_json::from_str(&stdout(&first)).unwrap();
    assert_eq!(
        v["checkpoint"]["manifest_id"].as_str().unwrap()[..12],
        short
    );
    assert_eq!(v["checkpoint"]["base"], "xlmr-tiny@1");
    assert_eq!(v["checkpoint"]["language"], "en");
    let by_prefix = cm(&reg, &["show", &short[..6]]).assert().success();
    assert!(stdout(&by_prefix).contains("checkpoint:   ner-en@1"));

    // Too short a prefix, an unknown version, an ambiguous prefix.
    let short_prefix = cm(&reg, &["show", &short[..5]]).assert().code(1);
    assert!(stderr(&short_prefix).contains("at least 6 hex"));
    cm(&reg, &["show", "ner-en@9"]).assert().code(1);
    cm(
        &reg,
        &[
            "register",
            &p(1),
            "--name",
            "ner-copy",
            "--kind",
            "task",
            "--task",
            "ner",
        ],
    )
    .assert()
    .success();
    let ambiguous = cm(&reg, &["show", &short[..6]]).assert().code(1);
    let e = stderr(&ambiguous);
    assert!(
        e.contains("ambiguous") && e.contains("ner-en@1") && e.contains("ner-copy@1"),
        "{e}"
    );

    // list filters and JSON; show --tensors.
    let list = cm(&reg, &["list", "--task", "ner", "--json"])
        .assert()
        .success();
    let rows: serde_json::Value = serde_json::from_str(&stdout(&list)).unwrap();
    assert_eq!(rows.as_array().unwrap().len(), 3);
    let list = cm(&reg, &["list", "--kind", "base"]).assert().success();
    let text = stdout(&list);
    assert!(
        text.starts_with("CHECKPOINT") && text.contains("xlmr-tiny@1") && !text.contains("ner-en"),
        "{text}"
    );
    let tensors = cm(&reg, &["show", "ner-en@1", "--tensors"])
        .assert()
        .success();
    let text = stdout(&tensors);
    assert!(
        text.contains("classifier.weight") && text.contains("delta"),
        "{text}"
    );
    let tags = cm(&reg, &["show", "xlmr-tiny", "--json"])
        .assert()
        .success();
    let v: serde_json::Value = serde_json::from_str(&stdout(&tags)).unwrap();
    assert_eq!(
        v["checkpoint"]["tags"][0],
        serde_json::json!(["source", "synth"])
    );

    // du, verify and gc speak JSON too.
    let du = cm(&reg, &["du", "--json"]).assert().success();
    let v: serde_json::Value = serde_json::from_str(&stdout(&du)).unwrap();
    assert_eq!(v["checkpoints"].as_array().unwrap().len(), 4);
    let verify = cm(&reg, &["verify", "--json"]).assert().success();
    let v: serde_json::Value = serde_json::from_str(&stdout(&verify)).unwrap();
    assert_eq!(v["findings"].as_array().unwrap().len(), 0);
    let gc = cm(&reg, &["gc", "--dry-run", "--json"]).assert().success();
    let v: serde_json::Value = serde_json::from_str(&stdout(&gc)).unwrap();
    assert_eq!(v["unreferenced"].as_array().unwrap().len(), 0);
    cm(&reg, &["gc"]).assert().success();

    // Export refuses a non-empty folder and accepts a size for shards.
    let out = tmp.path().join("out");
    std::fs::create_dir(&out).unwrap();
    std::fs::write(out.join("keep.txt"), "x").unwrap();
    let refused = cm(&reg, &["export", "ner-en", "--out", out.to_str().unwrap()])
        .assert()
        .code(1);
    assert!(stderr(&refused).contains("hint: export into a new or empty folder"));
    let bad_size = cm(
        &reg,
        &["export", "ner-en", "--out", "x", "--max-shard-size", "5XB"],
    )
    .assert()
    .code(1);
    assert!(stderr(&bad_size).contains("is not a size"));
    let sharded = tmp.path().join("sharded");
    cm(
        &reg,
        &[
            "export",
            "ner-en",
            "--out",
            sharded.to_str().unwrap(),
            "--max-shard-size",
            "100kB",
        ],
    )
    .assert()
    .success();
    assert!(sharded.join("model.safetensors.index.json").is_file());
    assert!(
        std::fs::read_to_string(sharded.join("model.safetensors.index.json"))
            .unwrap()
            .contains("model-00001-of-")
    );
}

#[test]
fn registry_comes_from_the_environment() {
    let tmp = tempfile::tempdir().unwrap();
    let reg = tmp.path().join("env-reg");
    common::bin()
        .env("CROSSMERGE_REGISTRY", &reg)
        .args(["--quiet", "init"])
        .assert()
        .success();
    assert_eq!(
        std::fs::read_to_string(reg.join("FORMAT")).unwrap(),
        "crossmerge registry v1\n"
    );
}

#[test]
fn registry_goes_before_or_after_the_command_and_usage_errors_exit_1() {
    let tmp = tempfile::tempdir().unwrap();
    let (a, b) = (tmp.path().join("a"), tmp.path().join("b"));
    common::bin()
        .args(["--quiet", "--registry", a.to_str().unwrap(), "init"])
        .assert()
        .success();
    common::bin()
        .args(["--quiet", "init", "--registry", b.to_str().unwrap()])
        .assert()
        .success();
    // After the command wins over before it.
    common::bin()
        .args([
            "--registry",
            "/nonexistent/x",
            "list",
            "--registry",
            a.to_str().unwrap(),
        ])
        .assert()
        .success();
    assert!(a.join("FORMAT").is_file() && b.join("FORMAT").is_file());
    // A usage error is the user's to fix: exit 1 (2 means unexpected), and it says how.
    for args in [vec!["list", "--bogus"], vec!["frobnicate"], vec!["export"]] {
        let out = common::bin().args(&args).assert().code(1);
        assert!(stderr(&out).contains("Usage:"), "{args:?}");
    }
    common::bin().arg("--help").assert().success();
    // The developer tasks are not in the shipped binary (they are `cargo xtask bench|synth`).
    for task in ["synth", "bench"] {
        common::bin().args([task, "--help"]).assert().code(1);
    }
}

#[test]
fn only_init_and_a_first_write_to_the_default_place_create_a_registry() {
    let tmp = tempfile::tempdir().unwrap();
    let typo = tmp.path().join("regsitry");
    let fam = common::tiny_family(&tmp.path().join("fam"), 0, None);
    // Reading or writing a named folder that holds no registry: an error, and no folder.
    for args in [
        vec!["list"],
        vec!["verify"],
        vec!["gc"],
        vec![
            "register",
            fam[0].to_str().unwrap(),
            "--name",
            "b",
            "--kind",
            "base",
        ],
    ] {
        let out = common::bin()
            .arg("--registry")
            .arg(&typo)
            .args(&args)
            .assert()
            .code(1);
        let err = stderr(&out);
        assert!(
            err.contains("not a crossmerge registry") && err.contains("does not exist"),
            "{err}"
        );
        assert!(
            err.contains("hint: ") && err.contains("crossmerge init"),
            "{err}"
        );
        assert!(!typo.exists(), "{args:?} created {}", typo.display());
    }
    // The default ./registry: reads refuse; the first register creates it, and says so.
    let work = tmp.path().join("work");
    std::fs::create_dir_all(&work).unwrap();
    let run = |args: &[&str]| {
        let mut c = common::bin();
        c.current_dir(&work)
            .env_remove("CROSSMERGE_REGISTRY")
            .arg("--quiet")
            .args(args);
        c
    };
    run(&["list"]).assert().code(1);
    assert!(!work.join("registry").exists());
    let out = run(&[
        "register",
        fam[0].to_str().unwrap(),
        "--name",
        "b",
        "--kind",
        "base",
    ])
    .assert()
    .success();
    assert!(stderr(&out).contains("created a new registry at registry"));
    run(&["list"]).assert().success();
    // init creates a registry wherever it is pointed.
    common::bin()
        .args(["--quiet", "init", "--registry"])
        .arg(&typo)
        .assert()
        .success();
    assert!(typo.join("FORMAT").is_file());
}
