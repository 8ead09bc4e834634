//! Words → subwords: a sentence's words (CoNLL-U syntactic words, NER tokens) are encoded as
//! pre-tokenized input with the checkpoint's tokenizer.json, and each word is represented by
//! its first subword, as the seed (and most cross-lingual work) does. Truncation is reported,
//! never silent: words whose first subword falls past `max_length` have no position.

pub use tokenizers::Tokenizer;

use crate::error::{Error, Result};

/// A sentence ready for the encoder.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Aligned {
    /// Token ids, special tokens included, at most `max_length`.
    pub ids: Vec<u32>,
    /// Per word, the position of its first subword in `ids`; `None` for a word cut by
    /// truncation or that the tokenizer turned into nothing.
    pub first: Vec<Option<usize>>,
    /// Subwords dropped to fit `max_length`.
    pub truncated: usize,
    /// Words the tokenizer turned into no subword at all (an empty or whitespace-only form):
    /// `None` in `first` for that reason, not because of truncation.
    pub unaligned: usize,
}

impl Aligned {
    /// Words whose first subword was cut by `max_length`.
    pub fn truncated_words(&self) -> usize {
        self.first.iter().filter(|f| f.is_none()).count() - self.unaligned
    }
}

/// Loads a tokenizer.json, without the padding and truncation it may configure (batches are
/// padded here, and truncation is counted, not left to the tokenizer).
pub fn load(bytes: &[u8]) -> Result<Tokenizer> {
    let bad = |e: &dyn std::fmt::Display| {
        Error::invalid(
            format!("tokenizer.json: {e}"),
            "register the checkpoint with the tokenizer.json it was trained with",
        )
    };
    let mut tok = Tokenizer::from_bytes(bytes).map_err(|e| bad(&e))?;
    tok.with_padding(None);
    tok.with_truncation(None).map_err(|e| bad(&e))?;
    Ok(tok)
}

/// Encodes `words` and maps each to its first subword, keeping at most `max_length` tokens
/// (the last kept position is the closing special token).
pub fn align<S: AsRef<str>>(
    tokenizer: &Tokenizer,
    words: &[S],
    max_length: usize,
) -> Result<Aligned> {
    let words: Vec<&str> = words.iter().map(AsRef::as_ref).collect();
    let enc = tokenizer
        .encode(words.as_slice(), true)
        .map_err(|e| Error::invalid(format!("tokenizing: {e}"), "check the tokenizer.json"))?;
    let mut ids = enc.get_ids().to_vec();
    let word_ids = enc.get_word_ids();
    let mut first = vec![None; words.len()];
    for (pos, w) in word_ids.iter().enumerate() {
        if let Some(w) = w {
            let slot = &mut first[*w as usize];
            if slot.is_none() {
                *slot = Some(pos);
            }
        }
    }
    let unaligned = first.iter().filter(|f| f.is_none()).count();
    let mut truncated = 0;
    if ids.len() > max_length && max_length >= 2 {
        truncated = ids.len() - max_length;
        let last = *ids.last().expect("non-empty");
        ids.truncate(max_length - 1);
        ids.push(last);
        for f in &mut first {
            if f.is_some_and(|p| p >= max_length - 1) {
                *f = None;
            }
        }
    }
    Ok(Aligned {
        ids,
        first,
        truncated,
        unaligned,
    })
}
