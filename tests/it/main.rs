//! Integration tests: one binary, one module per concern.
#![allow(clippy::print_stderr)] // tests say why they skip

mod common;

mod cli;
mod compact;
mod concurrency;
mod corruption;
mod crash;
mod format;
mod hostile;
mod merge;
#[cfg(feature = "eval")]
mod parity;
mod roundtrip;
mod vectors;
