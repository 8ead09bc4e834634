#!/usr/bin/env python3
"""transformers' side of crossmerge's real-data training checks and training benchmark
(TRAINING.md, `cargo xtask bench --suite train`): the same recipe as `crossmerge train`, run
with `transformers.Trainer` on the same machine.

    hf_train.py tag  --task pos|ner --model DIR --train F --dev F --test F [--limit N]
                     [--epochs 3 --lr 5e-5 --batch 32 --seed 42 --max-length 128 --warmup 0.0 --wd 0.0]
                     [--no-dropout]
        fine-tunes DIR (a BertModel/XLM-R folder: config.json, model.safetensors,
        tokenizer.json) with a new token-classification head on the first subword of each
        word (the others -100), evaluates on --dev every epoch, keeps the best epoch
        (load_best_model_at_end), and prints one JSON line: dev and test scores as crossmerge
        computes them (UPOS accuracy; entity F1 with seqeval's default mode), steps, seconds.
        --no-dropout sets every dropout rate to 0, as `crossmerge train --no-dropout`.
    hf_train.py mlm  --model DIR --train TEXT --out DIR [--epochs 1 --lr 5e-5 --batch 32 --seed 42 --stages before,after]
        the masked-LM recipe of TRAINING.md: a new MLM head (BertForMaskedLM / XLMRobertaForMaskedLM,
        decoder tied to the embeddings) trained with the encoder frozen, saved to OUT/before, then
        everything fine-tuned from there, saved to OUT/after (each with DIR's tokenizer files), for
        `crossmerge eval --task mlm` to score both sides with the same masks. `--stages before`
        runs the first stage only (from DIR's own MLM head, when it has one); `--stages init`
        only saves the seeded, untrained model to OUT/init (the head the other stages start
        from), for `crossmerge train` to start from the same head.
    hf_train.py dp   --model DIR --train F.conllu --out DIR [--epochs 1 --lr 1e-4 --batch 32 --seed 42 --warmup 0.1]
        the biaffine parser of schemas/parser.md (arc MLP 500, relation MLP 100, first subword,
        leaky ReLU 0.1, new head normal(0, initializer_range), biases zero) on DIR's encoder,
        trained as transformers' Trainer would (AdamW without decay on biases and LayerNorm,
        linear warm-up and decay, clipping at 1.0, dropout as config.json says, a seeded
        shuffle each epoch), saved under OUT with crossmerge's tensor names and config keys,
        for `crossmerge register`/`eval --task dp` to score it as it scores its own.
    hf_train.py speed --model DIR --train F.conllu --steps N --batch 32 [--max-length 128]
        N optimizer steps of UPOS training (dropout on, AdamW), timed after one warm-up step;
        prints `tokens_per_s peak_rss_kib` (tokens: non-padding subwords).
"""
import argparse
import json
import math
import resource
import sys
import time

import numpy as np
import torch
import transformers as tf


def read_conllu(path, limit=None, fields=lambda cols: (cols[1], cols[3])):
    """Sentences of `fields(columns)` per word (default: form, UPOS); multiword tokens and empty
    nodes skipped."""
    sents, words = [], []
    for line in open(path, encoding="utf-8"):
        line = line.rstrip("\n")
        if not line:
            if words:
                sents.append(words)
                if limit and len(sents) >= limit:
                    return sents
            words = []
        elif not line.startswith("#"):
            cols = line.split("\t")
            if "-" in cols[0] or "." in cols[0]:
                continue
            words.append(fields(cols))
    if words:
        sents.append(words)
    return sents


def read_iob(path, limit=None):
    sents, words = [], []
    for line in open(path, encoding="utf-8"):
        line = line.rstrip("\n").rstrip("\r")
        if not line.strip():
            if words:
                sents.append(words)
                if limit and len(sents) >= limit:
                    return sents
            words = []
            continue
        if line.startswith("#") and not words:
            continue
        cols = line.split("\t") if "\t" in line else line.split()
        if cols[0] == "-DOCSTART-":
            continue
        if cols[0].isdigit() and len(cols) >= 3:
            words.append((cols[1], cols[2]))
        else:
            words.append((cols[0], cols[-1]))
    if words:
        sents.append(words)
    return sents


