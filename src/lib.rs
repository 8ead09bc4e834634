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
//! Modules: [`id`] (typed digests), [`tensor`] (dtypes, canonical encoding), [`store`]
//! (objects behind a backend trait, and their on-disk codec), [`catalog`] (`SQLite` rows),
//! [`checkpoint`] (safetensors and Hugging Face folders in and out), [`registry`] (the facade),
//! [`synth`] (synthetic checkpoints for tests and benchmarks).

mod atomic;
pub mod catalog;
pub mod checkpoint;
pub mod engine;
pub mod error;
pub mod eval;
pub mod id;
pub mod method;
mod pool;
pub mod recipe;
pub mod registry;
pub mod report;
pub mod store;
pub mod synth;
pub mod tensor;
pub mod vector;
mod window;
mod write_behind;

pub use catalog::{CheckpointFilter, CheckpointKind, CheckpointRow};
pub use error::{Error, Result};
pub use id::{ManifestId, ObjectId, TensorId};
pub use registry::{
    CompareOptions, DeriveOptions, ExportOptions, NoProgress, Progress, RegisterOptions, Registry,
};
pub use tensor::Dtype;
pub use vector::VectorKind;
pub use vector::group::GroupBy;
