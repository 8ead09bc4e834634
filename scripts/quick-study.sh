#!/usr/bin/env bash
# The main job: the quick study, end to end, on a scratch registry under target/ (so it can run
# again and again; a rerun finds every unit done and rewrites the same output).
# 1. builds the release binary (the first build takes about 5 minutes on 2 cores);
# 2. registers multilingual-e5-small from ../shared as the base;
# 3. runs recipes/study-quick/study.toml: trains the English POS model, a masked-LM head and
#    four language models, derives their vectors, merges the λ sweeps, evaluates them on PUD,
#    scores perplexity before and after, compares the language vectors, and writes
#    output/quick/ (README.md tables, results.json, results.csv, plots);
# 4. traces one number back to its data, checks the registry and prints its size.
# The binary is the one cargo reports building, wherever CARGO_TARGET_DIR puts it.
set -euo pipefail
cd "$(dirname "$0")/.."
model=../shared/models/multilingual-e5-small
if [ ! -f "$model/model.safetensors" ]; then
  echo "quick-study: $model is absent; it ships in ../shared beside this checkout" >&2
  exit 1
fi
bin="$(cargo build --release --quiet --bin crossmerge --message-format=json \
  | sed -n 's/.*"executable":"\([^"]*\/crossmerge\)".*/\1/p' | tail -n 1)"
[ -x "$bin" ] || { echo "quick-study: cargo reported no crossmerge binary" >&2; exit 1; }
reg="${CARGO_TARGET_DIR:-target}/quick-study/registry"
cm() { "$bin" --registry "$reg" "$@"; }
[ -d "$reg" ] || cm init
cm register "$model" --name e5-small --kind base     # found, not stored again, on a rerun
cm study recipes/study-quick/study.toml --dry-run | head -n 8
cm study recipes/study-quick/study.toml --out output/quick
id="$(sed -n 's/.*"evaluation": "\([0-9a-f]*\)".*/\1/p' output/quick/results.json | head -n 1)"
cm trace "$id"
cm verify
cm du | tail -n 1