def tokenizer_for(model_dir):
    tok = tf.PreTrainedTokenizerFast(tokenizer_file=f"{model_dir}/tokenizer.json")
    specials = {"cls_token": "<s>", "sep_token": "</s>", "pad_token": "<pad>", "unk_token": "<unk>", "mask_token": "<mask>"}
    if tok.convert_tokens_to_ids("[CLS]") not in (None, tok.unk_token_id) and "[CLS]" in tok.get_vocab():
        specials = {"cls_token": "[CLS]", "sep_token": "[SEP]", "pad_token": "[PAD]", "unk_token": "[UNK]", "mask_token": "[MASK]"}
    tok.add_special_tokens(specials)
    tok.backend_tokenizer.no_padding()
    tok.backend_tokenizer.no_truncation()
    return tok


def encode(tok, sents, labels, max_length):
    """First subword labelled, the rest -100; cut to max_length keeping the closing token (as
    crossmerge's align does)."""
    out = []
    for s in sents:
        enc = tok([w for w, _ in s], is_split_into_words=True, add_special_tokens=True)
        ids = enc["input_ids"]
        word_ids = enc.word_ids()
        lab = [-100] * len(ids)
        seen = set()
        for p, w in enumerate(word_ids):
            if w is not None and w not in seen:
                seen.add(w)
                lab[p] = labels[s[w][1]]
        if len(ids) > max_length:
            ids = ids[: max_length - 1] + ids[-1:]
            lab = lab[: max_length - 1] + [-100]
        out.append({"input_ids": ids, "labels": lab})
    return out


def first_subword_predictions(model, tok, sents, max_length, id2label):
    model.eval()
    preds = []
    with torch.no_grad():
        for i in range(0, len(sents), 32):
            batch = sents[i : i + 32]
            feats = encode(tok, batch, {l: 0 for s in batch for _, l in s}, 10**9)
            firsts = []
            for s in batch:
                enc = tok([w for w, _ in s], is_split_into_words=True)
                wid = enc.word_ids()
                first = {}
                for p, w in enumerate(wid):
                    if w is not None and w not in first and p < max_length - 1:
                        first[w] = p
                firsts.append(first)
            t = min(max(len(f["input_ids"]) for f in feats), max_length)
            ids = torch.full((len(batch), t), tok.pad_token_id)
            mask = torch.zeros((len(batch), t), dtype=torch.long)
            for k, f in enumerate(feats):
                x = f["input_ids"]
                if len(x) > max_length:
                    x = x[: max_length - 1] + x[-1:]
                ids[k, : len(x)] = torch.tensor(x)
                mask[k, : len(x)] = 1
            logits = model(input_ids=ids, attention_mask=mask).logits.argmax(-1)
            for k, s in enumerate(batch):
                preds.append([id2label[int(logits[k, firsts[k][w]])] if w in firsts[k] else None for w in range(len(s))])
    return preds


def entity_f1(gold, pred):
    from seqeval.metrics import f1_score

    return f1_score(gold, [[p if p is not None else "O" for p in s] for s in pred])


def score(task, model, tok, sents, max_length, id2label):
    pred = first_subword_predictions(model, tok, sents, max_length, id2label)
    if task == "pos":
        n = sum(len(s) for s in sents)
        ok = sum(p == g for s, ps in zip(sents, pred) for (_, g), p in zip(s, ps))
        return {"upos_accuracy": ok / n}
    return {"entity_f1": entity_f1([[g for _, g in s] for s in sents], pred)}


