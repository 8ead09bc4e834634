#!/usr/bin/env bash
# Builds crossmerge with CUDA (`--features cuda`) on a machine with no GPU and no CUDA toolkit,
# from the CUDA 13.0 PyPI wheels (nvcc, runtime, NVRTC, CCCL headers, cuBLAS, cuRAND). The driver's libcuda
# is not on PyPI: a link stub stands in for it; the real one is loaded on the GPU machine.
#
#   bash scripts/cuda/build.sh            # → $CARGO_TARGET_DIR (default target)/release/crossmerge
#   CARGO_TARGET_DIR=target/cuda bash scripts/cuda/build.sh   # keeps the CPU build's target/ apart
#   CUDA_COMPUTE_CAP=80 bash scripts/cuda/build.sh   # another GPU generation (default 90: H100/H200)
#
# Every piece is pinned to 13.0 (pip would pull the newest nvvm and crt otherwise): PTX newer than the GPU driver's CUDA version fails to JIT (driver 580 =
# CUDA 13.0). Then carry target/release/crossmerge to the GPU machine and run
# `crossmerge eval REF --task pos --data FILE --device cuda`.
set -euo pipefail
cd "$(dirname "$0")/../.."
tk="$PWD/target/cuda-toolkit"
if [ ! -x "$tk/venv/bin/python" ]; then
  python3 -m venv "$tk/venv"
fi
"$tk/venv/bin/pip" install --quiet --disable-pip-version-check \
  "nvidia-cuda-nvcc==13.0.88" "nvidia-nvvm==13.0.88" "nvidia-cuda-crt==13.0.88" \
  "nvidia-cuda-runtime==13.0.88" "nvidia-cuda-nvrtc==13.0.88" \
  "nvidia-cuda-cccl==13.0.85" "nvidia-cublas==13.0.*" "nvidia-curand==10.4.0.*"
site="$("$tk/venv/bin/python" -c 'import sysconfig; print(sysconfig.get_paths()["purelib"])')"
# The CUDA 13 wheels share one prefix, nvidia/cu13: bin (nvcc), include, lib, nvvm.
cuda="$site/nvidia/cu13"
[ -x "$cuda/bin/nvcc" ] || { echo "build.sh: no nvcc under $cuda" >&2; exit 1; }
# Unversioned names for the linker, and a stub of the driver library (not on PyPI).
links="$tk/lib"
rm -rf "$links" && mkdir -p "$links"
for f in "$cuda"/lib/*.so.*; do
  base="$(basename "$f")"; ln -sf "$f" "$links/${base%%.so*}.so"
done
export CUDA_ROOT="$cuda" CUDA_PATH="$cuda" CUDA_HOME="$cuda"
export PATH="$cuda/bin:$PATH" NVCC="$cuda/bin/nvcc"
export LIBRARY_PATH="$links:$cuda/lib${LIBRARY_PATH:+:$LIBRARY_PATH}"
export CUDA_COMPUTE_CAP="${CUDA_COMPUTE_CAP:-90}" CUDARC_CUDA_VERSION=13000
# The library first (no linking), then a stub exporting every driver-API symbol cudarc uses,
# then the binary.
out="${CARGO_TARGET_DIR:-target}"
cargo build --release --features cuda --lib
rlib="$(ls -t "$out"/release/deps/libcudarc-*.rlib | head -n 1)"
nm -u "$rlib" | awk '{print $2}' | grep -E '^cu[A-Z]' | sort -u \
  | sed 's/.*/void &(void) {}/' > "$tk/stub.c"
cc -shared -o "$links/libcuda.so" -Wl,-soname,libcuda.so.1 "$tk/stub.c"
cargo build --release --features cuda
echo "built $out/release/crossmerge with CUDA (compute capability $CUDA_COMPUTE_CAP)"
