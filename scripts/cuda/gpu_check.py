#!/usr/bin/env python3
"""The CUDA check, run on a GPU machine (PyTorch + transformers there, no Rust, no ../shared):

    python3 scripts/cuda/gpu_check.py .gpu OUT_DIR      # .gpu from prepare_gpu_check.sh

1. Heads: MiniLM (real weights, carried as F16, loaded as F32) gets seeded random heads with
   transformers: POS (17 UPOS tags), NER (the UNER tags), NLI (3 labels), masked LM, and a
   biaffine parser (schemas/parser.md) over the UD relations. The numbers the heads give are
   meaningless; the check is that CPU and CUDA give the same ones.
2. Every task through `crossmerge eval --device cpu` and `--device cuda`: metrics compared.
3. Throughput: UPOS tagging of UD English-EWT test (2,077 sentences), crossmerge on CUDA against
   transformers on CUDA (the same loop as scripts/reference/hf_eval_speed.py: batches of 32
   sorted by length, first subwords, no gradients), both F32, interleaved, one run each per
   round; the median of per-round ratios.

Writes OUT_DIR/gpu_check.json and prints it.
"""
import glob
import json
import lzma
import os
import shutil
import statistics
import subprocess
import sys
import time

import torch
import transformers as tf

gpu, out = sys.argv[1], sys.argv[2]
rounds = int(os.environ.get("ROUNDS", "5"))
work = "/tmp/gpu-check"
shutil.rmtree(work, ignore_errors=True)
os.makedirs(work)
binary = f"{work}/crossmerge"
with lzma.open(f"{gpu}/crossmerge.xz") as f, open(binary, "wb") as g:
    g.write(f.read())
os.chmod(binary, 0o755)

# The CUDA 13 libraries the binary loads: PyTorch's wheels carry them.
import nvidia  # noqa: E402

libdirs = sorted({os.path.dirname(p) for base in nvidia.__path__ for pat in
                  ("libcublas.so.13*", "libcudart.so.13*", "libcurand.so.10*")
                  for p in glob.glob(f"{base}/**/{pat}", recursive=True)})
env = dict(os.environ, LD_LIBRARY_PATH=":".join(libdirs + [os.environ.get("LD_LIBRARY_PATH", "")]),
           CROSSMERGE_REGISTRY=f"{work}/registry")


def cm(*args):
    r = subprocess.run([binary, "--quiet", *args], env=env, capture_output=True, text=True)
    if r.returncode != 0:
        raise SystemExit(f"crossmerge {' '.join(args)} failed ({r.returncode}):\n{r.stderr}")
    return r.stdout


data = f"{gpu}/data"
ewt = f"{data}/en_ewt-ud-test.conllu"
UPOS = ["ADJ", "ADP", "ADV", "AUX", "CCONJ", "DET", "INTJ", "NOUN", "NUM", "PART", "PRON", "PROPN",
        "PUNCT", "SCONJ", "SYM", "VERB", "X"]
NER = ["O", "B-LOC", "I-LOC", "B-ORG", "I-ORG", "B-PER", "I-PER"]
NLI = ["contradiction", "entailment", "neutral"]
rels = sorted({line.split("\t")[7].split(":")[0] for line in open(ewt, encoding="utf-8")
               if line[0].isdigit() and line.split("\t")[0].isdigit()})
src = f"{gpu}/minilm"


def copy_tokenizer(d):
    for f in ["tokenizer.json", "vocab.txt", "special_tokens_map.json", "tokenizer_config.json"]:
        shutil.copy(f"{src}/{f}", f"{d}/{f}")


def labelled(cls, labels):
    torch.manual_seed(0)
    return cls.from_pretrained(src, num_labels=len(labels), id2label=dict(enumerate(labels)),
                               label2id={l: i for i, l in enumerate(labels)}, dtype=torch.float32)


models = {
    "pos": labelled(tf.BertForTokenClassification, UPOS),
    "ner": labelled(tf.BertForTokenClassification, NER),
    "nli": labelled(tf.BertForSequenceClassification, NLI),
}
torch.manual_seed(0)
models["mlm"] = tf.BertForMaskedLM.from_pretrained(src, dtype=torch.float32)
for task, model in models.items():
    d = f"{work}/{task}"
    model.save_pretrained(d, safe_serialization=True)
    copy_tokenizer(d)

# The parser: MiniLM's encoder plus schemas/parser.md's tensors, seeded.
from safetensors.torch import load_file, save_file  # noqa: E402

torch.manual_seed(0)
base = tf.BertModel.from_pretrained(src, add_pooling_layer=False, dtype=torch.float32)
d = f"{work}/dp"
base.save_pretrained(d, safe_serialization=True)
state = load_file(f"{d}/model.safetensors")
h, a, r, n = 384, 128, 64, len(rels)
g = torch.Generator().manual_seed(1)
rand = lambda *s: (torch.randn(*s, generator=g) * 0.05).contiguous()  # noqa: E731
state.update({"parser.root": rand(h), "parser.arc_dep.weight": rand(a, h), "parser.arc_dep.bias": rand(a),
              "parser.arc_head.weight": rand(a, h), "parser.arc_head.bias": rand(a),
              "parser.rel_dep.weight": rand(r, h), "parser.rel_dep.bias": rand(r),
              "parser.rel_head.weight": rand(r, h), "parser.rel_head.bias": rand(r),
              "parser.arc_attn.weight": rand(a + 1, a), "parser.rel_attn.weight": rand(n, r + 1, r + 1)})
