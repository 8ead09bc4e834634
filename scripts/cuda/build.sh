#!/usr/bin/env bash
# Builds crossmerge with CUDA (`--features cuda`) on a machine with no GPU and no CUDA toolkit,
# from the CUDA 13.0 PyPI wheels (nvcc, runtime, NVRTC, cuBLAS, cuRAND). The driver's libcuda
# is not on PyPI: a link stub stands in for it; the real one is loaded on the GPU machine.
#
#   bash scripts/cuda/build.sh            # → target/release/crossmerge with CUDA
#   CUDA_COMPUTE_CAP=80 bash scripts/cuda/build.sh   # another GPU generation (default 90: H100/H200)
#
# Build with 13.0.x: PTX newer than the GPU driver's CUDA version fails to JIT (driver 580 =
# CUDA 13.0). Then carry target/release/crossmerge to the GPU machine and run
# `crossmerge eval REF --task pos --data FILE --device cuda`.
set -euo pipefail
cd "$(dirname "$0")/../.."
tk="$PWD/target/cuda-toolkit"
if [ ! -x "$tk/venv/bin/python" ]; then
  python3 -m venv "$tk/venv"
fi
"$tk/venv/bin/pip" install --quiet --disable-pip-version-check \
  "nvidia-cuda-nvcc==13.0.88" "nvidia-cuda-runtime==13.0.88" "nvidia-cuda-nvrtc==13.0.88" \
  "nvidia-cublas==13.0.*" "nvidia-curand==10.4.0.*"
site="$("$tk/venv/bin/python" -c 'import sysconfig; print(sysconfig.get_paths()["purelib"])')"
nvcc="$(find "$site/nvidia" -path '*/bin/nvcc' -type f | head -n 1)"
[ -n "$nvcc" ] || { echo "build.sh: no nvcc in the nvidia-cuda-nvcc wheel" >&2; exit 1; }
root="$(dirname "$(dirname "$nvcc")")"
# One tree the build scripts can use as CUDA_ROOT: bin, include and lib of every wheel.
cuda="$tk/root"
rm -rf "$cuda" && mkdir -p "$cuda/lib64" "$cuda/include" "$cuda/bin"
ln -sf "$root"/bin/* "$cuda/bin/"
for d in $(find "$site/nvidia" -type d -name include); do cp -rs "$d"/. "$cuda/include/" 2>/dev/null || true; done
for d in $(find "$site/nvidia" -type d -name lib); do
  for f in "$d"/*.so*; do
    [ -e "$f" ] || continue
    ln -sf "$f" "$cuda/lib64/"
    base="$(basename "$f")"; ln -sf "$f" "$cuda/lib64/${base%%.so*}.so"
  done
done
# nvcc looks for its own pieces (nvvm, crt) beside itself.
[ -d "$root/nvvm" ] && ln -sfn "$root/nvvm" "$cuda/nvvm"
# The link stub for the driver library.
echo 'void cuGetProcAddress(void) {}' > "$tk/stub.c"
cc -shared -o "$cuda/lib64/libcuda.so" -Wl,-soname,libcuda.so.1 "$tk/stub.c"
export CUDA_ROOT="$cuda" CUDA_PATH="$cuda" CUDA_HOME="$cuda"
export PATH="$cuda/bin:$PATH" NVCC="$cuda/bin/nvcc"
export LIBRARY_PATH="$cuda/lib64${LIBRARY_PATH:+:$LIBRARY_PATH}"
export CUDA_COMPUTE_CAP="${CUDA_COMPUTE_CAP:-90}" CUDARC_CUDA_VERSION=13000
cargo build --release --features cuda
echo "built target/release/crossmerge with CUDA (compute capability $CUDA_COMPUTE_CAP)"
