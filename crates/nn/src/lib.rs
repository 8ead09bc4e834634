//! crossmerge-nn: the models and data of evaluation (and, next, training), on candle.
//!
//! Data, in the formats the field uses: [`conllu`] reads Universal Dependencies treebanks,
//! [`ner`] IOB2 files (CoNLL-2003 and Universal NER layouts), [`nli`] premise/hypothesis/label
//! TSV or JSONL, [`text`] plain text for perplexity; [`label_map`] renames gold labels into a
//! model's; [`align`] maps words to sub-word tokens. Models (feature `eval`): [`model`] (BERT
//! and XLM-RoBERTa built from config.json, one concern per file), [`parser`] (the biaffine
//! dependency head), [`kernels`] (fused CPU kernels); [`run`] evaluates a model over a
//! dataset; [`metrics`] scores predictions as the reference tools do (seqeval/conlleval for
//! NER, the CoNLL 2018 shared-task script for UAS/LAS); [`train`] is where training goes.
//!
//! # Place in the workspace
//!
//! Above `crossmerge-store` (its error type) only: it knows nothing of the registry. The
//! crossmerge crate (CLI and the evaluation glue) loads a checkpoint's tensors from the
//! registry and hands them to [`model`]; training (issue 12) will live here too, and register
//! what it trains through `crossmerge-core`'s one checkpoint writer from the crate above.

pub(crate) use crossmerge_store::error;

#[cfg(feature = "eval")]
pub mod align;
pub mod conllu;
#[cfg(feature = "eval")]
pub mod kernels;
pub mod label_map;
pub mod metrics;
#[cfg(feature = "eval")]
pub mod model;
pub mod ner;
pub mod nli;
#[cfg(feature = "eval")]
pub mod parser;
pub mod rng;
#[cfg(feature = "eval")]
pub mod run;
pub mod text;
#[cfg(feature = "eval")]
pub mod train;

#[cfg(test)]
mod tests;

// Linked for its `x86-v4` feature only (see Cargo.toml): candle's CPU matrix products.
#[cfg(feature = "eval")]
use gemm as _;

use std::path::Path;

use crate::error::{Error, Result};

/// Largest data file an evaluation reads (the whole of UD English-EWT train is 14 MB).
pub const MAX_DATA_BYTES: u64 = 4 << 30;

/// The bytes of a data file: a regular file (after links) of at most [`MAX_DATA_BYTES`], so a
/// device, a pipe or `/dev/zero` is refused instead of read without end.
pub fn read_data(path: &Path) -> Result<Vec<u8>> {
    use std::io::Read;
    let meta = std::fs::metadata(path).map_err(|e| Error::io("reading", path, e))?;
    if !meta.is_file() {
        return Err(Error::bad_input(
            path,
            "is not a regular file",
            "give a data file (CoNLL-U, IOB2, TSV/JSONL or text), not a folder, device or pipe",
        ));
    }
    if meta.len() > MAX_DATA_BYTES {
        return Err(Error::bad_input(
            path,
            format!(
                "is {} bytes, over the limit of {MAX_DATA_BYTES}",
                meta.len()
            ),
            "split the data into smaller files",
        ));
    }
    let mut bytes = Vec::with_capacity(usize::try_from(meta.len()).unwrap_or(0));
    std::fs::File::open(path)
        .and_then(|f| f.take(MAX_DATA_BYTES + 1).read_to_end(&mut bytes))
        .map_err(|e| Error::io("reading", path, e))?;
    if bytes.len() as u64 > MAX_DATA_BYTES {
        return Err(Error::bad_input(
            path,
            "grew past the size limit while it was read",
            "do not change a data file while it is evaluated",
        ));
    }
    Ok(bytes)
}
