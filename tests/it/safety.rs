//! Data safety: the defects found by attacking the release build (issue 10), one regression
//! test each: names that collide with file references, a lost catalog, hostile manifests,
//! duplicate header keys, gc's byte count and speed.

use std::path::Path;

use crossmerge::store::codec::{self, Header, ObjectKind};
use crossmerge::{CheckpointFilter, CheckpointKind, Dtype, NoProgress, RegisterOptions, Registry};

use crate::common::{self, assert_verify_clean, cm, read_model_tensors, snapshot};

/// A registry at `root` holding one tiny base checkpoint, `base` (its family under `dir`).
fn registered_base(dir: &Path, root: &Path) -> crossmerge::registry::Registered {
    let fam = common::tiny_family(&dir.join("fam"), 0, None);
    Registry::create(root)
        .unwrap()
        .register(
            &fam[0],
            &RegisterOptions::new("base", CheckpointKind::Base),
            &NoProgress,
        )
        .unwrap()
}

fn f32s(n: usize) -> Vec<u8> {
    (0..n).flat_map(|i| (i as f32).to_le_bytes()).collect()
}

/// stderr of a failed command: exactly an `error:` line and a `hint:` line.
fn one_line_error(out: &assert_cmd::assert::Assert) -> (String, String) {
    let stderr = String::from_utf8(out.get_output().stderr.clone()).unwrap();
    let lines: Vec<&str> = stderr.lines().collect();
    assert_eq!(lines.len(), 2, "want an error and a hint line:\n{stderr}");
    assert!(lines[0].starts_with("error: "), "{stderr}");
    assert!(lines[1].starts_with("hint: "), "{stderr}");
    (lines[0].to_owned(), lines[1].to_owned())
}

#[test]
fn a_tensor_named_like_a_file_reference_is_refused() {
    let tmp = tempfile::tempdir().unwrap();
    let root = tmp.path().join("reg");
    let model = tmp.path().join("m");
    std::fs::create_dir_all(&model).unwrap();
    common::write_safetensors(
        &model.join("model.safetensors"),
        &[
            ("file:config.json", Dtype::F32, vec![2], f32s(2)),
            ("w", Dtype::F32, vec![2], f32s(2)),
        ],
    );
    std::fs::write(model.join("config.json"), "{\"model_type\":\"bert\"}").unwrap();
    cm(&root, &["init"]).assert().success();
    let before = snapshot(&root);
    let out = cm(
        &root,
        &[
            "register",
            model.to_str().unwrap(),
            "--name",
            "m",
            "--kind",
            "base",
        ],
    )
    .assert()
    .code(1);
    let (err, _) = one_line_error(&out);
    assert!(err.contains("`file:`"), "{err}");
    assert_eq!(snapshot(&root), before);
}

#[test]
fn verify_finds_a_manifest_whose_references_are_not_recorded() {
    let tmp = tempfile::tempdir().unwrap();
    let root = tmp.path().join("reg");
    registered_base(tmp.path(), &root);
    let db = rusqlite::Connection::open(root.join("catalog.sqlite3")).unwrap();
    let n = db
        .execute(
            "DELETE FROM manifest_refs WHERE name = 'file:config.json'",
            [],
        )
        .unwrap();
    assert_eq!(n, 1);
    drop(db);
    let report = Registry::create(&root)
        .unwrap()
        .verify(&NoProgress)
        .unwrap();
    assert!(
        report
            .findings
            .iter()
            .any(|f| f.class == "unrecorded" && f.message.contains("file:config.json")),
        "{:#?}",
        report.findings
    );
    cm(&root, &["verify"]).assert().code(1);
}

