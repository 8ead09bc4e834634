#!/usr/bin/env python3
"""Reference values for crossmerge's metric tests, from the tools the field trusts.

NER: seqeval (default, conlleval-compatible mode) on tests/fixtures/eval/ner-{gold,pred}.iob2.
UAS/LAS/UPOS: the official CoNLL 2018 shared-task script, conll18_ud_eval.py (UFAL; stanza
wheels up to 1.9 ship it as stanza/utils/conll18_ud_eval.py: `pip download --no-deps
stanza==1.9.2` and unzip it), on tests/fixtures/eval/dp-{gold,system}.conllu (multiword tokens
and an empty node).

    python3 scripts/reference/metrics.py PATH/conll18_ud_eval.py

Writes tests/fixtures/eval/reference.json. Needs `pip install seqeval`; the tests read the
committed JSON and need no Python.
"""
import importlib.util
import json
import pathlib
import sys

from seqeval.metrics import classification_report, f1_score, precision_score, recall_score

spec = importlib.util.spec_from_file_location("conll18_ud_eval", sys.argv[1])
ud = importlib.util.module_from_spec(spec)
spec.loader.exec_module(ud)

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
report = classification_report(gold, pred, output_dict=True, zero_division=0)
ner = {
    "precision": float(precision_score(gold, pred)),
    "recall": float(recall_score(gold, pred)),
    "f1": float(f1_score(gold, pred)),
    "per_type": {
        k: {"precision": float(v["precision"]), "recall": float(v["recall"]), "f1": float(v["f1-score"]), "support": int(v["support"])}
        for k, v in report.items()
        if "avg" not in k
    },
}

g = ud.load_conllu_file(str(here / "dp-gold.conllu"))
s = ud.load_conllu_file(str(here / "dp-system.conllu"))
scores = ud.evaluate(g, s)
dp = {m: scores[m].f1 for m in ("UAS", "LAS", "UPOS", "Words")}

(here / "reference.json").write_text(json.dumps({"ner": ner, "dp": dp}, indent=2, sort_keys=True) + "\n")
print(json.dumps({"ner_f1": ner["f1"], "dp": dp}))
