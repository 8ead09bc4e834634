#!/usr/bin/env python3
"""seqeval's strict IOB2 mode on the NER fixtures, for `crossmerge eval --ner-mode strict`.

    pip install seqeval && python3 scripts/reference/ner_strict.py

Writes tests/fixtures/eval/ner-strict.json (micro and per-type precision, recall, F1, support
of tests/fixtures/eval/ner-{gold,pred}.iob2 under `mode="strict", scheme=IOB2`); the tests read
the committed JSON and need no Python.
"""
import json
import pathlib

from seqeval.metrics import classification_report, f1_score, precision_score, recall_score
from seqeval.scheme import IOB2

here = pathlib.Path(__file__).resolve().parents[2] / "tests" / "fixtures" / "eval"


def read_iob(path):
    sents, cur = [], []
    for line in (here / path).read_text(encoding="utf-8").splitlines():
        if not line.strip():
            if cur:
                sents.append(cur)
            cur = []
            continue
        cols = line.split()
        if cols[0] == "-DOCSTART-":
            continue
        cur.append(cols[-1])
    if cur:
        sents.append(cur)
    return sents


gold, pred = read_iob("ner-gold.iob2"), read_iob("ner-pred.iob2")
kw = {"mode": "strict", "scheme": IOB2}
report = classification_report(gold, pred, output_dict=True, zero_division=0, **kw)
out = {
    "precision": float(precision_score(gold, pred, **kw)),
    "recall": float(recall_score(gold, pred, **kw)),
    "f1": float(f1_score(gold, pred, **kw)),
    "per_type": {
        k: {"precision": float(v["precision"]), "recall": float(v["recall"]), "f1": float(v["f1-score"]),
            "support": int(v["support"])}
        for k, v in report.items()
        if "avg" not in k
    },
}
(here / "ner-strict.json").write_text(json.dumps(out, indent=1, sort_keys=True) + "\n")
print(json.dumps(out, indent=1, sort_keys=True))
