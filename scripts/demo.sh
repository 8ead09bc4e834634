#!/usr/bin/env bash
# The main job, end to end on a scratch registry under target/ (so it can run again and again):
# 1. builds the release binary (the first build takes about 5 minutes on 2 cores);
# 2. registers the real MiniLM checkpoint from ../shared (twice: the second stores nothing),
#    lists and shows it, exports it as a Hugging Face folder and checks the files came back;
# 3. on a tiny synthetic XLM-R family (base, an English POS task model, a Spanish language
#    model): derives a task and a language vector, plans and runs the seed study's λ sweep
#    (recipes/seed-study-pos-es.toml; the rerun finds every point already merged), shows and
#    exports one merged point;
# 4. verifies every object and prints logical against stored bytes.
# The binary is the one cargo reports building, wherever CARGO_TARGET_DIR puts it.
set -euo pipefail
cd "$(dirname "$0")/.."
model=../shared/models/all-MiniLM-L6-v2
if [ ! -f "$model/model.safetensors" ]; then
  echo "demo: $model is absent; it ships in ../shared beside this checkout" >&2
  exit 1
fi
bin="$(cargo build --release --quiet --bin crossmerge --message-format=json \
  | sed -n 's/.*"executable":"\([^"]*\/crossmerge\)".*/\1/p' | tail -n 1)"
[ -x "$bin" ] || { echo "demo: cargo reported no crossmerge binary" >&2; exit 1; }
out="${CARGO_TARGET_DIR:-target}/demo"
cm() { "$bin" --registry "$out/registry" "$@"; }
rm -rf "$out"
set -x
cm init                                                 # a named registry is made once, with init
cm register "$model" --name minilm --kind base --tag source=all-MiniLM-L6-v2
cm register "$model" --name minilm --kind base          # identical content: nothing new stored
cm list
cm show minilm
cm export minilm --out "$out/minilm-export"
cmp "$model/config.json" "$out/minilm-export/config.json"
cmp "$model/tokenizer.json" "$out/minilm-export/tokenizer.json"
# The seed study's recipe on a tiny synthetic family: English POS model + λ · Spanish vector.
cargo xtask synth --shape tiny --finetunes 2 --head-labels 5 --out "$out/family"   # a developer task
cm register "$out/family/base" --name xlmr-base --kind base
cm register "$out/family/ft-1" --name xlmr-pos-en --kind task --task pos --language en --base xlmr-base
cm register "$out/family/ft-2" --name xlmr-mlm-es --kind language --language es --base xlmr-base
cm derive task --from xlmr-pos-en --name task/pos-en
cm derive language --from xlmr-mlm-es --name language/es
cm merge recipes/seed-study-pos-es.toml --dry-run > "$out/plan.json"
cm merge recipes/seed-study-pos-es.toml
cm merge recipes/seed-study-pos-es.toml                 # identical recipe and inputs: found, not merged
cm show pos-en+es/es=0.3
cm export pos-en+es/es=0.3 --out "$out/pos-en+es-0.3"
cm verify
cm du