/// A registry with a base, a fine-tune of it with tags, and a merge of the two.
fn populated(dir: &Path) -> std::path::PathBuf {
    let root = crate::merge::fixture(dir);
    let recipe = crate::merge::write_recipe(
        dir,
        "m.toml",
        "name = \"pos-es\"\nmethod = \"task_arithmetic\"\nbase = \"xlmr-base\"\n\
         [[inputs]]\ncheckpoint = \"xlmr-pos-en\"\n[[inputs]]\nvector = \"language/es\"\n\
         weight = { sweep = [0.0, 0.5] }\n[heads]\nfrom = \"xlmr-pos-en\"\n",
    );
    cm(&root, &["merge", recipe.to_str().unwrap()])
        .assert()
        .success();
    // A second version of a name, and tags.
    let src = dir.join("src/es");
    cm(
        &root,
        &[
            "register",
            src.to_str().unwrap(),
            "--name",
            "xlmr-pos-en",
            "--kind",
            "language",
            "--language",
            "es",
            "--base",
            "xlmr-base",
            "--tag",
            "seed=7",
        ],
    )
    .assert()
    .success();
    root
}

fn listing(root: &Path) -> Vec<String> {
    let reg = Registry::create(root).unwrap();
    reg.list(&CheckpointFilter::default())
        .unwrap()
        .into_iter()
        .map(|c| {
            let merge = reg
                .merge_of(&c)
                .unwrap()
                .map(|m| format!("{} {} {:?}", m.recipe_hash, m.method, m.inputs));
            format!(
                "{} {:?} {} base={:?} lang={:?} task={:?} arch={:?} tags={:?} created={} merge={merge:?}",
                c.reference(),
                c.kind,
                c.manifest_id.to_hex(),
                c.base,
                c.language,
                c.task,
                c.architecture,
                c.tags,
                c.created_at
            )
        })
        .collect()
}

#[test]
fn a_lost_catalog_is_an_error_and_rebuild_catalog_recovers_every_checkpoint() {
    let tmp = tempfile::tempdir().unwrap();
    let root = populated(tmp.path());
    let before = listing(&root);
    assert!(before.len() >= 10, "{before:#?}");
    let exports: Vec<_> = Registry::create(&root)
        .unwrap()
        .list(&CheckpointFilter::default())
        .unwrap()
        .iter()
        .map(|c| {
            let out = tmp
                .path()
                .join(format!("before-{}", c.reference().replace('/', "_")));
            cm(
                &root,
                &["export", &c.reference(), "--out", out.to_str().unwrap()],
            )
            .assert()
            .success();
            (c.reference(), read_model_tensors(&out))
        })
        .collect();
    let objects_before = common::snapshot(&root).files;

    for damage in ["delete", "empty"] {
        let cat = root.join("catalog.sqlite3");
        match damage {
            "delete" => {
                for s in ["", "-wal", "-shm"] {
                    let _ = std::fs::remove_file(root.join(format!("catalog.sqlite3{s}")));
                }
            }
            _ => std::fs::write(&cat, b"").unwrap(),
        }
        // Every command refuses, with the way out; nothing is created or deleted.
        for args in [vec!["list"], vec!["gc"], vec!["verify"]] {
            let out = cm(&root, &args).assert().code(1);
            let (err, hint) = one_line_error(&out);
            assert!(err.contains("catalog"), "{err}");
            assert!(hint.contains("rebuild-catalog"), "{hint}");
        }
        assert_eq!(
            cat.metadata().ok().map(|m| m.len()),
            if damage == "delete" { None } else { Some(0) }
        );
        cm(&root, &["rebuild-catalog"]).assert().success();
        assert_eq!(listing(&root), before, "after {damage}");
        assert_verify_clean(&root);
        for (reference, tensors) in &exports {
            let out = tmp
                .path()
                .join(format!("after-{damage}-{}", reference.replace('/', "_")));
            cm(
                &root,
                &["export", reference, "--out", out.to_str().unwrap()],
            )
            .assert()
            .success();
            assert_eq!(&read_model_tensors(&out), tensors, "{reference}");
        }
        // gc finds nothing to delete: every object is reachable again.
        let plan = Registry::create(&root).unwrap().gc_plan().unwrap();
        assert!(
            plan.unreferenced.is_empty() && plan.orphans.is_empty(),
            "{plan:?}"
        );
        assert_eq!(common::snapshot(&root).files, objects_before);
    }
    // A readable catalog is not rebuilt by accident.
    let out = cm(&root, &["rebuild-catalog"]).assert().code(1);
    let (_, hint) = one_line_error(&out);
    assert!(hint.contains("--force"), "{hint}");
}

