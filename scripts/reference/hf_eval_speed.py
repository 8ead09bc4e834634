#!/usr/bin/env python3
"""Hugging Face transformers (PyTorch, CPU) side of `cargo xtask bench --suite eval`.

    hf_eval_speed.py prepare MINILM_DIR OUT_DIR      # MiniLM + a seeded random POS head, saved
    hf_eval_speed.py time OUT_DIR DATA.conllu RUNS   # UPOS tagging of every sentence, timed

`time` does what `crossmerge eval --task pos` does: pre-tokenized words, first-subword
predictions, batches of 32 sorted by length, no gradients, the machine's threads; it prints one
line per run: `seconds sentences upos_accuracy`.
"""
import shutil
import sys
import time

import torch
import transformers as tf

UPOS = ["ADJ", "ADP", "ADV", "AUX", "CCONJ", "DET", "INTJ", "NOUN", "NUM", "PART", "PRON", "PROPN", "PUNCT",
        "SCONJ", "SYM", "VERB", "X"]


def prepare(src, out):
    torch.manual_seed(0)
    model = tf.AutoModelForTokenClassification.from_pretrained(
        src, num_labels=len(UPOS), id2label=dict(enumerate(UPOS)), label2id={l: i for i, l in enumerate(UPOS)})
    model.save_pretrained(out, safe_serialization=True)
    for f in ["tokenizer.json", "vocab.txt", "special_tokens_map.json", "tokenizer_config.json"]:
        shutil.copy(f"{src}/{f}", f"{out}/{f}")


def read_conllu(path):
    sents, words = [], []
    for line in open(path, encoding="utf-8"):
        line = line.rstrip("\n")
        if not line:
            if words:
                sents.append(words)
            words = []
        elif not line.startswith("#"):
            cols = line.split("\t")
            if cols[0].isdigit():
                words.append((cols[1], cols[3]))
    if words:
        sents.append(words)
    return sents


def timed(out, data, runs):
    tok = tf.AutoTokenizer.from_pretrained(out)
    model = tf.AutoModelForTokenClassification.from_pretrained(out).eval()
    labels = model.config.id2label
    sents = read_conllu(data)
    for _ in range(runs):
        start = time.perf_counter()
        order = sorted(range(len(sents)), key=lambda i: -len(sents[i]))
        ok = total = 0
        with torch.no_grad():
            for b in range(0, len(order), 32):
                batch = [sents[i] for i in order[b:b + 32]]
                enc = tok([[w for w, _ in s] for s in batch], is_split_into_words=True, padding=True,
                          truncation=True, max_length=512, return_tensors="pt")
                pred = model(**enc).logits.argmax(-1)
                for k, s in enumerate(batch):
                    seen = set()
                    for pos, wid in enumerate(enc.word_ids(k)):
                        if wid is not None and wid not in seen:
                            seen.add(wid)
                            ok += labels[int(pred[k, pos])] == s[wid][1]
                    total += len(s)
        print(f"{time.perf_counter() - start:.4f} {len(sents)} {ok / total:.6f}", flush=True)


if __name__ == "__main__":
    if sys.argv[1] == "prepare":
        prepare(sys.argv[2], sys.argv[3])
    else:
        timed(sys.argv[2], sys.argv[3], int(sys.argv[4]))
