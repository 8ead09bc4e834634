//! Deterministic top-k by magnitude in O(n): `select_nth_unstable` finds the threshold; ties at
//! the threshold are broken by position (lower index first), so the mask never depends on the
//! selection algorithm's internal order.

/// A mask of the elements whose magnitude rank lies in `[lo, hi)` (rank 0 = largest; ranks
/// order by |v| descending, then index ascending).
pub fn rank_range_mask(values: &[f32], lo: usize, hi: usize) -> Vec<bool> {
    let n = values.len();
    let (lo, hi) = (lo.min(n), hi.min(n));
    if lo >= hi {
        return vec![false; n];
    }
    let top_hi = top_k(values, hi);
    let top_lo = top_k(values, lo);
    top_hi.iter().zip(&top_lo).map(|(a, b)| *a && !*b).collect()
}

/// The `k` elements of largest magnitude (ties: lower index first).
pub fn top_k(values: &[f32], k: usize) -> Vec<bool> {
    let n = values.len();
    if k == 0 {
        return vec![false; n];
    }
    if k >= n {
        return vec![true; n];
    }
    // |v| of a float orders like its bits with the sign cleared.
    let key = |v: f32| v.abs().to_bits();
    let mut keys: Vec<u32> = values.iter().map(|v| key(*v)).collect();
    // The k-th largest magnitude sits at position n − k in ascending order.
    let (_, threshold, _) = keys.select_nth_unstable(n - k);
    let threshold = *threshold;
    let strictly_above = values.iter().filter(|v| key(**v) > threshold).count();
    let mut at_threshold_left = k - strictly_above;
    values
        .iter()
        .map(|v| {
            let kv = key(*v);
            if kv > threshold {
                true
            } else if kv == threshold && at_threshold_left > 0 {
                at_threshold_left -= 1;
                true
            } else {
                false
            }
        })
        .collect()
}
