#!/usr/bin/env bash
# NativeLora GPU bundle runner (the bundle is made by bench/gpu/bundle.sh). Needs no .NET installation and no network.
#   bash run.sh                 Linux x86-64 with an NVIDIA GPU, its driver (nvidia-smi) and the CUDA toolkit (nvcc, cuBLAS)
#   bash run.sh --cpu-only      no GPU: OpenBLAS core on the CPU accelerator, a small config (proves the bundle runs)
# Options: --quick          smoke test: only the kernel benchmarks, the smallest config, 2 timed steps
#          --budget SECONDS time box of the whole run (default 540); each stage gets at most what is left
# Stages (each with its own time cap, in priority order, so one slow stage cannot starve the rest; the whole run is
# boxed to --budget): unpack the .NET runtime (DOTNET_ROOT); build the native core (build-native.sh); then
#   kernel checks        every ILGPU kernel family against float64 references on the device (selfcheck --kernels)
#   roofline             copy and GEMM ceilings, NF4 dequantize, fused cross-entropy, attention vs PyTorch SDPA and
#                        the materialised path (nativelora-bench roofline --peer torch, bench/peer/attention_peer.py)
#   train (peer: PEFT)   Llama 3.2 1B at seq 512 x 4 and 2048 x 1, the full 32-layer Llama 3 8B (2 timed steps),
#                        134M and one 8B layer: tokens/s, phases, MFU, device operations per step; NativeLora / PEFT ratio
#   op profile           NATIVELORA_PROFILE=1 on the 1B step: time per op family
#   PEFT interop         LoRA, rsLoRA and DoRA adapters trained by the CLI, loaded by PeftModel.from_pretrained,
#                        equal the merged model in transformers (bench/gpu/interop.sh, bench/peer/peft_interop.py)
#   qlora demo, serve load, BenchmarkDotNet kernels (short job)
# Output: with $OUT set (the device tool), only results.tgz (every log), summary.md, run.log and card.txt land in
# $OUT; otherwise everything stays in ./gpu-results. summary.md is ready for bench/RESULTS.md.
set -uo pipefail
BUNDLE=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
cpu_only=0 quick=0 budget=540
while [ $# -gt 0 ]; do
  case "$1" in
    --cpu-only) cpu_only=1 ;;
    --quick) quick=1 ;;
    --budget) budget=${2:?--budget needs seconds}; shift ;;
    -h|--help) sed -n '2,18p' "$0"; exit 0 ;;
    *) echo "run.sh: unknown option '$1' (run.sh --help lists them)" >&2; exit 2 ;;
  esac
  shift
done
WORK=$(mktemp -d "${TMPDIR:-/tmp}/nativelora-bundle.XXXXXX")
RESULTS=${OUT:+$WORK/results}
RESULTS=${RESULTS:-$PWD/gpu-results}
mkdir -p "$RESULTS"
RESULTS=$(cd "$RESULTS" && pwd)
trap 'rm -rf "$WORK"' EXIT
export HOME=${HOME:-$WORK}

statuses=()
start=$SECONDS

# stage NAME CAP LOG CMD...: runs CMD for at most min(CAP, time left) seconds, its output also in $RESULTS/LOG
stage() {
  local name=$1 cap=$2 log=$3
  shift 3
  local t=$((budget - (SECONDS - start)))
  [ "$t" -gt "$cap" ] && t=$cap
  if [ "$t" -lt 20 ]; then
    echo "== $name: skipped, the ${budget}s budget is spent"
    statuses+=("$name: skipped (budget)")
    return
  fi
  echo "== $name (at most ${t}s)"
  local t0=$SECONDS rc st
  timeout --kill-after=10 "$t" "$@" 2>&1 | tee "$RESULTS/$log"
  rc=${PIPESTATUS[0]}
  case $rc in
    0) st=ok ;;
    124|137) st="TIMED OUT after ${t}s" ;;
    *) st="FAILED (exit $rc)" ;;
  esac
  echo "== $name: $st in $((SECONDS - t0))s"
  statuses+=("$name: $st ($((SECONDS - t0))s)")
}

