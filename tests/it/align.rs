//! Word → first-subword alignment with the real XLM-R (`SentencePiece`) and MiniLM (`WordPiece`)
//! tokenizers on the zh, hi, ru and de PUD treebanks.

use std::path::Path;

use crossmerge::eval::{align, conllu};

fn pud(shared: &Path, lang: &str, code: &str) -> Vec<conllu::Sentence> {
    conllu::read(&shared.join(format!("data/ud/UD_{lang}-PUD/{code}_pud-ud-test.conllu"))).unwrap()
}

#[test]
fn first_subwords_line_up_with_words() {
    let shared = crate::common::require_shared!();
    for (tok_path, marker) in [
        (
            shared.join("models/xlm-roberta-tokenizer/tokenizer.json"),
            "▁",
        ),
        (shared.join("models/all-MiniLM-L6-v2/tokenizer.json"), "##"),
    ] {
        let tok = align::load(&std::fs::read(&tok_path).unwrap()).unwrap();
        let normalizer = tok.get_normalizer();
        for (lang, code) in [
            ("Chinese", "zh"),
            ("Hindi", "hi"),
            ("Russian", "ru"),
            ("German", "de"),
        ] {
            let (mut words, mut matched, mut unk) = (0, 0, 0);
            for s in pud(&shared, lang, code).iter().take(300) {
                let forms: Vec<&str> = s.words.iter().map(|w| w.form.as_str()).collect();
                let a = align::align(&tok, &forms, 100_000).unwrap();
                assert_eq!(a.truncated, 0);
                // Every word has a first subword; they are in order, inside the sequence, not
                // special tokens.
                let firsts: Vec<usize> = a
                    .first
                    .iter()
                    .map(|f| f.expect("every word has a subword"))
                    .collect();
                assert!(
                    firsts.windows(2).all(|w| w[0] < w[1]),
                    "{lang}: {:?}",
                    s.sent_id
                );
                assert!(firsts[0] >= 1 && *firsts.last().unwrap() < a.ids.len() - 1);
                // The subwords of word i (first[i] .. first[i+1]) spell the word as the
                // tokenizer normalises it.
                let enc = tok.encode(forms.as_slice(), true).unwrap();
                let tokens = enc.get_tokens();
                for (i, form) in forms.iter().enumerate() {
                    words += 1;
                    let end = firsts.get(i + 1).copied().unwrap_or(a.ids.len() - 1);
                    let pieces: String = tokens[firsts[i]..end]
                        .iter()
                        .map(|t| t.replace(marker, ""))
                        .collect();
                    if pieces.contains("[UNK]") || pieces.contains("<unk>") {
                        unk += 1;
                        continue;
                    }
                    let mut n = tokenizers::NormalizedString::from(*form);
                    if let Some(norm) = normalizer {
                        tokenizers::Normalizer::normalize(norm, &mut n).unwrap();
                    }
                    let want: String = n.get().chars().filter(|c| !c.is_whitespace()).collect();
                    let ok = pieces == want.replace(marker, "");
                    if !ok && std::env::var_os("SHOW_ALIGN").is_some() {
                        eprintln!("{lang}: {form:?} → {pieces:?} vs {want:?}");
                    }
                    matched += usize::from(ok);
                }
            }
            let rate = matched as f64 / (words - unk) as f64;
            eprintln!(
                "{}: {lang}: {words} words, {unk} unknown, {:.4} spelled back",
                tok_path.display(),
                rate
            );
            assert_eq!(
                matched,
                words - unk,
                "{lang}: only {rate:.4} of words spell back from their subwords"
            );
        }
    }
}

#[test]
fn truncation_is_counted_not_silent() {
    let shared = crate::common::require_shared!();
    let tok = align::load(
        &std::fs::read(shared.join("models/xlm-roberta-tokenizer/tokenizer.json")).unwrap(),
    )
    .unwrap();
    let s = &pud(&shared, "German", "de")[0];
    let forms: Vec<&str> = s.words.iter().map(|w| w.form.as_str()).collect();
    let full = align::align(&tok, &forms, 100_000).unwrap();
    let cut = align::align(&tok, &forms, 8).unwrap();
    assert_eq!(cut.ids.len(), 8);
    assert_eq!(
        cut.ids.last(),
        full.ids.last(),
        "the closing special token stays"
    );
    assert_eq!(cut.truncated, full.ids.len() - 8);
    let kept = cut.first.iter().filter(|f| f.is_some()).count();
    assert!(kept < forms.len() && kept >= 1);
    assert_eq!(&cut.first[..kept], &full.first[..kept]);
}
