//! Integration tests: one binary, one module per concern.
#![allow(clippy::print_stderr)] // tests say why they skip

mod common;

#[cfg(feature = "eval")]
mod align;
mod cli;
mod compact;
mod concurrency;
mod corruption;
mod crash;
#[cfg(feature = "eval")]
mod eval_checks;
#[cfg(feature = "eval")]
mod evaluate;
mod format;
mod hostile;
mod layers;
mod merge;
#[cfg(feature = "eval")]
mod parity;
mod remote;
mod roundtrip;
mod safety;
#[cfg(feature = "eval")]
mod serve;
#[cfg(feature = "eval")]
mod slurm;
mod snapshots;
#[cfg(feature = "eval")]
mod study;
mod toy;
mod train;
mod vectors;
mod writer;