#[test]
fn gc_refuses_when_the_catalog_knows_nothing_but_objects_exist() {
    let tmp = tempfile::tempdir().unwrap();
    let a = tmp.path().join("a");
    registered_base(tmp.path(), &a);
    let b = tmp.path().join("b");
    cm(&b, &["init"]).assert().success();
    common::copy_dir(&a.join("objects"), &b.join("objects"));
    let before = snapshot(&b);
    let out = cm(&b, &["gc"]).assert().code(1);
    let (err, hint) = one_line_error(&out);
    assert!(err.contains("lists no checkpoint"), "{err}");
    assert!(
        hint.contains("rebuild-catalog") && hint.contains("--force"),
        "{hint}"
    );
    assert_eq!(snapshot(&b), before);
    cm(&b, &["gc", "--force"]).assert().success();
    assert!(snapshot(&b).files.is_empty());
}

#[test]
fn a_manifest_with_paths_outside_its_folder_is_refused_by_export_and_verify() {
    let tmp = tempfile::tempdir().unwrap();
    let root = tmp.path().join("reg");
    let done = registered_base(tmp.path(), &root);
    let reg = Registry::open(&root).unwrap();
    // Forge a hash-valid manifest whose config.json is exported to `../escaped.json`.
    let bytes = reg.read_object(&done.checkpoint.manifest_id, None).unwrap();
    let text = String::from_utf8(bytes).unwrap();
    assert!(text.contains("\"path\":\"config.json\""));
    for evil in ["../escaped.json", "/tmp/crossmerge-escaped.json"] {
        let forged = text.replace("\"path\":\"config.json\"", &format!("\"path\":\"{evil}\""));
        let forged = forged.as_bytes();
        let id = codec::content_id(ObjectKind::Manifest, &[], forged);
        let header = Header::new(ObjectKind::Manifest, 1, forged.len() as u64, Vec::new());
        codec::write_object(reg.backend(), &id, &header, &forged.to_vec(), None).unwrap();
        let db = rusqlite::Connection::open(root.join("catalog.sqlite3")).unwrap();
        db.execute(
            "INSERT INTO objects (id, kind, state, raw_size, stored_size) VALUES (?1, 'manifest', 'stored', ?2, 1)",
            rusqlite::params![id.to_hex(), forged.len() as i64],
        )
        .unwrap();
        db.execute(
            "UPDATE checkpoints SET manifest_id = ?1 WHERE name = 'base'",
            [id.to_hex()],
        )
        .unwrap();
        drop(db);
        let out_dir = tmp.path().join("out/x");
        let out = cm(
            &root,
            &["export", "base", "--out", out_dir.to_str().unwrap()],
        )
        .assert()
        .code(1);
        let (err, _) = one_line_error(&out);
        assert!(err.contains("manifest names file"), "{err}");
        assert!(!tmp.path().join("out/escaped.json").exists());
        assert!(!Path::new("/tmp/crossmerge-escaped.json").exists());
        let report = Registry::create(&root)
            .unwrap()
            .verify(&NoProgress)
            .unwrap();
        assert!(
            report
                .findings
                .iter()
                .any(|f| f.class == "corrupted" && f.message.contains("manifest names file")),
            "{:#?}",
            report.findings
        );
    }
}

