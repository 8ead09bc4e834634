use std::path::{Path, PathBuf};

use super::{conllu, metrics, ner, nli};
use crate::error::Error;

/// The workspace root (fixtures and `target/` are shared by every crate).
fn root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../..")
}

fn fixture(name: &str) -> PathBuf {
    root().join("tests/fixtures/eval").join(name)
}

fn reference() -> serde_json::Value {
    serde_json::from_slice(&std::fs::read(fixture("reference.json")).unwrap()).unwrap()
}

fn close(a: f64, b: &serde_json::Value) {
    let b = b.as_f64().unwrap();
    assert!((a - b).abs() < 1e-12, "{a} vs reference {b}");
}

#[test]
fn ner_scores_equal_seqeval() {
    let gold = ner::read(&fixture("ner-gold.iob2")).unwrap();
    let pred = ner::read(&fixture("ner-pred.iob2")).unwrap();
    let g: Vec<Vec<String>> = gold.iter().map(|s| s.tags.clone()).collect();
    let p: Vec<Vec<String>> = pred.iter().map(|s| s.tags.clone()).collect();
    let s = metrics::entity_scores(&g, &p);
    let r = &reference()["ner"];
    close(s.micro.precision, &r["precision"]);
    close(s.micro.recall, &r["recall"]);
    close(s.micro.f1, &r["f1"]);
    let types = r["per_type"].as_object().unwrap();
    assert_eq!(s.per_type.len(), types.len());
    for (t, v) in types {
        let mine = &s.per_type[t];
        close(mine.precision, &v["precision"]);
        close(mine.recall, &v["recall"]);
        close(mine.f1, &v["f1"]);
        assert_eq!(mine.support, v["support"].as_u64().unwrap(), "{t}");
    }
}

#[test]
fn chunks_follow_conlleval() {
    let e = metrics::entities(&[vec![
        "I-PER", "I-PER", "O", "B-LOC", "I-ORG", "E-ORG", "S-X", "I-X",
    ]]);
    assert_eq!(
        e,
        vec![
            ("PER".to_owned(), 0, 1),
            ("LOC".to_owned(), 3, 3),
            ("ORG".to_owned(), 4, 5),
            ("X".to_owned(), 6, 6),
            ("X".to_owned(), 7, 7),
        ]
    );
}

#[test]
fn attachment_scores_equal_the_conll_2018_script() {
    let gold = conllu::read(&fixture("dp-gold.conllu")).unwrap();
    let system = conllu::read(&fixture("dp-system.conllu")).unwrap();
    // Multiword tokens give their words; the empty node is skipped.
    assert_eq!(gold[0].words.len(), 8);
    assert_eq!(gold[0].tokens.len(), 6);
    assert_eq!(gold[0].tokens[1].form, "al");
    assert_eq!(gold[0].tokens[1].words, 1..3);
    assert_eq!(gold[2].words.len(), 9);
    let a = metrics::attachment(&gold, &system).unwrap();
    let r = &reference()["dp"];
    close(a.uas.unwrap(), &r["UAS"]);
    close(a.las.unwrap(), &r["LAS"]);
    close(
        metrics::upos_accuracy(&gold, &system).unwrap().unwrap(),
        &r["UPOS"],
    );
    assert_eq!(a.words, 24);
}

fn err(text: &str) -> (String, String) {
    match conllu::parse(Path::new("x.conllu"), text).unwrap_err() {
        Error::BadInput { problem, hint, .. } => (problem, hint),
        e => panic!("{e}"),
    }
}

#[test]
fn malformed_conllu_is_one_line_with_a_hint() {
    let ok = "1\tA\ta\tNOUN\t_\t_\t0\troot\t_\t_\n2\tb\tb\tVERB\t_\t_\t1\tdep\t_\t_\n\n";
    assert_eq!(conllu::parse(Path::new("x"), ok).unwrap().len(), 1);
    let (p, h) = err(&ok.replace("\t_\t_\n2", "\t_\n2"));
    assert!(p.starts_with("line 1: 9 columns"), "{p}");
    assert!(h.contains("10 tab-separated columns"));
    let (p, _) = err(&ok.replace("\t1\tdep", "\tx\tdep"));
    assert!(p.contains("line 2: HEAD `x`"), "{p}");
    let (p, _) = err(&ok.replace("\t1\tdep", "\t7\tdep"));
    assert!(
        p.contains("has head 7, but the sentence has 2 words"),
        "{p}"
    );
    let (p, _) = err(&ok.replace("\n2\t", "\n3\t"));
    assert!(p.contains("word ID 3 out of order"), "{p}");
    let (p, _) = err("");
    assert_eq!(p, "has no sentences");
    let (p, _) = err(&format!("1-3\tabc\t_\t_\t_\t_\t_\t_\t_\t_\n{ok}"));
    assert!(p.contains("multiword token's range runs past"), "{p}");
    let (p, _) = err(&ok.replace("\t0\troot", "\t-1\troot"));
    assert!(p.contains("HEAD `-1` of word 1"), "{p}");
}

