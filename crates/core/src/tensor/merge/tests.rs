#![allow(clippy::semicolon_if_nothing_returned)] // closures handed to `run` read better bare
use super::*;

fn w(values: &[f32], weight: f32) -> Weighted<'_> {
    Weighted { values, weight }
}

fn run(f: impl Fn(&mut [f32]), n: usize) -> Vec<f32> {
    let mut out = vec![f32::NAN; n];
    f(&mut out);
    out
}

#[test]
fn task_arithmetic_and_linear_exact() {
    let (a, b) = ([1.0, -2.0, 0.0, 4.0], [0.5, 2.0, -1.0, 0.0]);
    assert_eq!(
        run(|o| task_arithmetic(&[w(&a, 1.0), w(&b, -2.0)], o), 4),
        [0.0, -6.0, 2.0, 4.0]
    );
    let (x, y) = ([1.0, 2.0], [3.0, 6.0]);
    assert_eq!(
        run(|o| linear(&[w(&x, 1.0), w(&y, 3.0)], true, o), 2),
        [2.5, 5.0]
    );
    // normalize = false: the weighted sum, as mergekit gives it.
    assert_eq!(
        run(|o| linear(&[w(&x, 1.0), w(&y, 3.0)], false, o), 2),
        [10.0, 20.0]
    );
    assert_eq!(
        run(|o| linear(&[w(&x, 1.0), w(&y, -1.0)], true, o), 2),
        [-2.0, -4.0],
        "weights summing to 0 stay unnormalised"
    );
}

#[test]
fn ties_elects_signs_and_takes_the_disjoint_mean() {
    let (a, b, c) = (
        [1.0, -1.0, 2.0, 0.0],
        [3.0, 1.0, -2.0, 0.0],
        [-1.0, 1.0, -3.0, 5.0],
    );
    let merged = run(
        |o| {
            ties(
                &[w(&a, 1.0), w(&b, 1.0), w(&c, 1.0)],
                1.0,
                TiesNormalize::WeightSum,
                o,
            )
        },
        4,
    );
    assert_eq!(merged, [2.0, 1.0, -2.5, 5.0]);
    let summed = run(
        |o| {
            ties(
                &[w(&a, 1.0), w(&b, 1.0), w(&c, 1.0)],
                1.0,
                TiesNormalize::None,
                o,
            )
        },
        4,
    );
    assert_eq!(summed, [4.0, 2.0, -5.0, 5.0]);
    // A tied election (sum exactly 0) yields 0.
    assert_eq!(
        run(
            |o| ties(
                &[w(&[1.0], 1.0), w(&[-1.0], 1.0)],
                1.0,
                TiesNormalize::WeightSum,
                o
            ),
            1
        ),
        [0.0]
    );
    // Density 0 keeps nothing; density 1 trims nothing.
    assert_eq!(
        run(
            |o| ties(&[w(&a, 1.0), w(&c, 1.0)], 0.0, TiesNormalize::WeightSum, o),
            4
        ),
        [0.0; 4]
    );
    // Trimming keeps the top half by magnitude.
    assert_eq!(
        run(
            |o| ties(
                &[w(&[4.0, -1.0, 3.0, -2.0], 1.0)],
                0.5,
                TiesNormalize::WeightSum,
                o
            ),
            4
        ),
        [4.0, 0.0, 3.0, 0.0]
    );
    // Negative weights enter the election weighted, as mergekit does: 1·2 − 3·1 < 0 elects
    // the second entry, whose weighted mean is (−3·1)/(−3) = 1.
    assert_eq!(
        run(
            |o| ties(
                &[w(&[2.0], 1.0), w(&[1.0], -3.0)],
                1.0,
                TiesNormalize::WeightSum,
                o
            ),
            1
        ),
        [1.0]
    );
    // All-zero inputs stay zero.
    assert_eq!(
        run(
            |o| ties(
                &[w(&[0.0; 3], 1.0), w(&[0.0; 3], 2.0)],
                0.5,
                TiesNormalize::WeightSum,
                o
            ),
            3
        ),
        [0.0; 3]
    );
}

