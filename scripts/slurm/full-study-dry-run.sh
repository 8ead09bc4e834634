#!/usr/bin/env bash
# The full study on paper: xlm-roberta-base and mBERT × POS, DP (UD PUD) and NER (UNER PUD)
# × es, de, hi, zh, ru, fr × 11 λ, planned for Slurm without running anything:
#
#   bash scripts/slurm/full-study-dry-run.sh [COSTS_REGISTRY]
#
# The bases are synthetic checkpoints with the exact tensor shapes of xlm-roberta-base (278M
# parameters) and bert-base-multilingual-cased (178M) (`cargo xtask synth`; no weights can be
# downloaded here), registered under target/full-study/registry. The study files and their
# training settings (paper budgets: task models 3 epochs, language models 10,000 steps of 32)
# are written beside it. Each study is dry-run with `--executor slurm`: its waves, the arrays'
# sizes, and device hours priced by the evaluations and trainings stored in COSTS_REGISTRY
# (default: the reference study's registry, target/reference-study/registry, measured on this
# machine's CPU: run scripts/run-study.sh reference first), scaled by each unit's examples and
# parameters. The first wave's sbatch scripts are written (--emit) and shown.
# NLI is left out: ../shared has no NLI data (XNLI), and a study's data files must exist.
set -euo pipefail
cd "$(dirname "$0")/../.."
shared="$(cd ../shared && pwd)"
costs="${1:-${CARGO_TARGET_DIR:-target}/reference-study/registry}"
[ -f "$costs/FORMAT" ] || { echo "full-study: no cost registry at $costs (run scripts/run-study.sh reference, or pass one)" >&2; exit 1; }
out="${CARGO_TARGET_DIR:-target}/full-study"
mkdir -p "$out"
out="$(cd "$out" && pwd)"
cargo build --release --quiet --bin crossmerge
bin="${CARGO_TARGET_DIR:-target}/release/crossmerge"
reg="$out/registry"
cm() { "$bin" --registry "$reg" "$@"; }
[ -d "$reg" ] || cm init
declare -A ud=([es]=Spanish [de]=German [hi]=Hindi [zh]=Chinese [ru]=Russian [fr]=French)
for base in xlmr-base mbert-base; do
  if ! cm show "$base" >/dev/null 2>&1; then
    cargo xtask synth --shape "$base" --finetunes 0 --out "$out/synth-$base" >/dev/null
    cm register "$out/synth-$base/base" --name "$base" --kind base
    rm -rf "$out/synth-$base"
  fi
  dir="$out/$base"
  mkdir -p "$dir"
  ewt="$shared/data/ud/UD_English-EWT"
  for task in pos dp; do
    cat > "$dir/$task-en.toml" <<T
task = "$task"
data = "$ewt/en_ewt-ud-train.conllu"
dev = "$ewt/en_ewt-ud-dev.conllu"
name = "full/$base/$task-en"
language = "en"
epochs = 3
batch_size = 32
lr = 5e-5
warmup_ratio = 0.1
weight_decay = 0.01
max_length = 128
seed = 1
T
  done
  cat > "$dir/ner-en.toml" <<T
task = "ner"
data = "$shared/data/uner/UNER_English-EWT/en_ewt-ud-dev.iob2"
dev = "$shared/data/uner/UNER_English-EWT/en_ewt-ud-test.iob2"
name = "full/$base/ner-en"
language = "en"
epochs = 3
batch_size = 32
lr = 5e-5
warmup_ratio = 0.1
weight_decay = 0.01
max_length = 128
seed = 1
T
  cat > "$dir/mlm-head.toml" <<T
task = "mlm"
data = "$shared/data/text/libreoffice-help/lo_help.en.txt"
name = "full/$base/mlm-head"
language = "en"
freeze = "encoder"
max_steps = 2000
batch_size = 32
lr = 1e-3
max_length = 128
seed = 1
T
  {
    echo "name = \"full-$base\""
    echo "description = \"English POS, DP and NER task models + λ · language vector, six target languages, $base.\""
    echo "base = \"$base\""
    echo "lambdas = [0.0, 0.1, 0.2, 0.3, 0.4, 0.5, 0.6, 0.7, 0.8, 0.9, 1.0]"
    echo
    echo "[evaluation]"
    echo "max_length = 128"
    echo "batch_size = 64"
    echo "device = \"cuda\""
    # Chinese PUD's classifier relation has no English counterpart: scored as `dep`.
    printf 'clf dep\n' > "$dir/dp-labels.txt"
    for task in pos dp ner; do
      echo
      echo "[tasks.$task]"
      echo "train = \"$task-en.toml\""
      [ "$task" = dp ] && echo "label_map = \"dp-labels.txt\""
    done
    for l in es de hi zh ru fr; do
      pud="$shared/data/ud/UD_${ud[$l]}-PUD/${l}_pud-ud-test.conllu"
      for task in pos dp; do
        echo
        echo "[tasks.$task.data.$l]"
        echo "validation = \"$pud[0:500]\""
        echo "test = \"$pud[500:]\""
      done
      uner="$shared/data/uner/UNER_${ud[$l]}-PUD/${l}_pud-ud-test.iob2"
      if [ -f "$uner" ]; then
        echo
        echo "[tasks.ner.data.$l]"
        echo "validation = \"$uner[0:500]\""
        echo "test = \"$uner[500:]\""
      fi
    done
    for l in en es de hi zh ru fr; do
      text="$shared/data/text/libreoffice-help/lo_help.$l.txt"
      lines=$(grep -c . "$text")
      hold=$((lines * 9 / 10))
      cat > "$dir/mlm-$l.toml" <<T
task = "mlm"
data = "$text"
data_range = ":$hold"
name = "full/$base/lm-$l"
language = "$l"
max_steps = 10000
batch_size = 32
lr = 5e-5
warmup_ratio = 0.06
weight_decay = 0.01
max_length = 128
seed = 1
T
      echo
      echo "[languages.$l]"
      echo "train = \"mlm-$l.toml\""
      echo "from = \"full/$base/mlm-head\""
      echo "before = { train = \"mlm-head.toml\" }"
      [ "$l" = en ] || echo "text = \"$text[$hold:]\""
    done
  } > "$dir/study.toml"
  echo "== $base"
  rm -rf "$dir/emit"
  cm study "$dir/study.toml" --dry-run --executor slurm --costs "$costs" \
    --sbatch-arg=--time=08:00:00 --gpu-sbatch-arg=--gres=gpu:1 \
    --emit "$dir/emit"
done
