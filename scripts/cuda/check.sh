#!/usr/bin/env bash
# Type-checks the CUDA code path (`--features cuda`) without a CUDA toolkit, as CI does:
# a stand-in nvcc answers the build scripts' questions (scripts/cuda/nvcc-stub).
set -euo pipefail
cd "$(dirname "$0")/../.."
bin="$(mktemp -d)"
trap 'rm -rf "$bin"' EXIT
cp scripts/cuda/nvcc-stub "$bin/nvcc"
PATH="$bin:$PATH" NVCC="$bin/nvcc" CUDA_COMPUTE_CAP=90 CUDARC_CUDA_VERSION=13000 \
  cargo check --features cuda --all-targets "$@"