#[test]
fn duplicate_header_keys_are_refused() {
    let tmp = tempfile::tempdir().unwrap();
    let root = tmp.path().join("reg");
    cm(&root, &["init"]).assert().success();
    for (name, header) in [
        (
            "dup-tensor",
            r#"{"a":{"dtype":"F32","shape":[1],"data_offsets":[0,4]},"a":{"dtype":"F32","shape":[1],"data_offsets":[4,8]}}"#,
        ),
        (
            "dup-metadata",
            r#"{"__metadata__":{"format":"pt"},"__metadata__":{"format":"np"},"a":{"dtype":"F32","shape":[2],"data_offsets":[0,8]}}"#,
        ),
    ] {
        let p = tmp.path().join(format!("{name}.safetensors"));
        common::write_raw_safetensors(&p, header, &f32s(2));
        let before = snapshot(&root);
        let out = cm(
            &root,
            &[
                "register",
                p.to_str().unwrap(),
                "--name",
                "x",
                "--kind",
                "base",
            ],
        )
        .assert()
        .code(1);
        let (err, _) = one_line_error(&out);
        assert!(err.contains("twice"), "{err}");
        assert_eq!(snapshot(&root), before);
    }
}

#[test]
fn gc_counts_the_bytes_of_pending_objects_it_removes() {
    let tmp = tempfile::tempdir().unwrap();
    let root = tmp.path().join("reg");
    registered_base(tmp.path(), &root);
    // What an interrupted register leaves: its rows pending, its files written.
    let db = rusqlite::Connection::open(root.join("catalog.sqlite3")).unwrap();
    db.execute_batch(
        "DELETE FROM manifest_refs; DELETE FROM tags; DELETE FROM checkpoints; \
         UPDATE objects SET state = 'pending', stored_size = NULL;",
    )
    .unwrap();
    drop(db);
    let on_disk: u64 = common::snapshot(&root)
        .files
        .keys()
        .map(|p| std::fs::metadata(root.join(p)).unwrap().len())
        .sum();
    assert!(on_disk > 0);
    let mut reg = Registry::create(&root).unwrap();
    assert_eq!(reg.gc_plan().unwrap().bytes, on_disk);
    let report = reg.gc(false).unwrap();
    assert_eq!(report.bytes_freed, on_disk);
    assert_verify_clean(&root);
}

#[test]
fn gc_of_many_unreferenced_rows_uses_the_delta_base_index() {
    let tmp = tempfile::tempdir().unwrap();
    let root = tmp.path().join("reg");
    Registry::create(&root).unwrap();
    let db = rusqlite::Connection::open(root.join("catalog.sqlite3")).unwrap();
    let plan: Vec<String> = db
        .prepare("EXPLAIN QUERY PLAN SELECT 1 FROM objects WHERE delta_base = 'x'")
        .unwrap()
        .query_map([], |r| r.get::<_, String>(3))
        .unwrap()
        .map(Result::unwrap)
        .collect();
    assert!(
        plan.iter().any(|p| p.contains("objects_delta_base")),
        "deleting an object scans `objects` for deltas of it: {plan:?}"
    );
    // 20,000 pending rows (an interrupted register of a big model) go in well under a minute
    // (before the index: quadratic, over 19 minutes for 200,000).
    let tx = db.unchecked_transaction().unwrap();
    for i in 0..20_000u32 {
        let id = blake3::hash(&i.to_le_bytes()).to_hex().to_string();
        tx.execute(
            "INSERT INTO objects (id, kind, state, raw_size) VALUES (?1, 'tensor', 'pending', 4)",
            [id],
        )
        .unwrap();
    }
    tx.commit().unwrap();
    drop(db);
    let mut reg = Registry::create(&root).unwrap();
    let report = reg.gc(false).unwrap();
    assert_eq!(report.objects_removed, 20_000);
    assert!(reg.catalog().all_objects().unwrap().is_empty());
}

fn recipe_with(dir: &Path, name: &str, inputs: &str) -> std::path::PathBuf {
    crate::merge::write_recipe(
        dir,
        name,
        &format!(
            "name = \"grid\"\nmethod = \"task_arithmetic\"\nbase = \"xlmr-base\"\n{inputs}\
             [heads]\nfrom = \"xlmr-pos-en\"\n"
        ),
    )
}