unpack() { # unpack ARCHIVE DIR: xz if present, else Python's tarfile (lzma is in its standard library)
  mkdir -p "$2"
  if command -v xz >/dev/null; then
    tar -xJf "$1" -C "$2"
  elif command -v python3 >/dev/null; then
    python3 -c 'import sys, tarfile; tarfile.open(sys.argv[1]).extractall(sys.argv[2])' "$1" "$2"
  else
    echo "error: cannot unpack $1: install xz-utils (or python3)" >&2
    return 1
  fi
}

# ILGPU opens the driver as "libcuda.so", but some driver installs have only libcuda.so.1: link it in a private folder
link_libcuda() {
  local ldc so1 d
  ldc=$(command -v ldconfig || echo /sbin/ldconfig)
  "$ldc" -p 2>/dev/null | grep -q 'libcuda\.so (' && return
  so1=$("$ldc" -p 2>/dev/null | awk '/libcuda\.so\.1 .*x86-64/ {print $NF; exit}')
  for d in /usr/lib/x86_64-linux-gnu /usr/lib64 /usr/local/nvidia/lib64 /usr/lib/wsl/lib; do
    [ -z "$so1" ] && [ -e "$d/libcuda.so.1" ] && so1=$d/libcuda.so.1
  done
  if [ -z "$so1" ]; then
    echo "warning: the CUDA driver library (libcuda.so.1) was not found; ILGPU will not see the GPU" >&2
    return
  fi
  [ -e "$(dirname "$so1")/libcuda.so" ] && return
  mkdir -p "$WORK/cudalink"
  ln -sf "$so1" "$WORK/cudalink/libcuda.so"
  export LD_LIBRARY_PATH="$WORK/cudalink${LD_LIBRARY_PATH:+:$LD_LIBRARY_PATH}"
  echo "linked $so1 as libcuda.so (ILGPU opens that name)"
}

