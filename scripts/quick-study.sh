#!/usr/bin/env bash
# The main job: the quick study (recipes/study-quick/), end to end, on a scratch registry under
# target/quick-study/ (so it can run again and again; a rerun finds every unit done and rewrites
# the same output):
# 1. builds the release binary (the first build takes about 5 minutes on 2 cores);
# 2. registers multilingual-e5-small from ../shared as the base;
# 3. runs the study: trains the English POS model, a masked-LM head and four language models,
#    derives their vectors, merges the λ sweeps, evaluates them on PUD, scores perplexity before
#    and after, compares the language vectors, and writes output/quick/ (README.md tables,
#    results.json, results.csv, plots), about 7 minutes on 2 cores;
# 4. traces one number back to its data, checks the registry and prints its size.
set -euo pipefail
exec bash "$(dirname "$0")/run-study.sh" quick