#[test]
fn sweep_grids_are_counted_before_they_are_built_and_capped() {
    let tmp = tempfile::tempdir().unwrap();
    let root = crate::merge::fixture(tmp.path());
    let big: Vec<String> = (0..65_536)
        .map(|i| format!("{}", f64::from(i) / 65_536.0))
        .collect();
    let sweep = format!("{{ sweep = [{}] }}", big.join(","));
    let four = recipe_with(
        tmp.path(),
        "four.toml",
        &format!(
            "lambda = {sweep}\n[[inputs]]\ncheckpoint = \"xlmr-pos-en\"\nweight = {sweep}\n\
             [[inputs]]\nvector = \"language/es\"\nweight = {sweep}\n\
             [[inputs]]\nvector = \"language/de\"\nweight = {sweep}\n"
        ),
    );
    let million = recipe_with(
        tmp.path(),
        "million.toml",
        &format!(
            "[[inputs]]\ncheckpoint = \"xlmr-pos-en\"\nweight = {sweep}\n\
             [[inputs]]\nvector = \"language/es\"\nweight = {{ sweep = [0.0, 0.5] }}\n"
        ),
    );
    let before = snapshot(&root);
    for (recipe, expect) in [
        (&four, "more than 2^64 points"),
        (&million, "131072 points"),
    ] {
        for dry in [true, false] {
            let mut args = vec!["merge", recipe.to_str().unwrap()];
            if dry {
                args.push("--dry-run");
            }
            let out = cm(&root, &args).assert().code(1);
            let (err, hint) = one_line_error(&out);
            assert!(err.contains(expect), "{err}");
            assert!(hint.contains("--max-points"), "{hint}");
        }
    }
    // The limit is the user's to raise or lower.
    let two = recipe_with(
        tmp.path(),
        "two.toml",
        "[[inputs]]\ncheckpoint = \"xlmr-pos-en\"\n[[inputs]]\nvector = \"language/es\"\n\
         weight = { sweep = [0.0, 0.5] }\n",
    );
    let out = cm(
        &root,
        &["merge", two.to_str().unwrap(), "--max-points", "1"],
    )
    .assert()
    .code(1);
    assert!(
        one_line_error(&out)
            .0
            .contains("2 points, over the limit of 1")
    );
    assert_eq!(snapshot(&root), before);
    cm(
        &root,
        &["merge", two.to_str().unwrap(), "--max-points", "2"],
    )
    .assert()
    .success();
}

#[test]
fn sweep_labels_must_make_valid_checkpoint_names() {
    let tmp = tempfile::tempdir().unwrap();
    let root = crate::merge::fixture(tmp.path());
    let before = snapshot(&root);
    let long = "x".repeat(5000);
    for label in ["a@b", "", "a\\u0000b", "a\\nb", "a/..", "a/b", &long] {
        let recipe = recipe_with(
            tmp.path(),
            "label.toml",
            &format!(
                "[[inputs]]\ncheckpoint = \"xlmr-pos-en\"\n[[inputs]]\nvector = \"language/es\"\n\
                 label = \"{label}\"\nweight = {{ sweep = [0.0, 0.5] }}\n"
            ),
        );
        let out = cm(&root, &["merge", recipe.to_str().unwrap()])
            .assert()
            .code(1);
        let (err, _) = one_line_error(&out);
        assert!(err.contains("label"), "{label:?}: {err}");
    }
    // A valid label whose point names would pass 200 bytes.
    let recipe = recipe_with(
        tmp.path(),
        "long.toml",
        &format!(
            "[[inputs]]\ncheckpoint = \"xlmr-pos-en\"\n[[inputs]]\nvector = \"language/es\"\n\
             label = \"{}\"\nweight = {{ sweep = [0.0, 0.5] }}\n",
            "y".repeat(64)
        ),
    );
    let out = cm(
        &root,
        &[
            "merge",
            recipe.to_str().unwrap(),
            "--name",
            &"n".repeat(150),
        ],
    )
    .assert()
    .code(1);
    assert!(
        one_line_error(&out)
            .0
            .contains("not a valid checkpoint name")
    );
    assert_eq!(snapshot(&root), before);
}

