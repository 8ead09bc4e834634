//! Deterministic top-k by magnitude in O(n), in memory or over a stream.
//!
//! A selection is a [`Threshold`]: keep every element whose magnitude key is above `key`, and
//! the first `equal` elements (in index order) whose key equals it. Ranks order by |v|
//! descending, then index ascending, so a mask never depends on the selection algorithm's
//! internal order. In memory, `select_nth_unstable` finds the key; over a stream too large to
//! hold, [`RadixSelect`] finds the same key exactly in two passes of 2¹⁶-bin histograms (high
//! then low 16 bits of the key), in bounded memory.

use rayon::prelude::*;

/// |v| of a float orders like its bits with the sign cleared (NaN above infinity).
fn key(v: f32) -> u32 {
    v.abs().to_bits()
}

/// How many of `n` elements a `density` keeps: `round(density · n)`, clamped to [0, n].
pub fn kept(n: usize, density: f32) -> usize {
    ((f64::from(density.clamp(0.0, 1.0)) * n as f64).round() as usize).min(n)
}

/// Which elements a top-k keeps (see the module docs).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Threshold {
    pub key: u32,
    pub equal: u64,
}

impl Threshold {
    /// Keeps nothing.
    pub const NONE: Threshold = Threshold {
        key: u32::MAX,
        equal: 0,
    };
    /// Keeps everything.
    pub const ALL: Threshold = Threshold {
        key: 0,
        equal: u64::MAX,
    };

    /// A fresh mask walker over the elements in index order.
    pub fn walker(self) -> Trim {
        Trim {
            threshold: self,
            taken: 0,
        }
    }
}

/// Applies a [`Threshold`] to elements seen in index order (across windows).
#[derive(Clone, Copy, Debug)]
pub struct Trim {
    threshold: Threshold,
    taken: u64,
}

impl Trim {
    #[inline]
    pub fn keep(&mut self, v: f32) -> bool {
        let k = key(v);
        if k > self.threshold.key {
            true
        } else if k == self.threshold.key && self.taken < self.threshold.equal {
            self.taken += 1;
            true
        } else {
            false
        }
    }
}

impl Trim {
    /// Zeroes, in place, the elements of the next window that the threshold does not keep
    /// (the same as [`Trim::keep`] on each, written so the common case vectorises).
    pub fn apply(&mut self, values: &mut [f32]) {
        let t = self.threshold.key;
        let equal: u64 = values
            .par_chunks_mut(1 << 16)
            .map(|c| {
                let mut equal = 0u64;
                for x in c.iter_mut() {
                    let k = key(*x);
                    equal += u64::from(k == t);
                    *x = if k >= t { *x } else { 0.0 };
                }
                equal
            })
            .sum();
        let quota = self.threshold.equal.saturating_sub(self.taken);
        if equal <= quota {
            self.taken += equal;
            return;
        }
        // More keys equal the threshold than it keeps: the first `quota` of them stay.
        let mut left = quota;
        for x in values.iter_mut() {
            if key(*x) == t {
                if left > 0 {
                    left -= 1;
                } else {
                    *x = 0.0;
                }
            }
        }
        self.taken += quota;
    }
}

/// The threshold of the `k` largest magnitudes of `values`, in memory, O(n): two histogram
/// passes (see [`RadixSelect`]) on large slices, `select_nth_unstable` on small ones.
pub fn threshold_of(values: &[f32], k: usize) -> Threshold {
    let n = values.len();
    if k == 0 {
        return Threshold::NONE;
    }
    if k >= n {
        return Threshold::ALL;
    }
    if n >= 1 << 16 {
        let mut r = RadixSelect::new(n as u64, &[k as u64]);
        r.first_pass(values);
        r.second_pass(values);
        return r.thresholds()[0];
    }
    let mut keys: Vec<u32> = values.iter().map(|v| key(*v)).collect();
    // The k-th largest key sits at position n − k in ascending order.
    let (_, t, _) = keys.select_nth_unstable(n - k);
    let t = *t;
    let above = values.iter().filter(|v| key(**v) > t).count();
    Threshold {
        key: t,
        equal: (k - above) as u64,
    }
}

/// The `k` elements of largest magnitude (ties: lower index first).
pub fn top_k(values: &[f32], k: usize) -> Vec<bool> {
    let mut trim = threshold_of(values, k).walker();
    values.iter().map(|v| trim.keep(*v)).collect()
}

/// A mask of the elements whose magnitude rank lies in `[lo, hi)` (rank 0 = largest).
pub fn rank_range_mask(values: &[f32], lo: usize, hi: usize) -> Vec<bool> {
    let n = values.len();
    let (lo, hi) = (lo.min(n), hi.min(n));
    if lo >= hi {
        return vec![false; n];
    }
    let (mut top_hi, mut top_lo) = (
        threshold_of(values, hi).walker(),
        threshold_of(values, lo).walker(),
    );
    values
        .iter()
        .map(|v| top_hi.keep(*v) && !top_lo.keep(*v))
        .collect()
}

