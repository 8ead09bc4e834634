#!/usr/bin/env python3
"""Reference outputs for crossmerge's masked-LM pseudo-perplexity and biaffine parser head,
computed with PyTorch and Hugging Face transformers/tokenizers.

Writes under tests/fixtures/parity/:
- tiny-tokenizer.json: a 60-piece WordPiece tokenizer (BERT normalizer and pre-tokenizer,
  [CLS] $A [SEP]), built here so the fixtures stay a few kB;
- bert-pppl/: a tiny random-init BertForMaskedLM over that vocabulary (save_pretrained,
  safetensors, every parameter perturbed) with the tokenizer, texts.txt and reference.json:
  the pseudo-perplexity of Salazar et al. (2020), each non-special token masked alone;
- bert-parser/: a tiny BertModel plus a biaffine parser head with the tensor names and
  config keys of schemas/parser.md, written as a checkpoint folder (model.safetensors,
  config.json, tokenizer.json); reference.safetensors holds input ids, mask, each word's
  subword span, and the arc and relation scores for `first` and `mean` word pooling;
  gold.conllu holds three sentences whose gold tree is the best single-root tree under the
  arc scores (found by enumerating every tree) and the best relation per arc, so evaluating
  the checkpoint on it must give UAS = LAS = 1.

    python3 scripts/reference/scoring.py   # needs torch, transformers, tokenizers, safetensors

The tests read the committed files and need no Python.
"""
import itertools
import json
import math
import pathlib

import torch
import torch.nn as nn
import transformers as tf
from safetensors.torch import save_file
from tokenizers import Tokenizer, decoders, models, normalizers, pre_tokenizers, processors

root = pathlib.Path(__file__).resolve().parents[2]
out = root / "tests" / "fixtures" / "parity"
torch.manual_seed(20261127)

specials = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]"]
words = (
    "the a cat dog bird sat ran saw on in under mat house tree big small red old "
    "and to with we they it is was very quickly".split()
)
pieces = ["##s", "##ed", "##ing", "##er", "##ly", "##y"]
vocab_list = specials + list(".,?!") + words + pieces
vocab = {w: i for i, w in enumerate(vocab_list)}
tok = Tokenizer(models.WordPiece(vocab, unk_token="[UNK]", max_input_chars_per_word=100))
tok.normalizer = normalizers.BertNormalizer(lowercase=True)
tok.pre_tokenizer = pre_tokenizers.BertPreTokenizer()
tok.post_processor = processors.TemplateProcessing(
    single="[CLS] $A [SEP]",
    pair="[CLS] $A [SEP] $B:1 [SEP]:1",
    special_tokens=[("[CLS]", vocab["[CLS]"]), ("[SEP]", vocab["[SEP]"])],
)
tok.decoder = decoders.WordPiece()

common = dict(
    vocab_size=len(vocab_list),
    hidden_size=32,
    num_hidden_layers=2,
    num_attention_heads=4,
    intermediate_size=37,
    max_position_embeddings=64,
    type_vocab_size=2,
    hidden_act="gelu",
    layer_norm_eps=1e-12,
    pad_token_id=0,
)


def perturb(module):
    with torch.no_grad():
        for p in module.parameters():
            p.add_(torch.randn_like(p) * 0.05)


# ---- pseudo-perplexity -------------------------------------------------------------------
d = out / "bert-pppl"
model = tf.BertForMaskedLM(tf.BertConfig(**common)).eval()
perturb(model)
model.save_pretrained(d, safe_serialization=True)
tok.save(str(d / "tokenizer.json"))
texts = [
    "The cat sat on the mat.",
    "We saw a very big dog, and it ran quickly to the old house!",
    "Birds sang in the trees.",  # "sang" is [UNK]: scored like any other token
    "Small red cats.",
    "it",
]
(d / "texts.txt").write_text("\n".join(texts) + "\n")
total, count, per_text = 0.0, 0, []
for text in texts:
    enc = tok.encode(text)
    ids = torch.tensor(enc.ids)
    pll = 0.0
    for p, special in enumerate(enc.special_tokens_mask):
        if special:
            continue
        x = ids.clone()
        x[p] = vocab["[MASK]"]
        with torch.no_grad():
            logits = model(input_ids=x[None]).logits[0, p].double()
        pll += torch.log_softmax(logits, -1)[ids[p]].item()
        count += 1
    per_text.append(pll)
    total += pll
reference = {
    "pseudo_perplexity": math.exp(-total / count),
    "scored_tokens": count,
    "pseudo_log_likelihoods": per_text,
}
(d / "reference.json").write_text(json.dumps(reference, indent=1) + "\n")
print("bert-pppl", reference["pseudo_perplexity"], count)


# ---- biaffine parser ---------------------------------------------------------------------
class Weight(nn.Module):
    def __init__(self, *shape):
        super().__init__()
        self.weight = nn.Parameter(torch.randn(*shape) * 0.3)


