//! Integration tests: one binary, one module per concern.

mod common;

mod cli;
mod compact;
mod concurrency;
mod corruption;
mod crash;
mod format;
mod hostile;
mod roundtrip;
