#!/usr/bin/env bash
# Prepares .gpu/ for scripts/cuda/gpu_check.py on a GPU machine that has PyTorch and
# transformers but no Rust toolchain and no ../shared: the CUDA binary (xz), MiniLM with its
# weights cast to F16 (half the bytes; the device tool carries at most 64 MiB), and the data.
#
#   CARGO_TARGET_DIR=target/cuda bash scripts/cuda/build.sh
#   bash scripts/cuda/prepare_gpu_check.sh          # → .gpu/ (git-ignored)
#   # there: python3 scripts/cuda/gpu_check.py .gpu "$OUT"
set -euo pipefail
cd "$(dirname "$0")/../.."
shared="${SHARED:-../shared}"
bin="${CARGO_TARGET_DIR:-target}/release/crossmerge"
[ -x "$bin" ] || { echo "prepare_gpu_check: build $bin with scripts/cuda/build.sh first" >&2; exit 1; }
rm -rf .gpu && mkdir -p .gpu/minilm .gpu/data
strip -o .gpu/crossmerge "$bin" && xz -T2 -6 .gpu/crossmerge
m="$shared/models/all-MiniLM-L6-v2"
cp "$m/config.json" "$m/vocab.txt" "$m/special_tokens_map.json" "$m/tokenizer_config.json" .gpu/minilm/
python3 - "$m" .gpu/minilm <<'PY'
import json, struct, sys
src, out = sys.argv[1], sys.argv[2]
# tokenizer.json ships with padding and truncation switched on (shared/README.md).
tok = json.load(open(f"{src}/tokenizer.json", encoding="utf-8"))
tok["padding"] = None
tok["truncation"] = None
json.dump(tok, open(f"{out}/tokenizer.json", "w", encoding="utf-8"), ensure_ascii=False)
raw = open(f"{src}/model.safetensors", "rb").read()
n = struct.unpack("<Q", raw[:8])[0]
header = json.loads(raw[8:8 + n])
data = raw[8 + n:]
new, chunks, offset = {"__metadata__": {"format": "pt"}}, [], 0
for name, t in sorted((k, v) for k, v in header.items() if k != "__metadata__"):
    a, b = t["data_offsets"]
    if t["dtype"] == "F32":
        count = (b - a) // 4
        half = struct.pack(f"<{count}e", *struct.unpack_from(f"<{count}f", data, a))
        dtype = "F16"
    else:  # embeddings.position_ids (I64) as it is
        half, dtype = data[a:b], t["dtype"]
    new[name] = {"dtype": dtype, "shape": t["shape"], "data_offsets": [offset, offset + len(half)]}
    chunks.append(half)
    offset += len(half)
h = json.dumps(new, separators=(",", ":")).encode()
h += b" " * (-len(h) % 8)
with open(f"{out}/model.safetensors", "wb") as f:
    f.write(struct.pack("<Q", len(h)) + h)
    for c in chunks:
        f.write(c)
# NLI: no NLI data ships; pairs of LibreOffice help paragraphs with seeded labels exercise
# the sequence-classification path (the numbers mean nothing, CPU and CUDA must agree).
import random
rng = random.Random(0)
lines = [l.strip() for l in open(f"{src}/../../data/text/libreoffice-help/lo_help.en.txt", encoding="utf-8") if l.strip()][:1200]
with open(f"{out}/../data/nli.tsv", "w", encoding="utf-8") as f:
    f.write("premise\thypothesis\tlabel\n")
    for i in range(0, len(lines) - 1, 2):
        p, q = lines[i].replace("\t", " "), lines[i + 1].replace("\t", " ")
        f.write(f"{p}\t{q}\t{rng.choice(['entailment', 'neutral', 'contradiction'])}\n")
with open(f"{out}/../data/text.en.txt", "w", encoding="utf-8") as f:
    f.write("\n".join(lines[:600]) + "\n")
PY
cp "$shared/data/ud/UD_English-EWT/en_ewt-ud-test.conllu" .gpu/data/
cp "$shared/data/uner/UNER_English-PUD/en_pud-ud-test.iob2" .gpu/data/
cp scripts/reference/hf_eval_speed.py .gpu/
du -sh .gpu