def tag(a):
    read = read_conllu if a.task == "pos" else read_iob
    train, dev, test = read(a.train, a.limit), read(a.dev), read(a.test)
    labels = sorted({l for s in train for _, l in s})
    label2id = {l: i for i, l in enumerate(labels)}
    id2label = dict(enumerate(labels))
    tok = tokenizer_for(a.model)
    tf.set_seed(a.seed)
    # --no-dropout: every dropout rate 0, as `crossmerge train --no-dropout`.
    off = {"hidden_dropout_prob": 0.0, "attention_probs_dropout_prob": 0.0, "classifier_dropout": 0.0}
    model = tf.AutoModelForTokenClassification.from_pretrained(
        a.model,
        num_labels=len(labels),
        id2label=id2label,
        label2id=label2id,
        torch_dtype=torch.float32,
        **(off if a.no_dropout else {}),
    )
    metric_name = "upos_accuracy" if a.task == "pos" else "entity_f1"

    class Eval(tf.TrainerCallback):
        pass

    def compute(_):
        return {}

    args = tf.TrainingArguments(
        output_dir=a.out,
        per_device_train_batch_size=a.batch,
        learning_rate=a.lr,
        num_train_epochs=a.epochs,
        # transformers 5 takes the warm-up as steps: ceil(total · ratio), as crossmerge.
        warmup_steps=math.ceil(math.ceil(len(train) / a.batch) * a.epochs * a.warmup),
        weight_decay=a.wd,
        seed=a.seed,
        save_strategy="no",
        eval_strategy="no",
        logging_strategy="no",
        report_to=[],
        use_cpu=True,
        dataloader_num_workers=0,
    )
    collator = tf.DataCollatorForTokenClassification(tok)
    best = (-1.0, None, 0)

    class DevEval(tf.TrainerCallback):
        def on_epoch_end(self, args_, state, control, model=None, **kw):
            nonlocal best
            m = score(a.task, model, tok, dev, 512, id2label)[metric_name]
            print(json.dumps({"step": state.global_step, "dev": {metric_name: m}}), file=sys.stderr)
            if m > best[0]:
                best = (m, {k: v.detach().clone() for k, v in model.state_dict().items()}, state.global_step)
            model.train()

    trainer = tf.Trainer(
        model=model,
        args=args,
        train_dataset=encode(tok, train, label2id, a.max_length),
        data_collator=collator,
        callbacks=[DevEval()],
    )
    start = time.time()
    trainer.train()
    seconds = time.time() - start
    model.load_state_dict(best[1])
    out = {
        "task": a.task,
        "seed": a.seed,
        "dev": {metric_name: best[0]},
        "kept_step": best[2],
        "test": score(a.task, model, tok, test, 512, id2label),
        "steps": trainer.state.global_step,
        "seconds": seconds,
        "torch": torch.__version__,
        "transformers": tf.__version__,
        "threads": torch.get_num_threads(),
    }
    print(json.dumps(out))


def mlm(a):
    import shutil

    lines = [l.strip() for l in open(a.train, encoding="utf-8") if l.strip()]
    tok = tokenizer_for(a.model)
    feats = []
    for l in lines:
        ids = tok(l, add_special_tokens=True)["input_ids"]
        if len(ids) > a.max_length:
            ids = ids[: a.max_length - 1] + ids[-1:]
        feats.append({"input_ids": ids})
    collator = tf.DataCollatorForLanguageModeling(tok, mlm=True, mlm_probability=0.15)
    tf.set_seed(a.seed)
    model = tf.AutoModelForMaskedLM.from_pretrained(a.model, torch_dtype=torch.float32)
    report = {"seed": a.seed, "lines": len(lines)}

    def save(stage):
        model.save_pretrained(f"{a.out}/{stage}", safe_serialization=True)
        for f in ["tokenizer.json", "tokenizer_config.json"]:
            shutil.copy(f"{a.model}/{f}", f"{a.out}/{stage}/{f}")

    stages = a.stages.split(",")
    unknown = [s for s in stages if s not in ("init", "before", "after")]
    if unknown:
        sys.exit(f"error: unknown --stages {unknown}; hint: use init, before and/or after")
    for stage in stages:
        if stage == "init":
            save(stage)
            continue
        base = model.base_model
        for p in base.parameters():
            p.requires_grad = stage == "after"
        args = tf.TrainingArguments(
            output_dir=f"{a.out}/{stage}-run",
            per_device_train_batch_size=a.batch,
            learning_rate=a.lr,
            num_train_epochs=a.epochs,
            seed=a.seed,
            save_strategy="no",
            eval_strategy="no",
            logging_strategy="no",
            report_to=[],
            use_cpu=True,
        )
        trainer = tf.Trainer(model=model, args=args, train_dataset=feats, data_collator=collator)
        start = time.time()
        trainer.train()
        report[stage] = {"steps": trainer.state.global_step, "seconds": time.time() - start}
        save(stage)
    print(json.dumps(report))


def read_trees(path):
    """Sentences of (form, head, universal relation)."""
    return read_conllu(path, fields=lambda cols: (cols[1], int(cols[6]), cols[7].split(":")[0]))


