#!/usr/bin/env bash
# The main job on the embedded default: build, then register the real MiniLM checkpoint from
# ../shared, list, show, export it as a Hugging Face folder, check the export, verify.
# Uses a scratch registry under target/ so it can run again and again.
set -euo pipefail
cd "$(dirname "$0")/.."
model=../shared/models/all-MiniLM-L6-v2
if [ ! -f "$model/model.safetensors" ]; then
  echo "demo: $model is absent; it ships in ../shared beside this checkout" >&2
  exit 1
fi
cargo build --release --quiet
cm() { target/release/crossmerge --registry target/demo/registry "$@"; }
rm -rf target/demo
set -x
cm register "$model" --name minilm --kind base --tag source=all-MiniLM-L6-v2
cm register "$model" --name minilm --kind base          # identical content: nothing new stored
cm list
cm show minilm
cm export minilm --out target/demo/minilm-export
cmp "$model/config.json" target/demo/minilm-export/config.json
cmp "$model/tokenizer.json" target/demo/minilm-export/tokenizer.json
cm verify
cm du
