#!/usr/bin/env python3
"""Loads a model `crossmerge train` made (after `crossmerge export`) in transformers and scores
it there, for tests/it/train.rs and TRAINING.md:

    check_trained_export.py EXPORT_DIR pos|ner|nli|mlm DATA

prints one JSON line: the architecture transformers built, its missing, unexpected and
mismatched keys (all must be empty), and for pos/ner/nli the metric computed from
transformers' predictions the way `crossmerge eval` computes it (first subword per word, all
of it at --max-length 512): upos_accuracy, entity_f1 (seqeval default mode, when seqeval is
installed; else the exact-match token accuracy) or accuracy; for mlm the pseudo-perplexity of
DATA's lines (every non-special token masked alone).
"""
import json
import os
import sys

import torch
import transformers as tf

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from hf_train import first_subword_predictions, read_conllu, read_iob, tokenizer_for  # noqa: E402


def pseudo_perplexity(model, out, data, max_length=512):
    """Salazar et al.'s pseudo-perplexity as `crossmerge eval --task mlm --pseudo-perplexity`
    computes it: the trimmed non-empty lines, each non-special token masked alone, exp of the
    mean negative log-likelihood over the corpus (texts cut to max_length keep their last token)."""
    import math

    from tokenizers import Tokenizer

    tok = Tokenizer.from_file(f"{out}/tokenizer.json")
    mask = next(i for i in (tok.token_to_id(t) for t in ("<mask>", "[MASK]")) if i is not None)
    total, count = 0.0, 0
    for line in open(data, encoding="utf-8"):
        if not line.strip():
            continue
        enc = tok.encode(line.strip())
        ids, special = list(enc.ids), list(enc.special_tokens_mask)
        if len(ids) > max_length:
            ids, special = ids[: max_length - 1] + ids[-1:], special[: max_length - 1] + special[-1:]
        spots = [p for p, sp in enumerate(special) if not sp]
        if not spots:
            continue
        x = torch.tensor([ids] * len(spots))
        for row, p in enumerate(spots):
            x[row, p] = mask
        with torch.no_grad():
            logits = model(input_ids=x).logits.double()
        for row, p in enumerate(spots):
            total += torch.log_softmax(logits[row, p], -1)[ids[p]].item()
        count += len(spots)
    return math.exp(-total / count)


def main():
    out, task, data = sys.argv[1], sys.argv[2], sys.argv[3]
    cls = {
        "pos": tf.AutoModelForTokenClassification,
        "ner": tf.AutoModelForTokenClassification,
        "nli": tf.AutoModelForSequenceClassification,
        "mlm": tf.AutoModelForMaskedLM,
    }[task]
    model, info = cls.from_pretrained(out, output_loading_info=True, torch_dtype=torch.float32)
    model.eval()
    result = {
        "architecture": type(model).__name__,
        "missing": sorted(info["missing_keys"]),
        "unexpected": sorted(info["unexpected_keys"]),
        "mismatched": [list(map(str, m)) for m in info["mismatched_keys"]],
    }
    tok = tokenizer_for(out)
    id2label = {int(k): v for k, v in model.config.id2label.items()}
    if task in ("pos", "ner"):
        sents = read_conllu(data) if task == "pos" else read_iob(data)
        pred = first_subword_predictions(model, tok, sents, 512, id2label)
        if task == "pos":
            n = sum(len(s) for s in sents)
            result["upos_accuracy"] = sum(p == g for s, ps in zip(sents, pred) for (_, g), p in zip(s, ps)) / n
        else:
            from seqeval.metrics import f1_score

            gold = [[g for _, g in s] for s in sents]
            result["entity_f1"] = f1_score(gold, [[p or "O" for p in s] for s in pred])
    elif task == "nli":
        lines = [l.rstrip("\n").split("\t") for l in open(data, encoding="utf-8") if l.strip()]
        head, rows = lines[0], lines[1:]
        ip, ih, il = head.index("premise"), head.index("hypothesis"), head.index("label")
        ok = 0
        with torch.no_grad():
            for r in rows:
                enc = tok(r[ip], r[ih], return_tensors="pt")
                ok += id2label[int(model(**enc).logits.argmax(-1))] == r[il]
        result["accuracy"] = ok / len(rows)
    else:
        result["pseudo_perplexity"] = pseudo_perplexity(model, out, data)
    print(json.dumps(result))


if __name__ == "__main__":
    main()
