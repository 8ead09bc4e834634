#!/usr/bin/env bash
# Runs the study recipes/study-NAME/study.toml on a scratch registry under target/NAME-study/
# (so it can run again and again; a rerun finds every unit done and writes the same output):
# builds the release binary, registers multilingual-e5-small from ../shared as the base,
# prints the plan, runs the study into output/NAME/, traces one number back to its data,
# verifies the registry and prints its size. `bash scripts/run-study.sh quick` is the README's
# main job (scripts/quick-study.sh); `reference` is the reference study (about an hour on 2
# cores). The binary is the one cargo reports building, wherever CARGO_TARGET_DIR puts it.
set -euo pipefail
cd "$(dirname "$0")/.."
name="${1:?usage: scripts/run-study.sh NAME (a folder recipes/study-NAME/)}"
study="recipes/study-$name/study.toml"
[ -f "$study" ] || { echo "run-study: $study does not exist" >&2; exit 1; }
model=../shared/models/multilingual-e5-small
if [ ! -f "$model/model.safetensors" ]; then
  echo "run-study: $model is absent; it ships in ../shared beside this checkout" >&2
  exit 1
fi
bin="$(cargo build --release --quiet --bin crossmerge --message-format=json \
  | sed -n 's/.*"executable":"\([^"]*\/crossmerge\)".*/\1/p' | tail -n 1)"
[ -x "$bin" ] || { echo "run-study: cargo reported no crossmerge binary" >&2; exit 1; }
reg="${CARGO_TARGET_DIR:-target}/$name-study/registry"
cm() { "$bin" --registry "$reg" "$@"; }
[ -d "$reg" ] || cm init
cm register "$model" --name e5-small --kind base     # found, not stored again, on a rerun
cm study "$study" --dry-run | head -n 8
cm study "$study" --out "output/$name"
# The first evaluation id in the results (sed quits there: no pipe to break under pipefail).
id="$(sed -n '/"evaluation": "/{s/.*"evaluation": "\([0-9a-f]*\)".*/\1/p;q;}' "output/$name/results.json")"
cm trace "$id"
cm verify
cm du | tail -n 1
