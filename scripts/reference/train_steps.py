"""Reference for crossmerge's training step (crates/nn/src/train/trainer.rs): transformers'
models and loss, torch.optim.AdamW, clip_grad_norm_ and get_linear_schedule_with_warmup, as
transformers' Trainer runs them, on tiny BERT and XLM-R models with each head crossmerge trains
(masked LM, token classification, sequence classification, and the biaffine parser of
schemas/parser.md, written here in torch). Dropout off. Writes one safetensors file per
(family, head) under tests/fixtures/train/steps/: the initial weights (`initial/NAME`), the
weights after 1 and after 3 optimizer steps (`step1/NAME`, `step3/NAME`), and in its metadata
the batches, the settings and torch's loss and gradient norm per step.

    python scripts/reference/train_steps.py   # torch, transformers and safetensors installed
"""

import json
import pathlib

import torch
import torch.nn.functional as F
from safetensors.torch import save_file
from transformers import (
    BertConfig,
    BertForMaskedLM,
    BertForSequenceClassification,
    BertForTokenClassification,
    BertModel,
    XLMRobertaConfig,
    XLMRobertaForMaskedLM,
    XLMRobertaForSequenceClassification,
    XLMRobertaForTokenClassification,
    XLMRobertaModel,
    get_linear_schedule_with_warmup,
)

OUT = pathlib.Path(__file__).resolve().parents[2] / "tests/fixtures/train/steps"
LR, WD, WARMUP, TOTAL, MAX_NORM = 2e-2, 0.1, 1, 4, 1.0
LABELS = 3
ARC, REL = 6, 4


def config(family):
    common = dict(
        vocab_size=40,
        hidden_size=8,
        num_hidden_layers=2,
        num_attention_heads=2,
        intermediate_size=16,
        max_position_embeddings=24,
        hidden_dropout_prob=0.0,
        attention_probs_dropout_prob=0.0,
        initializer_range=0.2,
        num_labels=LABELS,
        pad_token_id=1,
        hidden_act="gelu",
    )
    if family == "bert":
        return BertConfig(type_vocab_size=2, layer_norm_eps=1e-12, **common)
    return XLMRobertaConfig(type_vocab_size=1, layer_norm_eps=1e-5, **common)


class Parser(torch.nn.Module):
    """The biaffine head of schemas/parser.md (first-subword words, leaky ReLU 0.1)."""

    def __init__(self, encoder, h):
        super().__init__()
        self.encoder = encoder
        self.root = torch.nn.Parameter(torch.randn(h) * 0.2)
        self.arc_dep = torch.nn.Linear(h, ARC)
        self.arc_head = torch.nn.Linear(h, ARC)
        self.rel_dep = torch.nn.Linear(h, REL)
        self.rel_head = torch.nn.Linear(h, REL)
        self.arc_attn = torch.nn.Parameter(torch.randn(ARC + 1, ARC) * 0.2)
        self.rel_attn = torch.nn.Parameter(torch.randn(LABELS, REL + 1, REL + 1) * 0.2)
        for lin in (self.arc_dep, self.arc_head, self.rel_dep, self.rel_head):
            torch.nn.init.normal_(lin.weight, std=0.2)
            torch.nn.init.normal_(lin.bias, std=0.2)

    def forward(self, input_ids, attention_mask, trees):
        hidden = self.encoder(input_ids=input_ids, attention_mask=attention_mask).last_hidden_state
        b, t, h = hidden.shape
        n = max(len(tr["starts"]) for tr in trees)
        pool = torch.zeros(b, n, t)
        for s, tr in enumerate(trees):
            for i, p in enumerate(tr["starts"]):
                pool[s, i, p] = 1.0
        x = torch.cat([self.root.expand(b, 1, h), pool @ hidden], 1)
        act = lambda y: F.leaky_relu(y, 0.1)
        ones = torch.ones(b, n + 1, 1)
        arc_d = torch.cat([act(self.arc_dep(x)), ones], 2)
        arc_h = act(self.arc_head(x))
        arc = arc_d @ self.arc_attn @ arc_h.transpose(1, 2)  # (b, dep, head)
        rel_d = torch.cat([act(self.rel_dep(x)), ones], 2)
        rel_h = torch.cat([act(self.rel_head(x)), ones], 2)
        rel = torch.einsum("bir,lrs,bjs->bijl", rel_d, self.rel_attn, rel_h)
        mask = torch.zeros(b, 1, n + 1)
        for s, tr in enumerate(trees):
            mask[s, 0, len(tr["starts"]) + 1 :] = -1e9
        arc = arc + mask
        arc_logits, arc_gold, rel_logits, rel_gold = [], [], [], []
        for s, tr in enumerate(trees):
            for w, (hd, r) in enumerate(zip(tr["heads"], tr["relations"])):
                arc_logits.append(arc[s, w + 1])
                arc_gold.append(hd)
                rel_logits.append(rel[s, w + 1, hd])
                rel_gold.append(r)
        return F.cross_entropy(torch.stack(arc_logits), torch.tensor(arc_gold)) + F.cross_entropy(
            torch.stack(rel_logits), torch.tensor(rel_gold)
        )


def model_for(family, head):
    c = config(family)
    cls = {
        ("bert", "mlm"): BertForMaskedLM,
        ("bert", "token"): BertForTokenClassification,
        ("bert", "sequence"): BertForSequenceClassification,
        ("xlmr", "mlm"): XLMRobertaForMaskedLM,
        ("xlmr", "token"): XLMRobertaForTokenClassification,
        ("xlmr", "sequence"): XLMRobertaForSequenceClassification,
    }
    if head == "parser":
        enc = (BertModel if family == "bert" else XLMRobertaModel)(c, add_pooling_layer=False)
        return Parser(enc, c.hidden_size), c
    return cls[(family, head)](c), c


