#!/usr/bin/env bash
# Builds NativeLora's native core, libnativelora.so, from the sources in SRC (CMakeLists.txt and native/):
#   build-native.sh SRC OUT cuda   the cuBLAS backend: CMake with -DNL_BACKEND=cuda, which needs the CUDA toolkit
#                                  (nvcc, cudart, cuBLAS; found on PATH, in $CUDA_HOME or in /usr/local/cuda)
#   build-native.sh SRC OUT cpu    the OpenBLAS backend (Debian/Ubuntu: libopenblas-dev)
# The library lands in OUT/libnativelora.so. Without cmake, or when CMake fails, the one-file backend is compiled
# directly (nvcc for CUDA, g++ for the CPU), so a machine with the toolkit but no usable cmake still works.
set -euo pipefail
if [ $# -ne 3 ] || { [ "$3" != cuda ] && [ "$3" != cpu ]; }; then
  echo "usage: build-native.sh SRC OUT cuda|cpu" >&2
  exit 2
fi
src=$1 out=$2 backend=$3
mkdir -p "$out"
# nvcc is often installed without being on PATH
for d in "${CUDA_HOME:-}" "${CUDA_PATH:-}" /usr/local/cuda $(ls -d /usr/local/cuda-* 2>/dev/null | sort -V -r); do
  if [ -n "$d" ] && [ -x "$d/bin/nvcc" ]; then export PATH="$d/bin:$PATH"; break; fi
done
if [ "$backend" = cuda ] && ! command -v nvcc >/dev/null; then
  echo "error: the CUDA toolkit was not found (no nvcc on PATH, in \$CUDA_HOME or in /usr/local/cuda);" \
       "install it (it brings cuBLAS) or run with --cpu-only" >&2
  exit 1
fi
[ "$backend" = cuda ] && nvcc --version | tail -n 2

# the one-file backend compiled without CMake (no cmake, or CMake failed: the GPU may be lent for minutes only)
direct_build() {
  local common=(-O2 -std=c++17 -shared -DNDEBUG -I"$src/native/include" -I"$src/native/src" "$src/native/src/errors.cpp")
  if [ "$backend" = cuda ]; then
    # the driver's libcuda.so may lack its unversioned link; the toolkit's stub has the same SONAME
    local stubs
    stubs="$(dirname "$(command -v nvcc)")/../lib64/stubs"
    nvcc "${common[@]}" -Xcompiler -fPIC,-fvisibility=hidden -DNL_BACKEND_CUDA=1 "$src/native/src/backend_cuda.cpp" \
      -cudart shared -lcublas -L"$stubs" -lcuda -o "$out/libnativelora.so"
  else
    g++ "${common[@]}" -fPIC -fvisibility=hidden -DNL_BACKEND_CPU=1 -I/usr/include/x86_64-linux-gnu/openblas-pthread \
      -I/usr/include/openblas "$src/native/src/backend_cpu.cpp" -lopenblas -o "$out/libnativelora.so"
  fi
}

if ! command -v cmake >/dev/null; then
  echo "cmake not found: compiling the $backend backend directly"
  direct_build
elif ! cmake -S "$src" -B "$out/build" -DCMAKE_BUILD_TYPE=Release -DNL_BACKEND="$backend" >"$out/cmake.log" 2>&1 \
  || ! cmake --build "$out/build" -j "$(nproc)" >"$out/build.log" 2>&1; then
  tail -n 30 "$out/cmake.log" "$out/build.log" >&2 2>/dev/null || true
  echo "CMake failed for the $backend backend (logs in $out); compiling it directly instead" >&2
  direct_build
else
  grep -m1 "nativelora:" "$out/cmake.log" || true
  cp "$out/build/libnativelora.so" "$out/libnativelora.so"
fi
echo "native core: $out/libnativelora.so ($backend)"
