//! crossmerge-core: what crossmerge knows about checkpoints, vectors and merges, without
//! models.
//!
//! # Place in the workspace
//!
//! Above `crossmerge-store` (ids, codec, backends, the error type), below the crossmerge crate
//! (CLI, evaluation glue, later the study). It never depends on candle or on `crossmerge-nn`:
//! evaluation and training reach the registry from the crate above.
//!
//! Modules, bottom to top: [`tensor`] (dtypes, canonical encoding, the reference merge math),
//! [`checkpoint`] (safetensors and Hugging Face folders in and out, manifests), [`catalog`]
//! (`SQLite` rows), [`progress`], [`method`] (merge methods, one file each), [`recipe`]
//! (TOML/mergekit recipes and merge plans), [`engine`] (the streaming merge), [`vector`]
//! (task and language vectors, comparison), [`registry`] (the facade: register, merge, derive,
//! verify, gc, and the one checkpoint writer), [`report`] (tables, CSV, plots).

pub use crossmerge_store::{self as store, error, id};
pub(crate) use crossmerge_store::{atomic, pool, write_behind};

pub mod catalog;
pub mod checkpoint;
pub mod engine;
pub mod method;
pub mod progress;
pub mod recipe;
pub mod registry;
pub mod report;
pub mod results;
pub mod tensor;
pub mod vector;
mod window;

pub use catalog::{CheckpointFilter, CheckpointKind, CheckpointRow};
pub use error::{Error, Result};
pub use id::ObjectId;
pub use registry::{
    CompareOptions, DeriveOptions, ExportOptions, NoProgress, Progress, RegisterOptions, Registry,
};
pub use tensor::Dtype;
pub use vector::VectorKind;
pub use vector::group::GroupBy;
