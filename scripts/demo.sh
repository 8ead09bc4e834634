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
# The seed study's recipe on a tiny synthetic family: English POS model + λ · Spanish vector.
target/release/crossmerge synth --shape tiny --finetunes 2 --head-labels 5 --out target/demo/family
cm register target/demo/family/base --name xlmr-base --kind base
cm register target/demo/family/ft-1 --name xlmr-pos-en --kind task --task pos --language en --base xlmr-base
cm register target/demo/family/ft-2 --name xlmr-mlm-es --kind language --language es --base xlmr-base
cm derive task --from xlmr-pos-en --name task/pos-en
cm derive language --from xlmr-mlm-es --name language/es
cm merge recipes/seed-study-pos-es.toml --dry-run > target/demo/plan.json
cm merge recipes/seed-study-pos-es.toml
cm merge recipes/seed-study-pos-es.toml                 # identical recipe and inputs: found, not merged
cm show pos-en+es/es=0.3
cm export pos-en+es/es=0.3 --out target/demo/pos-en+es-0.3
cm verify
cm du
