//! The one checkpoint writer: tensors held in memory (a trained model) are registered through
//! the writer that `register` and `merge` use, and a fault at any of its I/O steps leaves no
//! checkpoint row and no object the catalog does not account for.

use std::collections::BTreeMap;
use std::path::Path;
use std::sync::Arc;

use crossmerge::registry::MemoryTensor;
use crossmerge::store::{FaultBackend, FsBackend};
use crossmerge::{
    CheckpointFilter, CheckpointKind, Dtype, ExportOptions, NoProgress, RegisterOptions, Registry,
};

use crate::common::{self, assert_verify_clean, copy_dir, snapshot};

/// A tiny encoder-shaped state dict in memory; `shift` makes a fine-tune of it.
fn model(shift: f32) -> Vec<MemoryTensor> {
    let f32s = |n: usize, k: f32| -> Vec<u8> {
        (0..n)
            .flat_map(|i| ((i as f32 * 0.37 + k).sin()).to_le_bytes())
            .collect()
    };
    let mut out = vec![
        MemoryTensor {
            name: "embeddings.word_embeddings.weight".into(),
            dtype: Dtype::F32,
            shape: vec![64, 16],
            data: f32s(64 * 16, 0.0),
        },
        MemoryTensor {
            name: "encoder.layer.0.attention.self.query.weight".into(),
            dtype: Dtype::F32,
            shape: vec![16, 16],
            data: f32s(256, shift),
        },
        MemoryTensor {
            name: "encoder.layer.0.attention.self.query.bias".into(),
            dtype: Dtype::F32,
            shape: vec![16],
            data: f32s(16, 2.0 * shift),
        },
        MemoryTensor {
            name: "embeddings.position_ids".into(),
            dtype: Dtype::I64,
            shape: vec![1, 8],
            data: (0..8i64).flat_map(i64::to_le_bytes).collect(),
        },
    ];
    // The writer sorts by name: give them out of order.
    out.reverse();
    out
}

fn files() -> Vec<(String, Vec<u8>)> {
    vec![(
        "config.json".to_owned(),
        br#"{"architectures": ["BertForMaskedLM"], "model_type": "bert"}"#.to_vec(),
    )]
}

fn ft_options() -> RegisterOptions {
    RegisterOptions::new("mlm-es", CheckpointKind::Language)
        .language("es")
        .base("base")
}

/// safetensors metadata as transformers writes it (and export adds where it is missing).
fn metadata() -> BTreeMap<String, String> {
    BTreeMap::from([("format".to_owned(), "pt".to_owned())])
}

fn register_ft(reg: &mut Registry) -> crossmerge::Result<crossmerge::registry::Registered> {
    reg.register_tensors(
        &model(0.5),
        &files(),
        metadata(),
        &ft_options(),
        &NoProgress,
    )
}

/// A registry holding the in-memory base, to copy before each fault.
fn template(dir: &Path) -> std::path::PathBuf {
    let t = dir.join("template");
    let mut reg = Registry::create(&t).unwrap();
    reg.register_tensors(
        &model(0.0),
        &files(),
        BTreeMap::new(),
        &RegisterOptions::new("base", CheckpointKind::Base),
        &NoProgress,
    )
    .unwrap();
    t
}

#[test]
fn tensors_in_memory_register_like_a_file_and_export_bit_exactly() {
    let tmp = tempfile::tempdir().unwrap();
    let root = template(tmp.path());
    let mut reg = Registry::open(&root).unwrap();
    let done = register_ft(&mut reg).unwrap();
    assert!(done.created);
    assert_eq!(
        done.checkpoint.architecture.as_deref(),
        Some("BertForMaskedLM")
    );
    // The two tensors that changed are stored as deltas against the base.
    assert_eq!(done.delta_objects, 2, "{done:?}");
    // The same content again is the same checkpoint, nothing written.
    let again = register_ft(&mut reg).unwrap();
    assert!(!again.created);
    assert_eq!(again.checkpoint.manifest_id, done.checkpoint.manifest_id);

    // Exported, it is a folder whose tensors are exactly the bytes given, and registering that
    // folder gives the same manifest id: memory and file go through one writer.
    let out = tmp.path().join("export");
    reg.export("mlm-es", &out, &ExportOptions::default(), &NoProgress)
        .unwrap();
    // The reference implementation reads the export as written.
    let shard = std::fs::read(out.join("model.safetensors")).unwrap();
    let st = safetensors::SafeTensors::deserialize(&shard).unwrap();
    assert_eq!(st.len(), model(0.5).len());
    let exported = common::read_model_tensors(&out);
    for t in model(0.5) {
        let (dtype, shape, data) = &exported[&t.name];
        assert_eq!(
            (dtype.as_str(), shape, data),
            (t.dtype.name(), &t.shape, &t.data)
        );
    }
    let from_file = reg
        .register(
            &out,
            &RegisterOptions::new("mlm-es-file", CheckpointKind::Language)
                .language("es")
                .base("base"),
            &NoProgress,
        )
        .unwrap();
    assert_eq!(
        from_file.checkpoint.manifest_id,
        done.checkpoint.manifest_id
    );
    assert_verify_clean(&root);
}

