//! Masked-LM training inputs, as transformers' `DataCollatorForLanguageModeling` makes them
//! (and `DataCollatorForWholeWordMask` with `whole_word`): each non-special token is chosen
//! with probability `probability` (0.15); of the chosen, 80% become the mask token, 10% a token
//! drawn uniformly from the vocabulary, 10% stay as they are; the label is the original token
//! at chosen positions and nothing elsewhere (transformers' −100). With `whole_word`, words
//! are chosen, and every sub-word of a chosen word is.
//!
//! The draws are seeded and re-drawn each epoch, and every draw is a pure function of (seed,
//! epoch, text index, position) ([`crate::rng`]): the same masks on any thread count, in any
//! batch order, and after a resume. The bits differ from transformers' (torch's generator);
//! the distribution is the same.

use crate::rng::{mix, unit};

/// How to mask.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct Masking {
    /// Chance that a token (or, with `whole_word`, a word) is chosen: 0.15 in transformers.
    pub probability: f64,
    pub mask_id: u32,
    /// Random replacements are drawn from `0..vocab_size`, as transformers draws them.
    pub vocab_size: u32,
    pub whole_word: bool,
}

/// One text, masked.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Masked {
    pub ids: Vec<u32>,
    /// The original token where one was chosen, `None` where the loss ignores the position.
    pub labels: Vec<Option<u32>>,
}

/// Stream constants: one draw per purpose, never reused for another.
const CHOOSE: u64 = 0xD1B5_4A32_D192_ED03;
const REPLACE: u64 = 0x8CB9_2BA7_2F3D_8DD7;
const TOKEN: u64 = 0xA24B_AED4_963E_E407;

impl Masking {
    /// transformers' defaults: 15%, token-level.
    pub fn new(mask_id: u32, vocab_size: u32) -> Self {
        Self {
            probability: 0.15,
            mask_id,
            vocab_size,
            whole_word: false,
        }
    }

    /// Masks text number `index` of the data for `epoch`. `special[i]` marks positions never
    /// chosen (`<s>`, `</s>`, padding); `words[i]` is the word a position belongs to (used with
    /// `whole_word`; a position without a word is chosen on its own).
    pub fn apply(
        &self,
        ids: &[u32],
        special: &[bool],
        words: &[Option<u32>],
        seed: u64,
        epoch: u64,
        index: u64,
    ) -> Masked {
        let base = mix(seed ^ mix(epoch.wrapping_add(1)) ^ mix(index).rotate_left(17));
        let draw = |stream: u64, k: u64| mix(base ^ stream.wrapping_mul(k.wrapping_add(1)));
        let mut out = Masked {
            ids: ids.to_vec(),
            labels: vec![None; ids.len()],
        };
        for (i, &id) in ids.iter().enumerate() {
            if special.get(i).copied().unwrap_or(false) {
                continue;
            }
            // A word is chosen once for all its sub-words: the draw is keyed by the word.
            let key = match (self.whole_word, words.get(i).copied().flatten()) {
                (true, Some(w)) => u64::from(w) | (1 << 40),
                _ => i as u64,
            };
            if unit(draw(CHOOSE, key)) >= self.probability {
                continue;
            }
            out.labels[i] = Some(id);
            let how = unit(draw(REPLACE, i as u64));
            if how < 0.8 {
                out.ids[i] = self.mask_id;
            } else if how < 0.9 {
                out.ids[i] = (draw(TOKEN, i as u64) % u64::from(self.vocab_size.max(1))) as u32;
            }
        }
        out
    }
}

#[cfg(test)]
mod tests {
    use super::{Masked, Masking};

    fn text(n: usize) -> (Vec<u32>, Vec<bool>, Vec<Option<u32>>) {
        let ids: Vec<u32> = (0..n as u32).map(|i| 1000 + i % 50_000).collect();
        let mut special = vec![false; n];
        special[0] = true;
        special[n - 1] = true;
        // Words of three sub-words each.
        let words = (0..n).map(|i| Some((i / 3) as u32)).collect();
        (ids, special, words)
    }

    fn masking(whole_word: bool) -> Masking {
        Masking {
            whole_word,
            ..Masking::new(4, 250_002)
        }
    }

    #[test]
    fn the_same_draw_gives_the_same_mask_and_each_epoch_a_new_one() {
        let (ids, special, words) = text(512);
        let m = masking(false);
        let a = m.apply(&ids, &special, &words, 42, 0, 7);
        assert_eq!(a, m.apply(&ids, &special, &words, 42, 0, 7));
        assert_ne!(a, m.apply(&ids, &special, &words, 42, 1, 7));
        assert_ne!(a, m.apply(&ids, &special, &words, 43, 0, 7));
        assert_ne!(a, m.apply(&ids, &special, &words, 42, 0, 8));
    }

    #[test]
    fn only_chosen_positions_change_or_carry_labels_and_specials_never_do() {
        let (ids, special, words) = text(4096);
        let Masked { ids: out, labels } = masking(false).apply(&ids, &special, &words, 1, 0, 0);
        for i in 0..ids.len() {
            match labels[i] {
                None => assert_eq!(out[i], ids[i], "position {i} changed unchosen"),
                Some(l) => {
                    assert_eq!(l, ids[i]);
                    assert!(!special[i], "special position {i} chosen");
                }
            }
        }
    }

    /// Over 200k tokens the rates are transformers': 15% chosen; of those 80% mask, 10% a
    /// random token, 10% unchanged (bounds at about five standard deviations).
    #[test]
    fn the_rates_are_fifteen_percent_then_eighty_ten_ten() {
        let (ids, special, words) = text(2048);
        let m = masking(false);
        let (mut tokens, mut chosen, mut masked, mut kept) = (0f64, 0f64, 0f64, 0f64);
        for index in 0..100 {
            let out = m.apply(&ids, &special, &words, 9, 3, index);
            for i in 0..ids.len() {
                if special[i] {
                    continue;
                }
                tokens += 1.0;
                if out.labels[i].is_some() {
                    chosen += 1.0;
                    if out.ids[i] == 4 {
                        masked += 1.0;
                    } else if out.ids[i] == ids[i] {
                        kept += 1.0;
                    }
                }
            }
        }
        let random = chosen - masked - kept;
        assert!(
            (chosen / tokens - 0.15).abs() < 0.004,
            "{}",
            chosen / tokens
        );
        assert!((masked / chosen - 0.8).abs() < 0.01, "{}", masked / chosen);
        assert!((random / chosen - 0.1).abs() < 0.008, "{}", random / chosen);
        assert!((kept / chosen - 0.1).abs() < 0.008, "{}", kept / chosen);
    }

    #[test]
    fn whole_word_masking_chooses_every_sub_word_of_a_word() {
        let (ids, special, words) = text(3000);
        let out = masking(true).apply(&ids, &special, &words, 5, 0, 0);
        let mut chosen_words = 0;
        for w in 1..999 {
            let chosen: Vec<bool> = (3 * w..3 * w + 3)
                .map(|i| out.labels[i].is_some())
                .collect();
            assert!(
                chosen.iter().all(|&c| c) || chosen.iter().all(|&c| !c),
                "word {w}: {chosen:?}"
            );
            chosen_words += usize::from(chosen[0]);
        }
        assert!(
            (100..200).contains(&chosen_words),
            "{chosen_words} of 998 words"
        );
    }
}
