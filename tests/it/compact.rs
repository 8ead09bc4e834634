//! Fine-tunes are stored compactly against their base; identical content costs nothing.

use crossmerge::{CheckpointKind, NoProgress, RegisterOptions, Registry};
use crossmerge_synth::{FamilySpec, write_family};

use crate::common;

#[test]
fn fine_tune_costs_at_most_half_its_bytes_and_reregistration_nothing() {
    let tmp = tempfile::tempdir().unwrap();
    let fam = write_family(
        &tmp.path().join("fam"),
        &FamilySpec::new(common::medium_shape(), 1),
    )
    .unwrap();
    let root = tmp.path().join("reg");
    let mut reg = Registry::create(&root).unwrap();
    reg.register(
        &fam[0],
        &RegisterOptions::new("base", CheckpointKind::Base),
        &NoProgress,
    )
    .unwrap();
    let opts = RegisterOptions::new("lang-es", CheckpointKind::Language)
        .language("es")
        .base("base");
    let ft = reg.register(&fam[1], &opts, &NoProgress).unwrap();
    let du = reg.du().unwrap();
    let row = du
        .checkpoints
        .iter()
        .find(|r| r.checkpoint == "lang-es@1")
        .unwrap();
    assert!(
        row.ratio <= 0.50,
        "fine-tune stored in {:.1}% of its bytes",
        100.0 * row.ratio
    );
    assert!(
        row.ratio > 0.30,
        "suspiciously small: {:.1}%",
        100.0 * row.ratio
    );
    assert!(
        ft.bytes_written <= row.stored,
        "objects shared with the base (config.json) count for both"
    );

    // The same content again, under the same name: no new version, no bytes.
    let again = reg.register(&fam[1], &opts, &NoProgress).unwrap();
    assert!(!again.created);
    assert_eq!(again.checkpoint.version, 1);
    assert_eq!(again.bytes_written, 0);
    // Under another name: a new row, still no bytes.
    let other = reg
        .register(
            &fam[1],
            &RegisterOptions::new("lang-es-copy", CheckpointKind::Language)
                .language("es")
                .base("base"),
            &NoProgress,
        )
        .unwrap();
    assert!(other.created);
    assert_eq!(other.bytes_written, 0);
    // Only the new row's record (its catalog row as a small object, for rebuild-catalog).
    let grew = reg.du().unwrap().total_stored - du.total_stored;
    assert!(grew > 0 && grew < 1024, "a new name stored {grew} bytes");

    // Lossless: the export equals the input.
    let out = tmp.path().join("out");
    reg.export(
        "lang-es",
        &out,
        &crossmerge::ExportOptions::default(),
        &NoProgress,
    )
    .unwrap();
    assert_eq!(
        common::read_model_tensors(&out),
        common::read_model_tensors(&fam[1])
    );
}

#[test]
fn a_changed_definition_becomes_the_next_version() {
    let tmp = tempfile::tempdir().unwrap();
    let fam = common::tiny_family(&tmp.path().join("fam"), 2, None);
    let mut reg = Registry::create(&tmp.path().join("reg")).unwrap();
    let v1 = reg
        .register(
            &fam[1],
            &RegisterOptions::new("m", CheckpointKind::Base),
            &NoProgress,
        )
        .unwrap();
    let v2 = reg
        .register(
            &fam[2],
            &RegisterOptions::new("m", CheckpointKind::Base),
            &NoProgress,
        )
        .unwrap();
    assert_eq!((v1.checkpoint.version, v2.checkpoint.version), (1, 2));
    assert_eq!(reg.resolve("m").unwrap().version, 2);
    assert_eq!(
        reg.resolve("m@1").unwrap().manifest_id,
        v1.checkpoint.manifest_id
    );
}