#[test]
fn magnitude_ties_break_by_position() {
    assert_eq!(
        magnitude_mask(&[1.0, -1.0, 1.0, 2.0], 0.5),
        [true, false, false, true]
    );
    assert_eq!(
        magnitude_mask(&[1.0, -1.0, 1.0, 2.0], 0.75),
        [true, true, false, true]
    );
    assert_eq!(magnitude_mask(&[], 0.5), Vec::<bool>::new());
}

#[test]
fn breadcrumbs_and_magnitude_prune_exact() {
    let t = [10.0, 1.0, -5.0, 2.0, -3.0, 0.5, 4.0, -0.1];
    assert_eq!(
        run(|o| breadcrumbs(&[w(&t, 1.0)], 0.5, 0.125, o), 8),
        [0.0, 0.0, -5.0, 2.0, -3.0, 0.0, 4.0, 0.0]
    );
    assert_eq!(
        run(|o| magnitude_prune(&[w(&t, 2.0)], 0.25, o), 8),
        [20.0, 0.0, -10.0, 0.0, 0.0, 0.0, 0.0, 0.0]
    );
    assert_eq!(run(|o| breadcrumbs(&[w(&t, 1.0)], 1.0, 0.0, o), 8), t);
}

#[test]
fn dare_is_seeded_rescaled_and_exact_at_the_edges() {
    let v: Vec<f32> = (0..100_000).map(|i| (i % 97) as f32 - 48.0).collect();
    let mut a = vec![0.0; v.len()];
    let mut b = vec![0.0; v.len()];
    dare(&v, 0.3, 42, 7, &mut a);
    dare(&v, 0.3, 42, 7, &mut b);
    assert_eq!(a, b, "same seed, same bits");
    dare(&v, 0.3, 43, 7, &mut b);
    assert_ne!(a, b, "another seed, other bits");
    dare(&v, 0.3, 42, 8, &mut b);
    assert_ne!(a, b, "another stream (tensor or input), other bits");
    let nonzero_in = v.iter().filter(|x| **x != 0.0).count();
    let kept = a.iter().filter(|x| **x != 0.0).count();
    let rate = kept as f64 / nonzero_in as f64;
    assert!((rate - 0.3).abs() < 0.01, "kept {rate}");
    for (x, y) in v.iter().zip(&a) {
        let want = f64::from(*x) / f64::from(0.3f32);
        assert!(
            *y == 0.0 || (f64::from(*y) - want).abs() <= 1e-6 * want.abs(),
            "{x} → {y}"
        );
    }
    dare(&v, 1.0, 42, 7, &mut b);
    assert_eq!(b, v);
    dare(&v, 0.0, 42, 7, &mut b);
    assert!(b.iter().all(|x| *x == 0.0));
}

#[test]
fn slerp_exact_cases() {
    let s = std::f32::consts::FRAC_1_SQRT_2;
    let out = run(|o| slerp(&[1.0, 0.0], &[0.0, 1.0], 0.5, o), 2);
    assert!(
        (out[0] - s).abs() < 1e-7 && (out[1] - s).abs() < 1e-7,
        "{out:?}"
    );
    assert_eq!(
        run(|o| slerp(&[1.0, 0.0], &[0.0, 1.0], 0.0, o), 2),
        [1.0, 0.0]
    );
    let end = run(|o| slerp(&[1.0, 0.0], &[0.0, 1.0], 1.0, o), 2);
    assert!(end[0].abs() < 1e-7 && (end[1] - 1.0).abs() < 1e-7);
    assert_eq!(
        run(|o| slerp(&[1.0, 0.0], &[2.0, 0.0], 0.5, o), 2),
        [1.5, 0.0],
        "parallel: linear"
    );
    assert_eq!(
        run(|o| slerp(&[0.0, 0.0], &[2.0, 4.0], 0.25, o), 2),
        [0.5, 1.0],
        "zero: linear"
    );
}

// ---------------------------------------------------------------------------------------------
// A separate f64 implementation of the paper formulas (sort-based), on random data.

fn noise(n: usize, seed: u64) -> Vec<f32> {
    let mut s = seed;
    (0..n)
        .map(|_| {
            s = s
                .wrapping_mul(6_364_136_223_846_793_005)
                .wrapping_add(1_442_695_040_888_963_407);
            ((s >> 40) as f32 / (1u64 << 24) as f32 - 0.5) * 0.02
        })
        .collect()
}