class Parser(torch.nn.Module):
    """The biaffine head of schemas/parser.md on an encoder (train_steps.py's, full size)."""

    def __init__(self, encoder, h, labels, std, arc=500, rel=100):
        super().__init__()
        self.encoder = encoder
        self.root = torch.nn.Parameter(torch.randn(h) * std)
        self.arc_dep = torch.nn.Linear(h, arc)
        self.arc_head = torch.nn.Linear(h, arc)
        self.rel_dep = torch.nn.Linear(h, rel)
        self.rel_head = torch.nn.Linear(h, rel)
        self.arc_attn = torch.nn.Parameter(torch.randn(arc + 1, arc) * std)
        self.rel_attn = torch.nn.Parameter(torch.randn(labels, rel + 1, rel + 1) * std)
        for lin in (self.arc_dep, self.arc_head, self.rel_dep, self.rel_head):
            torch.nn.init.normal_(lin.weight, std=std)
            torch.nn.init.zeros_(lin.bias)

    def loss(self, input_ids, attention_mask, starts, heads, rels):
        import torch.nn.functional as F

        hidden = self.encoder(input_ids=input_ids, attention_mask=attention_mask).last_hidden_state
        b, _, h = hidden.shape
        n = max(len(s) for s in starts)
        rows = torch.zeros(b, n, dtype=torch.long)
        for s, st in enumerate(starts):
            rows[s, : len(st)] = torch.tensor(st)
        x = torch.cat([self.root.expand(b, 1, h), hidden.gather(1, rows.unsqueeze(2).expand(b, n, h))], 1)
        act = lambda y: F.leaky_relu(y, 0.1)
        ones = torch.ones(b, n + 1, 1)
        arc = torch.cat([act(self.arc_dep(x)), ones], 2) @ self.arc_attn @ act(self.arc_head(x)).transpose(1, 2)
        pad = torch.zeros(b, 1, n + 1)
        for s, st in enumerate(starts):
            pad[s, 0, len(st) + 1 :] = -1e9
        arc = arc + pad
        rel_d = torch.cat([act(self.rel_dep(x)), ones], 2)
        rel_h = torch.cat([act(self.rel_head(x)), ones], 2)
        sel = [
            (s, w + 1, hd, r)
            for s in range(b)
            for w, (hd, r) in enumerate(zip(heads[s], rels[s]))
            if hd is not None
        ]
        si, di, hi, ri = (torch.tensor(c) for c in zip(*sel))
        arc_loss = F.cross_entropy(arc[si, di], hi)
        rel = torch.einsum("mr,lrs,ms->ml", rel_d[si, di], self.rel_attn, rel_h[si, hi])
        return arc_loss + F.cross_entropy(rel, ri)


def dp(a):
    import os
    import shutil

    from safetensors.torch import save_file

    train = read_trees(a.train)
    labels = sorted({r for s in train for _, _, r in s})
    tok = tokenizer_for(a.model)
    feats = []
    for s in train:
        enc = tok([w for w, _, _ in s], is_split_into_words=True, add_special_tokens=True)
        ids, first = enc["input_ids"], {}
        for p, w in enumerate(enc.word_ids()):
            if w is not None and w not in first:
                first[w] = p
        if len(ids) > a.max_length:
            ids = ids[: a.max_length - 1] + ids[-1:]
        kept = [w for w in range(len(s)) if first[w] < len(ids) - 1]
        heads = [s[w][1] if s[w][1] <= len(kept) else None for w in kept]
        feats.append((ids, [first[w] for w in kept], heads, [labels.index(s[w][2]) for w in kept]))
    tf.set_seed(a.seed)
    config = json.load(open(f"{a.model}/config.json"))
    encoder = tf.AutoModel.from_pretrained(a.model, add_pooling_layer=False, torch_dtype=torch.float32)
    model = Parser(encoder, config["hidden_size"], len(labels), config.get("initializer_range", 0.02))
    model.train()
    named = list(model.named_parameters())
    no_decay = lambda n: "bias" in n or "LayerNorm" in n
    opt = torch.optim.AdamW(
        [
            {"params": [p for n, p in named if not no_decay(n)], "weight_decay": a.wd},
            {"params": [p for n, p in named if no_decay(n)], "weight_decay": 0.0},
        ],
        lr=a.lr,
    )
    per_epoch = math.ceil(len(feats) / a.batch)
    total = math.ceil(per_epoch * a.epochs)
    sched = tf.get_linear_schedule_with_warmup(opt, math.ceil(total * a.warmup), total)
    g = torch.Generator().manual_seed(a.seed)
    pad = tok.pad_token_id
    start, step, losses = time.time(), 0, []
    while step < total:
        order = torch.randperm(len(feats), generator=g).tolist()
        for k in range(0, len(order), a.batch):
            if step >= total:
                break
            batch = [feats[i] for i in order[k : k + a.batch]]
            t = max(len(f[0]) for f in batch)
            ids = torch.tensor([f[0] + [pad] * (t - len(f[0])) for f in batch])
            mask = torch.tensor([[1] * len(f[0]) + [0] * (t - len(f[0])) for f in batch])
            loss = model.loss(ids, mask, [f[1] for f in batch], [f[2] for f in batch], [f[3] for f in batch])
            loss.backward()
            torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
            opt.step()
            sched.step()
            opt.zero_grad()
            step += 1
            losses.append(loss.item())
            if step % 50 == 0:
                print(json.dumps({"step": step, "loss": sum(losses[-50:]) / 50}), file=sys.stderr)
    seconds = time.time() - start
    tensors = {k: v.detach().contiguous() for k, v in model.encoder.state_dict().items() if "position_ids" not in k}
    for k, v in model.state_dict().items():
        if not k.startswith("encoder."):
            tensors[f"parser.{k}" + (".weight" if k in ("arc_attn", "rel_attn") else "")] = v.detach().contiguous()
    os.makedirs(a.out, exist_ok=True)
    save_file(tensors, f"{a.out}/model.safetensors", metadata={"format": "pt"})
    config.update(
        architectures=["BertModel" if config.get("model_type") == "bert" else "XLMRobertaModel"],
        id2label={str(i): l for i, l in enumerate(labels)},
        label2id={l: i for i, l in enumerate(labels)},
        crossmerge_parser={"word": "first", "activation": "leaky_relu"},
    )
    json.dump(config, open(f"{a.out}/config.json", "w"), indent=2)
    for f in ["tokenizer.json", "tokenizer_config.json"]:
        if os.path.exists(f"{a.model}/{f}"):
            shutil.copy(f"{a.model}/{f}", f"{a.out}/{f}")
    out = {"seed": a.seed, "steps": step, "final_loss": losses[-1], "seconds": seconds}
    print(json.dumps({**out, "torch": torch.__version__, "threads": torch.get_num_threads()}))