#[test]
fn iob2_layouts_and_bad_tags() {
    let conll03 = "-DOCSTART- -X- O O\n\nEU NNP B-NP B-ORG\nrejects VBZ B-VP O\n\n";
    let s = ner::parse(Path::new("a"), conll03).unwrap();
    assert_eq!(s[0].tokens, ["EU", "rejects"]);
    assert_eq!(s[0].tags, ["B-ORG", "O"]);
    let uner = "# sent_id = 1\n1\tUnited\tB-LOC\t-\tx\n2\tStates\tI-LOC\t-\tx\n";
    assert_eq!(
        ner::parse(Path::new("b"), uner).unwrap()[0].tags,
        ["B-LOC", "I-LOC"]
    );
    let Error::BadInput { problem, .. } = ner::parse(Path::new("c"), "EU X-ORG\n").unwrap_err()
    else {
        panic!()
    };
    assert_eq!(problem, "line 1: `X-ORG` is not an IOB2 tag");
}

#[test]
fn the_shared_treebanks_and_ner_files_read() {
    let shared = root().join("../shared/data");
    if !shared.is_dir() {
        #[allow(clippy::print_stderr)] // says why the test does nothing
        {
            eprintln!("skipping: ../shared/data is absent");
            // Listed at the end of .ci/run with the integration tests' skips.
            let target = root().join("target");
            let _ = std::fs::create_dir_all(&target);
            if let Ok(mut f) = std::fs::OpenOptions::new()
                .create(true)
                .append(true)
                .open(target.join("skipped-checks.txt"))
            {
                use std::io::Write as _;
                let _ = writeln!(f, "reading the shared treebanks: ../shared/data is absent");
            }
        }
        return;
    }
    for lang in [
        "English", "German", "Chinese", "Hindi", "Russian", "Spanish", "French",
    ] {
        let dir = shared.join(format!("ud/UD_{lang}-PUD"));
        let file = std::fs::read_dir(&dir)
            .unwrap()
            .map(|e| e.unwrap().path())
            .find(|p| p.extension().is_some_and(|e| e == "conllu"))
            .unwrap();
        let s = conllu::read(&file).unwrap();
        assert_eq!(s.len(), 1000, "{lang} PUD has 1000 sentences");
        // Parsing a gold file against itself scores 1.
        let a = metrics::attachment(&s, &s).unwrap();
        assert_eq!((a.uas, a.las), (Some(1.0), Some(1.0)));
    }
    let s = ner::read(&shared.join("uner/UNER_English-PUD/en_pud-ud-test.iob2")).unwrap();
    assert_eq!(s.len(), 1000);
    assert_eq!(s[0].tags[11], "B-LOC");
}

#[test]
fn nli_reads_tsv_and_jsonl() {
    let tsv = "label\tpremise\thypothesis\nentailment\tA man sleeps.\tSomeone sleeps.\n";
    let e = nli::parse_tsv(Path::new("a.tsv"), tsv).unwrap();
    assert_eq!(e[0].label, "entailment");
    assert_eq!(e[0].hypothesis, "Someone sleeps.");
    let jsonl = "{\"premise\": \"p\", \"hypothesis\": \"h\", \"label\": 2}\n";
    assert_eq!(
        nli::parse_jsonl(Path::new("a.jsonl"), jsonl).unwrap()[0].label,
        "2"
    );
    let Error::BadInput { problem, .. } =
        nli::parse_tsv(Path::new("b"), "premise\thypothesis\n").unwrap_err()
    else {
        panic!()
    };
    assert!(
        problem.contains("lacks premise, hypothesis or label"),
        "{problem}"
    );
    let Error::BadInput { problem, .. } =
        nli::parse_tsv(Path::new("b"), "premise\thypothesis\tlabel\nx\ty\n").unwrap_err()
    else {
        panic!()
    };
    assert_eq!(problem, "line 2: 2 fields, the header has 3");
}

#[test]
fn strict_ner_scores_equal_seqeval_strict_iob2() {
    let gold = ner::read(&fixture("ner-gold.iob2")).unwrap();
    let pred = ner::read(&fixture("ner-pred.iob2")).unwrap();
    let g: Vec<Vec<String>> = gold.iter().map(|s| s.tags.clone()).collect();
    let p: Vec<Vec<String>> = pred.iter().map(|s| s.tags.clone()).collect();
    let strict = metrics::entity_scores_in(metrics::NerMode::Strict, &g, &p).unwrap();
    let r: serde_json::Value =
        serde_json::from_slice(&std::fs::read(fixture("ner-strict.json")).unwrap()).unwrap();
    close(strict.micro.precision, &r["precision"]);
    close(strict.micro.recall, &r["recall"]);
    close(strict.micro.f1, &r["f1"]);
    let types = r["per_type"].as_object().unwrap();
    assert_eq!(
        strict.per_type.len(),
        types.len(),
        "{:?}",
        strict.per_type.keys()
    );
    for (t, v) in types {
        let mine = &strict.per_type[t];
        close(mine.precision, &v["precision"]);
        close(mine.recall, &v["recall"]);
        close(mine.f1, &v["f1"]);
        assert_eq!(mine.support, v["support"].as_u64().unwrap(), "{t}");
    }
    // The default mode scores the same files differently (I- starts count there).
    let d = metrics::entity_scores(&g, &p);
    assert!((d.micro.f1 - strict.micro.f1).abs() > 1e-9);
    // Strict mode reads IOB2 only.
    let err = metrics::entities_strict(&[vec!["S-PER"]]).unwrap_err();
    assert!(err.contains("`S-PER`"), "{err}");
    assert_eq!(
        metrics::entities_strict(&[vec!["I-PER", "B-PER", "I-PER", "I-LOC", "B-LOC"]]).unwrap(),
        vec![("PER".to_owned(), 1, 2), ("LOC".to_owned(), 4, 4)]
    );
}