main() {
  echo "NativeLora GPU bundle run, $(date -u '+%Y-%m-%d %H:%M UTC'), $(uname -srm)"
  [ -f "$BUNDLE/MANIFEST" ] && sed 's/^/  /' "$BUNDLE/MANIFEST"
  local device backend card
  if [ $cpu_only = 1 ]; then
    device=cpu backend=cpu card="none (--cpu-only)"
  else
    device=cuda backend=cuda
    if ! card=$(nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader 2>/dev/null | head -n 1) || [ -z "$card" ]; then
      echo "error: no NVIDIA GPU found (nvidia-smi failed or is missing); run 'bash run.sh --cpu-only' to exercise the CPU path" >&2
      return 1
    fi
  fi
  [ $cpu_only = 0 ] && link_libcuda
  echo "$card" >"$RESULTS/card.txt"
  echo "card: $card; CPU: $(nproc) threads, $(grep -m1 'model name' /proc/cpuinfo | cut -d: -f2 | sed 's/^ //')"

  echo "== unpack the .NET runtime and the apps into $WORK"
  unpack "$BUNDLE/dotnet-runtime.tar.xz" "$WORK/dotnet" && unpack "$BUNDLE/apps.tar.xz" "$WORK" || return 1
  export DOTNET_ROOT=$WORK/dotnet DOTNET_CLI_TELEMETRY_OPTOUT=1 DOTNET_NOLOGO=1
  export NATIVELORA_NATIVE_DIR=$WORK/native NATIVELORA_ROOT=$BUNDLE
  local dotnet=$DOTNET_ROOT/dotnet cli=$WORK/app/cli/NativeLora.Cli.dll bench=$WORK/app/bench/nativelora-bench.dll
  "$dotnet" --list-runtimes | sed 's/^/  /'

  stage "native core ($backend)" 300 native.log bash "$BUNDLE/build-native.sh" "$BUNDLE" "$WORK/native" "$backend"
  if [ ! -f "$WORK/native/libnativelora.so" ]; then
    echo "error: no native core was built; nothing else can run" >&2
    return 1
  fi
  "$dotnet" "$cli" info --device "$device" | sed 's/^/  /'

  stage "kernel checks" 60 kernel-checks.log "$dotnet" "$cli" selfcheck --kernels --device "$device"

  local peer=none
  if python3 -c "import torch, transformers, peft" 2>/dev/null; then
    peer=peft
  elif [ $cpu_only = 1 ] && /usr/bin/python3 -c "import torch" 2>/dev/null; then
    peer=torch
    echo "HF PEFT is not importable by python3; Debian's PyTorch (/usr/bin/python3) is the CPU peer"
  else
    echo "HF PEFT is not importable by python3 (python3 -c 'import torch, transformers, peft' failed): no peer ratio"
  fi
  local attn_peer=none
  # SDPA with enable_gqa needs torch 2.5 or newer
  python3 -c "import torch, sys; sys.exit(tuple(map(int, torch.__version__.split('.')[:2])) < (2, 5))" 2>/dev/null && attn_peer=torch
  stage "roofline (copy, GEMM, NF4, cross-entropy, attention vs torch)" 90 roofline.log \
    "$dotnet" "$bench" roofline --device "$device" --peer $attn_peer

  local all=q_proj,k_proj,v_proj,o_proj,gate_proj,up_proj,down_proj
  if [ $cpu_only = 1 ]; then
    stage "train tiny-bench" 150 train-tiny-bench.log "$dotnet" "$bench" train --model tiny-bench --seq 128 --micro-batch 4 \
      --targets q_proj,v_proj --r 16 --steps 5 --warmup 2 --reps 3 --device "$device" --peer $peer
  else
    # name cap seq micro steps warmup reps
    local runs=("llama3.2-1b 100 512 4 5 2 3" "llama3-8b 150 512 4 2 1 1" "llama3.2-1b 80 2048 1 5 2 2")
    [ $quick = 1 ] && runs=("llama-134m 60 512 4 2 1 1")
    local r name cap seq mb steps warm reps
    for r in "${runs[@]}"; do
      read -r name cap seq mb steps warm reps <<<"$r"
      stage "train $name seq $seq x $mb" "$cap" "train-$name-$seq.log" "$dotnet" "$bench" train --model "$name" \
        --seq "$seq" --micro-batch "$mb" --targets $all --r 16 --steps "$steps" --warmup "$warm" --reps "$reps" --device "$device" --peer $peer
    done
    if [ $quick = 0 ]; then
      stage "op profile llama3.2-1b" 60 profile-llama3.2-1b.log env NATIVELORA_PROFILE=1 "$dotnet" "$bench" train --model llama3.2-1b \
        --seq 512 --micro-batch 4 --targets $all --r 16 --steps 2 --warmup 1 --reps 1 --device "$device" --peer none
      [ $peer = peft ] && stage "PEFT interop (LoRA, rsLoRA, DoRA)" 90 interop.log bash "$BUNDLE/interop.sh" "$dotnet" "$cli" "$BUNDLE" "$WORK/interop" "$device"
      for r in "llama-134m 60" "llama3-8b-1layer 60"; do
        read -r name cap <<<"$r"
        stage "train $name seq 512 x 4" "$cap" "train-$name-512.log" "$dotnet" "$bench" train --model "$name" \
          --seq 512 --micro-batch 4 --targets $all --r 16 --steps 5 --warmup 2 --reps 2 --device "$device" --peer $peer
      done
    fi
  fi
  stage "qlora demo (paged_adamw_8bit)" 45 qlora.log bash -c '
    set -e; w=$1; d=$2; dn=$3; cli=$4; b=$5
    "$dn" "$cli" init-model --config "$b/data/demo/tiny-llama.json" --tokenizer "$b/artifacts/tokenizers/mistral" --out "$w/qlora-base"
    printf "{\"model\": \"%s\", \"data\": \"%s\", \"output_dir\": \"%s\", \"method\": \"qlora\", \"optim\": \"paged_adamw_8bit\", \"max_seq_len\": 128, \"micro_batch_size\": 4, \"gradient_accumulation\": 1, \"max_steps\": 40, \"learning_rate\": 5e-3, \"lora_dropout\": 0.0, \"eval_steps\": 20, \"save_steps\": 1000, \"device\": \"%s\"}" \
      "$w/qlora-base" "$b/data/demo/instructions.jsonl" "$w/qlora-run" "$d" >"$w/qlora.json"
    "$dn" "$cli" train --config "$w/qlora.json"' _ "$WORK" "$device" "$dotnet" "$cli" "$BUNDLE"
  # the OpenAI-compatible server under load, continuous batching on then off, every answer checked
  local serve_s=15
  [ $quick = 1 ] && serve_s=8
  stage "serve load (16 clients, batching on vs off)" $((3 * serve_s + 40)) serve.log \
    "$dotnet" "$bench" serve --clients 16 --duration $serve_s --max-tokens 32 --device "$device"
  echo "(BenchmarkDotNet asks 'dotnet --version' for an SDK; the bundle has none, so its 'No .NET SDKs were found' is expected)"
  stage "BenchmarkDotNet (kernels, short in-process job)" 90 benchmarkdotnet.log \
    "$dotnet" "$bench" --quick --filter '*KernelBenchmarks*' --artifacts "$RESULTS/benchmarkdotnet"
  summary "$card" >"$RESULTS/summary.md"
  echo "== stages"
  printf '  %s\n' "${statuses[@]}"
  echo "results in $RESULTS (summary.md is ready for bench/RESULTS.md); $((SECONDS - start))s in all"
  ! printf '%s\n' "${statuses[@]}" | grep -qv ': ok'
}