#[test]
fn merge_out_is_checked_before_anything_is_merged() {
    let tmp = tempfile::tempdir().unwrap();
    let root = crate::merge::fixture(tmp.path());
    let recipe = recipe_with(
        tmp.path(),
        "one.toml",
        "[[inputs]]\ncheckpoint = \"xlmr-pos-en\"\n[[inputs]]\nvector = \"language/es\"\n",
    );
    let full = tmp.path().join("full");
    std::fs::create_dir_all(&full).unwrap();
    std::fs::write(full.join("x"), "x").unwrap();
    let file = tmp.path().join("file");
    std::fs::write(&file, "x").unwrap();
    let empty = tmp.path().join("empty");
    std::fs::create_dir_all(&empty).unwrap();
    let link = tmp.path().join("link");
    std::os::unix::fs::symlink(&empty, &link).unwrap();
    let before = snapshot(&root);
    for (out, expect) in [
        (&full, "not empty"),
        (&file, "not a folder"),
        (&link, "symbolic link"),
    ] {
        let res = cm(
            &root,
            &[
                "merge",
                recipe.to_str().unwrap(),
                "--out",
                out.to_str().unwrap(),
            ],
        )
        .assert()
        .code(1);
        let (err, _) = one_line_error(&res);
        assert!(err.contains(expect), "{err}");
        assert_eq!(snapshot(&root), before, "{}", out.display());
    }
    assert_eq!(
        std::fs::read_dir(tmp.path())
            .unwrap()
            .filter(|e| {
                e.as_ref()
                    .unwrap()
                    .file_name()
                    .to_string_lossy()
                    .contains("crossmerge-export")
            })
            .count(),
        0
    );
}

#[test]
fn a_killed_exports_leftovers_are_removed_by_the_next_export_there() {
    let tmp = tempfile::tempdir().unwrap();
    let root = tmp.path().join("reg");
    registered_base(tmp.path(), &root);
    // What a SIGKILL mid-export leaves: a partial copy named after a process that is gone.
    let stale = tmp.path().join(".out.crossmerge-export-4194999");
    std::fs::create_dir_all(&stale).unwrap();
    std::fs::write(stale.join("model.safetensors"), vec![0u8; 4096]).unwrap();
    let out = tmp.path().join("out");
    let res = cm(&root, &["export", "base", "--out", out.to_str().unwrap()])
        .assert()
        .success();
    let stderr = String::from_utf8(res.get_output().stderr.clone()).unwrap();
    assert!(
        stderr.contains("partial export left by an interrupted run"),
        "{stderr}"
    );
    assert!(!stale.exists());
    assert!(out.join("model.safetensors").is_file());
    // Into a symbolic link to an empty folder: refused, nothing left beside it.
    let empty = tmp.path().join("empty");
    std::fs::create_dir_all(&empty).unwrap();
    let link = tmp.path().join("link");
    std::os::unix::fs::symlink(&empty, &link).unwrap();
    let res = cm(&root, &["export", "base", "--out", link.to_str().unwrap()])
        .assert()
        .code(1);
    assert!(one_line_error(&res).0.contains("symbolic link"));
    let left: Vec<_> = std::fs::read_dir(tmp.path())
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .filter(|n| n.contains("crossmerge-export"))
        .collect();
    assert!(left.is_empty(), "{left:?}");
}