#[test]
fn bad_tensors_in_memory_are_refused_with_a_hint_and_write_nothing() {
    let tmp = tempfile::tempdir().unwrap();
    let root = template(tmp.path());
    let before = snapshot(&root);
    let mut reg = Registry::open(&root).unwrap();
    let mut short = model(0.5);
    short[0].data.pop();
    let mut twice = model(0.5);
    twice.push(twice[0].clone());
    let mut path = model(0.5);
    path[1].name = "../escape".into();
    for (bad, says) in [(short, "bytes"), (twice, "twice"), (path, "..")] {
        let e = reg
            .register_tensors(&bad, &files(), BTreeMap::new(), &ft_options(), &NoProgress)
            .unwrap_err();
        assert!(e.to_string().contains(says), "{e}");
        assert!(e.hint().is_some_and(|h| !h.is_empty()), "{e}");
    }
    let e = reg
        .register_tensors(
            &model(0.5),
            &[("../config.json".to_owned(), b"{}".to_vec())],
            BTreeMap::new(),
            &ft_options(),
            &NoProgress,
        )
        .unwrap_err();
    assert!(e.to_string().contains("file path"), "{e}");
    drop(reg);
    assert_eq!(snapshot(&root).files, before.files);
    assert_eq!(snapshot(&root).objects, before.objects);
}

/// Every I/O step of the writer fails once in turn (a transient error): the failed write
/// leaves the registry exactly as it was (files, object rows, checkpoints), then succeeds.
#[test]
fn a_transient_fault_at_every_io_step_of_the_writer_leaves_the_registry_as_it_was() {
    let tmp = tempfile::tempdir().unwrap();
    let template = template(tmp.path());
    let before = snapshot(&template);
    let mut k = 0;
    loop {
        let root = tmp.path().join(format!("t{k}"));
        copy_dir(&template, &root);
        let fs = Arc::new(FsBackend::new(&root).unwrap());
        let backend = Arc::new(FaultBackend::once(fs, k));
        let mut reg = Registry::open_with_backend(&root, backend.clone()).unwrap();
        let result = register_ft(&mut reg);
        drop(reg);
        match result {
            Ok(_) => {
                assert!(backend.steps() <= k, "succeeded although step {k} failed");
                assert_eq!(snapshot(&root).checkpoints.len(), 2);
                assert_verify_clean(&root);
                break;
            }
            Err(e) => {
                let after = snapshot(&root);
                assert_eq!(after.checkpoints, before.checkpoints, "step {k}: {e}");
                assert_eq!(after.objects, before.objects, "step {k}: {e}");
                assert_eq!(after.files, before.files, "step {k}: {e}");
            }
        }
        std::fs::remove_dir_all(&root).unwrap();
        k += 1;
    }
    assert!(k > 10, "only {k} I/O steps were exercised");
}

/// A crash at every I/O step (that step and every one after it fail, and nothing can be
/// cleaned up): no checkpoint row, every object file is one the catalog knows (pending, for
/// gc), verify is clean, and gc gives back exactly the registry before the write.
#[test]
fn a_crash_at_every_io_step_of_the_writer_leaves_no_row_and_no_unknown_object() {
    let tmp = tempfile::tempdir().unwrap();
    let template = template(tmp.path());
    let before = snapshot(&template);
    let mut k = 0;
    loop {
        let root = tmp.path().join(format!("c{k}"));
        copy_dir(&template, &root);
        let fs = Arc::new(FsBackend::new(&root).unwrap());
        let backend = Arc::new(FaultBackend::new(fs, k));
        let mut reg = Registry::open_with_backend(&root, backend.clone()).unwrap();
        let result = register_ft(&mut reg);
        drop(reg);
        if result.is_ok() {
            assert!(backend.steps() <= k);
            break;
        }
        let mut reg = Registry::open(&root).unwrap();
        assert_eq!(
            reg.list(&CheckpointFilter::default()).unwrap().len(),
            1,
            "step {k} left a row"
        );
        let plan = reg.gc_plan().unwrap();
        assert!(
            plan.orphans.is_empty(),
            "step {k}: unknown objects {plan:?}"
        );
        assert_verify_clean(&root);
        reg.gc(false).unwrap();
        drop(reg);
        let after = snapshot(&root);
        assert_eq!(after.objects, before.objects, "step {k}");
        assert_eq!(after.files, before.files, "step {k}");
        std::fs::remove_dir_all(&root).unwrap();
        k += 1;
    }
    assert!(k > 10, "only {k} I/O steps were exercised");
}
