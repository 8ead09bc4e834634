//! Several processes share one registry.

use std::process::{Command, Stdio};

use crossmerge::{CheckpointFilter, Registry};
use crossmerge_synth::{FamilySpec, write_family};

use crate::common::{self, assert_verify_clean};

fn register(
    reg: &std::path::Path,
    path: &std::path::Path,
    name: &str,
    base: Option<&str>,
) -> Command {
    // The default location (`./registry` in the working folder), which `register` creates on
    // first use: so the processes can race to create it.
    assert_eq!(reg.file_name().unwrap(), "registry");
    let mut c = Command::new(env!("CARGO_BIN_EXE_crossmerge"));
    c.current_dir(reg.parent().unwrap())
        .env_remove("CROSSMERGE_REGISTRY")
        .arg("--quiet")
        .arg("register")
        .arg(path)
        .args(["--name", name]);
    match base {
        Some(b) => c.args(["--kind", "language", "--language", name, "--base", b]),
        None => c.args(["--kind", "base"]),
    };
    c.stdout(Stdio::null()).stderr(Stdio::piped());
    c
}

#[test]
fn four_processes_register_into_one_registry_at_once() {
    let tmp = tempfile::tempdir().unwrap();
    let fam = write_family(
        &tmp.path().join("fam"),
        &FamilySpec::new(common::medium_shape(), 4),
    )
    .unwrap();
    // The registry does not exist yet: the four race to create it too.
    let root = tmp.path().join("registry");
    let children: Vec<_> = (0..4)
        .map(|i| {
            register(&root, &fam[i + 1], &format!("plain-{i}"), None)
                .spawn()
                .unwrap()
        })
        .collect();
    for c in children {
        let out = c.wait_with_output().unwrap();
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
    }
    assert_verify_clean(&root);

    // Then four fine-tunes stored against one base, at once.
    assert!(
        register(&root, &fam[0], "base", None)
            .status()
            .unwrap()
            .success()
    );
    let langs = ["es", "de", "hi", "zh"];
    let children: Vec<_> = (0..4)
        .map(|i| {
            register(&root, &fam[i + 1], langs[i], Some("base"))
                .spawn()
                .unwrap()
        })
        .collect();
    for c in children {
        let out = c.wait_with_output().unwrap();
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
    }
    assert_verify_clean(&root);
    let rows = Registry::create(&root)
        .unwrap()
        .list(&CheckpointFilter::default())
        .unwrap();
    assert_eq!(rows.len(), 9);
    // Same content as plain-i: no new bytes beyond the delta objects' own.
    let du = Registry::create(&root).unwrap().du().unwrap();
    assert!(du.total_ratio < 1.0);
}