def speed(a):
    train = read_conllu(a.train)
    labels = sorted({l for s in train for _, l in s})
    label2id = {l: i for i, l in enumerate(labels)}
    tok = tokenizer_for(a.model)
    tf.set_seed(a.seed)
    model = tf.AutoModelForTokenClassification.from_pretrained(
        a.model, num_labels=len(labels), torch_dtype=torch.float32
    )
    model.train()
    feats = encode(tok, train, label2id, a.max_length)
    rng = np.random.default_rng(a.seed)
    order = rng.permutation(len(feats))
    collator = tf.DataCollatorForTokenClassification(tok)
    opt = torch.optim.AdamW(model.parameters(), lr=5e-5, weight_decay=0.0)
    tokens, elapsed = 0, 0.0
    for step in range(a.steps + 1):
        batch = collator([feats[i] for i in order[step * a.batch : (step + 1) * a.batch]])
        start = time.perf_counter()
        loss = model(**batch).loss
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        opt.step()
        opt.zero_grad()
        if step > 0:
            elapsed += time.perf_counter() - start
            tokens += int(batch["attention_mask"].sum())
    rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    print(f"{tokens / elapsed:.2f} {rss}")


def main():
    p = argparse.ArgumentParser()
    p.add_argument("mode", choices=["tag", "mlm", "dp", "speed"])
    p.add_argument("--task", default="pos")
    p.add_argument("--model", required=True)
    p.add_argument("--train", required=True)
    p.add_argument("--dev")
    p.add_argument("--test")
    p.add_argument("--limit", type=int)
    p.add_argument("--epochs", type=float, default=3)
    p.add_argument("--lr", type=float, default=5e-5)
    p.add_argument("--batch", type=int, default=32)
    p.add_argument("--seed", type=int, default=42)
    p.add_argument("--max-length", type=int, default=128)
    p.add_argument("--warmup", type=float, default=0.0)
    p.add_argument("--wd", type=float, default=0.0)
    p.add_argument("--steps", type=int, default=10)
    p.add_argument("--no-dropout", action="store_true")
    p.add_argument("--stages", default="before,after", help="mlm: the stages to run (init, before, after)")
    p.add_argument("--out", default="/tmp/hf-train-out")
    a = p.parse_args()
    {"tag": tag, "mlm": mlm, "dp": dp, "speed": speed}[a.mode](a)


if __name__ == "__main__":
    sys.exit(main())
