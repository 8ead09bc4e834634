#!/usr/bin/env python3
"""Reference outputs of Hugging Face transformers (PyTorch) for crossmerge's encoder tests.

Writes under tests/fixtures/parity/:
- one tiny random-init checkpoint per head type, saved by transformers (`save_pretrained`,
  safetensors): bert-mlm, bert-tok, bert-seq, xlmr-mlm, xlmr-tok, xlmr-seq; every parameter
  (biases and LayerNorms included) is perturbed after init so a dropped bias cannot hide;
  beside each, reference.safetensors with input_ids, attention_mask (one padded row) and
  the logits;
- minilm-reference.safetensors: input ids, mask and last hidden states of
  ../shared/models/all-MiniLM-L6-v2 for five sentences (tokenized by its tokenizer.json).

    python3 scripts/reference/parity.py        # needs torch, transformers, safetensors

The tests read the committed files and need no Python.
"""
import json
import pathlib

import torch
import transformers as tf
from safetensors.torch import save_file

root = pathlib.Path(__file__).resolve().parents[2]
out = root / "tests" / "fixtures" / "parity"
torch.manual_seed(20261127)

common = dict(
    vocab_size=99,
    hidden_size=32,
    num_hidden_layers=2,
    num_attention_heads=4,
    intermediate_size=37,
    max_position_embeddings=64,
    type_vocab_size=2,
    hidden_act="gelu",
    layer_norm_eps=1e-12,
)

cases = {
    "bert-mlm": (tf.BertConfig, tf.BertForMaskedLM, {}),
    "bert-tok": (tf.BertConfig, tf.BertForTokenClassification, {"num_labels": 5}),
    "bert-seq": (tf.BertConfig, tf.BertForSequenceClassification, {"num_labels": 3}),
    "xlmr-mlm": (tf.XLMRobertaConfig, tf.XLMRobertaForMaskedLM, {"pad_token_id": 1, "layer_norm_eps": 1e-5}),
    "xlmr-tok": (tf.XLMRobertaConfig, tf.XLMRobertaForTokenClassification, {"num_labels": 5, "pad_token_id": 1, "layer_norm_eps": 1e-5}),
    "xlmr-seq": (tf.XLMRobertaConfig, tf.XLMRobertaForSequenceClassification, {"num_labels": 3, "pad_token_id": 1, "layer_norm_eps": 1e-5}),
}

for name, (cfg_cls, model_cls, extra) in cases.items():
    cfg = cfg_cls(**{**common, **extra})
    if "num_labels" in extra:
        cfg.id2label = {i: f"L{i}" for i in range(extra["num_labels"])}
        cfg.label2id = {v: k for k, v in cfg.id2label.items()}
    model = model_cls(cfg).eval()
    with torch.no_grad():
        for p in model.parameters():
            p.add_(torch.randn_like(p) * 0.05)
    d = out / name
    model.save_pretrained(d, safe_serialization=True)
    pad = cfg.pad_token_id if cfg.pad_token_id is not None else 0
    ids = torch.randint(5, cfg.vocab_size, (2, 11))
    mask = torch.ones_like(ids)
    ids[1, 8:] = pad
    mask[1, 8:] = 0
    with torch.no_grad():
        logits = model(input_ids=ids, attention_mask=mask).logits
    save_file(
        {"input_ids": ids.to(torch.int64), "attention_mask": mask.to(torch.int64), "logits": logits.contiguous()},
        d / "reference.safetensors",
    )
    print(name, tuple(logits.shape))

minilm = root.parent / "shared" / "models" / "all-MiniLM-L6-v2"
sentences = [
    "The quick brown fox jumps over the lazy dog.",
    "Cross-lingual transfer adds a language vector to a task model.",
    "Der Bahnhof ist geschlossen.",
    "¿Dónde está la biblioteca?",
    "Short.",
]
tok = tf.AutoTokenizer.from_pretrained(minilm)
model = tf.AutoModel.from_pretrained(minilm).eval()
enc = tok(sentences, padding=True, return_tensors="pt")
with torch.no_grad():
    hidden = model(**enc).last_hidden_state
save_file(
    {
        "input_ids": enc["input_ids"].to(torch.int64),
        "attention_mask": enc["attention_mask"].to(torch.int64),
        "token_type_ids": enc["token_type_ids"].to(torch.int64),
        "last_hidden_state": hidden.contiguous(),
    },
    out / "minilm-reference.safetensors",
)
(out / "minilm-sentences.json").write_text(json.dumps(sentences, ensure_ascii=False, indent=1) + "\n")
print("minilm", tuple(hidden.shape))
