#!/usr/bin/env bash
# PEFT interop stage of the GPU bundle: init a small random HF model, train LoRA, rsLoRA and DoRA adapters on the
# demo data with the CLI, merge each in f32, then bench/peer/peft_interop.py checks that PEFT's
# PeftModel.from_pretrained(base, adapter) and transformers' load of the merged model give the same logits.
# Usage: interop.sh DOTNET CLI_DLL BUNDLE_DIR WORK_DIR DEVICE
set -euo pipefail
dotnet=$1 cli=$2 bundle=$3 w=$4 device=$5
mkdir -p "$w"
"$dotnet" "$cli" init-model --config "$bundle/data/demo/tiny-llama.json" --tokenizer "$bundle/artifacts/tokenizers/mistral" --out "$w/base"
pairs=()
for v in lora rslora dora; do
  extra=
  [ $v = rslora ] && extra='"use_rslora": true,'
  [ $v = dora ] && extra='"use_dora": true,'
  cat >"$w/$v.json" <<JSON
{ "model": "$w/base", "data": "$bundle/data/demo/instructions.jsonl", "output_dir": "$w/run-$v", $extra
  "max_seq_len": 128, "micro_batch_size": 4, "gradient_accumulation": 1, "max_steps": 30, "learning_rate": 1e-2,
  "lora_dropout": 0.0, "eval_steps": 1000, "save_steps": 1000, "seed": 42, "device": "$device" }
JSON
  "$dotnet" "$cli" train --config "$w/$v.json" | tail -n 3
  "$dotnet" "$cli" merge --model "$w/base" --adapter "$w/run-$v/adapter" --out "$w/merged-$v" --dtype f32 --device "$device"
  pairs+=("$v=$w/run-$v/adapter:$w/merged-$v")
done
python3 "$bundle/bench/peer/peft_interop.py" "$w/base" "${pairs[@]}"