save_file(state, f"{d}/model.safetensors", metadata={"format": "pt"})
config = json.load(open(f"{d}/config.json"))
config["id2label"] = {str(i): x for i, x in enumerate(rels)}
config["label2id"] = {x: i for i, x in enumerate(rels)}
config["crossmerge_parser"] = {"word": "first", "activation": "leaky_relu"}
json.dump(config, open(f"{d}/config.json", "w"), indent=1)
copy_tokenizer(d)

cm("init")
for task in ["pos", "ner", "nli", "mlm", "dp"]:
    cm("register", f"{work}/{task}", "--name", f"minilm-{task}", "--kind", "task", "--task", task,
       "--language", "en")

cases = [("pos", ewt, []), ("ner", f"{data}/en_pud-ud-test.iob2", []), ("nli", f"{data}/nli.tsv", []),
         ("mlm", f"{data}/text.en.txt", []), ("dp", ewt, [])]
result = {"device": torch.cuda.get_device_name(0), "torch": torch.__version__,
          "transformers": tf.__version__, "tasks": {}}
for task, path, extra in cases:
    got = {}
    for device in ["cpu", "cuda"]:
        rep = json.loads(cm("eval", f"minilm-{task}", "--task", task, "--data", path, "--device", device,
                            "--json", *extra))
        got[device] = {"metrics": rep["metrics"], "examples": rep["examples"],
                       "seconds": rep["duration_s"]}
    diffs = {k: abs(got["cpu"]["metrics"][k] - got["cuda"]["metrics"].get(k, float("nan")))
             for k in got["cpu"]["metrics"]}
    result["tasks"][task] = {**got, "max_abs_difference": max(diffs.values()),
                             "equal_to_6_digits": all(round(got["cpu"]["metrics"][k], 6) ==
                                                      round(got["cuda"]["metrics"][k], 6) for k in diffs)}
    print(task, json.dumps(result["tasks"][task]), flush=True)

# Throughput: interleaved rounds, crossmerge CUDA vs transformers CUDA, the same F32 model.
tok = tf.AutoTokenizer.from_pretrained(f"{work}/pos")
hf = tf.AutoModelForTokenClassification.from_pretrained(f"{work}/pos", dtype=torch.float32).cuda().eval()
sents = []
words = []
for line in open(ewt, encoding="utf-8"):
    line = line.rstrip("\n")
    if not line:
        if words:
            sents.append(words)
        words = []
    elif not line.startswith("#"):
        cols = line.split("\t")
        if cols[0].isdigit():
            words.append((cols[1], cols[3]))


def hf_run():
    torch.cuda.synchronize()
    start = time.perf_counter()
    order = sorted(range(len(sents)), key=lambda i: -len(sents[i]))
    ok = total = 0
    with torch.no_grad():
        for b in range(0, len(order), 32):
            batch = [sents[i] for i in order[b:b + 32]]
            enc = tok([[w for w, _ in s] for s in batch], is_split_into_words=True, padding=True,
                      truncation=True, max_length=512, return_tensors="pt")
            pred = hf(**{k: v.cuda() for k, v in enc.items()}).logits.argmax(-1).cpu()
            for k, s in enumerate(batch):
                seen = set()
                for pos, wid in enumerate(enc.word_ids(k)):
                    if wid is not None and wid not in seen:
                        seen.add(wid)
                        ok += hf.config.id2label[int(pred[k, pos])] == s[wid][1]
                total += len(s)
    torch.cuda.synchronize()
    return time.perf_counter() - start, ok / total


hf_run()  # warm-up (cuBLAS handles, kernels)
rows = []
for _ in range(rounds):
    rep = json.loads(cm("eval", "minilm-pos", "--task", "pos", "--data", ewt, "--device", "cuda", "--json"))
    t_hf, acc_hf = hf_run()
    rows.append({"crossmerge_s": rep["duration_s"], "transformers_s": t_hf,
                 "ratio": t_hf / rep["duration_s"], "upos_crossmerge": rep["metrics"]["upos_accuracy"],
                 "upos_transformers": acc_hf})
    print(json.dumps(rows[-1]), flush=True)
result["throughput"] = {"sentences": len(sents), "rounds": rows,
                        "median_ratio_transformers_over_crossmerge": statistics.median(r["ratio"] for r in rows),
                        "median_crossmerge_s": statistics.median(r["crossmerge_s"] for r in rows),
                        "median_transformers_s": statistics.median(r["transformers_s"] for r in rows)}
os.makedirs(out, exist_ok=True)
json.dump(result, open(f"{out}/gpu_check.json", "w"), indent=1)
print(json.dumps(result["throughput"], indent=1))
