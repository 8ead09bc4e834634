//! Evaluation: datasets in the formats the field uses and metrics that match the reference
//! tools (seqeval/conlleval for NER, the CoNLL 2018 shared-task script for UAS/LAS).
//!
//! [`conllu`] reads Universal Dependencies treebanks, [`ner`] IOB2 files (CoNLL-2003 and
//! Universal NER layouts), [`nli`] premise/hypothesis/label TSV or JSONL, [`text`] plain text
//! for perplexity; [`label_map`] renames gold labels into a model's; [`metrics`] scores
//! predictions against gold.

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
#[cfg(feature = "eval")]
pub mod run;
pub mod text;

#[cfg(test)]
mod tests;