# summary CARD: the run in markdown, from the stage logs
summary() {
  echo "## GPU bundle run: $1"
  echo
  echo "$(date -u '+%Y-%m-%d'); $(sed -n 's/^commit: //p' "$BUNDLE/MANIFEST" 2>/dev/null); command: \`bash run.sh $([ $cpu_only = 1 ] && echo --cpu-only) $([ $quick = 1 ] && echo --quick)\`"
  echo
  printf -- '- %s\n' "${statuses[@]}"
  echo
  echo "### Kernel checks (selfcheck --kernels)"
  echo
  grep -E '^(seed|kernel checks on|FAIL|selfcheck)' "$RESULTS/kernel-checks.log" 2>/dev/null | sed 's/^/    /'
  echo
  echo "### BenchmarkDotNet (short in-process job)"
  local f
  for f in "$RESULTS"/benchmarkdotnet/results/*-report-github.md; do
    [ -f "$f" ] && { echo; cat "$f"; }
  done
  echo
  echo "### nativelora-bench roofline"
  echo
  grep -E '^(device|ceilings|\|)' "$RESULTS/roofline.log" 2>/dev/null
  echo
  echo "### PEFT interop (PeftModel.from_pretrained vs the merged model, f32 logits)"
  echo
  grep -E '^\{' "$RESULTS/interop.log" 2>/dev/null | sed 's/^/    /'
  echo
  echo "### op profile (llama3.2-1b, synchronised)"
  echo
  sed -n '/^op profile/,$p' "$RESULTS/profile-llama3.2-1b.log" 2>/dev/null | head -n 30 | sed 's/^/    /'
  echo
  echo "### nativelora-bench train"
  for f in "$RESULTS"/train-*.log; do
    [ -f "$f" ] || continue
    echo
    grep -E '^(device:|nativelora:|  phases|  peak|  device operations|  planner|pytorch|peft|ratio|error)' "$f" | sed 's/^/    /'
  done
  echo
  echo "### nativelora-bench serve"
  echo
  grep -E '^(# serve|\||throughput|batching)' "$RESULTS/serve.log" 2>/dev/null
}

main 2>&1 | tee "$RESULTS/run.log"
rc=${PIPESTATUS[0]}
if [ -n "${OUT:-}" ]; then # the device tool brings back a few files: the archive holds every log
  tar -C "$RESULTS" -czf "$OUT/results.tgz" . && cp "$RESULTS/summary.md" "$RESULTS/run.log" "$RESULTS/card.txt" "$OUT/" 2>/dev/null
fi
exit "$rc"