fn ref_top(values: &[f32], k: usize) -> Vec<bool> {
    let mut idx: Vec<usize> = (0..values.len()).collect();
    idx.sort_by(|&a, &b| values[b].abs().total_cmp(&values[a].abs()).then(a.cmp(&b)));
    let mut mask = vec![false; values.len()];
    for &i in idx.iter().take(k) {
        mask[i] = true;
    }
    mask
}

fn close(a: &[f32], b: &[f64]) {
    for (x, y) in a.iter().zip(b) {
        let tol = 1e-6 * y.abs().max(1e-6);
        assert!((f64::from(*x) - y).abs() <= tol, "{x} vs {y}");
    }
}

#[test]
fn agrees_with_a_separate_f64_reference() {
    let n = 10_007;
    let taus: Vec<Vec<f32>> = (0..3).map(|s| noise(n, 100 + s)).collect();
    let weights = [1.0f32, 0.5, -0.3];
    let inputs: Vec<Weighted<'_>> = taus
        .iter()
        .zip(weights)
        .map(|(t, w)| Weighted {
            values: t,
            weight: w,
        })
        .collect();

    let want: Vec<f64> = (0..n)
        .map(|e| {
            taus.iter()
                .zip(weights)
                .map(|(t, w)| f64::from(w) * f64::from(t[e]))
                .sum()
        })
        .collect();
    close(&run(|o| task_arithmetic(&inputs, o), n), &want);

    let wsum: f64 = weights.iter().map(|w| f64::from(*w)).sum();
    close(
        &run(|o| linear(&inputs, true, o), n),
        &want.iter().map(|v| v / wsum).collect::<Vec<_>>(),
    );

    // TIES, density 0.3: trim, elect, disjoint mean, all by the paper's definitions.
    let k = (0.3f64 * n as f64).round() as usize;
    let trimmed: Vec<Vec<f64>> = taus
        .iter()
        .map(|t| {
            let m = ref_top(t, k);
            t.iter()
                .zip(&m)
                .map(|(v, keep)| if *keep { f64::from(*v) } else { 0.0 })
                .collect()
        })
        .collect();
    let want_ties: Vec<f64> = (0..n)
        .map(|e| {
            let total: f64 = trimmed
                .iter()
                .zip(weights)
                .map(|(t, w)| f64::from(w) * t[e])
                .sum();
            if total == 0.0 {
                return 0.0;
            }
            let agree: Vec<(f64, f64)> = trimmed
                .iter()
                .zip(weights)
                .map(|(t, w)| (f64::from(w), f64::from(w) * t[e]))
                .filter(|(_, wv)| *wv != 0.0 && (*wv > 0.0) == (total > 0.0))
                .collect();
            let ws: f64 = agree.iter().map(|a| a.0).sum();
            let s: f64 = agree.iter().map(|a| a.1).sum();
            if ws == 0.0 { s } else { s / ws }
        })
        .collect();
    close(
        &run(|o| ties(&inputs, 0.3, TiesNormalize::WeightSum, o), n),
        &want_ties,
    );

    // DARE with the mask it drew: kept values are τ/density, the rest 0.
    let mut dared = vec![0.0; n];
    dare(&taus[0], 0.4, 9, 1, &mut dared);
    let want_dare: Vec<f64> = taus[0]
        .iter()
        .zip(&dared)
        .map(|(t, d)| {
            if *d == 0.0 {
                0.0
            } else {
                f64::from(*t) / f64::from(0.4f32)
            }
        })
        .collect();
    close(&dared, &want_dare);

    // Breadcrumbs: ranks [gamma·n, (gamma + density)·n).
    let (lo, hi) = (
        (0.05f64 * n as f64).round() as usize,
        (0.05f64 * n as f64).round() as usize + k,
    );
    let top_hi = ref_top(&taus[1], hi);
    let top_lo = ref_top(&taus[1], lo);
    let want_bc: Vec<f64> = (0..n)
        .map(|e| {
            if top_hi[e] && !top_lo[e] {
                f64::from(taus[1][e]) * 0.5
            } else {
                0.0
            }
        })
        .collect();
    close(
        &run(|o| breadcrumbs(&[inputs[1]], 0.3, 0.05, o), n),
        &want_bc,
    );
}
