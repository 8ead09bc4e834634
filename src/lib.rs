//! crossmerge: a content-addressed registry and toolkit for cross-lingual task transfer by
//! model merging.
//!
//! # Brief overview
//!
//! Researchers fine-tune a multilingual encoder on languages and on tasks; crossmerge stores
//! those checkpoints once (blake3-addressed tensors, zstd, fine-tunes as XOR-deltas against
//! their base), and everything else (vectors, merges, evaluations) reads through the
//! [`Registry`].
//!
//! ```no_run
//! use crossmerge::{CheckpointKind, NoProgress, RegisterOptions, Registry};
//! # fn main() -> crossmerge::Result<()> {
//! let mut registry = Registry::create("registry".as_ref())?;
//! let opts = RegisterOptions::new("minilm", CheckpointKind::Base);
//! let done = registry.register("../shared/models/all-MiniLM-L6-v2".as_ref(), &opts, &NoProgress)?;
//! println!("{} {}", done.checkpoint.reference(), done.checkpoint.manifest_id);
//! assert!(registry.verify(&NoProgress)?.is_clean());
//! # Ok(()) }
//! ```
//!
//! # The workspace
//!
//! This crate is the top: the `crossmerge` binary (its CLI in `src/cli/`) and the glue that
//! needs both lower halves, [`evaluate`] (a registry checkpoint through a candle model). It
//! re-exports the layers below so that one import path serves users:
//!
//! - `crossmerge-store` ([`store`], [`id`], [`error`]): ids, the object codec, backends;
//! - `crossmerge-core` ([`catalog`], [`checkpoint`], [`tensor`], [`method`], [`recipe`],
//!   [`engine`], [`vector`], [`registry`], [`report`]): everything without models;
//! - `crossmerge-nn` ([`eval`]): data readers, candle encoders and heads, metrics.
//!
//! Developer tasks (benchmarks, synthetic families) are in `xtask/`, not in the binary.

pub use crossmerge_core::{
    catalog, checkpoint, engine, error, id, method, progress, recipe, registry, report, store,
    tensor, vector,
};
pub use crossmerge_nn as eval;

#[cfg(feature = "eval")]
pub mod evaluate;
#[cfg(feature = "eval")]
pub mod study;
#[cfg(feature = "eval")]
pub mod train;

pub use crossmerge_core::{
    CheckpointFilter, CheckpointKind, CheckpointRow, CompareOptions, DeriveOptions, Dtype, Error,
    ExportOptions, GroupBy, NoProgress, ObjectId, Progress, RegisterOptions, Registry, Result,
    VectorKind,
};
