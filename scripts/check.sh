#!/usr/bin/env bash
# Format, lint, tests and the fuzz targets' build, exactly as CI runs them.
set -euo pipefail
cd "$(dirname "$0")/.."
cargo fmt --all --check
cargo clippy --all-targets -- -D warnings
cargo test
cargo build --manifest-path fuzz/Cargo.toml
