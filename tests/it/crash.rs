//! Crash safety: a failure at any I/O step, or a kill at any moment, leaves a registry that
//! verifies clean, with no catalog row pointing at a missing object.

use std::path::Path;
use std::sync::Arc;
use std::time::Instant;

use crossmerge::store::{FaultBackend, FsBackend};
use crossmerge::{
    CheckpointFilter, CheckpointKind, ExportOptions, NoProgress, RegisterOptions, Registry,
};
use crossmerge_synth::{FamilySpec, write_family};

use crate::common::{self, assert_verify_clean, copy_dir, read_model_tensors};

fn ft_options() -> RegisterOptions {
    RegisterOptions::new("ner-en", CheckpointKind::Task)
        .task("ner")
        .base("base")
}

fn faulty(root: &Path, fail_at: usize) -> (Registry, Arc<FaultBackend>) {
    let fs = Arc::new(FsBackend::new(root).unwrap());
    let backend = Arc::new(FaultBackend::new(fs, fail_at));
    let reg = Registry::open_with_backend(root, backend.clone()).unwrap();
    (reg, backend)
}

/// After a crash: verify is clean, every checkpoint's objects are there, and work goes on.
fn check_recovers(root: &Path, ft: &Path, deep: bool) {
    assert_verify_clean(root);
    if !deep {
        return;
    }
    let mut reg = Registry::create(root).unwrap();
    reg.register(ft, &ft_options(), &NoProgress).unwrap();
    reg.gc(false).unwrap();
    assert_verify_clean(root);
    let plan = reg.gc_plan().unwrap();
    assert!(
        plan.unreferenced.is_empty() && plan.orphans.is_empty() && plan.temporary_files == 0,
        "{plan:?}"
    );
    let out = root.join("..").join(format!(
        "{}-export",
        root.file_name().unwrap().to_str().unwrap()
    ));
    reg.export("ner-en", &out, &ExportOptions::default(), &NoProgress)
        .unwrap();
    assert_eq!(read_model_tensors(&out), read_model_tensors(ft));
    std::fs::remove_dir_all(out).unwrap();
}

/// A tiny family and a registry holding its base, to copy before each injected fault.
fn template_with_base(dir: &Path) -> (Vec<std::path::PathBuf>, std::path::PathBuf) {
    let fam = common::tiny_family(&dir.join("fam"), 1, Some(3));
    let template = dir.join("template");
    Registry::create(&template)
        .unwrap()
        .register(
            &fam[0],
            &RegisterOptions::new("base", CheckpointKind::Base),
            &NoProgress,
        )
        .unwrap();
    (fam, template)
}

#[test]
fn a_fault_at_every_io_step_of_register_leaves_a_consistent_registry() {
    let tmp = tempfile::tempdir().unwrap();
    let (fam, template) = template_with_base(tmp.path());
    let mut k = 0;
    loop {
        let root = tmp.path().join(format!("r{k}"));
        copy_dir(&template, &root);
        let (mut reg, backend) = faulty(&root, k);
        let result = reg.register(&fam[1], &ft_options(), &NoProgress);
        drop(reg);
        let rows = Registry::create(&root)
            .unwrap()
            .list(&CheckpointFilter::default())
            .unwrap();
        match result {
            Ok(_) => {
                assert_eq!(rows.len(), 2);
                assert!(backend.steps() <= k, "succeeded although step {k} failed");
                check_recovers(&root, &fam[1], true);
                break;
            }
            Err(e) => {
                assert_eq!(
                    rows.len(),
                    1,
                    "a failed register added a checkpoint (step {k}: {e})"
                );
                check_recovers(&root, &fam[1], k % 9 == 0);
            }
        }
        std::fs::remove_dir_all(&root).unwrap();
        k += 1;
    }
    assert!(k > 50, "only {k} I/O steps were exercised");
}

#[test]
fn a_fault_at_every_io_step_of_gc_leaves_a_consistent_registry() {
    let tmp = tempfile::tempdir().unwrap();
    let (fam, template) = template_with_base(tmp.path());
    // Garbage to collect: an interrupted register (pending rows, some files) and a temp file.
    {
        let (mut reg, _) = faulty(&template, 60);
        reg.register(&fam[1], &ft_options(), &NoProgress)
            .unwrap_err();
    }
    std::fs::write(template.join("tmp/123-0-0.partial"), b"half an object").unwrap();
    assert_verify_clean(&template);
    let before = Registry::create(&template).unwrap().gc_plan().unwrap();
    assert!(
        !before.unreferenced.is_empty() && before.temporary_files == 1,
        "{before:?}"
    );

    let mut k = 0;
    loop {
        let root = tmp.path().join(format!("g{k}"));
        copy_dir(&template, &root);
        let (mut reg, _) = faulty(&root, k);
        let result = reg.gc(false);
        drop(reg);
        check_recovers(&root, &fam[1], k % 5 == 0);
        if result.is_ok() {
            let plan = Registry::create(&root).unwrap().gc_plan().unwrap();
            assert!(plan.unreferenced.is_empty() && plan.temporary_files == 0);
            break;
        }
        std::fs::remove_dir_all(&root).unwrap();
        k += 1;
    }
    assert!(
        k >= before.unreferenced.len(),
        "only {k} I/O steps were exercised"
    );
}

fn splitmix(state: &mut u64) -> u64 {
    *state = state.wrapping_add(0x9E37_79B9_7F4A_7C15);
    let mut z = *state;
    z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
    z ^ (z >> 31)
}

#[test]
fn killing_register_at_random_moments_never_damages_the_registry() {
    let tmp = tempfile::tempdir().unwrap();
    let fam = write_family(
        &tmp.path().join("fam"),
        &FamilySpec::new(common::medium_shape(), 1).head_labels(Some(9)),
    )
    .unwrap();
    let root = tmp.path().join("reg");
    Registry::create(&root)
        .unwrap()
        .register(
            &fam[0],
            &RegisterOptions::new("base", CheckpointKind::Base),
            &NoProgress,
        )
        .unwrap();
    let args = |reg: &Path| {
        let mut c = std::process::Command::new(env!("CARGO_BIN_EXE_crossmerge"));
        c.arg("--registry")
            .arg(reg)
            .arg("--quiet")
            .arg("register")
            .arg(&fam[1]);
        c.args([
            "--name", "ner-en", "--kind", "task", "--task", "ner", "--base", "base",
        ]);
        c.stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::null());
        c
    };
    // How long an uninterrupted run takes, on a copy.
    let probe = tmp.path().join("probe");
    copy_dir(&root, &probe);
    let t = Instant::now();
    assert!(args(&probe).status().unwrap().success());
    let full = t.elapsed();

    let mut seed = 20_261_127;
    let mut completed = 0;
    for _ in 0..24 {
        let at = full.mul_f64(1.2 * (splitmix(&mut seed) >> 11) as f64 / (1u64 << 53) as f64);
        let mut child = args(&root).spawn().unwrap();
        std::thread::sleep(at);
        let _ = child.kill();
        let status = child.wait().unwrap();
        completed += usize::from(status.success());
        assert_verify_clean(&root);
    }
    eprintln!("24 kills over {full:?}: {completed} runs had finished before their kill");
    let mut reg = Registry::create(&root).unwrap();
    reg.register(&fam[1], &ft_options(), &NoProgress).unwrap();
    reg.gc(false).unwrap();
    assert_verify_clean(&root);
    let out = tmp.path().join("out");
    reg.export("ner-en", &out, &ExportOptions::default(), &NoProgress)
        .unwrap();
    assert_eq!(read_model_tensors(&out), read_model_tensors(&fam[1]));
}