/// Exact streaming selection of several top-k thresholds over one stream of `n` values, read
/// twice: feed every window to [`RadixSelect::first_pass`], then every window again to
/// [`RadixSelect::second_pass`], then take [`RadixSelect::thresholds`]. Memory: 512 KiB per
/// histogram, whatever `n`.
///
/// With [`RadixSelect::guess`] (a sample of the stream) the first pass also keeps the keys
/// near each guessed threshold; when the threshold's bin is among them,
/// [`RadixSelect::try_thresholds`] answers exactly after one pass and the second is skipped.
#[derive(Clone, Debug)]
pub struct RadixSelect {
    n: u64,
    ks: Vec<u64>,
    high: Vec<u64>,
    /// Per k: its high bin, the count above that bin, and the low histogram within it.
    bins: Vec<(u32, u64, Vec<u64>)>,
    /// Per k: the guessed range of high bins and the keys seen in it (`None` once over cap).
    near: Vec<(u32, u32, Option<Vec<u32>>)>,
}

const BINS: usize = 1 << 16;
/// Bins on each side of a guessed threshold bin whose keys the first pass keeps.
const MARGIN: u32 = 4;
/// Most keys kept per threshold (64 MiB).
const CAP: usize = 16 << 20;

impl RadixSelect {
    /// Selects the top `k` of `n` values for each `k` in `ks`.
    pub fn new(n: u64, ks: &[u64]) -> Self {
        Self {
            n,
            ks: ks.to_vec(),
            high: vec![0; BINS],
            bins: Vec::new(),
            near: Vec::new(),
        }
    }

    /// Guesses each threshold's bin from `sample` (values typical of the stream) so the first
    /// pass can keep the keys near it.
    pub fn guess(&mut self, sample: &[f32]) {
        if sample.is_empty() {
            return;
        }
        let mut hist = vec![0u64; BINS];
        for v in sample {
            hist[(key(*v) >> 16) as usize] += 1;
        }
        let scale = sample.len() as f64 / self.n as f64;
        self.near = self
            .ks
            .iter()
            .map(|&k| {
                let ks = ((k as f64 * scale).round() as u64).clamp(1, sample.len() as u64);
                if k == 0 || k >= self.n {
                    return (1, 0, None);
                }
                let (b, _) = Self::locate(&hist, 0, ks);
                (
                    b.saturating_sub(MARGIN),
                    b.saturating_add(MARGIN),
                    Some(Vec::new()),
                )
            })
            .collect();
    }

    pub fn first_pass(&mut self, values: &[f32]) {
        if let [(lo, hi, Some(kept))] = self.near.as_mut_slice() {
            // One threshold (TIES, magnitude): histogram and keep in one loop.
            let (lo, span) = (*lo, *hi - *lo);
            for v in values {
                let k = key(*v);
                let bin = k >> 16;
                self.high[bin as usize] += 1;
                if bin.wrapping_sub(lo) <= span {
                    kept.push(k);
                }
            }
            if kept.len() > CAP {
                self.near[0].2 = None;
            }
            return;
        }
        for v in values {
            self.high[(key(*v) >> 16) as usize] += 1;
        }
        for (lo, hi, kept) in &mut self.near {
            let Some(k) = kept else { continue };
            k.extend(
                values
                    .iter()
                    .map(|v| key(*v))
                    .filter(|x| (*lo..=*hi).contains(&(x >> 16))),
            );
            if k.len() > CAP {
                *kept = None;
            }
        }
    }

    /// The thresholds after the first pass alone, when every one's bin was kept whole (see
    /// [`RadixSelect::guess`]); `None` means the second pass is needed.
    pub fn try_thresholds(&mut self) -> Option<Vec<Threshold>> {
        if self.near.len() != self.ks.len() {
            return None;
        }
        self.ensure_bins();
        let mut out = Vec::with_capacity(self.ks.len());
        for ((&k, (bin, above, _)), (lo, hi, kept)) in
            self.ks.iter().zip(&self.bins).zip(&self.near)
        {
            if k == 0 {
                out.push(Threshold::NONE);
                continue;
            }
            if k >= self.n {
                out.push(Threshold::ALL);
                continue;
            }
            let keys = kept.as_ref().filter(|_| (*lo..=*hi).contains(bin))?;
            let mut low = vec![0u64; BINS];
            for x in keys.iter().filter(|x| *x >> 16 == *bin) {
                low[(x & 0xFFFF) as usize] += 1;
            }
            let (l, above) = Self::locate(&low, *above, k);
            out.push(Threshold {
                key: (bin << 16) | l,
                equal: k - above,
            });
        }
        self.near.clear();
        Some(out)
    }

