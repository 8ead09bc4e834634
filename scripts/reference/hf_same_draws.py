#!/usr/bin/env python3
"""A whole POS training run in transformers + torch.optim.AdamW with crossmerge's draws: the
head crossmerge starts from (a model folder with a head, as `hf_one_step.py prepare` makes),
crossmerge's batch order (its splitmix64 Fisher-Yates shuffle per epoch, seeded), dropout
off, linear decay to zero, clipping at 1.0; then dev UPOS, and the largest difference from the
weights crossmerge ends with (TRAINING.md, "a whole run with the same draws"):

    hf_one_step.py prepare DIR TRAIN.conllu E5_DIR
    crossmerge register DIR/model --name x --kind task --task pos
    crossmerge train x --task pos --data TRAIN.conllu --name x-run --epochs 3 \
        --batch-size 32 --lr 1e-4 --seed 42 --no-dropout --json
    crossmerge eval x-run --task pos --data DEV.conllu --json
    crossmerge export x-run --out DIR/x-run
    hf_same_draws.py DIR/model TRAIN.conllu DEV.conllu --epochs 3 --lr 1e-4 --seed 42 \
        --compare DIR/x-run/model.safetensors

prints one JSON line: the loss per step, dev UPOS accuracy (scored as crossmerge scores it),
and per tensor the largest absolute difference from crossmerge's weights.
"""
import argparse
import json
import os
import sys
import time

import torch
import transformers as tf
from safetensors.torch import load_file

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from hf_train import encode, read_conllu, score, tokenizer_for  # noqa: E402

MASK = (1 << 64) - 1
# crossmerge_nn::train::trainer's SHUFFLE stream constant.
SHUFFLE = 0x2545_F491_4F6C_DD1D


def mix(z):
    """splitmix64's finaliser, as crossmerge_nn::rng::mix."""
    z = (z + 0x9E37_79B9_7F4A_7C15) & MASK
    z = ((z ^ (z >> 30)) * 0xBF58_476D_1CE4_E5B9) & MASK
    z = ((z ^ (z >> 27)) * 0x94D0_49BB_1331_11EB) & MASK
    return z ^ (z >> 31)


def order(n, seed, epoch):
    """Epoch `epoch`'s order of n examples, as crossmerge's Trainer::order."""
    v = list(range(n))
    base = mix(seed ^ SHUFFLE ^ mix(epoch + 1))
    for i in range(n - 1, 0, -1):
        j = mix(base ^ i) % (i + 1)
        v[i], v[j] = v[j], v[i]
    return v


def main():
    p = argparse.ArgumentParser()
    p.add_argument("model")
    p.add_argument("train")
    p.add_argument("dev")
    p.add_argument("--epochs", type=int, default=3)
    p.add_argument("--lr", type=float, default=1e-4)
    p.add_argument("--seed", type=int, default=42)
    p.add_argument("--batch", type=int, default=32)
    p.add_argument("--max-length", type=int, default=128)
    p.add_argument("--compare")
    a = p.parse_args()
    train, dev = read_conllu(a.train), read_conllu(a.dev)
    labels = sorted({l for s in train for _, l in s})
    model = tf.AutoModelForTokenClassification.from_pretrained(a.model, torch_dtype=torch.float32)
    model.eval()  # dropout off; nothing else in BERT differs between train and eval mode
    tok = tokenizer_for(a.model)
    feats = encode(tok, train, {l: i for i, l in enumerate(labels)}, a.max_length)
    collate = tf.DataCollatorForTokenClassification(tok)
    per_epoch = -(-len(feats) // a.batch)
    total = per_epoch * a.epochs
    opt = torch.optim.AdamW(model.parameters(), lr=a.lr, weight_decay=0.0)
    sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda k: max(0.0, (total - k) / total))
    losses, start = [], time.time()
    for epoch in range(a.epochs):
        o = order(len(feats), a.seed, epoch)
        for b in range(per_epoch):
            batch = collate([feats[i] for i in o[b * a.batch : (b + 1) * a.batch]])
            loss = model(**batch).loss
            loss.backward()
            torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
            opt.step()
            sched.step()
            opt.zero_grad()
            losses.append(loss.item())
    out = {
        "losses": losses,
        "seconds": time.time() - start,
        "dev": score("pos", model, tok, dev, 512, dict(enumerate(labels))),
    }
    if a.compare:
        ours = load_file(a.compare)
        sd = model.state_dict()
        out["max_abs_diff"] = {k: (sd[k] - v).abs().max().item() for k, v in ours.items() if k in sd}
        out["missing"] = sorted(set(ours) ^ set(sd))
    print(json.dumps(out))


if __name__ == "__main__":
    sys.exit(main())
