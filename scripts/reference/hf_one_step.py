#!/usr/bin/env python3
"""One optimizer step of multilingual-e5-small with a POS head, dropout off, in transformers +
torch.optim.AdamW, against the model `crossmerge train` makes from the same weights on the same
batch (TRAINING.md, "one step on the real model"):

    hf_one_step.py prepare DIR TRAIN.conllu E5_DIR   # DIR/model: e5 + a seeded UPOS head; DIR/first32.conllu; DIR/upos.txt
    crossmerge register DIR/model --name x --kind task --task pos
    crossmerge train x --task pos --data DIR/first32.conllu --labels DIR/upos.txt \
        --batch-size 32 --max-steps 1 --no-dropout --lr 1e-4 --name x1 --json
    crossmerge export x1 --out DIR/x1
    hf_one_step.py step DIR TRAIN.conllu DIR/x1/model.safetensors

prints torch's loss and gradient norm, and the largest absolute difference between any weight
after torch's step and after crossmerge's.
"""
import json
import os
import shutil
import sys

import torch
import transformers as tf
from safetensors.torch import load_file

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from hf_train import encode, read_conllu, tokenizer_for  # noqa: E402


def main():
    mode, out, train = sys.argv[1], sys.argv[2], sys.argv[3]
    labels = sorted({l for s in read_conllu(train) for _, l in s})
    if mode == "prepare":
        e5 = sys.argv[4]
        torch.manual_seed(0)
        m = tf.AutoModelForTokenClassification.from_pretrained(
            e5, num_labels=len(labels), id2label=dict(enumerate(labels)),
            label2id={l: i for i, l in enumerate(labels)}, torch_dtype=torch.float32)
        m.save_pretrained(f"{out}/model", safe_serialization=True)
        for f in ["tokenizer.json", "tokenizer_config.json"]:
            shutil.copy(f"{e5}/{f}", f"{out}/model/{f}")
        blocks = [b for b in open(train, encoding="utf-8").read().split("\n\n") if b.strip()][:32]
        open(f"{out}/first32.conllu", "w", encoding="utf-8").write("\n\n".join(blocks) + "\n\n")
        open(f"{out}/upos.txt", "w").write("\n".join(labels) + "\n")
        return
    m = tf.AutoModelForTokenClassification.from_pretrained(f"{out}/model", torch_dtype=torch.float32)
    m.eval()  # dropout off; nothing else in BERT differs between train and eval mode
    tok = tokenizer_for(f"{out}/model")
    feats = encode(tok, read_conllu(train, 32), {l: i for i, l in enumerate(labels)}, 128)
    batch = tf.DataCollatorForTokenClassification(tok)(feats)
    opt = torch.optim.AdamW(m.parameters(), lr=1e-4, weight_decay=0.0)
    loss = m(**batch).loss
    loss.backward()
    norm = torch.nn.utils.clip_grad_norm_(m.parameters(), 1.0)
    opt.step()
    ours = load_file(sys.argv[4])
    sd = m.state_dict()
    diffs = sorted(((sd[k] - v).abs().max().item(), k) for k, v in ours.items() if k in sd)
    print(json.dumps({
        "loss": loss.item(),
        "grad_norm": norm.item(),
        "worst_abs_diff": diffs[-1],
        "worst_outside_key_bias": [d for d in diffs if "key.bias" not in d[1]][-1],
        "not_in_torch": [k for k in ours if k not in sd],
    }))


if __name__ == "__main__":
    main()