    fn locate(hist: &[u64], mut above: u64, k: u64) -> (u32, u64) {
        for b in (0..hist.len()).rev() {
            if above + hist[b] >= k {
                return (b as u32, above);
            }
            above += hist[b];
        }
        unreachable!("0 < k <= n: some bin holds the k-th largest")
    }

    fn ensure_bins(&mut self) {
        if self.bins.is_empty() {
            let high = &self.high;
            self.bins = self
                .ks
                .iter()
                .map(|&k| {
                    if k == 0 || k >= self.n {
                        (u32::MAX, 0, Vec::new())
                    } else {
                        let (b, above) = Self::locate(high, 0, k);
                        (b, above, vec![0; BINS])
                    }
                })
                .collect();
        }
    }

    pub fn second_pass(&mut self, values: &[f32]) {
        self.ensure_bins();
        for (bin, _, low) in &mut self.bins {
            if low.is_empty() {
                continue;
            }
            for v in values {
                let k = key(*v);
                if k >> 16 == *bin {
                    low[(k & 0xFFFF) as usize] += 1;
                }
            }
        }
    }

    /// One threshold per `k`, in the order given to [`RadixSelect::new`].
    pub fn thresholds(mut self) -> Vec<Threshold> {
        self.ensure_bins();
        self.ks
            .iter()
            .zip(&self.bins)
            .map(|(&k, (bin, above, low))| {
                if k == 0 {
                    Threshold::NONE
                } else if k >= self.n {
                    Threshold::ALL
                } else {
                    let (l, above) = Self::locate(low, *above, k);
                    Threshold {
                        key: (bin << 16) | l,
                        equal: k - above,
                    }
                }
            })
            .collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn streaming_selection_equals_in_memory_selection() {
        // Values with many exact ties and both signs, a few zeros and infinities.
        let values: Vec<f32> = (0..50_000u64)
            .map(|i| {
                let x = (i.wrapping_mul(2_654_435_761) % 1000) as f32 / 97.0;
                match i % 7 {
                    0 => -x,
                    1 => 0.0,
                    _ if i == 777 => f32::INFINITY,
                    _ => x,
                }
            })
            .collect();
        let n = values.len();
        let ks: Vec<u64> = vec![0, 1, 17, 5000, 25_000, 49_999, 50_000, 60_000];
        let mut radix = RadixSelect::new(n as u64, &ks);
        for w in values.chunks(4096) {
            radix.first_pass(w);
        }
        for w in values.chunks(3000) {
            radix.second_pass(w);
        }
        let mut guessed = RadixSelect::new(n as u64, &ks);
        guessed.guess(&values[..5000]);
        for w in values.chunks(4096) {
            guessed.first_pass(w);
        }
        let one_pass = guessed
            .try_thresholds()
            .expect("a sample of the same stream guesses well");
        for (k, t) in ks.iter().zip(radix.thresholds()) {
            assert_eq!(
                one_pass[ks.iter().position(|x| x == k).unwrap()],
                t,
                "k = {k}"
            );
            let k = *k as usize;
            assert_eq!(t, threshold_of(&values, k.min(n)), "k = {k}");
            let mut trim = t.walker();
            let kept = values.iter().filter(|v| trim.keep(**v)).count();
            assert_eq!(kept, k.min(n));
            // The vectorised form keeps the same elements, window after window.
            let mut trim = t.walker();
            let mut applied = values.clone();
            for w in applied.chunks_mut(999) {
                trim.apply(w);
            }
            let mut walker = t.walker();
            let expected: Vec<f32> = values
                .iter()
                .map(|v| if walker.keep(*v) { *v } else { 0.0 })
                .collect();
            assert_eq!(applied, expected, "k = {k}");
        }
    }
}

#[cfg(test)]
mod large {
    use super::*;

    #[test]
    fn histogram_thresholds_equal_selection() {
        let values: Vec<f32> = (0..200_000u64)
            .map(|i| ((i.wrapping_mul(0x9E37_79B9) % 5003) as f32 - 2500.0) / 7.0)
            .collect();
        for k in [1, 999, 50_000, 123_457, 199_999] {
            let fast = threshold_of(&values, k);
            let mut keys: Vec<u32> = values.iter().map(|v| key(*v)).collect();
            let (_, t, _) = keys.select_nth_unstable(values.len() - k);
            let t = *t;
            let above = values.iter().filter(|v| key(**v) > t).count();
            assert_eq!(
                fast,
                Threshold {
                    key: t,
                    equal: (k - above) as u64
                },
                "k = {k}"
            );
        }
    }
}