def batches(family, head, g):
    """Three batches of three sequences of different lengths (padded), with the head's labels."""
    out = []
    for k in range(3):
        lengths = [7, 5, 9] if k != 1 else [6, 8, 4]
        seqs, labels, trees = [], [], []
        for n in lengths:
            ids = [0] + [int(x) for x in torch.randint(4, 40, (n - 2,), generator=g)] + [2]
            seqs.append(ids)
            if head == "mlm":
                lab = [-100] * n
                for p in range(1, n - 1):
                    if torch.rand(1, generator=g).item() < 0.4:
                        lab[p] = ids[p]
                        ids[p] = 3  # the mask token
                if all(l == -100 for l in lab):
                    lab[1] = ids[1]
                    ids[1] = 3
                labels.append(lab)
            elif head == "token":
                lab = [int(x) for x in torch.randint(0, LABELS, (n,), generator=g)]
                lab[0] = lab[-1] = -100
                labels.append(lab)
            elif head == "sequence":
                labels.append(int(torch.randint(0, LABELS, (1,), generator=g)))
            else:
                words = n - 2
                heads = [int(torch.randint(0, words + 1, (1,), generator=g)) for _ in range(words)]
                rels = [int(torch.randint(0, LABELS, (1,), generator=g)) for _ in range(words)]
                trees.append({"starts": list(range(1, words + 1)), "heads": heads, "relations": rels})
        t = max(lengths)
        ids = [s + [1] * (t - len(s)) for s in seqs]
        mask = [[1] * len(s) + [0] * (t - len(s)) for s in seqs]
        entry = {"ids": ids, "mask": mask, "lengths": lengths}
        if head in ("mlm", "token"):
            entry["labels"] = [l + [-100] * (t - len(l)) for l in labels]
        elif head == "sequence":
            entry["labels"] = labels
        else:
            entry["trees"] = trees
        out.append(entry)
    return out


def canonical(model):
    """The state dict as a checkpoint stores it: tied duplicates (the MLM decoder) left out."""
    sd = {k: v.detach().clone() for k, v in model.state_dict().items()}
    for k in list(sd):
        if k.endswith("decoder.weight") or k.endswith("decoder.bias") or k.endswith("position_ids"):
            del sd[k]
        elif k.startswith("encoder.") and isinstance(model, Parser):
            sd[k.replace("encoder.", "", 1)] = sd.pop(k)
    if isinstance(model, Parser):
        sd = {(k if not k.split(".")[0] in {"root", "arc_dep", "arc_head", "rel_dep", "rel_head", "arc_attn", "rel_attn"} else "parser." + k): v for k, v in sd.items()}
        sd = {(k + ".weight" if k in ("parser.arc_attn", "parser.rel_attn") else k): v for k, v in sd.items()}
    return sd


def run(family, head, seed):
    torch.manual_seed(seed)
    model, c = model_for(family, head)
    model.train()  # dropout is 0: train mode changes nothing else
    g = torch.Generator().manual_seed(seed + 100)
    data = batches(family, head, g)
    names = [n for n, _ in model.named_parameters()]
    decay = [p for n, p in model.named_parameters() if not ("bias" in n or "LayerNorm" in n or "layer_norm" in n)]
    no_decay = [p for n, p in model.named_parameters() if ("bias" in n or "LayerNorm" in n or "layer_norm" in n)]
    opt = torch.optim.AdamW(
        [{"params": decay, "weight_decay": WD}, {"params": no_decay, "weight_decay": 0.0}],
        lr=LR,
        betas=(0.9, 0.999),
        eps=1e-8,
    )
    sched = get_linear_schedule_with_warmup(opt, WARMUP, TOTAL)
    tensors = {f"initial/{k}": v for k, v in canonical(model).items()}
    losses, norms = [], []
    for step, b in enumerate(data):
        ids = torch.tensor(b["ids"])
        mask = torch.tensor(b["mask"])
        if head == "parser":
            loss = model(ids, mask, b["trees"])
        else:
            kwargs = {}
            if family == "bert":
                kwargs["token_type_ids"] = torch.zeros_like(ids)
            loss = model(input_ids=ids, attention_mask=mask, labels=torch.tensor(b["labels"]), **kwargs).loss
        opt.zero_grad()
        loss.backward()
        norm = torch.nn.utils.clip_grad_norm_(model.parameters(), MAX_NORM)
        opt.step()
        sched.step()
        losses.append(loss.item())
        norms.append(norm.item())
        if step in (0, 2):
            tensors.update({f"step{step + 1}/{k}": v for k, v in canonical(model).items()})
    meta = {
        "family": family,
        "head": head,
        "config": json.loads(c.to_json_string()),
        "lr": LR,
        "weight_decay": WD,
        "warmup_steps": WARMUP,
        "total_steps": TOTAL,
        "max_grad_norm": MAX_NORM,
        "batches": data,
        "loss": losses,
        "grad_norm": norms,
        "torch": torch.__version__,
    }
    if head == "parser":
        meta["config"]["crossmerge_parser"] = {"word": "first", "activation": "leaky_relu"}
    tensors = {k: v.contiguous().float() for k, v in tensors.items()}
    save_file(tensors, OUT / f"{family}-{head}.safetensors", metadata={"reference": json.dumps(meta)})
    print(family, head, "losses", [round(x, 5) for x in losses], "norms", [round(x, 4) for x in norms])


if __name__ == "__main__":
    OUT.mkdir(parents=True, exist_ok=True)
    for i, family in enumerate(["bert", "xlmr"]):
        for j, head in enumerate(["mlm", "token", "sequence", "parser"]):
            run(family, head, 10 * i + j)