#[test]
fn unexpected_failures_are_one_line_with_a_hint() {
    let tmp = tempfile::tempdir().unwrap();
    let root = tmp.path().join("reg");
    cm(&root, &["init"]).assert().success();
    // A folder someone left in tmp/ is scratch like the rest: gc removes it.
    std::fs::create_dir_all(root.join("tmp/left/deeper")).unwrap();
    std::fs::write(root.join("tmp/left/deeper/x"), b"x").unwrap();
    cm(&root, &["gc"]).assert().success();
    assert_eq!(std::fs::read_dir(root.join("tmp")).unwrap().count(), 0);
    // A catalog that is not a database: SQLite's message once, and the way out.
    std::fs::write(root.join("catalog.sqlite3"), vec![0x5a; 8192]).unwrap();
    let out = cm(&root, &["list"]).assert().code(1);
    let (err, hint) = one_line_error(&out);
    assert_eq!(err.matches("not a database").count(), 1, "{err}");
    assert!(hint.contains("rebuild-catalog"), "{hint}");
    // A NUL in a shard name is shown escaped, never raw.
    let model = tmp.path().join("sharded");
    std::fs::create_dir_all(&model).unwrap();
    std::fs::write(
        model.join("model.safetensors.index.json"),
        "{\"metadata\":{},\"weight_map\":{\"w\":\"a\\u0000b.safetensors\"}}",
    )
    .unwrap();
    let other = tmp.path().join("reg2");
    let out = cm(
        &other,
        &[
            "register",
            model.to_str().unwrap(),
            "--name",
            "m",
            "--kind",
            "base",
        ],
    )
    .assert()
    .code(1);
    let stderr = out.get_output().stderr.clone();
    assert!(!stderr.contains(&0u8), "a raw NUL reached the terminal");
    let (err, _) = one_line_error(&out);
    assert!(err.contains("a\\0b"), "{err}");
}

#[test]
fn a_damaged_catalog_row_is_named_not_read_as_a_default() {
    let tmp = tempfile::tempdir().unwrap();
    let root = tmp.path().join("reg");
    registered_base(tmp.path(), &root);
    let db = rusqlite::Connection::open(root.join("catalog.sqlite3")).unwrap();
    db.pragma_update(None, "ignore_check_constraints", true)
        .unwrap();
    db.execute(
        "UPDATE checkpoints SET kind = 'bogus' WHERE name = 'base'",
        [],
    )
    .unwrap();
    drop(db);
    // Was listed as a base checkpoint.
    let out = cm(&root, &["list"]).assert().code(2);
    let (err, hint) = one_line_error(&out);
    assert!(err.contains("checkpoints id 1 has kind `bogus`"), "{err}");
    assert!(hint.contains("verify"), "{hint}");
    let out = cm(&root, &["verify"]).assert().code(1);
    let stdout = String::from_utf8(out.get_output().stdout.clone()).unwrap();
    let stderr = String::from_utf8(out.get_output().stderr.clone()).unwrap();
    assert!(
        (stdout + &stderr).contains("damaged catalog row: checkpoints id 1 has kind `bogus`"),
        "verify does not name the row"
    );
}

/// A viewer's open: it reads everything, creates and migrates nothing, and a write through it
/// is refused before any object is written.
#[test]
fn a_read_only_open_reads_creates_nothing_and_refuses_writes() {
    let tmp = tempfile::tempdir().unwrap();
    let root = tmp.path().join("reg");
    registered_base(tmp.path(), &root);
    let before = snapshot(&root);
    let mut ro = Registry::open_read_only(&root).unwrap();
    assert_eq!(ro.list(&CheckpointFilter::default()).unwrap().len(), 1);
    ro.show("base").unwrap();
    assert!(ro.verify(&NoProgress).unwrap().is_clean());
    let fam = common::tiny_family(&tmp.path().join("fam2"), 1, None);
    let e = ro
        .register(
            &fam[1],
            &RegisterOptions::new("ft", CheckpointKind::Task)
                .task("pos")
                .base("base"),
            &NoProgress,
        )
        .unwrap_err();
    assert!(e.to_string().contains("readonly"), "{e}");
    assert!(e.hint().unwrap().contains("read-only"), "{e}");
    assert!(e.is_user_error());
    drop(ro);
    let after = snapshot(&root);
    assert_eq!(after.files, before.files);
    assert_eq!(after.objects, before.objects);
    assert_eq!(after.checkpoints, before.checkpoints);

    // Where there is no registry: an error, and nothing is made there.
    let missing = tmp.path().join("regsitry");
    let e = Registry::open_read_only(&missing).unwrap_err();
    assert!(e.hint().is_some(), "{e}");
    assert!(!missing.exists());
    let empty = tmp.path().join("empty");
    std::fs::create_dir(&empty).unwrap();
    assert!(Registry::open_read_only(&empty).is_err());
    assert_eq!(std::fs::read_dir(&empty).unwrap().count(), 0);
}
