//! `slerp`: spherical linear interpolation of two models.
//!
//! Paper: Shoemake 1985, "Animating rotation with quaternion curves" (SIGGRAPH); used for
//! model merging by mergekit and others.
//!
//! Numeric variant: each tensor is one vector; with `cos Ω` their normalised dot product,
//! `slerp(a, b; t) = sin((1−t)Ω)/sin Ω · a + sin(tΩ)/sin Ω · b`, in f64. When the tensors are
//! nearly parallel (|cos Ω| > 1 − 1e-6) or either is all zeros it falls back to linear
//! interpolation, as mergekit does (mergekit's threshold is on the dot of the normalised
//! vectors too, `DOT_THRESHOLD` = 0.9995; ours is tighter, so nearly parallel tensors
//! interpolate spherically here a little longer). Deterministic: no randomness.

/// The coefficients `(ca, cb)` with `slerp = ca·a + cb·b`, from the norms of `a` and `b` and
/// their dot product.
pub fn slerp_coefficients(norm_a: f64, norm_b: f64, dot: f64, t: f32) -> (f64, f64) {
    let t = f64::from(t);
    if norm_a == 0.0 || norm_b == 0.0 {
        return (1.0 - t, t);
    }
    let cos = dot / (norm_a * norm_b);
    if cos.abs() > 1.0 - 1e-6 {
        return (1.0 - t, t);
    }
    let omega = cos.clamp(-1.0, 1.0).acos();
    let s = omega.sin();
    (((1.0 - t) * omega).sin() / s, (t * omega).sin() / s)
}

/// Spherical interpolation between two tensors at `t` (0 gives `a`, 1 gives `b`), treating
/// each as one vector; see the module docs.
pub fn slerp(a: &[f32], b: &[f32], t: f32, out: &mut [f32]) {
    assert_eq!(a.len(), b.len(), "slerp needs two tensors of one length");
    let norm = |v: &[f32]| v.iter().map(|x| f64::from(*x).powi(2)).sum::<f64>().sqrt();
    let dot: f64 = a
        .iter()
        .zip(b)
        .map(|(x, y)| f64::from(*x) * f64::from(*y))
        .sum();
    let (ca, cb) = slerp_coefficients(norm(a), norm(b), dot, t);
    for ((o, x), y) in out.iter_mut().zip(a).zip(b) {
        *o = (ca * f64::from(*x) + cb * f64::from(*y)) as f32;
    }
}