class BiaffineParser(nn.Module):
    """schemas/parser.md: names, shapes and formulas."""

    def __init__(self, h, a, r, labels):
        super().__init__()
        self.root = nn.Parameter(torch.randn(h) * 0.3)
        self.arc_dep, self.arc_head = nn.Linear(h, a), nn.Linear(h, a)
        self.rel_dep, self.rel_head = nn.Linear(h, r), nn.Linear(h, r)
        self.arc_attn = Weight(a + 1, a)
        self.rel_attn = Weight(labels, r + 1, r + 1)

    def forward(self, words):  # words: (b, n, h)
        act = lambda y: nn.functional.leaky_relu(y, 0.1)
        b = words.shape[0]
        x = torch.cat([self.root.expand(b, 1, -1), words], 1)
        one = torch.ones(b, x.shape[1], 1)
        arc_d = torch.cat([act(self.arc_dep(x)), one], -1)
        arc_h = act(self.arc_head(x))
        arc = arc_d @ self.arc_attn.weight @ arc_h.transpose(1, 2)  # (b, dep, head)
        rel_d = torch.cat([act(self.rel_dep(x)), one], -1)
        rel_h = torch.cat([act(self.rel_head(x)), one], -1)
        rel = torch.einsum("bip,lpq,bjq->blij", rel_d, self.rel_attn.weight, rel_h)
        return arc, rel


class Model(nn.Module):
    def __init__(self, cfg, labels):
        super().__init__()
        self.bert = tf.BertModel(cfg, add_pooling_layer=False)
        self.parser = BiaffineParser(cfg.hidden_size, 16, 8, labels)


relations = ["root", "nsubj", "obj", "det", "amod"]
cfg = tf.BertConfig(**common)
model = Model(cfg, len(relations)).eval()
perturb(model)
d = out / "bert-parser"
d.mkdir(parents=True, exist_ok=True)
save_file({k: v.contiguous() for k, v in model.state_dict().items()}, d / "model.safetensors")
config = cfg.to_dict()
config["architectures"] = ["BertModel"]
config["id2label"] = {str(i): r for i, r in enumerate(relations)}
config["label2id"] = {r: i for i, r in enumerate(relations)}
config["crossmerge_parser"] = {"word": "first", "activation": "leaky_relu"}
(d / "config.json").write_text(json.dumps(config, indent=1) + "\n")
tok.save(str(d / "tokenizer.json"))

sentences = [
    ["The", "cats", "sat", "quickly", "."],
    ["We", "saw", "birds"],
    ["old", "dogs", "ran", "to", "the", "trees"],
]
encs = [tok.encode(s, is_pretokenized=True) for s in sentences]
t = max(len(e.ids) for e in encs)
n = max(len(s) for s in sentences)
ids = torch.zeros(len(sentences), t, dtype=torch.int64)
mask = torch.zeros(len(sentences), t, dtype=torch.int64)
spans = torch.full((len(sentences), n, 2), -1, dtype=torch.int64)
for s, e in enumerate(encs):
    ids[s, : len(e.ids)] = torch.tensor(e.ids)
    mask[s, : len(e.ids)] = 1
    firsts = [e.word_ids.index(w) for w in range(len(sentences[s]))]
    close = len(e.ids) - 1
    for w, start in enumerate(firsts):
        end = firsts[w + 1] if w + 1 < len(firsts) else close
        spans[s, w] = torch.tensor([start, end])

with torch.no_grad():
    hidden = model.bert(input_ids=ids, attention_mask=mask).last_hidden_state
    pooled = {}
    for how in ["first", "mean"]:
        vecs = torch.zeros(len(sentences), n, cfg.hidden_size)
        for s in range(len(sentences)):
            for w in range(len(sentences[s])):
                a, b = spans[s, w].tolist()
                vecs[s, w] = hidden[s, a] if how == "first" else hidden[s, a:b].mean(0)
        pooled[how] = model.parser(vecs)

tensors = {"input_ids": ids, "attention_mask": mask, "spans": spans}
for how, (arc, rel) in pooled.items():
    tensors[f"arc_{how}"] = arc.contiguous()
    tensors[f"rel_{how}"] = rel.contiguous()
save_file(tensors, d / "reference.safetensors")


def best_tree(arc, m):
    """The highest-scoring tree over words 1..m with exactly one word on [ROOT], by
    enumerating every head assignment."""
    best, best_heads = -math.inf, None
    for heads in itertools.product(range(m + 1), repeat=m):
        if sum(h == 0 for h in heads) != 1 or any(h == i + 1 for i, h in enumerate(heads)):
            continue
        ok = True
        for i in range(1, m + 1):  # every word reaches [ROOT]
            seen, j = set(), i
            while j != 0 and ok:
                if j in seen:
                    ok = False
                seen.add(j)
                j = heads[j - 1]
        if not ok:
            continue
        score = sum(arc[i + 1][h].item() for i, h in enumerate(heads))
        if score > best:
            best, best_heads = score, heads
    return best_heads


arc, rel = pooled["first"]
lines = []
for s, sent in enumerate(sentences):
    heads = best_tree(arc[s], len(sent))
    lines.append(f"# sent_id = {s + 1}")
    lines.append("# text = " + " ".join(sent))
    for i, (form, h) in enumerate(zip(sent, heads), start=1):
        label = relations[int(rel[s, :, i, h].argmax())]
        lines.append(f"{i}\t{form}\t_\tX\t_\t_\t{h}\t{label}\t_\t_")
    lines.append("")
(d / "gold.conllu").write_text("\n".join(lines) + "\n")
print("bert-parser", {k: tuple(v.shape) for k, v in tensors.items()})
