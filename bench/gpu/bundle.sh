#!/usr/bin/env bash
# Makes the GPU bundle: a directory (default artifacts/gpu-bundle/, plus artifacts/gpu-bundle.tar of it) that runs
# NativeLora's checks and benchmarks on a Linux x86-64 CUDA machine with no .NET and no network (bench/gpu/run.sh):
#   dotnet-runtime.tar.xz  this machine's .NET runtime: the dotnet muxer, host/fxr and shared/Microsoft.NETCore.App
#                          plus shared/Microsoft.AspNetCore.App (the CLI's `serve` verb needs it), unpacked at run time
#   apps.tar.xz            framework-dependent linux-x64 publishes of the CLI (app/cli) and the bench (app/bench)
#   CMakeLists.txt native/ the native core's sources, built there by build-native.sh (CMake, -DNL_BACKEND=cuda)
#   bench/configs bench/peer  the train benchmark's model configs and peer scripts (same layout as the repository)
#   data/demo/tiny-llama.json, instructions.jsonl, artifacts/tokenizers/mistral  the serve, qlora and interop stages'
#                          model config, data and tokenizer
#   run.sh build-native.sh interop.sh MANIFEST
# Usage: bench/gpu/bundle.sh [OUT_DIR]   (after ./build.sh; needs the .NET SDK, tar and xz). Fails above 60 MB.
set -euo pipefail
ROOT=$(cd "$(dirname "$0")/../.." && pwd)
OUT=${1:-$ROOT/artifacts/gpu-bundle}
LIMIT=60000000 # bytes: the bundle must stay under 60 MB
STAGE=$ROOT/artifacts/gpu-bundle-stage
CACHE=$ROOT/artifacts/gpu-bundle-cache
log() { printf '\033[1m==> %s\033[0m\n' "$*" >&2; }

command -v dotnet >/dev/null || { echo "error: bundle.sh needs the .NET SDK (dotnet) to publish" >&2; exit 1; }
command -v xz >/dev/null || { echo "error: bundle.sh needs xz (Debian: apt-get install xz-utils)" >&2; exit 1; }
DOTNET_HOME=$(dirname "$(readlink -f "$(command -v dotnet)")")
# the newest 10.0 runtime of this installation: the one the apps (net10.0) roll forward to
RT=$(ls "$DOTNET_HOME/shared/Microsoft.NETCore.App" | grep '^10\.0\.' | sort -V | tail -n 1)
for d in host/fxr/$RT shared/Microsoft.NETCore.App/$RT shared/Microsoft.AspNetCore.App/$RT; do
  [ -d "$DOTNET_HOME/$d" ] || { echo "error: $DOTNET_HOME/$d is missing: the bundle takes the .NET $RT runtime, host and ASP.NET Core from this installation" >&2; exit 1; }
done

rm -rf "$STAGE" "$OUT"
mkdir -p "$STAGE/app" "$OUT" "$CACHE"
export DOTNET_CLI_TELEMETRY_OPTOUT=1 DOTNET_NOLOGO=1
for app in "cli managed/NativeLora.Cli" "bench bench/NativeLora.Bench"; do
  read -r name project <<<"$app"
  log "publish $project (linux-x64, framework-dependent) -> app/$name"
  dotnet publish "$ROOT/$project" -c Release -r linux-x64 --self-contained false -o "$STAGE/app/$name" -nologo -v:q -clp:ErrorsOnly >/dev/null
  # the core is built on the target for its backend; amd64/ holds Windows-only profiler DLLs of BenchmarkDotNet
  rm -rf "$STAGE/app/$name/libnativelora.so" "$STAGE/app/$name/amd64"
done

log "apps.tar.xz"
tar -C "$STAGE" -cf - app | xz -9 -T0 >"$OUT/apps.tar.xz"

runtime=$CACHE/dotnet-runtime-$RT.tar.xz # the runtime does not change between bundles: compress it once
if [ ! -f "$runtime" ]; then
  log "dotnet-runtime.tar.xz (.NET $RT with ASP.NET Core; xz -9 takes a minute or two)"
  tar -C "$DOTNET_HOME" -cf - dotnet LICENSE.txt ThirdPartyNotices.txt host/fxr/$RT \
    shared/Microsoft.NETCore.App/$RT shared/Microsoft.AspNetCore.App/$RT | xz -9 -T0 >"$runtime.tmp"
  mv "$runtime.tmp" "$runtime"
fi
cp "$runtime" "$OUT/dotnet-runtime.tar.xz"

log "sources, scripts, manifest"
(cd "$ROOT" && git ls-files CMakeLists.txt native bench/configs bench/peer | tar -cf - -T -) | tar -C "$OUT" -xf -
[ -f "$ROOT/artifacts/tokenizers/mistral/tokenizer.json" ] || { echo "error: artifacts/tokenizers/mistral is missing: run ./build.sh first" >&2; exit 1; }
mkdir -p "$OUT/data/demo" "$OUT/artifacts/tokenizers"
cp "$ROOT/data/demo/tiny-llama.json" "$ROOT/data/demo/instructions.jsonl" "$OUT/data/demo/"
cp -r "$ROOT/artifacts/tokenizers/mistral" "$OUT/artifacts/tokenizers/"
cp "$ROOT/bench/gpu/run.sh" "$ROOT/bench/gpu/build-native.sh" "$ROOT/bench/gpu/interop.sh" "$OUT/"
chmod +x "$OUT/run.sh" "$OUT/build-native.sh" "$OUT/interop.sh"
commit=$(git -C "$ROOT" rev-parse --short HEAD)$(git -C "$ROOT" diff --quiet HEAD -- . ':!artifacts' || echo "+uncommitted")
{
  echo "commit: $commit"
  echo "made: $(date -u '+%Y-%m-%d %H:%M UTC') by bench/gpu/bundle.sh"
  echo ".NET runtime: $RT (Microsoft.NETCore.App + Microsoft.AspNetCore.App)"
  echo "apps: linux-x64, framework-dependent: app/cli (nativelora), app/bench (nativelora-bench)"
} >"$OUT/MANIFEST"

log "artifacts/$(basename "$OUT").tar"
tar -C "$(dirname "$OUT")" -cf "$OUT.tar" "$(basename "$OUT")"
rm -rf "$STAGE"

total=$(du -sb "$OUT" | cut -f1)
tarsize=$(stat -c %s "$OUT.tar")
unpacked=0
for a in "$OUT"/*.tar.xz; do
  unpacked=$((unpacked + $(xz --robot -l "$a" | awk '/^totals/ {print $5}')))
  printf '  %-22s %11d bytes\n' "$(basename "$a")" "$(stat -c %s "$a")" >&2
done
awk -v d="$OUT" -v t="$total" -v n="$(find "$OUT" -type f | wc -l)" -v tar="$OUT.tar" -v ts="$tarsize" -v u="$unpacked" 'BEGIN {
  printf "bundle %s: %d bytes (%.1f MB) in %d files; %s: %d bytes (%.1f MB); its archives unpack to %.1f MB\n", d, t, t / 1e6, n, tar, ts, ts / 1e6, u / 1e6 }'
if [ "$tarsize" -ge $LIMIT ] || [ "$total" -ge $LIMIT ]; then
  echo "error: the bundle is over 60 MB" >&2
  exit 1
fi
